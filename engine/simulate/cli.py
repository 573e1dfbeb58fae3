"""`wardwatch simulate`: write a labelled synthetic hospital capture."""

from __future__ import annotations

import json
import logging
import os
import time

import click

from engine.simulate.attacks import SCENARIOS
from engine.simulate.generator import PROFILES, parse_attack, parse_duration, simulate
from engine.simulate.labels import write_labels

log = logging.getLogger(__name__)


@click.command("simulate")
@click.option("--profile", "profile_name", type=click.Choice(sorted(PROFILES)), default="small", show_default=True,
              help="Topology size, traffic rate and default attacks.")
@click.option("--duration", "duration_text", default=None,
              help="Capture length, e.g. 90s, 10m, 2h, 3d (default: the profile's).")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Random seed; the same seed and options give a byte-identical capture.")
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False, writable=True), required=True,
              help="Output pcap file.")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Label file (JSON lines); default: the output path with .labels.jsonl.")
@click.option("--attack", "attack_texts", multiple=True, metavar="NAME[@OFFSET][:KEY=VALUE,...]",
              help="Add an attack, e.g. ssh_bruteforce@120s:intensity=2 or dns_tunnel@18h:every=1d,count=5. "
                   "Repeatable. 'all' adds every scenario spread over the capture.")
@click.option("--no-default-attacks", is_flag=True, help="Drop the profile's default attacks.")
@click.option("--list-attacks", is_flag=True, is_eager=True, expose_value=False,
              callback=lambda ctx, _param, value: _list_attacks(ctx) if value else None,
              help="List the attack scenarios and exit.")
def simulate_command(profile_name, duration_text, seed, output_path, labels_path, attack_texts,
                     no_default_attacks):
    """Generate a synthetic hospital capture with ground-truth attack labels."""
    profile = PROFILES[profile_name]
    try:
        duration_s = parse_duration(duration_text) if duration_text else profile.duration_s
        texts = [] if no_default_attacks else list(profile.attacks)
        for text in attack_texts:
            if text == "all":
                texts += sorted(SCENARIOS)
            else:
                texts.append(text)
        specs = [parse_attack(text) for text in texts]
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    if duration_s <= 0:
        raise click.BadParameter(f"invalid duration {duration_text!r}: expected a positive length")

    labels_path = labels_path or _default_labels_path(output_path)
    began = time.perf_counter()
    try:
        with open(output_path, "wb") as out:
            result = simulate(out, profile, duration_s, seed, specs)
        with open(labels_path, "w", encoding="utf-8") as handle:
            write_labels(result.labels, handle)
    except OSError as error:
        raise click.ClickException(f"cannot write {error.filename}: {error.strerror}") from None
    except ValueError as error:
        # Attack options that only the scenario can check, such as an unknown src= host.
        raise click.ClickException(str(error)) from None
    elapsed = time.perf_counter() - began
    rate = result.packets / elapsed if elapsed > 0 else 0.0
    click.echo(f"wrote {result.packets} packets ({result.bytes / 1e6:.1f} MB, {result.flows} flows, "
               f"{result.devices} devices) to {output_path} in {elapsed:.1f} s ({rate:,.0f} packets/s)")
    click.echo(f"wrote {len(result.labels)} label records to {labels_path}")
    log.info("message counts: %s", json.dumps(result.message_counts, sort_keys=True))


def _default_labels_path(output_path: str) -> str:
    root, _ = os.path.splitext(output_path)
    return root + ".labels.jsonl"


def _list_attacks(ctx: click.Context) -> None:
    from engine.taxonomy import ATTACK_CLASSES

    for name in sorted(SCENARIOS):
        row = ATTACK_CLASSES[name]
        doc = (SCENARIOS[name].__doc__ or "").strip().splitlines()
        click.echo(f"{name:24} {row.technique:10} {doc[0] if doc else ''}")
    ctx.exit(0)

"""The `wardwatch train` command."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

log = logging.getLogger(__name__)


def _labels_beside(capture: str) -> str:
    # x.pcap -> x.labels.jsonl, the name the simulator's sample uses.
    path = Path(capture)
    return str(path.with_name(path.stem + ".labels.jsonl"))


@click.command("train")
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--labels", "label_paths", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Label file (JSON lines) of each capture, in capture order. Default: CAPTURE's stem + .labels.jsonl.")
@click.option("--validation-captures", default=1, show_default=True, type=click.IntRange(min=1),
              help="How many of the last captures to hold out for early stopping and thresholds.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Model file to write (.ww).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of LightGBM and the isolation forest.")
@click.option("--rounds", default=300, show_default=True, type=click.IntRange(min=1),
              help="Maximum boosting rounds (early stopping may use fewer).")
def train_command(captures, label_paths, validation_captures, output, seed, rounds):
    """Train a model on labelled captures and write it to OUTPUT.

    The last --validation-captures captures (simulator runs with seeds not
    used for training) choose the per-class thresholds and the anomaly
    threshold; the rest are trained on. Needs LightGBM (pip install
    wardwatch[train]). Exit codes: 0 written, 1 training failed, 2 usage.
    """
    # Checked before the captures are read, which can take minutes.
    try:
        import lightgbm  # noqa: F401
    except ImportError as error:
        raise click.ClickException(
            f"training needs LightGBM, which cannot be imported ({error}); install the train extra with"
            " pip install '.[train]' in the source tree, or pip install 'wardwatch[train]'"
        ) from None
    import numpy as np

    from engine.detect.dataset import load_dataset
    from engine.detect.model import save_model
    from engine.detect.training import train_model

    if not label_paths:
        label_paths = [_labels_beside(c) for c in captures]
        missing = [p for p in label_paths if not Path(p).is_file()]
        if missing:
            raise click.UsageError(f"label files not found: {', '.join(missing)}; pass --labels for each capture")
    if len(label_paths) != len(captures):
        raise click.UsageError(f"got {len(captures)} captures but {len(label_paths)} --labels; pass one per capture")
    if validation_captures >= len(captures):
        raise click.UsageError(
            f"--validation-captures {validation_captures} leaves no capture to train on; pass more captures"
        )
    split = len(captures) - validation_captures
    try:
        X_train, y_train = load_dataset(captures[:split], label_paths[:split])
        # One group per validation capture: the anomaly threshold keeps each
        # capture's benign false-positive rate within the target.
        valid_parts = [load_dataset([c], [l]) for c, l in zip(captures[split:], label_paths[split:])]
        X_valid = np.concatenate([X for X, _ in valid_parts])
        y_valid = np.concatenate([y for _, y in valid_parts])
        valid_groups = np.concatenate([np.full(y.size, Path(c).name) for c, (_, y) in zip(captures[split:], valid_parts)])
        model = train_model(
            X_train, y_train, X_valid, y_valid, seed=seed, rounds=rounds, valid_groups=valid_groups,
            metadata_extra={"train_captures": [Path(c).name for c in captures[:split]],
                            "validation_captures": [Path(c).name for c in captures[split:]]},
        )
    except (ValueError, KeyError, OSError) as error:
        raise click.ClickException(str(error)) from error
    save_model(output, model.metadata, model.classifier, model.anomaly)
    click.echo(json.dumps(model.metadata["validation_metrics"], indent=2))
    click.echo(f"wrote {output}")

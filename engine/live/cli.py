"""`wardwatch run`: analyse the traffic of a network interface (a SPAN or mirror port) live.

Exit codes: 0 stopped by SIGINT or SIGTERM after flushing every flow; 1 the
capture, the model, the store or a worker failed (the message names which);
2 usage error.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter

import click

from engine.alerts.commands import alert_sink_options
from engine.analyze.cli import InspectionStage, build_alert_config, build_options, format_alert_line, load_config

logger = logging.getLogger(__name__)

DEFAULT_STATS_INTERVAL_S = 60.0


def _default_workers() -> int:
    return len(os.sched_getaffinity(0))


@click.command("run")
@click.option("-i", "--interface", required=True, help="Network interface to capture on, e.g. the SPAN port.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Capture worker processes in one fanout group [default: one per usable CPU core].")
@click.option("--filter", "filter_expression", metavar="EXPR",
              help='Capture filter in tcpdump syntax, e.g. "not port 22" (applied in the kernel).')
@click.option("--no-promisc", is_flag=True, help="Do not put the interface in promiscuous mode.")
@click.option("--block-size", type=int, default=1 << 20, show_default=True,
              help="Ring block size, bytes (a power of two, at least one page and above --snaplen).")
@click.option("--block-count", type=click.IntRange(1, 1 << 16), default=64, show_default=True,
              help="Ring blocks per worker; the ring size is block size x block count bytes.")
@click.option("--frame-size", type=int, default=2048, show_default=True,
              help="Nominal ring frame size, bytes (TPACKET_V3 packs frames at their own length).")
@click.option("--block-timeout", "block_timeout_ms", type=click.IntRange(1, 60_000), default=100,
              show_default=True, help="Hand a partly filled block to the worker after this many milliseconds.")
@click.option("--snaplen", type=click.IntRange(64, 65535), default=65535, show_default=True,
              help="Bytes kept of each frame.")
@click.option("--fanout-group", type=click.IntRange(0, 0xFFFF), default=None,
              help="PACKET_FANOUT group id, unique per interface [default: derived from the process id].")
@click.option("--batch-size", type=click.IntRange(1, 1 << 20), default=8192, show_default=True,
              help="Maximum packets per batch.")
@click.option("--batch-timeout", "batch_timeout_ms", type=click.IntRange(0, 60_000), default=100, show_default=True,
              help="Hand a batch to the pipeline this many milliseconds after its first packet, even if not full.")
@click.option("--stats-interval", "stats_interval_s", type=click.FloatRange(min=0.1), default=DEFAULT_STATS_INTERVAL_S,
              show_default=True, help="Seconds between capture statistics in the log, the store and the bus.")
@click.option("--user", help="Switch to this user after opening the capture sockets (CAP_NET_RAW is kept).")
@click.option("--group", help="Switch to this group after opening the capture sockets [default: the user's].")
@click.option("--flow-log", type=click.Path(dir_okay=False),
              help="Append one JSON line per ended flow to this file (the records of `wardwatch flows`).")
@click.option("--store", "store_path", type=click.Path(dir_okay=False),
              help="SQLite store for alerts and run statistics [default: $WARDWATCH_STORE or ./wardwatch.db].")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False),
              help="Model file to score with [default: the shipped model].")
@click.option("--no-model", is_flag=True, help="Run the threshold rules only, without the model.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML configuration with [analyze], [rules] and [alerts] sections; SIGHUP reloads it.")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True),
              help="Flow idle timeout, seconds [default: 120].")
@click.option("--active-timeout", type=click.FloatRange(min=0, min_open=True),
              help="Flow active timeout, seconds [default: 1800].")
@click.option("--no-inspect", is_flag=True,
              help="Skip protocol inspection (assets, findings, access policy, login records).")
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False),
              help="Access-policy TOML file (zones, clinical assets, registered HL7 senders).")
@click.option("--login-interval", "login_interval_s", type=click.FloatRange(min=1), default=300.0,
              show_default=True, help="Seconds between runs of the login analytics over login records seen.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the closing summary, not each alert.")
@alert_sink_options
def run_command(interface, workers, filter_expression, no_promisc, block_size, block_count, frame_size,
                block_timeout_ms, snaplen, fanout_group, batch_size, batch_timeout_ms, stats_interval_s, user, group, flow_log,
                store_path, model_path, no_model, config_path, idle_timeout, active_timeout, no_inspect,
                policy_path, login_interval_s, quiet, **sink_options):
    """Capture on INTERFACE and analyse live until SIGINT or SIGTERM.

    Each worker process reads its own TPACKET_V3 ring. The kernel's
    flow-symmetric fanout hash sends both directions of a flow to the same
    worker, which runs the pipeline of `wardwatch analyze`. Alerts from all
    workers go to one store and one bus. Needs CAP_NET_RAW; every other
    privilege is dropped once the sockets are open. SIGHUP reloads the
    configuration file and the model without losing live flows.
    """
    from engine.alerts import AlertSink
    from engine.alerts.aggregate import Suppressor
    from engine.capture.bpf import FilterError, compile_filter
    from engine.capture.live import RingConfig
    from engine.detect import ModelFileError, load_model
    from engine.live.supervisor import LiveRun, LiveSettings
    from engine.live.worker import ReloadRequest

    # Everything that can be wrong in the configuration fails here, before
    # a socket is opened.
    config = load_config(config_path)
    options = build_options(config, idle_timeout, active_timeout)
    alert_config = build_alert_config(config, sink_options)
    ring = RingConfig(block_size=block_size, block_count=block_count, frame_size=frame_size,
                      block_timeout_ms=block_timeout_ms, snaplen=snaplen, promiscuous=not no_promisc)
    try:
        ring.validate()
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    program = None
    if filter_expression is not None:
        try:
            program = compile_filter(filter_expression, snaplen)
        except (FilterError, RuntimeError) as error:
            raise click.BadParameter(str(error), param_hint="'--filter'") from None
    policy = None
    if policy_path:
        from engine.policy.config import PolicyError, load_policy

        try:
            policy = load_policy(policy_path)
        except PolicyError as error:
            raise click.ClickException(str(error)) from error
    model = None
    if not no_model:
        try:
            model = load_model(model_path)
        except ModelFileError as error:
            raise click.ClickException(f"{error}; or pass --no-model to run the rules only") from error

    settings = LiveSettings(
        interface=interface,
        workers=workers or _default_workers(),
        ring=ring,
        bpf_program=program,
        fanout_group=fanout_group if fanout_group is not None else os.getpid() & 0xFFFF,
        batch_size=batch_size,
        batch_timeout_ms=batch_timeout_ms,
        stats_interval_s=stats_interval_s,
        login_interval_s=login_interval_s,
        user=user,
        group=group,
    )
    published = Counter()

    def on_alerts(alerts):
        for alert in alerts:
            if alert.revision == 1:
                published[(alert.severity, alert.category)] += 1
            if not quiet:
                click.echo(format_alert_line(alert))

    flow_stream = None
    flow_writer = None
    if flow_log:
        from engine.flows.cli import FlowWriter

        try:
            flow_stream = open(flow_log, "a", encoding="utf-8")
        except OSError as error:
            raise click.ClickException(f"cannot open flow log {flow_log}: {error.strerror}") from error
        writer = FlowWriter(flow_stream, "jsonl")

        def flow_writer(flows):
            writer.write_flows(flows)
            flow_stream.flush()
            return len(flows)

    def reload():
        new_config = load_config(config_path)
        new_options = build_options(new_config, idle_timeout, active_timeout)
        if not no_model:
            load_model(model_path)  # checked here so a bad file never reaches a worker
        new_alerts = build_alert_config(new_config, sink_options)
        if run.sink is not None:
            run.sink.config.suppression = new_alerts.suppression
            run.sink.suppressor = Suppressor(new_alerts.suppression)
        logger.info("reloaded %s: %d suppression rules", config_path or "the defaults", len(new_alerts.suppression))
        return ReloadRequest(options=new_options, model_path=model_path, use_model=not no_model)

    run = LiveRun(
        settings, options, model,
        sink_factory=lambda: AlertSink(store_path, alert_config).open(),
        on_alerts=on_alerts,
        reload=reload,
        flow_writer=flow_writer,
        sensor_id=alert_config.sensor_id,
        inspection_factory=None if no_inspect else (
            lambda sink: InspectionStage(sink.store_path, policy, alert_config)
        ),
    )
    started = time.monotonic()
    try:
        try:
            run.start()
        except (OSError, ValueError) as error:
            raise click.ClickException(f"cannot start capture on {interface}: {error}") from error
        workers_text = "1 worker" if settings.workers == 1 else f"{settings.workers} workers"
        click.echo(
            f"Capturing on {interface} with {workers_text} (fanout group {settings.fanout_group}); "
            "stop with Ctrl-C or SIGTERM", err=True,
        )
        try:
            exit_code = run.serve()
        except Exception as error:  # zmq.ZMQError on a bound port, sqlite3 errors, OSError
            raise click.ClickException(f"live capture failed: {error}") from error
        finally:
            if run.sink is not None:
                run.sink.close()
            if run.inspection is not None:
                run.inspection.close()
    finally:
        if flow_stream is not None:
            flow_stream.close()

    _print_summary(run, published, time.monotonic() - started, flow_log)
    sys.exit(exit_code)


def _print_summary(run, published, elapsed_s, flow_log):
    stats = run.run_stats
    click.echo(f"--- live:{run.settings.interface}")
    click.echo(
        f"packets {stats.packets:,}  bytes {stats.bytes:,}  flows {stats.flows:,}  "
        f"kernel packets {stats.kernel_packets:,}  drops {stats.kernel_drops:,}  freezes {stats.kernel_freezes:,}"
    )
    if flow_log:
        click.echo(f"flow records written to {flow_log}: {run.flows_logged:,}")
    if published:
        by_category = Counter()
        for (_severity, category), count in published.items():
            by_category[category] += count
        click.echo("alerts by category: " + ", ".join(f"{k} {v}" for k, v in sorted(by_category.items())))
    else:
        click.echo("alerts: none")
    for worker_id, reason in sorted(run.failures.items()):
        click.echo(f"error: worker {worker_id} {reason}", err=True)
    rate = stats.packets / elapsed_s if elapsed_s > 0 else 0.0
    click.echo(f"{stats.packets:,} packets in {elapsed_s:.2f} s ({rate:,.0f} packets/s)")

"""`wardwatch analyze`: run the whole pipeline over capture files.

Exit codes: 0 success; 1 a capture, the model, the store or the bus could
not be used (the message says which); 2 usage error.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

import click

logger = logging.getLogger(__name__)

SAMPLE_CAPTURE = Path(__file__).resolve().parent.parent / "data" / "sample.pcap"
STATUS_INTERVAL_S = 0.5


def load_config(path: str | None) -> dict:
    """Read the TOML configuration file (sections [analyze], [rules], [alerts])."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise click.ClickException(f"cannot read configuration {path}: {error.strerror}") from error
    except tomllib.TOMLDecodeError as error:
        raise click.ClickException(f"invalid TOML in configuration {path}: {error}") from error


def build_options(config: dict, idle_timeout, active_timeout):
    from engine.analyze.pipeline import AnalyzeOptions
    from engine.analyze.rules import RuleConfig

    try:
        rules = RuleConfig(**config.get("rules", {}))
        options = AnalyzeOptions(rules=rules, **config.get("analyze", {}))
    except TypeError as error:
        raise click.ClickException(f"invalid configuration key: {error}") from error
    if idle_timeout is not None:
        options.idle_timeout_s = idle_timeout
    if active_timeout is not None:
        options.active_timeout_s = active_timeout
    return options


def build_alert_config(config: dict, sensor_id, bus, replay, no_bus, eve, cef, pseudonymize, include_evidence):
    from engine.alerts.config import AlertConfig

    try:
        alert_config = AlertConfig.from_mapping(config.get("alerts", {}))
    except (TypeError, ValueError) as error:
        raise click.ClickException(f"invalid [alerts] configuration: {error}") from error
    alert_config.sensor_id = sensor_id or alert_config.sensor_id or socket.gethostname()
    if no_bus:
        alert_config.bus_endpoint = None
        alert_config.replay_endpoint = None
    if bus:
        alert_config.bus_endpoint = bus
    if replay:
        alert_config.replay_endpoint = replay
    if eve:
        alert_config.eve_path = eve
    if cef:
        alert_config.cef_target = cef
    if pseudonymize:
        alert_config.pseudonymize_key_file = pseudonymize
    if include_evidence:
        alert_config.include_evidence = True
    try:
        alert_config.validate()
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    return alert_config


class StatusLine:
    """A one-line progress display on a terminal; silent otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.enabled = stream.isatty()
        self.last = 0.0

    def update(self, text: str, force: bool = False):
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self.last >= STATUS_INTERVAL_S:
            self.last = now
            self.stream.write("\r\033[K" + text)
            self.stream.flush()

    def clear(self):
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def format_alert_line(alert) -> str:
    where = alert.src.ip or "?"
    if alert.dst.ip:
        where += f" -> {alert.dst.ip}"
        if alert.dst.port:
            where += f":{alert.dst.port}"
    update = f" (update {alert.revision}, {alert.count} detections)" if alert.revision > 1 else ""
    technique = f" {alert.technique}" if alert.technique else ""
    return f"[{alert.seq}] {alert.severity.upper():8} {alert.category}{technique} {where}: {alert.summary}{update}"


@click.command("analyze")
@click.argument("captures", nargs=-1, type=click.Path(allow_dash=True))
@click.option("--store", "store_path", type=click.Path(dir_okay=False),
              help="SQLite store for alerts and run statistics [default: $WARDWATCH_STORE or ./wardwatch.db].")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False),
              help="Model file to score with [default: the shipped model].")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML configuration with [analyze], [rules] and [alerts] sections.")
@click.option("--sensor-id", help="Name of this sensor in alerts [default: the host name].")
@click.option("--bus", help="ZeroMQ PUB endpoint to bind [default: tcp://127.0.0.1:5556].")
@click.option("--replay", help="ZeroMQ replay endpoint to bind [default: tcp://127.0.0.1:5557].")
@click.option("--no-bus", is_flag=True, help="Do not publish on ZeroMQ (store and outputs only).")
@click.option("--eve", type=click.Path(dir_okay=False), help="Also write alerts as EVE/ECS JSON lines to this file.")
@click.option("--cef", help="Also send alerts as CEF over syslog to udp://HOST:PORT or tcp://HOST:PORT.")
@click.option("--pseudonymize", type=click.Path(exists=True, dir_okay=False),
              help="Key file: replace addresses and user names in alerts by keyed hashes.")
@click.option("--include-evidence", is_flag=True,
              help="Keep payload bytes and patient fields in alert evidence (off by default).")
@click.option("--batch-size", default=8192, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Packets per batch.")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), help="Flow idle timeout, seconds [default: 120].")
@click.option("--active-timeout", type=click.FloatRange(min=0, min_open=True), help="Flow active timeout, seconds [default: 1800].")
@click.option("--quiet", "-q", is_flag=True, help="Print only the closing summary, not each alert.")
def analyze_command(captures, store_path, model_path, config_path, sensor_id, bus, replay, no_bus, eve,
                    cef, pseudonymize, include_evidence, batch_size, idle_timeout, active_timeout, quiet):
    """Analyse capture files and publish alerts.

    Reads each CAPTURE (pcap or pcapng, plain, gzip or zstd; "-" for standard
    input) through decoding, flows, window features, the model and the rules,
    writes alerts to the store and publishes them on the ZeroMQ bus. Without
    a CAPTURE it analyses the shipped sample capture.
    """
    from engine.alerts import AlertSink
    from engine.alerts.store import RunStats
    from engine.analyze.alerts import alert_from_detection
    from engine.analyze.pipeline import Pipeline
    from engine.capture import CaptureError, open_capture
    from engine.detect import ModelFileError, load_model

    if not captures:
        if not SAMPLE_CAPTURE.is_file():
            raise click.ClickException(f"no capture given and the sample capture {SAMPLE_CAPTURE} is missing")
        captures = (str(SAMPLE_CAPTURE),)
        click.echo(f"No capture given: analysing the shipped sample {SAMPLE_CAPTURE.name}", err=True)

    config = load_config(config_path)
    options = build_options(config, idle_timeout, active_timeout)
    alert_config = build_alert_config(config, sensor_id, bus, replay, no_bus, eve, cef, pseudonymize,
                                      include_evidence)
    try:
        model = load_model(model_path)
    except ModelFileError as error:
        raise click.ClickException(str(error)) from error

    status = StatusLine()
    published = Counter()
    failures = 0
    started = time.monotonic()
    total_packets = 0

    def record(alerts):
        for alert in alerts:
            # Count alerts, not publications: an update re-publishes an alert.
            if alert.revision == 1:
                published[(alert.severity, alert.category)] += 1
            if not quiet:
                status.clear()
                click.echo(format_alert_line(alert))

    def emit(sink, detections):
        for detection in detections:
            record(sink.submit(alert_from_detection(detection, alert_config.sensor_id)))

    try:
        sink = AlertSink(store_path, alert_config).open()
    except Exception as error:  # zmq.ZMQError on a bound port, sqlite3 errors, OSError
        raise click.ClickException(f"cannot open the alert outputs: {error}") from error
    try:
        if sink.bus_endpoint:
            click.echo(f"Publishing alerts on {sink.bus_endpoint} (replay {sink.replay_endpoint})", err=True)
        for capture in captures:
            published.clear()
            pipeline = Pipeline(model, options)
            run = RunStats(sensor_id=alert_config.sensor_id, source=os.path.abspath(capture) if capture != "-" else "-")
            reader_stats = {}
            try:
                with open_capture(capture, batch_size=batch_size) as reader:
                    for batch in reader:
                        emit(sink, pipeline.process(batch.packets, batch.data))
                        if pipeline.last_packet_ns is not None:
                            record(sink.expire(pipeline.last_packet_ns / 1e9))
                        status.update(
                            f"{capture}: {pipeline.counters['packets']:,} packets, "
                            f"{pipeline.counters['flows']:,} flows ended, {sum(published.values())} alerts"
                        )
                    reader_stats = dict(reader.stats)
            except CaptureError as error:
                failures += 1
                status.clear()
                click.echo(f"error: {error}", err=True)
            emit(sink, pipeline.finish())
            status.clear()
            end_time = pipeline.last_packet_ns / 1e9 if pipeline.last_packet_ns is not None else None
            record(sink.flush(end_time))
            total_packets += pipeline.counters["packets"]
            anomalies = dict(pipeline.anomalies)
            anomalies.update({k: v for k, v in reader_stats.items()
                              if k not in ("packets", "bytes") and isinstance(v, int) and v})
            run.packets = pipeline.counters["packets"]
            run.bytes = pipeline.counters["bytes"]
            run.flows = pipeline.counters["flows"]
            run.alerts = sum(published.values())
            run.ended_at = time.time()
            run.first_packet_time = pipeline.first_packet_ns / 1e9 if pipeline.first_packet_ns else None
            run.last_packet_time = end_time
            run.anomaly_counters = anomalies
            sink.publish_stats(run)
            print_summary(capture, pipeline, anomalies, published)
    finally:
        sink.close()

    elapsed = time.monotonic() - started
    rate = total_packets / elapsed if elapsed > 0 else 0.0
    click.echo(f"{total_packets:,} packets in {elapsed:.2f} s ({rate:,.0f} packets/s)")
    if failures:
        sys.exit(1)


def print_summary(capture, pipeline, anomalies, published):
    stats = pipeline.stats
    click.echo(f"--- {capture}")
    click.echo(
        f"packets {stats.get('packets', 0):,}  bytes {stats.get('bytes', 0):,}  "
        f"flows {stats.get('flows', 0):,}  evicted {stats.get('flow_flows_evicted', 0):,}"
    )
    if published:
        by_severity = Counter()
        by_category = Counter()
        for (severity, category), count in published.items():
            by_severity[severity] += count
            by_category[category] += count
        click.echo("alerts by severity: " + ", ".join(f"{k} {v}" for k, v in sorted(by_severity.items())))
        click.echo("alerts by category: " + ", ".join(f"{k} {v}" for k, v in sorted(by_category.items())))
    else:
        click.echo("alerts: none")
    if anomalies:
        click.echo("anomalies: " + ", ".join(f"{k} {v}" for k, v in sorted(anomalies.items())))

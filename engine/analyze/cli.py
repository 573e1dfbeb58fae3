"""`wardwatch analyze`: run the whole pipeline over capture files.

Exit codes: 0 success; 1 a capture, the model, the store or the bus could
not be used (the message names which); 2 usage error.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import tomllib
from collections import Counter, OrderedDict
from contextlib import contextmanager
from pathlib import Path

import click

from engine.alerts.commands import alert_sink_options
from engine.flows.table import MAX_TIMEOUT_S

logger = logging.getLogger(__name__)

SAMPLE_CAPTURE = Path(__file__).resolve().parent.parent / "data" / "sample.pcap"
# A passive finding (same category, host and port) is reported again only
# after this much capture time; the oldest keys go past MAX_FINDING_KEYS.
FINDING_REPEAT_S = 24 * 3600.0
MAX_FINDING_KEYS = 65_536
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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        # TOML files are UTF-8, and tomllib raises UnicodeDecodeError on other bytes.
        raise click.ClickException(f"invalid TOML in configuration {path}: {error}") from error


# Top-level tables of the configuration file. [logins] is read by
# `wardwatch logins`, so one file can serve every command.
CONFIG_SECTIONS = ("alerts", "analyze", "logins", "rules")


def check_config_sections(config: dict) -> None:
    """Raise ClickException naming the valid sections when the file has another top-level key.

    A misspelt section would otherwise be ignored, and its settings with it.
    """
    for name in config:
        if name not in CONFIG_SECTIONS:
            raise click.ClickException(
                f"invalid configuration section [{name}]; expected one of:"
                f" {', '.join(f'[{section}]' for section in CONFIG_SECTIONS)}"
            )


def build_options(config: dict, idle_timeout, active_timeout):
    from engine.analyze.pipeline import AnalyzeOptions
    from engine.analyze.rules import RuleConfig

    check_config_sections(config)
    for section in ("analyze", "rules", "alerts"):
        if not isinstance(config.get(section, {}), dict):
            raise click.ClickException(
                f"invalid configuration: {section} = {config[section]!r} is not a table; write it as a [{section}] section"
            )
    rules_table = config.get("rules", {})
    analyze_table = config.get("analyze", {})
    check_config_table("rules", rules_table, RuleConfig, skip=())
    check_config_table("analyze", analyze_table, AnalyzeOptions, skip=_FLOW_TABLE_OPTIONS)
    rules = RuleConfig(**rules_table)
    options = AnalyzeOptions(rules=rules, **analyze_table)
    if idle_timeout is not None:
        options.idle_timeout_s = idle_timeout
    if active_timeout is not None:
        options.active_timeout_s = active_timeout
    check_flow_options(options)
    return options


# Options that check_flow_options() validates with their own ranges.
_FLOW_TABLE_OPTIONS = ("idle_timeout_s", "active_timeout_s", "flow_capacity", "window_capacity")


def check_config_table(section: str, table: dict, options_class, skip: tuple[str, ...]) -> None:
    """Raise ClickException unless each key of a [section] table names a field of `options_class`
    and each value has the type of that field's default and is above zero.

    A wrong type passes the dataclass, so without this check it fails mid-run
    or makes a threshold that never matches.
    """
    fields = {item.name: item for item in dataclasses.fields(options_class) if item.name != "rules"}
    for name, value in table.items():
        if name not in fields:
            raise click.ClickException(
                f"invalid configuration key [{section}] {name}; expected one of: {', '.join(sorted(fields))}"
            )
        if name in skip:
            continue
        default = fields[name].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise click.ClickException(f"invalid [{section}] {name} {value!r}; expected true or false")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise click.ClickException(f"invalid [{section}] {name} {value!r}; expected an integer above 0")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise click.ClickException(f"invalid [{section}] {name} {value!r}; expected a finite number above 0")


def check_flow_options(options) -> None:
    """Raise ClickException unless the flow table settings are usable, before any capture is read."""
    from engine.features.kernels import MAX_PROBE
    from engine.flows.table import MAX_CAPACITY

    for name in ("idle_timeout_s", "active_timeout_s"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT_S:
            raise click.ClickException(
                f"invalid {name} {value!r}; expected seconds > 0 and at most {MAX_TIMEOUT_S:.0f}"
            )
    capacity = options.flow_capacity
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not 1 <= capacity <= MAX_CAPACITY:
        raise click.ClickException(f"invalid flow_capacity {capacity!r}; expected an integer from 1 to {MAX_CAPACITY}")
    # WindowFeatures probes MAX_PROBE slots with a power-of-two mask.
    window_capacity = options.window_capacity
    if (
        isinstance(window_capacity, bool)
        or not isinstance(window_capacity, int)
        or window_capacity < MAX_PROBE
        or window_capacity & (window_capacity - 1)
    ):
        raise click.ClickException(
            f"invalid window_capacity {window_capacity!r}; expected a power of two of at least {MAX_PROBE}"
        )


def build_alert_config(config: dict, sink_options: dict):
    from engine.alerts.commands import alert_config_from_options
    from engine.alerts.config import AlertConfig

    check_alert_tables(config.get("alerts", {}))
    try:
        base = AlertConfig.from_mapping(config.get("alerts", {}))
    except (TypeError, ValueError) as error:
        raise click.ClickException(f"invalid [alerts] configuration: {error}") from error
    if not sink_options.get("sensor_id") and base.sensor_id == AlertConfig().sensor_id:
        sink_options = dict(sink_options, sensor_id=socket.gethostname() or base.sensor_id)
    return alert_config_from_options(sink_options, base=base)


def _field_names(options_class) -> list[str]:
    return sorted(item.name for item in dataclasses.fields(options_class))


def check_alert_tables(table) -> None:
    """Raise ClickException unless every key of [alerts] and of its sub-tables names a setting.

    AlertConfig.from_mapping passes the keys to dataclass constructors, whose
    TypeError names Python internals instead of the setting and section.
    """
    from engine.alerts.config import AggregationConfig, AlertConfig, RateLimitConfig, SuppressionRule

    sub_tables = {"aggregation": AggregationConfig, "rate_limits": RateLimitConfig}
    for name in table:
        if name in _field_names(AlertConfig):
            continue
        for sub_name, sub_class in sub_tables.items():
            if name in _field_names(sub_class):
                raise click.ClickException(
                    f"invalid configuration key [alerts] {name}; it is a setting of [alerts.{sub_name}], so move it there"
                )
        raise click.ClickException(
            f"invalid configuration key [alerts] {name}; expected one of: {', '.join(_field_names(AlertConfig))}"
        )
    for sub_name, sub_class in sub_tables.items():
        sub_table = table.get(sub_name, {})
        if not isinstance(sub_table, dict):
            raise click.ClickException(
                f"invalid configuration: alerts.{sub_name} = {sub_table!r} is not a table;"
                f" write it as an [alerts.{sub_name}] section"
            )
        for name in sub_table:
            if name not in _field_names(sub_class):
                raise click.ClickException(
                    f"invalid configuration key [alerts.{sub_name}] {name};"
                    f" expected one of: {', '.join(_field_names(sub_class))}"
                )
    rules = table.get("suppression", [])
    if not isinstance(rules, list) or not all(isinstance(rule, dict) for rule in rules):
        raise click.ClickException(
            "invalid configuration: alerts.suppression must be an array of tables; write each rule as [[alerts.suppression]]"
        )
    for rule in rules:
        for name in rule:
            if name not in _field_names(SuppressionRule):
                raise click.ClickException(
                    f"invalid configuration key [[alerts.suppression]] {name};"
                    f" expected one of: {', '.join(_field_names(SuppressionRule))}"
                )


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
    """Format one alert for the console: seq, severity, category, technique, hosts and summary."""
    technique = f" {alert.technique}" if alert.technique else ""
    hosts = ""
    if alert.src.ip and alert.src.ip not in alert.summary:
        hosts = alert.src.ip
        if alert.dst.ip and alert.dst.port:
            # IPv6 addresses take brackets, so the port is not read as their last group.
            address = f"[{alert.dst.ip}]" if ":" in alert.dst.ip else alert.dst.ip
            hosts += f" -> {address}:{alert.dst.port}"
        elif alert.dst.ip:
            hosts += f" -> {alert.dst.ip}"
        hosts += ": "
    return f"[{alert.seq}] {alert.severity.upper():8} {alert.category}{technique}: {hosts}{alert.summary}"


@click.command("analyze")
@click.argument("captures", nargs=-1, type=click.Path(allow_dash=True))
@click.option("--store", "store_path", type=click.Path(dir_okay=False),
              help="SQLite store for alerts and run statistics [default: $WARDWATCH_STORE or ./wardwatch.db].")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False),
              help="Model file to score with [default: the shipped model].")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML configuration with [analyze], [rules] and [alerts] sections.")
@click.option("--batch-size", default=8192, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Packets per batch.")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True, max=MAX_TIMEOUT_S),
              help="Flow idle timeout, seconds [default: 120].")
@click.option("--active-timeout", type=click.FloatRange(min=0, min_open=True, max=MAX_TIMEOUT_S),
              help="Flow active timeout, seconds [default: 1800].")
@click.option("--quiet", "-q", is_flag=True, help="Print only the closing summary, not each alert.")
@click.option("--no-inspect", is_flag=True,
              help="Skip protocol inspection (assets, findings, exploit checks, access policy, login records).")
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False),
              help="Access-policy TOML file (zones, clinical assets, registered HL7 senders).")
@click.option("--linger", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to keep the bus and replay socket open after the last capture, "
                   "so late subscribers can fetch what they missed.")
@click.option("--force", is_flag=True,
              help="Analyse a capture even if this store has analysed a file with the same content before; "
                   "its alerts are stored again (its traffic logins are not).")
@alert_sink_options
def analyze_command(captures, store_path, model_path, config_path, batch_size, idle_timeout, active_timeout,
                    quiet, no_inspect, policy_path, linger, force, **sink_options):
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
    if captures.count("-") > 1:
        raise click.UsageError("standard input (-) can be read only once; give - as one CAPTURE at most")

    config = load_config(config_path)
    options = build_options(config, idle_timeout, active_timeout)
    alert_config = build_alert_config(config, sink_options)
    try:
        model = load_model(model_path)
    except ModelFileError as error:
        raise click.ClickException(str(error)) from error
    policy = None
    if policy_path:
        from engine.policy.config import PolicyError, load_policy

        try:
            policy = load_policy(policy_path)
        except PolicyError as error:
            raise click.ClickException(str(error)) from error

    capture_log = CaptureLog(store_path, captures, force)

    status = StatusLine()
    published = Counter()
    failures = 0
    started = time.monotonic()
    total_packets = 0

    def record(alerts):
        for alert in alerts:
            # Count and print alerts, not publications: updates of an
            # aggregated alert go to the store and the bus, and the closing
            # summary gives the totals.
            if alert.revision != 1:
                continue
            published[(alert.severity, alert.category)] += 1
            if not quiet:
                status.clear()
                click.echo(format_alert_line(alert))

    stop = StopRequest()

    def record_all(sink, alerts):
        with stop.sink_call():
            for alert in alerts:
                record(sink.submit(alert))

    def emit(sink, detections):
        with stop.sink_call():
            for detection in detections:
                record(sink.submit(alert_from_detection(detection, alert_config.sensor_id)))

    try:
        sink = AlertSink(store_path, alert_config).open()
    except Exception as error:  # zmq.ZMQError on a bound port, sqlite3 errors, OSError
        capture_log.close()
        raise click.ClickException(f"cannot open the alert outputs: {error}") from error
    inspection = None
    try:
        if sink.bus_endpoint:
            click.echo(f"Publishing alerts on {sink.bus_endpoint} (replay {sink.replay_endpoint})", err=True)
        if not no_inspect:
            inspection = InspectionStage(sink.store_path, policy, alert_config)
        stop.install()
        for capture in captures:
            published.clear()
            inspector = inspection.new_inspector() if inspection else None
            if inspection is not None:
                digest = capture_log.digests.get(capture)
                inspection.capture_key = digest[0][:16] if digest else None
            try:
                pipeline = Pipeline(model, options, inspector, keep_empty_flows=inspector is not None)
            except MemoryError as error:
                raise click.ClickException(
                    f"cannot allocate the flow and window tables (flow_capacity {options.flow_capacity:,}, "
                    f"window_capacity {options.window_capacity:,}): not enough memory; lower them in the "
                    "[analyze] configuration"
                ) from error
            run = RunStats(sensor_id=alert_config.sensor_id, source=os.path.abspath(capture) if capture != "-" else "-")
            reader_stats = {}
            capture_failed = False
            try:
                with open_capture(capture, batch_size=batch_size) as reader:
                    for batch in reader:
                        emit(sink, pipeline.process(batch.packets, batch.data))
                        if inspection is not None:
                            results = inspection.on_results(pipeline.drain_inspections(), pipeline.drain_empty_flows())
                            record_all(sink, results)
                        if pipeline.last_packet_ns is not None:
                            with stop.sink_call():
                                record(sink.expire(pipeline.last_packet_ns / 1e9))
                        status.update(
                            f"{capture}: {pipeline.counters['packets']:,} packets, "
                            f"{pipeline.counters['flows']:,} flows ended, {sum(published.values())} alerts"
                        )
                        if stop.requested:
                            raise KeyboardInterrupt
                    reader_stats = dict(reader.stats)
            except CaptureError as error:
                failures += 1
                capture_failed = True
                status.clear()
                click.echo(f"error: {error}", err=True)
            except KeyboardInterrupt:
                stop.requested = True
                capture_failed = True
                status.clear()
                click.echo(f"interrupted: finishing the {pipeline.counters['packets']:,} packets read from "
                           f"{capture} and storing their alerts", err=True)
            emit(sink, pipeline.finish())
            if inspection is not None:
                record_all(sink, inspection.on_results(pipeline.drain_inspections(), pipeline.drain_empty_flows()))
                record_all(sink, inspection.finish_capture())
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
            if not capture_failed:
                capture_log.record(capture, run.run_id)
            print_summary(capture, pipeline, anomalies, published)
            if stop.requested:
                break
        # The rate covers the analysis, not the time the bus lingers after it.
        elapsed = time.monotonic() - started
        if linger and sink.bus_endpoint and not stop.requested:
            click.echo(f"Serving the bus and replay for {linger:g} s", err=True)
            time.sleep(linger)
    finally:
        stop.restore()
        sink.close()
        capture_log.close()
        if inspection is not None:
            inspection.close()

    rate = total_packets / elapsed if elapsed > 0 else 0.0
    click.echo(f"{total_packets:,} packets in {elapsed:.2f} s ({rate:,.0f} packets/s)")
    if stop.requested:
        click.echo("analysis interrupted: later captures and the rest of this one were not read", err=True)
        sys.exit(StopRequest.EXIT_CODE)
    if failures:
        sys.exit(1)


class CaptureLog:
    """Reject captures that this store has analysed before, and record those analysed now.

    The check runs before the first capture is read, so a rejected command
    stores nothing. Standard input, named pipes and devices cannot be hashed
    ahead of reading, so only regular files are checked and recorded.
    """

    def __init__(self, store_path, captures, force: bool):
        from engine.analyze import capture_log
        from engine.store import check_store_tables, default_store_path, open_store

        self.path = store_path or default_store_path()
        if os.path.isfile(self.path):
            # Opening for writing alone would switch another application's
            # SQLite file to WAL mode, so such a file is rejected first.
            reader = open_store(self.path, read_only=True)
            try:
                check_store_tables(reader, self.path, {})
            finally:
                reader.close()
        self.conn = open_store(self.path)
        capture_log.ensure_schema(self.conn)
        self.digests: dict[str, tuple[str, int]] = {}
        first_with_digest: dict[str, str] = {}
        for capture in captures:
            # Only a regular file can be read twice: hashing a named pipe or
            # a device would consume its packets or wait for a writer.
            if capture == "-" or not os.path.isfile(capture):
                continue
            try:
                digest, size_bytes = capture_log.file_sha256(capture)
            except OSError:
                continue  # reading the capture reports the error
            self.digests[capture] = (digest, size_bytes)
            if force:
                continue
            earlier = capture_log.find_analysed(self.conn, digest)
            if earlier is not None:
                self.close()
                raise click.ClickException(
                    f"store {self.path} already contains the alerts of {capture}: a file with the same content was"
                    f" analysed on {earlier.describe()}; pass --force to analyse it again and store its alerts"
                    " twice, or pass another --store"
                )
            if digest in first_with_digest:
                self.close()
                raise click.ClickException(
                    f"{capture} has the same content as {first_with_digest[digest]}; give each capture once,"
                    " or pass --force to store its alerts twice"
                )
            first_with_digest[digest] = capture

    def record(self, capture: str, run_id: str) -> None:
        """Record a capture that was read to its end in the run `run_id`."""
        from engine.analyze import capture_log

        if capture not in self.digests:
            return
        digest, size_bytes = self.digests[capture]
        capture_log.record_analysed(self.conn, digest, size_bytes, run_id, os.path.abspath(capture))

    def close(self) -> None:
        self.conn.close()


class InspectionStage:
    """Feed protocol inspection results to the inventory, findings, access policy and login analytics."""

    def __init__(self, store_path, policy, alert_config):
        from engine.assets.inventory import Inventory
        from engine.policy.access import AccessMonitor
        from engine.policy.config import Policy
        from engine.policy.exploits import Log4ShellCallbacks
        from engine.policy.zones import ZoneMap
        from engine.store import open_store

        self.conn = open_store(store_path)
        self.store_path = store_path
        self.alert_config = alert_config
        self.policy = policy or Policy()
        self.zones = ZoneMap(self.policy.zones)
        self.inventory = Inventory(self.conn)
        self.access = AccessMonitor(self.policy, self.zones, self.conn, roles_of=self.inventory.roles)
        self.callbacks = Log4ShellCallbacks()
        self.login_records: list = []
        # The current capture's digest prefix (None for standard input). It
        # goes into traffic login origins, so the store's UNIQUE (origin,
        # line_no) keeps a capture analysed again with --force from storing
        # its logins twice, and flow ids of different captures never clash.
        self.capture_key: str | None = None
        self.user_pseudonymizer = None  # made from user_key_file() at the first login record
        self.counters = Counter()
        # Finding aggregation key -> capture time it was last reported.
        self.findings_reported: OrderedDict = OrderedDict()

    def new_inspector(self):
        from engine.inspect.inspector import Inspector

        return Inspector()

    def on_results(self, results, ended_flows=None) -> list:
        """Update assets and return finding and policy alerts for a list of flow inspections.

        `ended_flows` are FLOW_DTYPE records of flows that ended in the same
        batch. The Log4Shell callback check reads those without payload,
        because a refused or unanswered callback has no inspection result.
        """
        callback_alerts = []
        if ended_flows is not None and ended_flows.size:
            callback_alerts = self.callbacks.observe_flows(ended_flows)
        if not results:
            return callback_alerts
        from engine.inspect.pipeline import analyse

        output = analyse(results, self.zones, self.access, self.inventory, self.callbacks)
        self.counters["flows_inspected"] += len(output.results)
        if output.logins:
            from engine.logins.ingest import ingest_records

            self._pseudonymise_users(output.logins)
            self._number_logins(output.logins)
            self.login_records += ingest_records(self.conn, output.logins)
        alerts = [alert for alert in output.alerts if not self._repeated_finding(alert)]
        return alerts + callback_alerts

    def _number_logins(self, records) -> None:
        """Give traffic login records a capture-scoped origin and their order within the flow."""
        if self.capture_key is None:
            return
        seen: Counter = Counter()
        for record in records:
            record.origin = f"{self.capture_key}:{record.origin}"
            record.line_no = seen[record.origin]
            seen[record.origin] += 1

    def _pseudonymise_users(self, records) -> None:
        """Replace each record's user name by its keyed pseudonym before it is stored.

        The store then contains no account name from traffic, in
        login_records or in login_baselines. A user keeps one pseudonym
        across runs because the key is the operator's or the one kept beside
        the store.
        """
        if self.user_pseudonymizer is None:
            from engine.privacy import Pseudonymizer

            self.user_pseudonymizer = Pseudonymizer.from_key_file(self.user_key_file())
        for record in records:
            if record.user is not None:
                record.user = self.user_pseudonymizer.text(record.user, "user")

    def _repeated_finding(self, alert) -> bool:
        """Return True for a finding already reported within FINDING_REPEAT_S of capture time.

        A finding is a standing fact (this broker takes clients without
        credentials), so each reconnect of a device must not open a new
        alert once the previous one has closed.
        """
        if alert.kind != "finding" or not alert.aggregation_key:
            return False
        reported_at = self.findings_reported.get(alert.aggregation_key)
        if reported_at is not None and alert.last_seen - reported_at < FINDING_REPEAT_S:
            self.counters["findings_repeated"] += 1
            return True
        self.findings_reported[alert.aggregation_key] = alert.last_seen
        self.findings_reported.move_to_end(alert.aggregation_key)
        while len(self.findings_reported) > MAX_FINDING_KEYS:
            self.findings_reported.popitem(last=False)
        return False

    def finish_capture(self) -> list:
        """Run the login analytics on the login records seen in traffic; return their alerts."""
        records, self.login_records = self.login_records, []
        if not records:
            return []
        from engine.logins.detect import DetectionConfig
        from engine.logins.pipeline import Privacy
        from engine.logins.pipeline import analyse as analyse_logins

        privacy = Privacy.create(self.user_key_file(), show_usernames=False)
        self.counters["login_records"] += len(records)
        return analyse_logins(self.conn, records, DetectionConfig(), privacy.builder(self.alert_config.sensor_id))

    def user_key_file(self) -> str:
        """Return the key that pseudonymises user names: the operator's, or one kept beside the store.

        A key kept with the store makes a user's pseudonym the same in every
        run against that store, so analysts can follow one account.
        """
        if self.alert_config.pseudonymize_key_file:
            return self.alert_config.pseudonymize_key_file
        from engine.privacy import generate_key_file

        path = os.path.abspath(self.store_path) + ".userkey"
        try:
            generate_key_file(path)
        except FileExistsError:
            pass  # the store's key from an earlier run
        return path

    def close(self):
        self.conn.close()


class StopRequest:
    """Ctrl-C or SIGTERM during an analysis: stop reading, then finish what was read.

    The flows read so far are scored and their alerts stored and published,
    as a capture that ends there would be. The signal interrupts the
    reading and the pipeline (a blocked read of a pipe included), but never
    a call into the alert sink: one that arrives there is acted on when the
    call returns.
    """

    EXIT_CODE = 130

    def __init__(self):
        self.requested = False
        self._sink_calls = 0
        self._previous = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._on_signal)

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _on_signal(self, number, frame) -> None:
        first = not self.requested
        self.requested = True
        if first and self._sink_calls == 0:
            raise KeyboardInterrupt

    @contextmanager
    def sink_call(self):
        self._sink_calls += 1
        try:
            yield
        finally:
            self._sink_calls -= 1


def print_summary(capture, pipeline, anomalies, published):
    stats = pipeline.stats
    click.echo(f"--- {capture}")
    click.echo(
        f"packets {stats.get('packets', 0):,}  wire bytes {stats.get('bytes', 0):,}  "
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

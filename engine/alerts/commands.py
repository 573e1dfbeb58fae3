"""CLI commands: `alerts list|show|tail`, `keys generate` and `collect`.

Also alert_sink_options and alert_config_from_options, which a producer
command (analyze) uses to take the same bus, output and privacy options.

Exit codes: 0 success; 1 the command failed (store not found, replay request
timed out, bind failed); 2 usage error (Click); 3 `alerts show` found no
such alert.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import signal
import sys

import click

from engine.store import default_store_path
from engine.taxonomy import ALERT_CATEGORIES

EXIT_NOT_FOUND = 3


def _store_option(function):
    return click.option(
        "--store", "store_path", type=click.Path(dir_okay=False), default=None,
        help="SQLite store to read (default: $WARDWATCH_STORE or ./wardwatch.db).",
    )(function)


def _curve_client_options(function):
    function = click.option(
        "--curve-server-key", type=click.Path(exists=True, dir_okay=False), default=None,
        help="The server's public certificate (NAME.key) to connect with CURVE.",
    )(function)
    return click.option(
        "--curve-secret", type=click.Path(exists=True, dir_okay=False), default=None,
        help="This client's secret certificate (NAME.key_secret) for CURVE.",
    )(function)


def _curve_client_keys(curve_secret, curve_server_key):
    from engine.alerts.bus import CurveClientKeys

    if (curve_secret is None) != (curve_server_key is None):
        raise click.UsageError("CURVE needs both --curve-secret and --curve-server-key")
    if curve_secret is None:
        return None
    return CurveClientKeys(curve_secret, curve_server_key)


def _open_existing_store(store_path):
    """Open the store read-only; return it, or None when it has no alert tables yet."""
    from engine.alerts.store import READ_COLUMNS, AlertStore
    from engine.store import check_store_tables

    path = store_path or default_store_path()
    if not os.path.isfile(path):
        raise click.ClickException(f"store {path} not found; pass --store PATH or run `wardwatch analyze` first")
    store = AlertStore(path, read_only=True)
    try:
        missing = check_store_tables(store.conn, path, READ_COLUMNS)
    except BaseException:
        store.close()
        raise
    if missing:
        store.close()
        click.echo(f"store {path} has no alerts yet", err=True)
        return None
    return store


def _format_time(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _format_endpoint(endpoint) -> str:
    address = endpoint.ip or "-"
    if endpoint.port is None:
        return address
    # Brackets keep an IPv6 address apart from its port (RFC 3986 style).
    if ":" in address:
        return f"[{address}]:{endpoint.port}"
    return f"{address}:{endpoint.port}"


def format_alert_line(alert) -> str:
    """Return the one-line text form of an alert used by list and tail."""
    source = _format_endpoint(alert.src)
    target = _format_endpoint(alert.dst)
    if alert.distinct_targets > 1:
        target += f" (+{alert.distinct_targets - 1} more)"
    return (
        f"{alert.seq or 0:>6} {_format_time(alert.last_seen)} {alert.severity:<8} {alert.category:<18}"
        f" {alert.technique or '-':<10} {source} -> {target} x{alert.count} r{alert.revision}"
        f" [{alert.state}] {alert.summary}"
    )


def _parse_since_time(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise click.BadParameter(f"invalid time {value!r}; expected a finite number of seconds since the epoch")
        return seconds
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"invalid time {value!r}; expected seconds since the epoch or ISO 8601 such as 2026-01-31T12:00:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


@click.group("alerts")
def alerts():
    """Read alerts from the store or follow them on the bus."""


@alerts.command("list")
@_store_option
@click.option("--since", default=None, help="Only alerts last seen at or after this capture time (epoch seconds or ISO 8601, UTC).")
@click.option("--severity", type=click.Choice(["info", "low", "medium", "high", "critical"]), default=None,
              help="Minimum severity.")
@click.option("--category", type=click.Choice(ALERT_CATEGORIES), default=None,
              help="Only this category, e.g. scan or bruteforce.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many alerts.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of text.")
def list_alerts(store_path, since, severity, category, limit, as_json):
    """List current alerts, most recent first."""
    since_time = _parse_since_time(since)
    store = _open_existing_store(store_path)
    if store is None:
        return
    with store:
        for alert in store.list_alerts(since_time, severity, category, limit):
            click.echo(json.dumps(alert.to_dict()) if as_json else format_alert_line(alert))


@alerts.command("show")
@_store_option
@click.argument("alert_id_or_seq")
def show_alert(store_path, alert_id_or_seq):
    """Print one alert as JSON: by id (latest revision) or by the seq of one publication."""
    store = _open_existing_store(store_path)
    alert = None
    if store is not None:
        with store:
            alert = store.get_alert(alert_id_or_seq)
    if alert is None:
        click.echo(f"no alert with id or seq {alert_id_or_seq!r}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    click.echo(json.dumps(alert.to_dict(), indent=2))


@alerts.command("tail")
@click.option("--connect", "connect", multiple=True, required=True, help="Bus endpoint to subscribe to; repeat for several sensors.")
@click.option("--topic", "topics", multiple=True, help="Topic prefix such as alert.high. or alert.high.scan; repeatable (default: all alerts).")
@click.option("--since", type=click.IntRange(min=0), default=None,
              help="Last seq already received; print every publication after it, then follow live ones (needs --replay).")
@click.option("--stream", "since_stream", default=None,
              help="Stream id that --since counts in (the stream_id of the last alert received); a sensor that"
                   " now serves another stream is printed from seq 1.")
@click.option("--replay", "replay", multiple=True, help="Replay endpoint of a sensor, to fill seq gaps; repeatable.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of text.")
@click.option("--max-alerts", type=click.IntRange(min=1), default=None, help="Exit after printing this many alerts.")
@click.option("--idle-exit-s", type=click.FloatRange(min=0.1), default=None, help="Exit after this many seconds without an alert.")
@_curve_client_options
def tail_alerts(connect, topics, since, since_stream, replay, as_json, max_alerts, idle_exit_s, curve_secret,
                curve_server_key):
    """Subscribe to the alert bus and print every publication once, in seq order per sensor stream.

    An aggregated alert is published again when it grows or closes, and each
    of these revisions has its own seq and line (rN in the text line, the
    revision field in JSON). Seq gaps are filled from --replay. Seqs count
    per stream (one per sensor store, the stream_id field in JSON), so two
    sensors with one sensor id, or a sensor restarted with a new store, are
    followed apart.
    """
    from engine.alerts.bus import GapFillingSubscriber, MalformedAlert, ReplayError, count_malformed, decode_alert_body

    if since is not None and not replay:
        raise click.UsageError("--since needs --replay ENDPOINT to fetch what was missed")
    if since_stream is not None and since is None:
        raise click.UsageError("--stream names the stream of --since; pass --since SEQ too")
    try:
        subscriber = GapFillingSubscriber(
            list(connect), topics=list(topics) or None, replay=list(replay), since=since,
            curve=_curve_client_keys(curve_secret, curve_server_key), since_stream=since_stream,
        )
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    printed = 0
    try:
        subscriber.start()
        for (sensor_id, stream_id), last_seq in subscriber.since_ahead.items():
            click.echo(
                f"warning: --since {since} is ahead of sensor {sensor_id}, whose last seq is {last_seq} in"
                f" stream {stream_id or '(none)'}; printing its publications from seq {last_seq + 1} on. If its"
                " store was replaced, run again with --since 0 to print everything it stored.",
                err=True,
            )
        while max_alerts is None or printed < max_alerts:
            received = subscriber.receive(timeout_s=idle_exit_s)
            if received is None:
                break
            if received.seq is None:
                continue
            try:
                alert = decode_alert_body(received.body)
            except MalformedAlert as error:
                count_malformed(subscriber.counters, received.topic, error)
                continue
            click.echo(json.dumps(alert.to_dict()) if as_json else format_alert_line(alert))
            sys.stdout.flush()
            printed += 1
    except ReplayError as error:
        raise click.ClickException(str(error)) from error
    except KeyboardInterrupt:
        pass
    finally:
        subscriber.close()
    if subscriber.counters["gaps_unfilled"]:
        click.echo(f"warning: {subscriber.counters['gaps_unfilled']} alerts were missed and could not be replayed", err=True)
    if subscriber.counters["malformed"]:
        click.echo(f"warning: skipped {subscriber.counters['malformed']} malformed messages", err=True)


@click.group("keys")
def keys():
    """Create CURVE certificates and the pseudonymization key."""


@keys.command("generate")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Directory for the key files (created if missing).")
@click.option("--name", default="server", show_default=True, help="Certificate name: writes NAME.key (public) and NAME.key_secret.")
@click.option("--pseudonymization-key", is_flag=True, help="Also write pseudonymization.key for --pseudonymize.")
@click.option("--no-curve", is_flag=True,
              help="Write no CURVE key pair: with --pseudonymization-key, add only that key to a key directory.")
def generate_keys(out_dir, name, pseudonymization_key, no_curve):
    """Write a CURVE key pair in ZeroMQ certificate format (zmq.auth), and the pseudonymization key on request."""
    import zmq.auth

    from engine.privacy import KEY_FILE_NAME, generate_key_file

    if no_curve and not pseudonymization_key:
        raise click.UsageError("--no-curve writes nothing without --pseudonymization-key")
    if not name or os.sep in name or name in (".", ".."):
        raise click.BadParameter(f"invalid name {name!r}; expected a file name without {os.sep}", param_hint="--name")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise click.ClickException(f"cannot create key directory {out_dir}: {error.strerror}") from error
    if not no_curve:
        public_path = os.path.join(out_dir, f"{name}.key")
        secret_path = public_path + "_secret"
        for path in (public_path, secret_path):
            if os.path.exists(path):
                raise click.ClickException(
                    f"{path} already exists; choose another --name or --out, or give --no-curve to add only "
                    "the pseudonymization key"
                )
        # zmq.auth writes with the process umask, so without this the secret
        # key would be readable by others until the chmod below.
        previous_umask = os.umask(0o077)
        try:
            public_file, secret_file = zmq.auth.create_certificates(out_dir, name)
        finally:
            os.umask(previous_umask)
        os.chmod(secret_file, 0o600)
        os.chmod(public_file, 0o644)
        click.echo(f"public certificate: {public_file}")
        click.echo(f"secret certificate: {secret_file}")
    if pseudonymization_key:
        key_path = os.path.join(out_dir, KEY_FILE_NAME)
        try:
            generate_key_file(key_path)
        except FileExistsError:
            raise click.ClickException(
                f"{key_path} already exists; keep it, because a new key changes every pseudonym"
            ) from None
        click.echo(f"pseudonymization key: {key_path}")


@click.command("collect")
@click.option("--connect", "connect", multiple=True, required=True, help="A sensor's bus endpoint; repeat for each sensor.")
@click.option("--replay", "replay", multiple=True, help="A sensor's replay endpoint, to fill gaps; repeatable.")
@click.option("--store", "store_path", type=click.Path(dir_okay=False), required=True, help="Merged SQLite store to write.")
@click.option("--bind", default=None, help="Endpoint on which to re-publish the merged bus, e.g. tcp://127.0.0.1:5566.")
@click.option("--idle-exit-s", type=click.FloatRange(min=0.1), default=None, help="Exit after this many seconds without a message.")
@_curve_client_options
@click.option("--curve-server-secret", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Secret certificate to serve --bind with CURVE.")
@click.option("--curve-allow", type=click.Path(exists=True, file_okay=False), default=None,
              help="Directory of client public certificates allowed on --bind.")
def collect(connect, replay, store_path, bind, idle_exit_s, curve_secret, curve_server_key,
            curve_server_secret, curve_allow):
    """Merge several sensors' alert buses into one store (and one bus with --bind)."""
    from engine.alerts.collector import Collector

    try:
        collector = Collector(
            list(connect), store_path, bind=bind, replay=list(replay),
            curve=_curve_client_keys(curve_secret, curve_server_key),
            curve_server_secret=curve_server_secret, curve_allow_dir=curve_allow,
        )
    except (OSError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    signal.signal(signal.SIGTERM, lambda *_: collector.stop())
    if collector.endpoint:
        click.echo(f"re-publishing on {collector.endpoint}", err=True)
    try:
        collector.run(idle_timeout_s=idle_exit_s)
    except KeyboardInterrupt:
        pass
    finally:
        counters = dict(collector.counters)
        collector.close()
    click.echo(f"stored {counters.get('stored', 0)} alerts, {counters.get('replayed', 0)} replayed,"
               f" {counters.get('gaps_unfilled', 0)} missed, {counters.get('malformed', 0)} malformed skipped",
               err=True)


def alert_sink_options(function):
    """Add the alert sink's options (bus, replay, CURVE, outputs, privacy) to a producer command."""
    options = [
        click.option("--sensor-id", default=None, help="Name of this sensor in every alert (default: host name)."),
        click.option("--bus", "bus_endpoint", default=None, help="PUB endpoint to bind (default: tcp://127.0.0.1:5556)."),
        click.option("--replay-bind", "replay_endpoint", default=None, help="Replay endpoint to bind (default: tcp://127.0.0.1:5557)."),
        click.option("--no-bus", is_flag=True, help="Do not open the bus or the replay socket."),
        click.option("--curve-server-secret", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Secret certificate (NAME.key_secret) to serve the bus with CURVE. Without"
                          " --curve-allow, any client key is accepted."),
        click.option("--curve-allow", type=click.Path(exists=True, file_okay=False), default=None,
                     help="Directory of client public certificates allowed to connect."),
        click.option("--eve", "eve_path", type=click.Path(dir_okay=False), default=None, help="Append EVE/ECS JSON lines to this file."),
        click.option("--cef", "cef_target", default=None, help="Send CEF over syslog to udp://HOST:PORT or tcp://HOST:PORT."),
        click.option("--cef-format", type=click.Choice(["rfc5424", "rfc3164"]), default="rfc5424", show_default=True,
                     help="Syslog header format for --cef."),
        click.option("--pseudonymize", "pseudonymize_key_file", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Key file: replace addresses and user names with keyed pseudonyms."),
        click.option("--include-evidence", is_flag=True, help="Keep payload bytes and patient fields in alert evidence."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


# Parameter names that alert_sink_options adds, so a producer command can
# separate them from its own options.
ALERT_SINK_OPTION_NAMES = (
    "sensor_id", "bus_endpoint", "replay_endpoint", "no_bus", "curve_server_secret", "curve_allow",
    "eve_path", "cef_target", "cef_format", "pseudonymize_key_file", "include_evidence",
)


def alert_config_from_options(options: dict, base=None):
    """Build an AlertConfig from the values of alert_sink_options (other keys are ignored)."""
    import socket

    from engine.alerts.config import AlertConfig

    config = base or AlertConfig()
    if options.get("sensor_id"):
        config.sensor_id = options["sensor_id"]
    elif base is None:
        config.sensor_id = socket.gethostname() or "sensor"
    if options.get("bus_endpoint"):
        config.bus_endpoint = options["bus_endpoint"]
    if options.get("replay_endpoint"):
        config.replay_endpoint = options["replay_endpoint"]
    if options.get("no_bus"):
        config.bus_endpoint = None
        config.replay_endpoint = None
    config.curve_server_secret = options.get("curve_server_secret") or config.curve_server_secret
    config.curve_allow_dir = options.get("curve_allow") or config.curve_allow_dir
    config.eve_path = options.get("eve_path") or config.eve_path
    config.cef_target = options.get("cef_target") or config.cef_target
    config.cef_format = options.get("cef_format") or config.cef_format
    config.pseudonymize_key_file = options.get("pseudonymize_key_file") or config.pseudonymize_key_file
    config.include_evidence = bool(options.get("include_evidence")) or config.include_evidence
    try:
        config.validate()
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    return config

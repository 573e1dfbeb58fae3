"""`wardwatch logins`: read authentication and audit logs, learn baselines, report alerts.

  wardwatch logins ingest FILE...    read what is new in each file, detect, publish alerts
  wardwatch logins baseline          relearn baselines from stored records of a period
  wardwatch logins detect            run the rules again on stored records of a period

Exit codes: 0 success, 1 a file or configuration could not be read, 2 usage error.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

import click

from engine.store import check_store_tables, default_store_path, open_store

log = logging.getLogger(__name__)

FORMAT_CHOICES = ("auto", "syslog", "journald", "journald-json", "windows", "ehr")


def _parse_time(value: str | None, option: str) -> float | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"invalid time {value!r}; expected ISO 8601 such as 2026-11-01T00:00:00Z",
                                 param_hint=option) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _privacy_options(function):
    function = click.option("--pseudonymize", "key_file", type=click.Path(exists=True, dir_okay=False),
                            help="Key file for keyed pseudonyms of user names (and, in the alert sink, addresses).")(function)
    function = click.option("--show-usernames", is_flag=True,
                            help="Show user names in alerts as logged instead of pseudonyms.")(function)
    function = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                            help="TOML file whose [logins] table sets rule thresholds and change windows.")(function)
    function = click.option("--bus", "bus_endpoint", default=None, callback=_check_bus_endpoint,
                            help="ZeroMQ PUB endpoint to publish alerts on, e.g. tcp://127.0.0.1:5556 (default: store only).")(function)
    function = click.option("--json", "as_json", is_flag=True, help="Print alerts as JSON lines.")(function)
    function = click.option("--store", "store_path", default=None, type=click.Path(dir_okay=False),
                            help="SQLite store (default: $WARDWATCH_STORE or wardwatch.db).")(function)
    return function


def _check_bus_endpoint(ctx, param, value):
    # Checked before reading any log: ingest commits records before it
    # publishes, so a bad endpoint found then would lose their alerts.
    from engine.alerts.config import check_endpoint

    if value is None:
        return None
    try:
        return check_endpoint(value, bind=True)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


def _load_common(config_path, key_file, show_usernames):
    from engine.logins.detect import load_config
    from engine.logins.pipeline import Privacy

    try:
        config = load_config(config_path)
        privacy = Privacy.create(key_file, show_usernames)
    except (OSError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    return config, privacy


def _print_alerts(alerts, as_json: bool) -> None:
    for alert in alerts:
        if as_json:
            click.echo(json.dumps(alert.to_dict(), sort_keys=True, default=str))
        else:
            when = datetime.fromtimestamp(alert.first_seen, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            click.echo(f"{when} {alert.severity:<8} {alert.category:<18} {alert.technique or '-':<10} {alert.summary}")


def _publish(store_path, alerts, privacy, bus_endpoint, as_json):
    from engine.logins.pipeline import publish_alerts

    published = publish_alerts(store_path, alerts, privacy, bus_endpoint=bus_endpoint)
    _print_alerts(published, as_json)


@click.group("logins")
def logins():
    """Login records and user-behaviour analytics."""


@logins.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "log_format", type=click.Choice(FORMAT_CHOICES), default="auto", show_default=True,
              help="Log format; auto tells syslog, journald export/JSON and Windows JSON apart (EHR needs 'ehr').")
@click.option("--mapping", type=click.Path(exists=True, dir_okay=False),
              help="Column mapping TOML file for EHR audit logs.")
# Both ranges keep every timestamp within what a datetime can hold: years 1
# to 9999 and a UTC offset under 24 hours. The year stops at 9998 because a
# log that passes December continues into the next year.
@click.option("--year", type=click.IntRange(1970, 9998), default=None,
              help="Year of BSD syslog timestamps, which carry none (default: from the file's modification time).")
@click.option("--utc-offset-min", type=click.IntRange(-1439, 1439), default=0, show_default=True,
              help="Offset of BSD syslog local time from UTC, in minutes.")
@click.option("--wait-for-newline", is_flag=True,
              help="Leave a last line without a newline for the next run (for files still being written).")
@click.option("--no-detect", is_flag=True, help="Only store records; run no rules.")
@click.option("--no-learn", is_flag=True, help="Do not add the new logons to the baselines.")
@_privacy_options
def ingest(paths, log_format, mapping, year, utc_offset_min, wait_for_newline, no_detect, no_learn,
           store_path, as_json, bus_endpoint, config_path, show_usernames, key_file):
    """Read what is new in each log file into the store, then detect and publish alerts."""
    from engine.logins import storage
    from engine.logins.ehr import ColumnMapping
    from engine.logins.ingest import IngestOptions, ingest_file
    from engine.logins.pipeline import analyse

    config, privacy = _load_common(config_path, key_file, show_usernames)
    if log_format == "ehr" and key_file is None:
        raise click.UsageError("EHR audit logs need --pseudonymize KEYFILE: patient references are stored as keyed hashes")
    try:
        column_mapping = ColumnMapping.load(mapping) if mapping else None
        options = IngestOptions(format=log_format, year=year, utc_offset_s=utc_offset_min * 60,
                                final=not wait_for_newline, mapping=column_mapping,
                                pseudonymizer=privacy.pseudonymizer)
    except (OSError, ValueError) as error:
        raise click.ClickException(str(error)) from None

    store_path = store_path or default_store_path()
    conn = open_store(store_path)
    storage.ensure_schema(conn)
    new_records = []
    for path in paths:
        try:
            result = ingest_file(conn, path, options)
        except (OSError, ValueError) as error:
            raise click.ClickException(f"failed to read {path}: {error}") from None
        new_records += result.records
        listed = ", ".join(str(line) for _, line in result.malformed_lines[:20])
        more = " ..." if result.malformed > 20 else ""
        click.echo(
            f"{path}: {result.format}, {result.lines} lines, {len(result.records)} new records,"
            f" {result.malformed} malformed{f' (lines {listed}{more})' if result.malformed else ''}",
            err=True,
        )
        if result.rotated_from:
            click.echo(f"{path}: finished the rotated file {result.rotated_from} first", err=True)
        for malformed_path, line in result.malformed_lines[:20]:
            log.warning("skipped malformed line %d of %s", line, malformed_path)
    if no_detect:
        return
    # NOTE: the records above are already committed, so if detection or
    # publishing fails here a re-run will not see them as new; recover with
    # `wardwatch logins detect --since TIME`.
    alerts = analyse(conn, new_records, config, privacy.builder(), learn=not no_learn)
    conn.close()
    _publish(store_path, alerts, privacy, bus_endpoint, as_json)


@logins.command("baseline")
@click.option("--since", help="Start of the learning period, ISO 8601 (default: the first record).")
@click.option("--until", help="End of the learning period, ISO 8601 (default: the last record).")
@click.option("--store", "store_path", default=None, type=click.Path(dir_okay=False),
              help="SQLite store (default: $WARDWATCH_STORE or wardwatch.db).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="TOML file whose [logins] table sets site_utc_offset_s.")
def baseline(since, until, store_path, config_path):
    """Relearn every baseline from the stored records of a period, replacing the old ones."""
    from engine.logins import storage
    from engine.logins.baseline import rebuild_baselines
    from engine.logins.detect import load_config

    try:
        config = load_config(config_path)
    except (OSError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    conn = open_store(store_path or default_store_path())
    storage.ensure_schema(conn)
    users, sources = rebuild_baselines(conn, _parse_time(since, "--since"), _parse_time(until, "--until"),
                                       config.site_utc_offset_s)
    click.echo(f"learnt baselines of {len(users)} users and {len(sources)} sources")


@logins.command("detect")
@click.option("--since", help="First record time to check, ISO 8601 (default: the first record).")
@click.option("--until", help="Last record time to check, ISO 8601 (default: the last record).")
@click.option("--learn", is_flag=True, help="Add the checked logons to the baselines afterwards.")
@_privacy_options
def detect(since, until, learn, store_path, as_json, bus_endpoint, config_path, show_usernames, key_file):
    """Run every rule on the stored records of a period as if they were new."""
    from engine.logins import storage
    from engine.logins.pipeline import analyse

    config, privacy = _load_common(config_path, key_file, show_usernames)
    since_ts = _parse_time(since, "--since")
    until_ts = _parse_time(until, "--until")
    store_path = store_path or default_store_path()
    # Detection only reads, so the store is opened read-only and checked
    # first: a foreign SQLite file gets an error instead of new tables.
    conn = open_store(store_path, read_only=True)
    try:
        missing = check_store_tables(conn, store_path, storage.READ_COLUMNS)
        if missing or learn:
            conn.close()
            conn = None
            if "login_records" in missing:
                click.echo(f"store {store_path} has no login records; run `wardwatch logins ingest` first", err=True)
                return
            # --learn writes baselines, so it needs a writable store.
            conn = open_store(store_path)
            storage.ensure_schema(conn)
        records = storage.load_records(conn, since_ts, until_ts)
        alerts = analyse(conn, records, config, privacy.builder(), learn=learn)
    finally:
        if conn is not None:
            conn.close()
    noun = "alert" if len(alerts) == 1 else "alerts"
    click.echo(f"checked {len(records)} records: {len(alerts)} {noun}", err=True)
    # Publishing writes the alert tables, so it is skipped when there is
    # nothing to publish.
    if alerts:
        _publish(store_path, alerts, privacy, bus_endpoint, as_json)


if __name__ == "__main__":
    sys.exit(logins())

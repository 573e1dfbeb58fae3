"""`wardwatch report`: write the analytical report of a store as HTML or JSON.

Exit codes: 0 success; 1 the store is missing or unreadable, or the output
cannot be written; 2 usage error (invalid --since, --until, --lang or
--format).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sqlite3
import sys
import tempfile

import click

logger = logging.getLogger(__name__)

# Longest --since period. The report also compares with the period before,
# so this bound keeps both periods after year 1, the first year a date can
# be printed in, for every --until from 1970 on.
MAX_PERIOD_DAYS = 36_500
# Columns of the alert and run tables that gather_report reads; a file whose
# tables lack them is rejected before the first query.
REPORT_COLUMNS = {
    "alerts": ("id", "kind", "seq", "severity", "category", "first_seen", "last_seen", "summary", "body"),
    "runs": ("run_id", "started_at", "last_packet_time"),
}
# Earliest --until: capture timestamps count seconds from 1970-01-01 UTC.
EARLIEST_UNTIL_S = 0.0


def parse_until(text: str) -> str | float:
    """Return "latest", "now" or epoch seconds for an ISO 8601 date or time (UTC unless it has an offset)."""
    if text in ("latest", "now"):
        return text
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"invalid time {text!r}; expected latest, now or an ISO 8601 date such as 2026-03-01 or 2026-03-01T12:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    if moment.timestamp() < EARLIEST_UNTIL_S:
        raise click.BadParameter(
            f"invalid time {text!r}; capture times start at 1970-01-01, so pass a later date, latest or now",
            param_hint="--until",
        )
    return moment.timestamp()


def write_output(text: str, output: str) -> None:
    """Write to stdout for "-", else to a temporary file renamed over `output`, so a reader never sees half a report."""
    if output == "-":
        sys.stdout.write(text)
        return
    directory = os.path.dirname(os.path.abspath(output))
    descriptor, temporary = tempfile.mkstemp(prefix=".report-", dir=directory)
    # mkstemp creates the file 0600; give the report the mode a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, output)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


@click.command("report")
@click.option("--store", "store_path", type=click.Path(dir_okay=False),
              help="Store to report on (default: $WARDWATCH_STORE, else wardwatch.db).")
@click.option("--since", default="7d", show_default=True,
              help="Length of the report period: a number and a unit s, m, h, d or w.")
@click.option("--until", default="latest", show_default=True,
              help="End of the period: latest (the newest capture time in the store), now, "
                   "or an ISO 8601 date or time in UTC.")
@click.option("--lang", "language", type=click.Choice(["en", "ar"]), default="en", show_default=True,
              help="Language of the HTML report; ar is laid out right to left.")
@click.option("--format", "output_format", type=click.Choice(["html", "json"]), default="html", show_default=True,
              help="html: one self-contained page; json: the same content as data.")
@click.option("-o", "--output", default="-", show_default=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="File to write; - writes to standard output.")
def report_command(store_path, since, until, language, output_format, output):
    """Write the security report of one period: summary, timeline, assets, findings, actions, forecasts."""
    from engine.report.gather import gather_report, parse_duration
    from engine.store import check_store_tables, default_store_path, open_store

    try:
        since_s = parse_duration(since)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--since") from None
    if since_s > MAX_PERIOD_DAYS * 86400:
        raise click.BadParameter(
            f"invalid period {since!r}; expected at most {MAX_PERIOD_DAYS}d (100 years)", param_hint="--since"
        )
    until_value = parse_until(until)

    path = store_path or default_store_path()
    if not os.path.isfile(path):
        raise click.ClickException(f"store {path} not found; run `wardwatch analyze` first or pass --store")
    try:
        conn = open_store(path, read_only=True)
        try:
            check_store_tables(conn, path, REPORT_COLUMNS)
            report = gather_report(conn, since_s, until_value)
        finally:
            conn.close()
    except sqlite3.Error as error:
        raise click.ClickException(f"failed to read store {path}: {error}; check that it is a WardWatch store") from error

    if output_format == "json":
        text = json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    else:
        try:
            import fontTools  # noqa: F401
            import matplotlib  # noqa: F401
        except ImportError as error:
            raise click.ClickException(
                f"the HTML report needs {error.name}, which is missing; reinstall wardwatch with pip install ."
                " or use --format json"
            ) from error
        from engine.report.render import render_html

        text = render_html(report, language)
    try:
        write_output(text, output)
    except OSError as error:
        raise click.ClickException(f"failed to write report to {output}: {error.strerror or error}") from error
    if output != "-":
        logger.info("wrote %s report (%d bytes) to %s", output_format, len(text.encode("utf-8")), output)

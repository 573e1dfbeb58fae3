"""`wardwatch respond list` text: expiry times on later days carry their date."""

import datetime
from contextlib import closing

from click.testing import CliRunner

from engine.respond import records
from engine.respond.cli import respond
from engine.store import open_store

CREATED = datetime.datetime(2026, 4, 20, 1, 0, 19, tzinfo=datetime.timezone.utc).timestamp()


def listed_line(tmp_path, expires_at):
    store = tmp_path / "respond.db"
    with closing(open_store(store)) as conn:
        records.ensure_schema(conn)
        records.insert_action(conn, records.ActionRecord(
            actor="tester", rule="block-source", action="block", subject="10.40.0.11", status="applied",
            dry_run=False, reason="test", expires_at=expires_at, created_at=CREATED,
        ))
        conn.commit()
    result = CliRunner().invoke(respond, ["list", "--store", str(store)])
    assert result.exit_code == 0, result.output
    [line] = result.output.splitlines()
    return line


def test_day_long_block_shows_its_end_date(tmp_path):
    line = listed_line(tmp_path, CREATED + 86400)
    assert " until 2026-04-21 01:00:19 by tester" in line


def test_same_day_expiry_shows_time_only(tmp_path):
    line = listed_line(tmp_path, CREATED + 600)
    assert " until 01:10:19 by tester" in line

"""Login ingestion on hostile input: deep JSON, unterminated files, odd paths and config bytes."""

import json
import os
import re

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.logins import storage
from engine.logins.detect import load_config
from engine.logins.ehr import ColumnMapping
from engine.logins.ingest import IngestOptions, ingest_file
from engine.logins.windows import parse_windows_events
from engine.store import open_store

# A Winlogbeat 4625 (failed logon) document: user "jdoe" from 10.1.2.3.
FAILED_LOGON = {
    "@timestamp": "2026-02-03T04:05:06Z",
    "winlog": {
        "event_id": 4625,
        "computer_name": "DC1",
        "event_data": {"TargetUserName": "jdoe", "IpAddress": "10.1.2.3", "LogonType": "3"},
    },
}
# Nested deeper than json's recursion limit (about 1000 levels).
DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000


@pytest.fixture
def conn(tmp_path):
    connection = open_store(tmp_path / "store.db")
    storage.ensure_schema(connection)
    yield connection
    connection.close()


def test_windows_deep_array_is_invalid():
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_windows_events(DEEP_ARRAY)


def test_windows_deep_line_is_malformed():
    line = json.dumps(FAILED_LOGON).encode()
    result = parse_windows_events(line + b"\n" + DEEP_OBJECT + b"\n" + line + b"\n")
    assert len(result.records) == 2
    assert result.malformed == 1
    assert result.malformed_lines == [2]


def test_windows_array_without_newline_is_read(conn, tmp_path):
    # ConvertTo-Json -Compress writes one line and no trailing newline.
    path = tmp_path / "security.json"
    path.write_bytes(json.dumps([FAILED_LOGON, FAILED_LOGON, FAILED_LOGON]).encode())
    result = ingest_file(conn, str(path), IngestOptions())
    assert result.format == "windows"
    assert len(result.records) == 3
    assert [r.user for r in result.records] == ["jdoe", "jdoe", "jdoe"]
    again = ingest_file(conn, str(path), IngestOptions())
    assert again.records == []


def test_unterminated_line_waits_when_asked(conn, tmp_path):
    path = tmp_path / "security.json"
    path.write_bytes(json.dumps(FAILED_LOGON).encode())
    waiting = ingest_file(conn, str(path), IngestOptions(final=False))
    assert waiting.records == []
    final = ingest_file(conn, str(path), IngestOptions())
    assert len(final.records) == 1


def test_undecodable_path_is_ingested(conn, tmp_path):
    # A file name byte that is not UTF-8 reaches Python as a lone surrogate.
    path = os.path.join(os.fsencode(tmp_path), b"auth-\xff.log")
    with open(path, "wb") as handle:
        handle.write(b"2026-03-01T10:00:01Z srv sshd[101]: Failed password for root from 192.0.2.1 port 40001 ssh2\n")
    name = os.fsdecode(path)
    first = ingest_file(conn, name, IngestOptions())
    assert len(first.records) == 1
    again = ingest_file(conn, name, IngestOptions())
    assert again.records == []
    stored = conn.execute("SELECT path FROM login_checkpoints").fetchone()[0]
    assert stored.endswith("auth-\\xff.log")


def test_config_not_utf8_names_file(tmp_path):
    path = tmp_path / "logins.toml"
    path.write_bytes(b"\xff\xfe[logins]\n")
    with pytest.raises(ValueError, match="invalid configuration file .*logins.toml"):
        load_config(str(path))


def test_cli_deep_array_exits_cleanly(tmp_path):
    path = tmp_path / "deep.json"
    path.write_bytes(DEEP_ARRAY)
    result = CliRunner().invoke(main, ["logins", "ingest", "--store", str(tmp_path / "s.db"), str(path)])
    assert result.exit_code == 1
    assert "nested too deeply" in result.output
    assert not isinstance(result.exception, RecursionError)


@pytest.mark.parametrize("option", [["--year", "99999"], ["--year", "9999"], ["--utc-offset-min", "100000"]])
def test_cli_year_and_offset_out_of_range(option, tmp_path):
    # Ingest commits records before detection, so a year that detection
    # cannot handle must be rejected before anything is stored.
    log = tmp_path / "auth.log"
    log.write_bytes(b"Mar  1 10:00:01 srv sshd[101]: Failed password for root from 192.0.2.1 port 40001 ssh2\n")
    store = tmp_path / "s.db"
    result = CliRunner().invoke(main, ["logins", "ingest", "--store", str(store), *option, str(log)])
    assert result.exit_code == 2, result.output
    assert not store.exists()


def test_journald_malformed_numbered_by_entry(conn, tmp_path):
    # Entry 1 has a non-numeric timestamp, so the journald reader drops it.
    # Entry 2 converts to a syslog line whose time (1e23 us, about 3e9 years) the
    # line scanner rejects, and it must be reported as entry 2, not line 1.
    path = tmp_path / "journal.export"
    path.write_bytes(
        b"__CURSOR=x\n__REALTIME_TIMESTAMP=abc\nMESSAGE=hi\n\n"
        b"__REALTIME_TIMESTAMP=99999999999999999999999\n"
        b"MESSAGE=Failed password for root from 192.0.2.1 port 22 ssh2\nSYSLOG_IDENTIFIER=sshd\n\n"
    )
    result = ingest_file(conn, str(path), IngestOptions())
    assert result.format == "journald"
    assert result.records == []
    assert result.malformed == 2
    assert sorted(line for _, line in result.malformed_lines) == [1, 2]


@pytest.mark.parametrize("toml, message", [
    (b"columns = 5\n", "columns must be a [columns] table"),
    (b'[columns]\nuser = 5\naction = "a"\npatient = "p"\ntime = "t"\n', "must be column names"),
    (b'[columns]\nuser = "u"\naction = "a"\npatient = "p"\ntime = "t"\n[actions]\nlogon = "LOGIN"\n',
     "actions.logon must be a list of strings"),
])
def test_ehr_mapping_wrong_types(toml, message, tmp_path):
    path = tmp_path / "mapping.toml"
    path.write_bytes(toml)
    with pytest.raises(ValueError, match=re.escape(message)):
        ColumnMapping.load(path)


@pytest.mark.timeout(30)
def test_fifo_rejected_without_blocking(conn, tmp_path):
    # Opening a FIFO without a writer would block, so it must be rejected
    # from its file type alone.
    path = tmp_path / "auth.fifo"
    os.mkfifo(path)
    with pytest.raises(ValueError, match="is not a regular file"):
        ingest_file(conn, str(path), IngestOptions())

"""Read commands open the store read-only: foreign SQLite files, missing tables, read-only media."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.store import StoreError, check_store_tables, open_store
from tests.conftest import REPO_ROOT, require_root, require_tool

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "engine" / "data" / "sample.pcap"

# Every command that only reads the store, with the arguments it needs.
READ_COMMANDS = [
    ["alerts", "list"],
    ["alerts", "show", "1"],
    ["report", "--format", "json"],
    ["predict", "--json"],
    ["assets", "--json"],
    ["logins", "detect"],
]


def run_cli(*arguments):
    return CliRunner().invoke(main, [str(argument) for argument in arguments])


def directory_snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory):
    """A store written by `analyze` from the shipped sample capture."""
    directory = tmp_path_factory.mktemp("sample-store")
    store = directory / "ward.db"
    result = run_cli("analyze", "--no-bus", "-q", "--store", store, SAMPLE)
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture(params=["delete", "wal"])
def foreign_store(request, tmp_path):
    """An SQLite file of another application whose table happens to be called alerts."""
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode={request.param}")
    conn.execute("CREATE TABLE alerts (x)")
    conn.execute("INSERT INTO alerts VALUES ('not an alert')")
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_read_command_rejects_foreign_sqlite(command, foreign_store):
    before = foreign_store.read_bytes()
    files_before = directory_snapshot(foreign_store.parent)
    result = run_cli(*command, "--store", foreign_store)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"{foreign_store} is not a WardWatch store" in result.output
    assert "table alerts lacks the column" in result.output
    assert "Traceback" not in result.output
    assert foreign_store.read_bytes() == before
    # A read-only connection to a WAL file creates the -shm file and an
    # empty -wal file and cannot remove them. A rollback-journal file gets
    # no new file.
    files_after = directory_snapshot(foreign_store.parent)
    added = sorted(set(files_after) - set(files_before))
    assert added in ([], ["other.db-shm", "other.db-wal"])
    assert files_after.get("other.db-wal", b"") == b""
    if foreign_store.read_bytes()[18:20] == b"\x01\x01":
        assert added == []


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_read_command_rejects_unrelated_tables(command, tmp_path):
    path = tmp_path / "notes.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()
    before = directory_snapshot(tmp_path)
    result = run_cli(*command, "--store", path)
    assert result.exit_code == 1, result.output
    assert "is an SQLite database but not a WardWatch store (its tables: notes)" in result.output
    assert directory_snapshot(tmp_path) == before


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_read_command_creates_no_store(command, tmp_path):
    path = tmp_path / "absent.db"
    result = run_cli(*command, "--store", path)
    assert result.exit_code == 1, result.output
    assert "not found" in result.output
    assert list(tmp_path.iterdir()) == []


def test_alerts_list_on_store_without_alert_tables(tmp_path):
    # A store that so far contains only login records, as `logins ingest --no-detect` leaves it.
    from engine.logins import storage

    path = tmp_path / "logins-only.db"
    conn = open_store(path)
    storage.ensure_schema(conn)
    conn.close()
    before = path.read_bytes()
    result = run_cli("alerts", "list", "--store", path)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert f"store {path} has no alerts yet" in result.stderr
    assert path.read_bytes() == before
    show_result = run_cli("alerts", "show", "1", "--store", path)
    assert show_result.exit_code == 3, show_result.output


def test_read_commands_on_real_store(sample_store):
    before = sample_store.read_bytes()
    with sqlite3.connect(f"file:{sample_store}?mode=ro", uri=True) as conn:
        alert_count = conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
        asset_count = conn.execute("SELECT COUNT(*) FROM assets").fetchone()[0]
    listed = run_cli("alerts", "list", "--json", "--store", sample_store)
    assert listed.exit_code == 0, listed.output
    assert len(listed.stdout.splitlines()) == alert_count
    assets = run_cli("assets", "--json", "--store", sample_store)
    assert assets.exit_code == 0, assets.output
    assert len(json.loads(assets.stdout)) == asset_count
    assert sample_store.read_bytes() == before


def test_check_store_tables_cases(tmp_path):
    path = tmp_path / "s.db"
    conn = sqlite3.connect(path)
    # An empty file has no table yet: everything asked for is missing.
    assert check_store_tables(conn, path, {"alerts": ("body",), "runs": ()}) == {"alerts", "runs"}
    conn.execute("CREATE TABLE runs (run_id TEXT, started_at REAL)")
    assert check_store_tables(conn, path, {"alerts": ("body",), "runs": ("run_id",)}) == {"alerts"}
    with pytest.raises(StoreError, match="its table runs lacks the columns ended_at, packets"):
        check_store_tables(conn, path, {"runs": ("run_id", "ended_at", "packets")})
    conn.close()


def test_open_store_read_only_rejects_writes(sample_store):
    conn = open_store(sample_store, read_only=True)
    try:
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("CREATE TABLE extra (x)")
    finally:
        conn.close()


def test_open_store_read_only_missing_file(tmp_path):
    with pytest.raises(StoreError, match="not found"):
        open_store(tmp_path / "none.db", read_only=True)
    assert list(tmp_path.iterdir()) == []


def read_outputs(store: Path, env: dict | None = None, prefix: tuple[str, ...] = ()) -> dict[str, str]:
    """Run each read command in a child process; return its standard output by command."""
    outputs = {}
    for command in (["alerts", "list", "--json"], ["alerts", "show", "1"], ["assets", "--json"],
                    ["predict", "--json"], ["report", "--format", "json"]):
        completed = subprocess.run(
            [*prefix, sys.executable, "-m", "engine", *command, "--store", str(store)],
            capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
        )
        assert completed.returncode == 0, completed.stderr
        assert "Traceback" not in completed.stderr
        outputs[" ".join(command)] = completed.stdout
    return outputs


def without_generated_at(report_text: str) -> dict:
    # The report records when it was written, which differs between runs.
    document = json.loads(report_text)
    document.pop("generated_at", None)
    return document


def test_store_on_read_only_mount(sample_store, tmp_path):
    require_root()
    require_tool("unshare")
    require_tool("mount")
    reference = tmp_path / "reference.db"
    shutil.copyfile(sample_store, reference)
    expected = read_outputs(reference)
    # A copy without -shm file, as on an archive disc: a mode=ro reader
    # cannot create one there, so this needs the immutable fallback.
    directory = tmp_path / "media"
    directory.mkdir()
    store = directory / "ward.db"
    shutil.copyfile(sample_store, store)
    assert sorted(os.listdir(directory)) == ["ward.db"]
    before = store.read_bytes()

    # A private mount namespace of this test only: the read-only bind mount
    # disappears when the child exits.
    script = (
        f"mount --bind -o ro {directory} {directory} && "
        f"if touch {directory}/probe 2>/dev/null; then echo writable >&2; exit 9; fi && "
        f"exec \"$@\""
    )
    command = ["unshare", "--mount", "sh", "-c", script, "sh"]
    try:
        mounted = read_outputs(store, prefix=tuple(command))
    except AssertionError as error:
        if "writable" in str(error):
            pytest.skip("the bind mount stayed writable in this environment")
        raise
    for name, text in expected.items():
        if name.startswith("report"):
            assert without_generated_at(mounted[name]) == without_generated_at(text)
        else:
            assert mounted[name] == text, name
    assert store.read_bytes() == before


def run_without_dac_override(*arguments):
    """Run `python -m engine ARGUMENTS` as root without the capabilities that bypass file modes."""
    command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
               sys.executable, "-m", "engine", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def test_store_read_only_by_mode(sample_store, tmp_path):
    as_root = os.geteuid() == 0
    if as_root:
        # Root ignores file modes, so the read commands run without the
        # DAC override capabilities, as an ordinary reader would.
        require_tool("setpriv")
    directory = tmp_path / "locked"
    directory.mkdir()
    store = directory / "ward.db"
    shutil.copyfile(sample_store, store)
    expected = run_cli("alerts", "list", "--json", "--store", store).stdout
    store.chmod(0o444)
    directory.chmod(0o555)
    try:
        if as_root:
            result = run_without_dac_override("alerts", "list", "--json", "--store", store)
            assets = run_without_dac_override("assets", "--json", "--store", store)
            exit_codes = (result.returncode, assets.returncode)
            outputs = (result.stdout + result.stderr, assets.stdout + assets.stderr)
        else:
            result = run_cli("alerts", "list", "--json", "--store", store)
            assets = run_cli("assets", "--json", "--store", store)
            exit_codes = (result.exit_code, assets.exit_code)
            outputs = (result.output, assets.output)
    finally:
        directory.chmod(0o755)
    assert exit_codes[0] == 0, outputs[0]
    assert result.stdout == expected
    assert exit_codes[1] == 0, outputs[1]


def test_read_only_mount_with_unread_wal(sample_store, tmp_path):
    require_root()
    require_tool("unshare")
    require_tool("mount")
    with sqlite3.connect(f"file:{sample_store}?mode=ro", uri=True) as conn:
        alert_count = conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
    # A writer that stopped before checkpointing: its last commit is only in
    # the -wal file, copied here while the writer still had it open.
    writer_directory = tmp_path / "writer"
    writer_directory.mkdir()
    shutil.copyfile(sample_store, writer_directory / "ward.db")
    writer = sqlite3.connect(writer_directory / "ward.db", isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("DELETE FROM alerts WHERE rowid = (SELECT MIN(rowid) FROM alerts)")
    directory = tmp_path / "media"
    directory.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(writer_directory / f"ward.db{suffix}", directory / f"ward.db{suffix}")
    writer.close()
    assert (directory / "ward.db-wal").stat().st_size > 0

    script = f"mount --bind -o ro {directory} {directory} && exec \"$@\""
    completed = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", sys.executable, "-m", "engine", "alerts", "list",
         "--json", "--store", str(directory / "ward.db")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "its write-ahead log" in completed.stderr
    assert "the newest alerts may be missing" in completed.stderr
    # The deletion lives only in the unread log, so every alert is listed.
    assert len(completed.stdout.splitlines()) == alert_count

"""`analyze` usage errors: a capture analysed twice, standard input twice, unknown configuration names."""

import gzip
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner

from engine.cli import main

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "engine" / "data" / "sample.pcap"


def run_cli(*arguments, input=None):
    return CliRunner().invoke(main, [str(argument) for argument in arguments], input=input)


def count_rows(store: Path, table: str) -> int:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


@pytest.fixture(scope="module")
def analysed_store(tmp_path_factory):
    directory = tmp_path_factory.mktemp("analysed")
    store = directory / "ward.db"
    result = run_cli("analyze", "--no-bus", "-q", "--store", store, SAMPLE)
    assert result.exit_code == 0, result.output
    return store


def test_same_capture_twice_rejected(analysed_store, tmp_path):
    events_before = count_rows(analysed_store, "alert_events")
    runs_before = count_rows(analysed_store, "runs")
    assert events_before > 0
    # The same bytes under another name, or compressed, are the same capture.
    renamed = tmp_path / "renamed.pcap"
    shutil.copyfile(SAMPLE, renamed)
    compressed = tmp_path / "sample.pcap.gz"
    with open(SAMPLE, "rb") as plain, gzip.open(compressed, "wb") as packed:
        shutil.copyfileobj(plain, packed)
    zstd_copy = tmp_path / "sample.pcap.zst"
    zstd_copy.write_bytes(zstandard.ZstdCompressor().compress(SAMPLE.read_bytes()))
    for capture in (SAMPLE, renamed, compressed, zstd_copy):
        result = run_cli("analyze", "--no-bus", "-q", "--store", analysed_store, capture)
        assert result.exit_code == 1, result.output
        assert f"store {analysed_store} already contains the alerts of {capture}" in result.output
        assert f"as {SAMPLE}" in result.output
        assert "--force" in result.output
    assert count_rows(analysed_store, "alert_events") == events_before
    assert count_rows(analysed_store, "runs") == runs_before


def test_force_analyses_again(analysed_store, tmp_path):
    store = tmp_path / "copy.db"
    shutil.copyfile(analysed_store, store)
    alerts_before = count_rows(store, "alert_events")
    logins_before = count_rows(store, "login_records")
    assert logins_before > 0
    result = run_cli("analyze", "--no-bus", "-q", "--force", "--store", store, SAMPLE)
    assert result.exit_code == 0, result.output
    assert count_rows(store, "alert_events") > alerts_before
    # The traffic logins are the same records: stored once, so the login
    # rules do not count repeated failures that never happened.
    assert count_rows(store, "login_records") == logins_before
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        recorded = conn.execute("SELECT COUNT(DISTINCT run_id), COUNT(DISTINCT sha256) FROM analysed_captures").fetchone()
    assert tuple(recorded) == (2, 1)


def test_capture_listed_twice_rejected(tmp_path):
    store = tmp_path / "ward.db"
    copy = tmp_path / "copy.pcap"
    shutil.copyfile(SAMPLE, copy)
    result = run_cli("analyze", "--no-bus", "-q", "--store", store, SAMPLE, copy)
    assert result.exit_code == 1, result.output
    assert f"{copy} has the same content as {SAMPLE}" in result.output
    with sqlite3.connect(store) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    # Rejected before the alert sink opened.
    assert "alert_events" not in tables


def test_standard_input_twice_is_usage_error(tmp_path):
    store = tmp_path / "ward.db"
    result = run_cli("analyze", "--no-bus", "-q", "--store", store, "-", "-", input=SAMPLE.read_bytes())
    assert result.exit_code == 2, result.output
    assert "standard input (-) can be read only once" in result.output
    assert not store.exists()


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[nosuchsection]\na = 1\n",
         "invalid configuration section [nosuchsection]; expected one of: [alerts], [analyze], [logins], [rules]"),
        ("[alerts]\nquiet_period_s = 60.0\n",
         "invalid configuration key [alerts] quiet_period_s; it is a setting of [alerts.aggregation]"),
        ("[alerts]\nsensor = 'ward-3'\n",
         "invalid configuration key [alerts] sensor; expected one of: aggregation, bus_endpoint,"),
        ("[alerts.aggregation]\nquiet_s = 60.0\n",
         "invalid configuration key [alerts.aggregation] quiet_s; expected one of: key_modes,"),
        ("[alerts.rate_limits]\nper_minute = 5\n",
         "invalid configuration key [alerts.rate_limits] per_minute; expected one of: global_per_minute,"),
        ("[[alerts.suppression]]\ncategory = 'scan'\nsource = '10.0.0.1'\n",
         "invalid configuration key [[alerts.suppression]] source; expected one of: category, dst,"),
        ("[alerts]\nsuppression = 5\n",
         "alerts.suppression must be an array of tables"),
        ("alerts = 5\n",
         "invalid configuration: alerts = 5 is not a table"),
    ],
    ids=["section", "sub-table key", "alerts key", "aggregation key", "rate key", "suppression key",
         "suppression type", "alerts type"],
)
def test_config_unknown_names(tmp_path, toml, expected):
    config = tmp_path / "ward.toml"
    config.write_text(toml)
    store = tmp_path / "ward.db"
    result = run_cli("analyze", "--no-bus", "-q", "--config", config, "--store", store, SAMPLE)
    assert result.exit_code == 1, result.output
    assert expected in result.output
    assert "__init__" not in result.output
    # Checked before the store is opened.
    assert not store.exists()


def test_config_logins_section_accepted(tmp_path):
    # One file can configure `logins` and `analyze`; analyze skips [logins].
    config = tmp_path / "ward.toml"
    config.write_text("[logins]\nlookback_s = 3600\n\n[analyze]\nidle_timeout_s = 60.0\n")
    result = run_cli("analyze", "--no-bus", "-q", "--config", config, "--store", tmp_path / "ward.db", SAMPLE)
    assert result.exit_code == 0, result.output


def test_foreign_sqlite_store_rejected(tmp_path):
    store = tmp_path / "other.db"
    conn = sqlite3.connect(store)
    conn.execute("CREATE TABLE alerts (x)")
    conn.commit()
    conn.close()
    before = store.read_bytes()
    result = run_cli("analyze", "--no-bus", "-q", "--store", store, SAMPLE)
    assert result.exit_code == 1, result.output
    assert f"{store} is not a WardWatch store: its table alerts lacks the column body" in result.output
    # Not even switched to WAL mode, which a writer's open would do.
    assert store.read_bytes() == before


def test_named_pipe_not_hashed(tmp_path):
    # Hashing a pipe first would consume the packets, so it is analysed as
    # read and never recorded or rejected.
    pipe = tmp_path / "capture.fifo"
    os.mkfifo(pipe)
    store = tmp_path / "ward.db"
    for _ in range(2):
        writer = threading.Thread(target=lambda: pipe.write_bytes(SAMPLE.read_bytes()))
        writer.start()
        result = run_cli("analyze", "--no-bus", "-q", "--store", store, pipe)
        writer.join(timeout=60)
        assert result.exit_code == 0, result.output
        # capinfos counts 9553 packets in the sample.
        assert "9,553 packets" in result.output
    assert count_rows(store, "analysed_captures") == 0
    assert count_rows(store, "runs") == 2

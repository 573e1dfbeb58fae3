"""Alert store, CLI and replay socket on hostile input: foreign files, huge numbers, odd bytes."""

import pytest
import zmq
from click.testing import CliRunner

from engine.alerts.bus import ReplayClient, ReplayError, ReplayServer
from engine.alerts.config import AlertConfig, check_endpoint
from engine.alerts.schema import Alert, Endpoint
from engine.alerts.sink import AlertSink
from engine.alerts.store import MAX_SQLITE_INTEGER, AlertStore, RunStats, read_run_stats, write_run_stats
from engine.cli import main
from engine.store import StoreError, open_store

LOOPBACK_ANY_PORT = "tcp://127.0.0.1:*"


def scan_alert():
    return Alert("scan", "low", "Port scan", technique="T1046", first_seen=100.0, last_seen=100.0,
                 src=Endpoint("10.0.0.1"), dst=Endpoint("10.0.0.2", 22))


def stored_alert_path(tmp_path):
    path = tmp_path / "s.db"
    config = AlertConfig(sensor_id="ward-3", bus_endpoint=None, replay_endpoint=None)
    with AlertSink(path, config) as sink:
        sink.publish(scan_alert())
    return path


@pytest.fixture
def not_sqlite(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are notes, not an SQLite database\n" * 200)
    return path


def test_open_store_rejects_foreign_file(not_sqlite):
    with pytest.raises(StoreError, match="file is not a database"):
        open_store(not_sqlite)


def test_open_store_missing_directory(tmp_path):
    with pytest.raises(StoreError, match="store directory .*missing does not exist"):
        open_store(tmp_path / "missing" / "s.db")


@pytest.mark.parametrize("command", [
    ["alerts", "list"],
    ["logins", "baseline"],
    ["respond", "list"],
    ["predict"],
])
def test_cli_foreign_store_is_error(command, not_sqlite):
    result = CliRunner().invoke(main, [*command, "--store", str(not_sqlite)])
    assert result.exit_code == 1, result.output
    assert f"cannot open store {not_sqlite}" in result.output
    assert "file is not a database" in result.output


def test_cli_store_directory_missing(tmp_path):
    store = tmp_path / "missing" / "s.db"
    result = CliRunner().invoke(main, ["logins", "baseline", "--store", str(store)])
    assert result.exit_code == 1, result.output
    assert "does not exist" in result.output


@pytest.mark.parametrize("reference", [str(2**70), str(MAX_SQLITE_INTEGER + 1), "\u00b2", "\u0661"])
def test_show_unknown_number_not_found(reference, tmp_path):
    store = stored_alert_path(tmp_path)
    result = CliRunner().invoke(main, ["alerts", "show", "--store", str(store), reference])
    assert result.exit_code == 3, result.output


def test_get_alert_by_seq(tmp_path):
    with AlertStore(stored_alert_path(tmp_path)) as store:
        assert store.get_alert("1").summary == "Port scan"
        assert store.get_alert(str(MAX_SQLITE_INTEGER)) is None


def test_sensor_id_not_utf8_rejected():
    config = AlertConfig(sensor_id="ward-\udcff", bus_endpoint=None, replay_endpoint=None)
    with pytest.raises(ValueError, match="invalid sensor_id"):
        config.validate()


def test_run_source_not_utf8_stored(tmp_path):
    conn = open_store(tmp_path / "s.db")
    stats = RunStats(sensor_id="ward-3", source="/captures/ward-\udcff.pcap", run_id="r1")
    write_run_stats(conn, stats)
    assert read_run_stats(conn, "r1").source == "/captures/ward-\\xff.pcap"
    conn.close()


def test_replay_rejects_seq_above_sqlite(tmp_path):
    config = AlertConfig(sensor_id="ward-1", bus_endpoint=LOOPBACK_ANY_PORT, replay_endpoint=LOOPBACK_ANY_PORT)
    with AlertSink(tmp_path / "s.db", config) as sink:
        sink.publish(scan_alert())
        client = ReplayClient(zmq.Context.instance(), sink.replay_endpoint)
        try:
            with pytest.raises(ReplayError, match="invalid since"):
                client.request({"op": "since", "since": 2**64 - 1})
            assert client.hello()["last_seq"] == 1
        finally:
            client.close()


def test_replay_survives_handler_error(tmp_path, monkeypatch):
    original = ReplayServer.handle_request

    def failing_on_boom(self, store, payload):
        if b"boom" in payload:
            raise RuntimeError("boom")
        return original(self, store, payload)

    monkeypatch.setattr(ReplayServer, "handle_request", failing_on_boom)
    config = AlertConfig(sensor_id="ward-1", bus_endpoint=LOOPBACK_ANY_PORT, replay_endpoint=LOOPBACK_ANY_PORT)
    with AlertSink(tmp_path / "s.db", config) as sink:
        sink.publish(scan_alert())
        client = ReplayClient(zmq.Context.instance(), sink.replay_endpoint)
        try:
            with pytest.raises(ReplayError, match="replay request failed: boom"):
                client.request({"op": "boom"})
            assert client.hello()["last_seq"] == 1
        finally:
            client.close()


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5556", "tcp://[::1]:5556", "tcp://sensor:1", "ipc:///run/ww.sock"])
def test_endpoint_accepted(endpoint):
    assert check_endpoint(endpoint) == endpoint


@pytest.mark.parametrize("endpoint", ["garbage", "tcp://127.0.0.1", "tcp://127.0.0.1:0", "tcp://127.0.0.1:99999",
                                      "tcp://127.0.0.1:*", "ipc://"])
def test_endpoint_rejected(endpoint):
    with pytest.raises(ValueError, match="invalid"):
        check_endpoint(endpoint)


def test_endpoint_wildcard_only_for_bind():
    assert check_endpoint("tcp://*:5556", bind=True) == "tcp://*:5556"
    assert check_endpoint("tcp://127.0.0.1:*", bind=True) == "tcp://127.0.0.1:*"


@pytest.mark.parametrize("arguments", [
    ["alerts", "tail", "--connect", "garbage", "--idle-exit-s", "0.1"],
    ["alerts", "tail", "--connect", "tcp://127.0.0.1:99999", "--idle-exit-s", "0.1"],
    ["alerts", "tail", "--connect", "tcp://127.0.0.1:5556", "--topic", "alert\u00e9", "--idle-exit-s", "0.1"],
])
def test_tail_bad_endpoint_usage_error(arguments):
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 2, result.output
    assert "invalid" in result.output


def test_collect_bad_bind_is_error(tmp_path):
    arguments = ["collect", "--connect", "tcp://127.0.0.1:5556", "--store", str(tmp_path / "c.db"),
                 "--bind", "garbage", "--idle-exit-s", "0.1"]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 1, result.output
    assert "invalid endpoint 'garbage'" in result.output


def test_logins_bad_bus_checked_first(tmp_path):
    log = tmp_path / "auth.log"
    log.write_bytes(b"2026-03-01T10:00:01Z srv sshd[101]: Failed password for root from 192.0.2.1 port 40001 ssh2\n")
    store = tmp_path / "s.db"
    result = CliRunner().invoke(main, ["logins", "ingest", "--store", str(store), "--bus", "garbage", str(log)])
    assert result.exit_code == 2, result.output
    assert "invalid endpoint 'garbage'" in result.output
    assert not store.exists()


def test_keys_unwritable_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(main, ["keys", "generate", "--out", str(blocker / "keys")])
    assert result.exit_code == 1, result.output
    assert "cannot create key directory" in result.output


def test_keys_name_with_separator(tmp_path):
    result = CliRunner().invoke(main, ["keys", "generate", "--out", str(tmp_path), "--name", "../server"])
    assert result.exit_code == 2, result.output
    assert list(tmp_path.parent.glob("server.key*")) == []


@pytest.mark.parametrize("now", ["nan", "1e300", "-5", "9999-12-31"])
def test_predict_now_out_of_range(now, tmp_path):
    store = stored_alert_path(tmp_path)
    result = CliRunner().invoke(main, ["predict", "--store", str(store), "--now", now])
    assert result.exit_code == 2, result.output
    assert "invalid time" in result.output


def test_list_limit_above_sqlite(tmp_path):
    store = stored_alert_path(tmp_path)
    result = CliRunner().invoke(main, ["alerts", "list", "--store", str(store), "--limit", str(2**70)])
    assert result.exit_code == 0, result.output
    assert len(result.output.splitlines()) == 1
    assert "Port scan" in result.output


def test_respond_list_limit_above_sqlite(tmp_path):
    store = stored_alert_path(tmp_path)
    result = CliRunner().invoke(main, ["respond", "list", "--store", str(store), "--limit", str(2**70)])
    assert result.exit_code == 0, result.output
    assert result.output == ""

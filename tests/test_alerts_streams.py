"""Alert streams on real loopback sockets and real SQLite stores.

Every store is a stream with its own random stream id, and seqs count
within a stream. These tests run the cases where counting seqs per sensor
id alone lost alerts: two sensors with one sensor id, a sensor restarted
with a new store, a responder restarted while alerts were published, and
malformed bodies on the bus. The expected seqs are read back from each
sensor's own store with sqlite3, not from the code under test.
"""

import logging
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import zmq
import zmq.auth

from engine.alerts.bus import GapFillingSubscriber
from engine.alerts.collector import Collector
from engine.alerts.config import AlertConfig
from engine.alerts.schema import Alert, Endpoint, pack_alert, unpack_alert
from engine.alerts.sink import AlertSink
from engine.alerts.store import AlertStore
from engine.respond.playbook import parse_playbook
from engine.respond.positions import load_positions
from engine.respond.responder import Responder
from engine.respond.service import run_responder
from engine.store import open_store
from tests.waiting import drain, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_ANY_PORT = "tcp://127.0.0.1:*"


def detection(i, category="bruteforce"):
    return Alert(category=category, severity="high", summary=f"attempt {i}", technique="T1110.001",
                 first_seen=float(i), last_seen=float(i),
                 src=Endpoint(f"198.51.100.{i % 250 + 1}"), dst=Endpoint("10.9.0.1", 22))


def bus_config(sensor_id="ward-1", bus=LOOPBACK_ANY_PORT, replay=LOOPBACK_ANY_PORT, **overrides):
    config = AlertConfig(sensor_id=sensor_id, bus_endpoint=bus, replay_endpoint=replay)
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def stored_stream(path):
    """Return (stream_id, [seq, ...]) of a sensor store, read with sqlite3."""
    with sqlite3.connect(path) as conn:
        stream_id = conn.execute("SELECT stream_id FROM alert_stream").fetchone()[0]
        seqs = [row[0] for row in conn.execute("SELECT seq FROM alert_events ORDER BY seq")]
    return stream_id, seqs


def test_store_stream_id_kept_on_reopen(tmp_path):
    with AlertStore(tmp_path / "a.db") as first:
        first_id = first.stream_id
        publication = first.append(detection(1))
    with AlertStore(tmp_path / "a.db") as again:
        assert again.stream_id == first_id
    with AlertStore(tmp_path / "b.db") as other:
        assert other.stream_id != first_id
    assert len(first_id) == 32
    assert unpack_alert(publication.body).stream_id == first_id


def test_old_store_migrated_for_streams(tmp_path):
    path = tmp_path / "old.db"
    # The alert_events table and index as written before stream ids.
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE alert_events (
                seq INTEGER PRIMARY KEY, alert_id TEXT NOT NULL, revision INTEGER NOT NULL,
                topic TEXT NOT NULL, published_at REAL NOT NULL, sensor_id TEXT NOT NULL,
                sensor_seq INTEGER, body BLOB NOT NULL);
            CREATE UNIQUE INDEX alert_events_sensor_seq
                ON alert_events (sensor_id, sensor_seq) WHERE sensor_seq IS NOT NULL;
        """)
        old = detection(1)
        old.sensor_id, old.seq = "ward-1", 1
        conn.execute("INSERT INTO alert_events VALUES (1, ?, 1, ?, 0, 'ward-1', 1, ?)",
                     (old.id, old.topic, pack_alert(old)))
    first, second = detection(2), detection(3)
    for alert, stream_id in ((first, "a" * 32), (second, "b" * 32)):
        alert.sensor_id, alert.seq, alert.stream_id = "ward-1", 1, stream_id
    with AlertStore(path) as store:
        assert store.stream_id != ""
        # Seq 1 of two new streams and of the row stored before streams.
        assert store.append_received(first.topic, pack_alert(first)) == 2
        assert store.append_received(second.topic, pack_alert(second)) == 3
        assert store.append_received(second.topic, pack_alert(second)) is None
        assert store.last_sensor_seqs() == {("ward-1", ""): 1, ("ward-1", "a" * 32): 1, ("ward-1", "b" * 32): 1}
    with sqlite3.connect(path) as conn:
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "alert_events_sensor_seq" not in indexes
    assert "alert_events_sensor_stream_seq" in indexes


def run_collector(collector, idle_timeout_s):
    thread = threading.Thread(target=collector.run, kwargs={"idle_timeout_s": idle_timeout_s}, daemon=True)
    thread.start()
    return thread


def test_collector_two_sensors_same_id(tmp_path):
    first = AlertSink(tmp_path / "a.db", bus_config()).open()
    second = AlertSink(tmp_path / "b.db", bus_config()).open()
    collector = Collector([first.bus_endpoint, second.bus_endpoint], str(tmp_path / "merged.db"),
                          replay=[first.replay_endpoint, second.replay_endpoint])
    try:
        thread = run_collector(collector, idle_timeout_s=3.0)
        # Both sensors start at seq 1 under the same sensor id; nothing
        # waits for the subscriptions, so replay has to fill what is lost.
        for i in range(4):
            first.publish(detection(i))
            second.publish(detection(100 + i))
        thread.join(timeout=30)
    finally:
        first.close()
        second.close()
        collector.close()
    expected = set()
    for path in (tmp_path / "a.db", tmp_path / "b.db"):
        stream_id, seqs = stored_stream(path)
        expected |= {("ward-1", stream_id, seq) for seq in seqs}
    with sqlite3.connect(tmp_path / "merged.db") as conn:
        rows = conn.execute("SELECT sensor_id, sensor_stream_id, sensor_seq FROM alert_events").fetchall()
    assert len(expected) == 8
    assert len(rows) == 8
    assert set(rows) == expected


def test_collector_restart_new_store_same_id(tmp_path):
    merged = str(tmp_path / "merged.db")
    for name, count in (("a.db", 3), ("b.db", 2)):
        sink = AlertSink(tmp_path / name, bus_config(sensor_id="S")).open()
        collector = Collector([sink.bus_endpoint], merged, replay=[sink.replay_endpoint])
        try:
            thread = run_collector(collector, idle_timeout_s=2.0)
            time.sleep(0.3)
            for i in range(count):
                sink.publish(detection(i))
            thread.join(timeout=30)
        finally:
            sink.close()
            collector.close()
    expected = set()
    for name in ("a.db", "b.db"):
        stream_id, seqs = stored_stream(tmp_path / name)
        expected |= {(stream_id, seq) for seq in seqs}
    with sqlite3.connect(merged) as conn:
        rows = set(conn.execute("SELECT sensor_stream_id, sensor_seq FROM alert_events"))
    assert len(expected) == 5
    assert rows == expected


def test_tail_stream_change_read_from_seq_one(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="engine.alerts.bus")
    first = AlertSink(tmp_path / "a.db", bus_config()).open()
    bus, replay = first.bus_endpoint, first.replay_endpoint
    subscriber = GapFillingSubscriber([bus], replay=[replay], since=0, idle_check_s=0.2)
    try:
        for i in range(3):
            first.publish(detection(i))
        before = drain(subscriber, 3)
        first.close()
        # The same sensor id on the same endpoints with a new store: its
        # seqs start again at 1.
        second = AlertSink(tmp_path / "b.db", bus_config(bus=bus, replay=replay)).open()
        try:
            for i in range(2):
                second.publish(detection(10 + i))
            after = drain(subscriber, 2)
        finally:
            second.close()
    finally:
        subscriber.close()
    first_stream, _ = stored_stream(tmp_path / "a.db")
    second_stream, _ = stored_stream(tmp_path / "b.db")
    assert [(m.stream_id, m.seq) for m in before] == [(first_stream, 1), (first_stream, 2), (first_stream, 3)]
    assert [(m.stream_id, m.seq) for m in after] == [(second_stream, 1), (second_stream, 2)]
    assert [unpack_alert(m.body).summary for m in after] == ["attempt 10", "attempt 11"]
    assert any(f"new alert stream {second_stream}" in record.getMessage() for record in caplog.records)


def notify_playbook():
    # A webhook to a closed port: every alert gives one failed action
    # record, which stores the alert's seq and sensor id.
    return parse_playbook({
        "settings": {"max_actions_per_minute": 1000},
        "rules": [{"name": "note", "categories": ["bruteforce"], "actions": [
            {"type": "webhook", "url": f"http://127.0.0.1:{closed_tcp_port()}/hook"}]}],
    })


def closed_tcp_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ResponderRun:
    """One run of the responder in a thread, as `wardwatch respond --replay` starts it, until idle."""

    def __init__(self, store_path, sink, playbook):
        self.store_path, self.sink, self.playbook = store_path, sink, playbook
        self.started = threading.Event()
        self.handled = None
        self.errors = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.started.wait(10)

    def _run(self):
        conn = open_store(self.store_path)
        subscriber = GapFillingSubscriber([self.sink.bus_endpoint], replay=[self.sink.replay_endpoint],
                                          positions=load_positions(conn), idle_check_s=0.2)
        try:
            responder = Responder(self.playbook, conn, dry_run=True, actor="responder@test")
            subscriber.start()
            self.started.set()
            run_responder(responder, subscriber, idle_exit_s=1.5)
            self.handled = responder.counters["alerts"]
        except Exception as error:  # reported by join()
            self.errors.append(error)
            self.started.set()
        finally:
            subscriber.close()
            conn.close()

    def join(self):
        self.thread.join(timeout=30)
        assert not self.errors, self.errors
        return self.handled


def handled_seqs(store_path):
    with sqlite3.connect(store_path) as conn:
        return sorted(row[0] for row in conn.execute("SELECT alert_seq FROM response_actions"))


def test_restarted_responder_catches_up(tmp_path):
    playbook = notify_playbook()
    responder_store = tmp_path / "responder.db"
    sink = AlertSink(tmp_path / "sensor.db", bus_config()).open()
    try:
        sink.publish(detection(0))
        sink.publish(detection(1))
        # The first run has no position, so it starts after the sensor's
        # last seq at its start: seqs 3 and 4 are published while it runs.
        first = ResponderRun(responder_store, sink, playbook)
        sink.publish(detection(2))
        sink.publish(detection(3))
        first_run = first.join()
        # Published while no responder runs.
        for i in range(4, 9):
            sink.publish(detection(i))
        second_run = ResponderRun(responder_store, sink, playbook).join()
        stream_id, seqs = stored_stream(tmp_path / "sensor.db")
    finally:
        sink.close()
    assert seqs == list(range(1, 10))
    assert first_run == 2
    assert second_run == 5
    assert handled_seqs(responder_store) == [3, 4, 5, 6, 7, 8, 9]
    with sqlite3.connect(responder_store) as conn:
        assert conn.execute("SELECT sensor_id, stream_id, last_seq FROM respond_positions").fetchall() == [
            ("ward-1", stream_id, 9)]


# Has seq and sensor_id but no category, severity or summary.
BAD_BODY = msgpack.packb({"seq": 1, "sensor_id": "fake"})


def good_body(seq):
    alert = detection(seq)
    alert.sensor_id, alert.seq, alert.stream_id = "fake", seq, "f" * 32
    return alert.topic, pack_alert(alert)


def test_collector_skips_malformed_body(tmp_path, caplog):
    publisher = zmq.Context.instance().socket(zmq.PUB)
    publisher.bind(LOOPBACK_ANY_PORT)
    endpoint = publisher.getsockopt_string(zmq.LAST_ENDPOINT)
    collector = Collector([endpoint], str(tmp_path / "merged.db"))
    try:
        thread = run_collector(collector, idle_timeout_s=2.0)
        topic, body = good_body(1)
        # Repeated until the subscription is live; the good body is then
        # stored once and its repeats are dropped as duplicates.
        deadline = time.monotonic() + 10
        while collector.counters["stored"] == 0 and time.monotonic() < deadline:
            publisher.send_multipart([b"alert.high.scan", BAD_BODY])
            publisher.send_multipart([topic.encode("ascii"), body])
            time.sleep(0.1)
        thread.join(timeout=30)
    finally:
        collector.close()
        publisher.close(linger=0)
    assert not thread.is_alive()
    assert collector.counters["stored"] == 1
    assert collector.counters["malformed"] >= 1
    logged = [r for r in caplog.records if "skipped malformed message" in r.getMessage()]
    assert 1 <= len(logged) <= 10
    with sqlite3.connect(tmp_path / "merged.db") as conn:
        assert conn.execute("SELECT sensor_seq FROM alert_events").fetchall() == [(1,)]


def test_tail_skips_malformed_body(tmp_path):
    publisher = zmq.Context.instance().socket(zmq.PUB)
    publisher.bind(LOOPBACK_ANY_PORT)
    endpoint = publisher.getsockopt_string(zmq.LAST_ENDPOINT)
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    code = "import sys; from engine.cli import main; sys.exit(main())"
    tail = subprocess.Popen(
        [sys.executable, "-c", code, "alerts", "tail", "--connect", endpoint, "--json", "--max-alerts", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=environment, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        seq = 0
        # The malformed body goes first each time, so the tail has skipped
        # at least one before it prints the good one and exits.
        while tail.poll() is None and time.monotonic() < deadline:
            seq += 1
            topic, body = good_body(seq)
            publisher.send_multipart([b"alert.high.scan", BAD_BODY])
            publisher.send_multipart([topic.encode("ascii"), body])
            time.sleep(0.2)
        stdout, stderr = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
        publisher.close(linger=0)
    assert tail.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "skipped malformed message on topic alert.high.scan" in stderr
    assert "warning: skipped" in stderr
    assert '"sensor_id": "fake"' in stdout.splitlines()[0]


def test_curve_without_allowlist_warns(tmp_path, caplog):
    _, server_secret = zmq.auth.create_certificates(str(tmp_path), "server")
    with AlertSink(tmp_path / "s.db", bus_config(curve_server_secret=server_secret)):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("CURVE client authentication is off" in message for message in warnings)


def test_curve_with_allowlist_no_warning(tmp_path, caplog):
    _, server_secret = zmq.auth.create_certificates(str(tmp_path), "server")
    allow_dir = tmp_path / "allowed"
    allow_dir.mkdir()
    zmq.auth.create_certificates(str(allow_dir), "client")
    with AlertSink(tmp_path / "s.db", bus_config(curve_server_secret=server_secret,
                                                 curve_allow_dir=str(allow_dir))):
        pass
    assert not [r for r in caplog.records if "authentication is off" in r.getMessage()]


def test_cef_tcp_closed_unread_is_lower_bound(tmp_path, caplog):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def accept_and_close():
        # A syslog collector that closes each connection without reading.
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except socket.timeout:
                continue
            accepted.append(1)
            connection.close()

    server = threading.Thread(target=accept_and_close, daemon=True)
    server.start()
    config = AlertConfig(sensor_id="ward-1", bus_endpoint=None, replay_endpoint=None,
                         cef_target=f"tcp://127.0.0.1:{port}")
    try:
        sink = AlertSink(tmp_path / "s.db", config).open()
        sink.cef.reconnect_interval_s = 0.0
        for i in range(20):
            sink.publish(detection(i))
            time.sleep(0.02)
        dropped, sent = sink.cef.counters["dropped"], sink.cef.counters["sent"]
        sink.close()
    finally:
        stop.set()
        server.join(timeout=5)
        listener.close()
    assert accepted
    # The first message on each connection reaches the kernel before the
    # close arrives, so it counts as sent although nobody read it.
    assert sent >= 1
    assert dropped + sent == 20
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"at least {dropped} of 20 CEF messages were not delivered" in m for m in warnings)


def test_subscriber_two_sensors_same_id(tmp_path, caplog):
    first = AlertSink(tmp_path / "a.db", bus_config()).open()
    second = AlertSink(tmp_path / "b.db", bus_config()).open()
    try:
        for i in range(3):
            first.publish(detection(i))
            second.publish(detection(100 + i))
        subscriber = GapFillingSubscriber([first.bus_endpoint, second.bus_endpoint],
                                          replay=[first.replay_endpoint, second.replay_endpoint], since=0)
        try:
            received = drain(subscriber, 6)
            extra = subscriber.receive(timeout_s=1.0)
        finally:
            subscriber.close()
    finally:
        first.close()
        second.close()
    expected = set()
    for path in (tmp_path / "a.db", tmp_path / "b.db"):
        stream_id, seqs = stored_stream(path)
        expected |= {(stream_id, seq) for seq in seqs}
    assert len(received) == 6
    assert {(m.stream_id, m.seq) for m in received} == expected
    assert extra is None
    # Both streams were there at start, so neither is a new stream.
    assert not [r for r in caplog.records if "new alert stream" in r.getMessage()]


def test_since_other_stream_reads_from_one(tmp_path, caplog):
    with AlertSink(tmp_path / "a.db", bus_config()) as sink:
        for i in range(4):
            sink.publish(detection(i))
        # Seq 2 of a stream this sensor no longer serves.
        subscriber = GapFillingSubscriber([sink.bus_endpoint], replay=[sink.replay_endpoint], since=2,
                                          since_stream="0" * 32)
        try:
            received = drain(subscriber, 4)
        finally:
            subscriber.close()
    assert [m.seq for m in received] == [1, 2, 3, 4]
    assert any("since 2 counts in stream " + "0" * 32 in r.getMessage() for r in caplog.records)


def test_collector_idle_check_fetches_stream(tmp_path):
    with AlertSink(tmp_path / "a.db", bus_config()) as sink:
        # Published before the collector exists, so none arrives live.
        for i in range(3):
            sink.publish(detection(i))
        collector = Collector([sink.bus_endpoint], str(tmp_path / "merged.db"), replay=[sink.replay_endpoint])
        try:
            collector.run(idle_timeout_s=2.5)
        finally:
            collector.close()
    stream_id, seqs = stored_stream(tmp_path / "a.db")
    with sqlite3.connect(tmp_path / "merged.db") as conn:
        rows = conn.execute("SELECT sensor_stream_id, sensor_seq FROM alert_events ORDER BY seq").fetchall()
    assert rows == [(stream_id, seq) for seq in seqs]
    assert collector.counters["replayed"] == 3

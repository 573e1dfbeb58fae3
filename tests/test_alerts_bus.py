"""The alert bus on real loopback sockets: delivery, replay after restart, CURVE, collector."""

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq
import zmq.auth

from engine.alerts.bus import CurveClientKeys, GapFillingSubscriber, ReplayClient, ReplayError
from engine.alerts.collector import Collector
from engine.alerts.config import AlertConfig
from engine.alerts.schema import Alert, Endpoint, unpack_alert
from engine.alerts.sink import AlertSink
from engine.alerts.store import AlertStore
from tests.waiting import drain

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_ANY_PORT = "tcp://127.0.0.1:*"


def detection(i, severity="high", category="bruteforce"):
    return Alert(category=category, severity=severity, summary=f"attempt {i}", technique="T1110.001",
                 first_seen=float(i), last_seen=float(i),
                 src=Endpoint(f"10.0.{i // 250}.{i % 250 + 1}"), dst=Endpoint("10.9.0.1", 22))


def bus_config(sensor_id="ward-1", **overrides):
    config = AlertConfig(sensor_id=sensor_id, bus_endpoint=LOOPBACK_ANY_PORT, replay_endpoint=LOOPBACK_ANY_PORT)
    for name, value in overrides.items():
        setattr(config, name, value)
    return config



def test_subscriber_receives_every_alert(tmp_path):
    with AlertSink(tmp_path / "s.db", bus_config()) as sink:
        subscriber = GapFillingSubscriber([sink.bus_endpoint], replay=[sink.replay_endpoint], since=0)
        try:
            # No wait for the subscription: whatever the slow joiner misses
            # live must come through replay.
            for i in range(300):
                sink.publish(detection(i))
            received = drain(subscriber, 300)
        finally:
            subscriber.close()
    assert [m.seq for m in received] == list(range(1, 301))
    assert {m.sensor_id for m in received} == {"ward-1"}
    assert unpack_alert(received[-1].body).summary == "attempt 299"


def test_topic_filter_with_replay(tmp_path):
    with AlertSink(tmp_path / "s.db", bus_config()) as sink:
        for i in range(20):
            sink.publish(detection(i, severity="high" if i % 4 == 0 else "low"))
        subscriber = GapFillingSubscriber([sink.bus_endpoint], topics=["alert.high."],
                                          replay=[sink.replay_endpoint], since=0)
        try:
            received = drain(subscriber, 5)
            extra = subscriber.receive(timeout_s=1.5)
        finally:
            subscriber.close()
    assert [m.seq for m in received] == [1, 5, 9, 13, 17]
    assert extra is None


def test_live_gap_filled_from_replay(tmp_path):
    with AlertSink(tmp_path / "s.db", bus_config()) as sink:
        subscriber = GapFillingSubscriber([sink.bus_endpoint], replay=[sink.replay_endpoint])
        sink.publish(detection(0))
        # Wait until the subscription is live: repeat until one arrives.
        first = None
        while first is None:
            sink.publish(detection(1))
            first = subscriber.receive(timeout_s=0.2)
        # Publications written to the store but never sent on the bus are a
        # gap the next live message reveals.
        for i in range(5):
            sink.store.append(detection(100 + i))
        sink.publish(detection(200))
        try:
            received = [first] + drain(subscriber, 1000, timeout_s=3.0)
        finally:
            subscriber.close()
    seqs = [m.seq for m in received]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert [m.replayed for m in received[-6:]] == [True] * 5 + [False]
    assert subscriber.counters["gaps"] == 1


def tail_command(*arguments):
    code = "import sys; from engine.cli import main; sys.exit(main())"
    return [sys.executable, "-c", code, "alerts", "tail", *arguments]


def test_tail_restart_loses_nothing(tmp_path):
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with AlertSink(tmp_path / "s.db", bus_config()) as sink:
        endpoints = ["--connect", sink.bus_endpoint, "--replay", sink.replay_endpoint]
        first = subprocess.Popen(tail_command(*endpoints, "--json", "--since", "0"),
                                 stdout=subprocess.PIPE, cwd=REPO_ROOT, env=environment, text=True)
        lines = []
        enough = threading.Event()

        def read_until_forty():
            for line in first.stdout:
                lines.append(line)
                if len(lines) == 40:
                    enough.set()
                    return

        reader = threading.Thread(target=read_until_forty)
        reader.start()

        # Phase 1: publish until the first tail has printed 40 alerts.
        published = 0
        deadline = time.monotonic() + 60
        while not enough.is_set() and time.monotonic() < deadline:
            sink.publish(detection(published))
            published += 1
            time.sleep(0.005)
        assert enough.is_set(), "the first tail printed fewer than 40 alerts in 60 s"

        # Phase 2: kill it mid-run and keep publishing while no tail runs.
        first.kill()
        first.wait()
        reader.join()
        for _ in range(100):
            sink.publish(detection(published))
            published += 1

        # Phase 3: restart from the last seq printed, publishing meanwhile.
        last_seq = json.loads(lines[-1])["seq"]
        second = subprocess.Popen(
            tail_command(*endpoints, "--json", "--since", str(last_seq), "--idle-exit-s", "3"),
            stdout=subprocess.PIPE, cwd=REPO_ROOT, env=environment, text=True,
        )
        for _ in range(100):
            sink.publish(detection(published))
            published += 1
            time.sleep(0.005)
        output, _ = second.communicate(timeout=60)
    seqs = [json.loads(line)["seq"] for line in lines + output.splitlines()]
    assert len(lines) == 40
    assert seqs == list(range(1, published + 1))


def make_certificates(directory, name):
    directory.mkdir(parents=True, exist_ok=True)
    return zmq.auth.create_certificates(str(directory), name)


def test_curve_wrong_key_receives_nothing(tmp_path):
    server_public, server_secret = make_certificates(tmp_path / "server", "server")
    good_public, good_secret = make_certificates(tmp_path / "clients", "good")
    _, bad_secret = make_certificates(tmp_path / "others", "bad")
    allow_dir = tmp_path / "allowed"
    allow_dir.mkdir()
    (allow_dir / "good.key").write_bytes(Path(good_public).read_bytes())
    config = bus_config(curve_server_secret=server_secret, curve_allow_dir=str(allow_dir))
    with AlertSink(tmp_path / "s.db", config) as sink:
        # The allowed client also uses the CURVE replay socket, so alerts
        # sent before its subscription is live still reach it.
        good = GapFillingSubscriber([sink.bus_endpoint], replay=[sink.replay_endpoint], since=0,
                                    curve=CurveClientKeys(good_secret, server_public))
        bad = GapFillingSubscriber([sink.bus_endpoint], curve=CurveClientKeys(bad_secret, server_public))
        plain = GapFillingSubscriber([sink.bus_endpoint])
        try:
            time.sleep(0.5)  # let the subscriptions reach the publisher
            for i in range(10):
                sink.publish(detection(i))
            received_good = drain(good, 10, timeout_s=5.0)
            received_bad = drain(bad, 1, timeout_s=1.5)
            received_plain = drain(plain, 1, timeout_s=0.5)
            with pytest.raises(ReplayError, match="rejected this client's CURVE key"):
                ReplayClient(zmq.Context.instance(), sink.replay_endpoint,
                             CurveClientKeys(bad_secret, server_public), timeout_ms=1000).hello()
        finally:
            for subscriber in (good, bad, plain):
                subscriber.close()
    assert [m.seq for m in received_good] == list(range(1, 11))
    assert received_bad == []
    assert received_plain == []


def test_replay_rejects_invalid_requests(tmp_path):
    with AlertSink(tmp_path / "s.db", bus_config()) as sink:
        sink.publish(detection(1))
        client = ReplayClient(zmq.Context.instance(), sink.replay_endpoint)
        with sqlite3.connect(tmp_path / "s.db") as conn:
            stream_id = conn.execute("SELECT stream_id FROM alert_stream").fetchone()[0]
        try:
            assert client.hello() == {"ok": True, "sensor_id": "ward-1", "stream_id": stream_id, "last_seq": 1}
            with pytest.raises(ReplayError, match="invalid since"):
                client.request({"op": "since", "since": -1})
            with pytest.raises(ReplayError, match="invalid op"):
                client.request({"op": "drop"})
            client.socket.send_multipart([b"", b"\xc1not msgpack"])
            client.socket.poll(5000)
            reply = msgpack.unpackb(client.socket.recv_multipart()[-1])
            assert reply["ok"] is False
            assert "not msgpack" in reply["error"]
            pages = list(client.fetch(0, None, ["alert."]))
        finally:
            client.close()
    assert [seq for seq, _, _ in pages] == [1]


def test_collector_merges_two_sensors(tmp_path):
    merged_path = tmp_path / "merged.db"
    with AlertSink(tmp_path / "a.db", bus_config("ward-a")) as sensor_a, \
            AlertSink(tmp_path / "b.db", bus_config("ward-b")) as sensor_b:
        # One alert on each sensor before the collector starts: it arrives
        # through replay once a later one reveals the gap.
        sensor_a.publish(detection(0))
        sensor_b.publish(detection(0))
        collector = Collector([sensor_a.bus_endpoint, sensor_b.bus_endpoint], str(merged_path),
                              bind=LOOPBACK_ANY_PORT,
                              replay=[sensor_a.replay_endpoint, sensor_b.replay_endpoint])
        thread = threading.Thread(target=collector.run)
        thread.start()
        try:
            time.sleep(0.5)
            for i in range(1, 21):
                sensor_a.publish(detection(i))
                sensor_b.publish(detection(i, category="scan"))
            deadline = time.monotonic() + 10
            while collector.counters["stored"] < 42 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            collector.stop()
            thread.join()
            counters = dict(collector.counters)
            collector.close()
    with AlertStore(merged_path) as merged:
        rows = list(merged.iter_events())
    assert counters["stored"] == 42
    assert [seq for seq, _, _, _ in rows] == list(range(1, 43))
    for sensor_id in ("ward-a", "ward-b"):
        sensor_seqs = sorted(s for _, sid, s, _ in rows if sid == sensor_id)
        assert sensor_seqs == list(range(1, 22))
    bodies = [unpack_alert(body) for _, _, _, body in rows]
    assert {(a.sensor_id, a.seq) for a in bodies} == {(s, n) for s in ("ward-a", "ward-b") for n in range(1, 22)}


def test_stats_topic_delivered(tmp_path):
    from engine.alerts.store import RunStats

    with AlertSink(tmp_path / "s.db", bus_config()) as sink:
        subscriber = GapFillingSubscriber([sink.bus_endpoint], topics=["stats"])
        try:
            message = None
            deadline = time.monotonic() + 5
            while message is None and time.monotonic() < deadline:
                sink.publish_stats(RunStats(sensor_id="ward-1", source="a.pcap", packets=1234))
                message = subscriber.receive(timeout_s=0.2)
        finally:
            subscriber.close()
    assert message is not None
    assert message.topic == "stats"
    body = msgpack.unpackb(message.body)
    assert body["type"] == "stats"
    assert body["packets"] == 1234


def collect_command(*arguments):
    code = "import sys; from engine.cli import main; sys.exit(main())"
    return [sys.executable, "-c", code, "collect", *arguments]


def test_collect_command_republishes(tmp_path):
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    merged_path = tmp_path / "merged.db"
    with AlertSink(tmp_path / "a.db", bus_config("ward-a")) as sensor:
        for i in range(3):
            sensor.publish(detection(i))
        process = subprocess.Popen(
            collect_command("--connect", sensor.bus_endpoint, "--replay", sensor.replay_endpoint,
                            "--store", str(merged_path), "--bind", LOOPBACK_ANY_PORT, "--idle-exit-s", "4"),
            stderr=subprocess.PIPE, cwd=REPO_ROOT, env=environment, text=True,
        )
        bound_line = process.stderr.readline()
        assert bound_line.startswith("re-publishing on tcp://127.0.0.1:"), bound_line
        downstream = GapFillingSubscriber([bound_line.split()[-1]])
        try:
            received = None
            i = 3
            while received is None and i < 100:
                sensor.publish(detection(i))
                received = downstream.receive(timeout_s=0.2)
                i += 1
        finally:
            downstream.close()
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    assert received is not None
    assert received.sensor_id == "ward-a"
    with AlertStore(merged_path) as merged:
        sensor_seqs = [sensor_seq for _, _, sensor_seq, _ in merged.iter_events()]
    # The three alerts published before the collector started came through replay.
    assert sensor_seqs == list(range(1, i + 1))


def test_memory_store_rejects_replay():
    with pytest.raises(ValueError, match="replay needs a store file"):
        AlertSink(":memory:", bus_config())


def test_malformed_messages_skipped():
    context = zmq.Context.instance()
    publisher = context.socket(zmq.PUB)
    publisher.bind(LOOPBACK_ANY_PORT)
    endpoint = publisher.getsockopt_string(zmq.LAST_ENDPOINT)
    subscriber = GapFillingSubscriber([endpoint])
    try:
        # Repeat seq 1 until the subscription is live; later repeats are
        # dropped as duplicates.
        first = None
        deadline = time.monotonic() + 5
        while first is None and time.monotonic() < deadline:
            publisher.send_multipart([b"alert.high.scan", msgpack.packb({"seq": 1, "sensor_id": "ward-x"})])
            first = subscriber.receive(timeout_s=0.2)
        publisher.send_multipart([b"alert.high.scan", b"\xc1"])  # 0xc1 is never valid msgpack
        publisher.send_multipart([b"alert.high.scan"])  # one frame instead of two
        publisher.send_multipart([b"alert.high.scan", msgpack.packb({"sensor_id": "ward-x"})])  # no seq
        publisher.send_multipart([b"alert.high.scan", msgpack.packb({"seq": 2, "sensor_id": "ward-x"})])
        second = subscriber.receive(timeout_s=5)
    finally:
        subscriber.close()
        publisher.close(linger=0)
    assert first is not None
    assert first.seq == 1
    assert second.seq == 2
    assert subscriber.counters["malformed"] == 3


def test_bind_conflict_clear_error(tmp_path):
    with AlertSink(tmp_path / "a.db", bus_config()) as first:
        taken = first.bus_endpoint
        with pytest.raises(OSError, match="cannot bind the alert bus to tcp://127.0.0.1:"):
            AlertSink(tmp_path / "b.db", bus_config(bus_endpoint=taken)).open()

"""Bus consumer edge cases on real loopback sockets: --since ahead, sensor stop, CEF loss, proto fields."""

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth

from engine.alerts.bus import GapFillingSubscriber
from engine.alerts.config import AlertConfig
from engine.alerts.outputs import cef_message, eve_record
from engine.alerts.schema import Alert, Endpoint
from engine.alerts.sink import AlertSink

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_ANY_PORT = "tcp://127.0.0.1:*"


def detection(i, protocol="tcp"):
    return Alert(category="bruteforce", severity="high", summary=f"attempt {i}", technique="T1110.001",
                 first_seen=float(i), last_seen=float(i), src=Endpoint("10.0.0.5"), dst=Endpoint("10.9.0.1", 22),
                 protocol=protocol)


def bus_config(**overrides):
    config = AlertConfig(sensor_id="ward-1", bus_endpoint=LOOPBACK_ANY_PORT, replay_endpoint=LOOPBACK_ANY_PORT)
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def cef_extensions(message):
    # "CEF:0|vendor|product|version|id|name|severity|k=v k=v": values here have no spaces except msg.
    body = message.split("|", 7)[7]
    return dict(part.split("=", 1) for part in body.split(" ") if "=" in part)


def test_tail_since_ahead_follows_live(tmp_path):
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    code = "import sys; from engine.cli import main; sys.exit(main())"
    with AlertSink(tmp_path / "s.db", bus_config()) as sink:
        for i in range(3):
            sink.publish(detection(i))
        tail = subprocess.Popen(
            [sys.executable, "-c", code, "alerts", "tail", "--connect", sink.bus_endpoint,
             "--replay", sink.replay_endpoint, "--since", "1000", "--json", "--max-alerts", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT, env=environment, text=True,
        )
        # Publish until the tail has subscribed and printed the next seq.
        published = 3
        deadline = time.monotonic() + 30
        while tail.poll() is None and time.monotonic() < deadline:
            sink.publish(detection(published))
            published += 1
            time.sleep(0.2)
        stdout, stderr = tail.communicate(timeout=30)
    assert tail.returncode == 0
    # The tail requests the sensor's last seq once it runs, which may be
    # after a few of the publications above.
    found = re.search(r"--since 1000 is ahead of sensor ward-1, whose last seq is (\d+)", stderr)
    assert found is not None, stderr
    last_seq = int(found.group(1))
    assert 3 <= last_seq < published
    printed = json.loads(stdout.splitlines()[0])
    assert printed["seq"] == last_seq + 1
    assert printed["sensor_id"] == "ward-1"


def test_normal_stop_is_not_a_failure(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="engine.alerts.bus")
    sink = AlertSink(tmp_path / "s.db", bus_config()).open()
    subscriber = GapFillingSubscriber([sink.bus_endpoint], replay=[sink.replay_endpoint], since=0,
                                      idle_check_s=0.2)
    try:
        received = []
        deadline = time.monotonic() + 10
        sink.publish(detection(1))
        sink.publish(detection(2))
        while len(received) < 2 and time.monotonic() < deadline:
            message = subscriber.receive(timeout_s=0.5)
            if message is not None:
                received.append(message.seq)
        time.sleep(0.3)  # let the subscription to sensor.stopped reach the publisher
        sink.close()
        # Several idle checks pass after the stop.
        assert subscriber.receive(timeout_s=1.5) is None
    finally:
        subscriber.close()
    assert received == [1, 2]
    assert [sensor_id for sensor_id, _ in subscriber.stopped] == ["ward-1"]
    assert subscriber.counters["gaps_unfilled"] == 0
    messages = [record.getMessage() for record in caplog.records]
    assert "sensor ward-1 stopped normally at seq 2" in messages
    assert not [m for m in messages if "failed" in m]


def test_stop_reports_alerts_not_received(tmp_path, caplog):
    sink = AlertSink(tmp_path / "s.db", bus_config()).open()
    subscriber = GapFillingSubscriber([sink.bus_endpoint], replay=[sink.replay_endpoint], since=0,
                                      idle_check_s=60.0)
    try:
        sink.publish(detection(1))
        first = subscriber.receive(timeout_s=5.0)
        # The subscriber unsubscribes, so it misses the next two live
        # messages. Its idle check is 60 s away, so it cannot fetch them
        # before the sensor stops.
        subscriber.socket.setsockopt(zmq.UNSUBSCRIBE, b"alert.")
        time.sleep(0.3)
        sink.publish(detection(2))
        sink.publish(detection(3))
        sink.close()
        assert subscriber.receive(timeout_s=1.0) is None
    finally:
        subscriber.close()
    assert first.seq == 1
    assert subscriber.counters["gaps_unfilled"] == 2
    assert any("sensor ward-1 stopped at seq 3; alerts 2..3 were not received" in r.getMessage()
               for r in caplog.records)


def closed_tcp_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_cef_undelivered_counted_and_logged_once(tmp_path, caplog):
    target = f"tcp://127.0.0.1:{closed_tcp_port()}"
    config = AlertConfig(sensor_id="ward-1", bus_endpoint=None, replay_endpoint=None, cef_target=target)
    sink = AlertSink(tmp_path / "s.db", config).open()
    sink.cef.reconnect_interval_s = 0.0  # every message tries to connect again
    for i in range(3):
        sink.publish(detection(i))
    stats = sink.stats()
    sink.close()
    assert stats["cef_dropped"] == 3
    assert stats["cef_connect_failed"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([m for m in warnings if m.startswith(f"cannot connect to syslog target {target}")]) == 1
    assert f"3 of 3 CEF messages were not delivered to {target}" in " ".join(warnings)


def test_eve_and_cef_proto_is_transport():
    cases = [
        ("hl7", "TCP", "hl7"),
        ("tcp", "TCP", None),
        ("udp", "UDP", None),
        ("dns", None, "dns"),
        ("arp", None, None),
        ("47", "47", None),
    ]
    for protocol, transport, application in cases:
        alert = detection(1, protocol=protocol)
        record = eve_record(alert)
        extensions = cef_extensions(cef_message(alert))
        assert record.get("proto") == transport, protocol
        assert record.get("app_proto") == application, protocol
        assert record.get("network", {}).get("transport") == (transport.lower() if transport else None), protocol
        assert extensions.get("proto") == transport, protocol
        assert extensions.get("app") == application, protocol


def test_curve_allowlist_with_garbage_rejected(tmp_path):
    _, server_secret = zmq.auth.create_certificates(str(tmp_path), "server")
    allow_dir = tmp_path / "allowed"
    allow_dir.mkdir()
    (allow_dir / "notes.key").write_text("not a certificate\n")
    config = bus_config(curve_server_secret=server_secret, curve_allow_dir=str(allow_dir))
    with pytest.raises(ValueError, match="invalid CURVE allowlist .*keep only public certificates"):
        AlertSink(tmp_path / "s.db", config).open()

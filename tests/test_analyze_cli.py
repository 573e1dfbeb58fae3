"""`wardwatch analyze` end to end: sample capture, labels, store, bus and real captures."""

import ipaddress
import json
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from engine.alerts.bus import GapFillingSubscriber, ReplayError
from engine.taxonomy import ATTACK_CLASSES

SAMPLE = Path(__file__).resolve().parent.parent / "engine" / "data" / "sample.pcap"
SAMPLE_LABELS = SAMPLE.with_name("sample.labels.jsonl")


def run_analyze(*args, timeout=300):
    """Run `python -m engine analyze ARGS`; return the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "engine", "analyze", *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
    )


def stored_alerts(store):
    """Return every alert's latest body from the store, decoded."""
    with sqlite3.connect(store) as conn:
        rows = conn.execute(
            "SELECT body FROM alert_events WHERE seq IN (SELECT MAX(seq) FROM alert_events GROUP BY alert_id)"
        ).fetchall()
    return [msgpack.unpackb(row[0], raw=False) for row in rows]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    store = tmp_path_factory.mktemp("analyze") / "sample.db"
    result = run_analyze("--store", store, "--no-bus")
    assert result.returncode == 0, result.stderr
    return store, result, stored_alerts(store)


def load_labels():
    return [json.loads(line) for line in SAMPLE_LABELS.read_text().splitlines() if line.strip()]


def attack_hosts(labels):
    """Return the addresses that take part in any labelled attack (sources, targets, flow ends)."""
    hosts = set()
    for label in labels:
        for key in ("src", "dst"):
            value = label.get(key)
            values = value if isinstance(value, list) else [value]
            hosts.update(v for v in values if v)
        for flow in label.get("flows", []):
            hosts.update((flow["src"], flow["dst"]))
        selector = label.get("selector") or {}
        if selector.get("dst"):
            hosts.add(selector["dst"])
    return hosts


def test_sample_run_prints_summary(sample_run):
    _, result, _ = sample_run
    assert "packets 9,553" in result.stdout
    assert "alerts by category:" in result.stdout
    assert "Traceback" not in result.stderr


def test_sample_every_label_has_alert(sample_run):
    _, _, alerts = sample_run
    detections = [a for a in alerts if a["kind"] in ("detection", "login")]
    for label in load_labels():
        category = ATTACK_CLASSES[label["attack_class"]].category
        selector = label.get("selector") or {}
        if label["attack_class"] == "arp_spoof":
            # The attacker claims someone else's address, so it is known by MAC.
            matching = [a for a in detections if a["category"] == category
                        and a["src"]["mac"] == selector["src_mac"]]
        elif selector.get("src_cidr"):
            # Spoofed flood sources: the alert is keyed by its target.
            matching = [a for a in detections if a["category"] == category and a["dst"]["ip"] == selector["dst"]]
        else:
            matching = [a for a in detections if a["category"] == category and a["src"]["ip"] == label["src"]]
        assert matching, f"no {category} alert for label {label['attack_class']} from {label['src']}"


def test_sample_no_high_detection_on_benign_hosts(sample_run):
    _, _, alerts = sample_run
    involved = attack_hosts(load_labels())
    spoofed = ipaddress.ip_network("192.0.2.0/24")  # the simulator's flood sources
    for alert in alerts:
        if alert["kind"] != "detection" or alert["severity"] not in ("high", "critical"):
            continue
        hosts = [h for h in (alert["src"]["ip"], alert["dst"]["ip"]) if h]
        assert any(h in involved or ipaddress.ip_address(h) in spoofed for h in hosts) or alert["src"]["mac"], (
            f"high-severity {alert['category']} alert between benign hosts {hosts}: {alert['summary']}"
        )


def test_sample_run_stats_in_store(sample_run):
    store, _, alerts = sample_run
    with sqlite3.connect(store) as conn:
        packets, flows, alert_count = conn.execute("SELECT packets, flows, alerts FROM runs").fetchone()
    assert packets == 9553  # capinfos -c engine/data/sample.pcap
    assert flows > 0
    assert alert_count == len(alerts)


def test_sample_alerts_carry_no_patient_names(sample_run):
    # The simulator's patient names all start with "ZZ" and MRNs with "SIM".
    store, _, _ = sample_run
    with sqlite3.connect(store) as conn:
        bodies = b"".join(row[0] for row in conn.execute("SELECT body FROM alert_events"))
    assert b"^ZZ" not in bodies
    assert b"SIM0" not in bodies


def connect_subscriber(bus, replay, attempts=10):
    """Subscribe from seq 0, retrying while the sensor is too busy to serve its replay socket.

    Returns the subscriber and the first message (or None), because the
    first receive is what sends hello to the replay socket.
    """
    for attempt in range(attempts):
        subscriber = GapFillingSubscriber([bus], replay=[replay], since=0, idle_check_s=0.2)
        try:
            return subscriber, subscriber.receive(timeout_s=0.1)
        except ReplayError:
            subscriber.close()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def test_subscriber_receives_every_alert(tmp_path):
    store = tmp_path / "bus.db"
    bus = f"tcp://127.0.0.1:{free_port()}"
    replay = f"tcp://127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "analyze", "-q", "--store", str(store), "--bus", bus,
         "--replay-bind", replay, "--linger", "15"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Wait for the sockets, then subscribe from the beginning (since 0):
        # replay covers what was published before the subscription.
        for line in process.stderr:
            if line.startswith("Publishing alerts on"):
                break
        subscriber, first = connect_subscriber(bus, replay)
        received = []
        if first is not None:
            received.append(first.seq)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message = subscriber.receive(timeout_s=0.5)
            if message is not None:
                received.append(message.seq)
            with sqlite3.connect(store) as conn:
                runs = conn.execute("SELECT COUNT(*) FROM runs WHERE ended_at IS NOT NULL").fetchone()[0]
                last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM alert_events").fetchone()[0]
            if runs and received and received[-1] == last:
                break
        subscriber.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert last > 0
    assert received == list(range(1, last + 1))


# Real captures from ../shared: (file, alert category expected).
SHARED_ATTACKS = [
    ("zeek-ftp-bruteforce.pcap", "bruteforce"),
    ("zeek-nmap-vsn.pcap", "scan"),
    ("ndpi-dns-exfiltration.pcap", "tunneling"),
    ("ddos-dns-rrsig-fragmented.pcap", "dos"),
]


@pytest.mark.parametrize("name,category", SHARED_ATTACKS)
def test_shared_attack_capture_category(shared_pcaps, tmp_path, name, category):
    store = tmp_path / "a.db"
    result = run_analyze("--store", store, "--no-bus", shared_pcaps / name)
    assert result.returncode == 0, result.stderr
    categories = {a["category"] for a in stored_alerts(store) if a["kind"] == "detection"}
    assert category in categories


def test_web_browsing_has_no_high_alert(shared_pcaps, tmp_path):
    store = tmp_path / "web.db"
    result = run_analyze("--store", store, "--no-bus", shared_pcaps / "ppp-example-web-browsing.pcap")
    assert result.returncode == 0, result.stderr
    high = [a for a in stored_alerts(store) if a["severity"] in ("high", "critical")]
    assert high == [], [a["summary"] for a in high]


def test_every_shared_capture_without_traceback(shared_pcaps, tmp_path):
    captures = sorted(p for p in shared_pcaps.iterdir() if p.suffix in (".pcap", ".pcapng", ".zst"))
    result = run_analyze("--store", tmp_path / "all.db", "--no-bus", "-q", *captures, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for capture in captures:
        assert f"--- {capture}" in result.stdout
    # Exit 1 only where a capture could not be read; each such file has an "error:" line.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == (1 if errors else 0)


def test_console_line_brackets_ipv6_destination():
    from engine.alerts.schema import Alert, Endpoint
    from engine.analyze.cli import format_alert_line

    alert = Alert(category="cleartext_credentials", severity="high", summary="MQTT password in cleartext",
                  src=Endpoint(ip="2001:db8::7"), dst=Endpoint(ip="2001:db8::1", port=1883))
    alert.seq = 4
    line = format_alert_line(alert)
    assert "2001:db8::7 -> [2001:db8::1]:1883: MQTT password" in line
    alert.dst = Endpoint(ip="10.0.0.1", port=1883)
    assert "2001:db8::7 -> 10.0.0.1:1883: " in format_alert_line(alert)

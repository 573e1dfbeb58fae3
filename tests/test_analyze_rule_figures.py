"""Threshold-rule alerts state their window's totals, whatever the batch size."""

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import dpkt
import msgpack
import pytest

from engine.alerts import AlertSink
from engine.alerts.config import AlertConfig
from engine.analyze.alerts import alert_from_detection
from engine.analyze.pipeline import AnalyzeOptions, Pipeline
from engine.analyze.rules import RuleConfig
from engine.capture import open_capture

REPO_ROOT = Path(__file__).resolve().parent.parent

ATTACKER = "10.20.0.66"
SSH_SERVER = "10.10.1.5"
FLOOD_TARGET = "10.10.1.9"
START_S = 1_700_000_000.0
ATTACKER_MAC = b"\x02\x00\x00\x00\x00\x01"
SERVER_MAC = b"\x02\x00\x00\x00\x00\x02"


def tcp_frame(src, dst, sport, dport, flags, payload=b"", seq=1000, ack=0, src_mac=ATTACKER_MAC, dst_mac=SERVER_MAC):
    segment = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, win=8192, data=payload)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64, data=segment)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(src=src_mac, dst=dst_mac, data=ip))


def login_session(client_port, start_s, client=ATTACKER):
    """Return (time, frame) pairs of one short, refused SSH login: handshake, banners, both FINs."""
    c, s = 5000, 9000  # initial sequence numbers of client and server
    fin, syn, ack, psh = dpkt.tcp.TH_FIN, dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH
    def to_server(flags, payload=b"", seq=0, ack_no=0):
        return tcp_frame(client, SSH_SERVER, client_port, 22, flags, payload, seq, ack_no)

    def to_client(flags, payload=b"", seq=0, ack_no=0):
        return tcp_frame(SSH_SERVER, client, 22, client_port, flags, payload, seq, ack_no, SERVER_MAC, ATTACKER_MAC)

    banner = b"SSH-2.0-OpenSSH_9.6\r\n"
    frames = [
        to_server(syn, seq=c),
        to_client(syn | ack, seq=s, ack_no=c + 1),
        to_server(ack, seq=c + 1, ack_no=s + 1),
        to_client(psh | ack, banner, s + 1, c + 1),
        to_server(psh | ack, banner, c + 1, s + 1 + len(banner)),
        to_client(fin | ack, seq=s + 1 + len(banner), ack_no=c + 1 + len(banner)),
        to_server(fin | ack, seq=c + 1 + len(banner), ack_no=s + 2 + len(banner)),
        to_client(ack, seq=s + 2 + len(banner), ack_no=c + 2 + len(banner)),
    ]
    return [(start_s + 0.01 * i, frame) for i, frame in enumerate(frames)]


def write_pcap(path, timed_frames):
    with open(path, "wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        for when, frame in sorted(timed_frames, key=lambda pair: pair[0]):
            writer.writepkt(frame, ts=when)
    return path


@pytest.fixture(scope="module")
def bruteforce_capture(tmp_path_factory):
    # 25 login sessions from one client, one every 2 s, each from a new
    # client port: one brute-force window of 25 sessions over 48 s.
    frames = []
    for i in range(25):
        frames += login_session(41000 + i, START_S + 2.0 * i)
    return write_pcap(tmp_path_factory.mktemp("bruteforce") / "ssh.pcap", frames), 25


@pytest.fixture(scope="module")
def syn_flood_capture(tmp_path_factory):
    # 700 SYNs from 700 spoofed sources to one web server, 5 ms apart
    # (3.5 s in all, inside the 10 s window), none answered.
    frames = [
        (START_S + 0.005 * i,
         tcp_frame(f"198.51.{i // 250}.{i % 250 + 1}", FLOOD_TARGET, 1024 + i, 80, dpkt.tcp.TH_SYN))
        for i in range(700)
    ]
    return write_pcap(tmp_path_factory.mktemp("flood") / "syn.pcap", frames), 700


def run_rules(path, batch_size, options=None):
    """Run a capture through a model-less pipeline in batches of `batch_size` packets; return the detections."""
    pipeline = Pipeline(None, options)
    detections = []
    with open_capture(path, batch_size=batch_size) as reader:
        for batch in reader:
            detections += pipeline.process(batch.packets, batch.data)
    detections += pipeline.finish()
    return detections


def closing_alerts(detections, origin):
    """Submit detections to a real sink (SQLite in memory); return the closing revisions of `origin`'s alerts."""
    config = AlertConfig(bus_endpoint=None, replay_endpoint=None)
    published = []
    with AlertSink(":memory:", config) as sink:
        for detection in detections:
            published += sink.submit(alert_from_detection(detection))
        published += sink.flush()
    return [a for a in published if a.state == "closed" and a.evidence.get("origin") == origin]


@pytest.mark.parametrize("batch_size", [4, 64, 8192])
def test_bruteforce_same_figures_any_batch(bruteforce_capture, batch_size):
    path, sessions = bruteforce_capture
    detections = run_rules(path, batch_size)
    reports = [d for d in detections if d.origin == "rule:bruteforce"]
    if batch_size == 4:
        # The window grew across batches: reported more than once.
        assert len(reports) > 1
    (alert,) = closing_alerts(detections, "rule:bruteforce")
    assert alert.evidence["sessions"] == sessions
    assert alert.summary == f"{ATTACKER} opened {sessions} short login sessions to {SSH_SERVER} port 22"
    assert alert.count == 1
    assert len(alert.flow_ids) == len(set(alert.flow_ids))
    assert len(alert.flow_ids) == sessions
    assert alert.first_seen == pytest.approx(START_S + 0.07)  # last packet of the first session
    assert alert.last_seen == pytest.approx(START_S + 48.07)  # last packet of the last session


@pytest.mark.parametrize("batch_size", [50, 8192])
def test_syn_flood_same_figures_any_batch(syn_flood_capture, batch_size):
    path, attempts = syn_flood_capture
    # A half-open flow ends at its idle timeout, so a short one lets the
    # flood's flows end while later batches are still read.
    detections = run_rules(path, batch_size, AnalyzeOptions(idle_timeout_s=0.5))
    if batch_size == 50:
        assert len([d for d in detections if d.origin == "rule:syn_flood"]) > 1
    (alert,) = closing_alerts(detections, "rule:syn_flood")
    assert alert.evidence["half_open_attempts"] == attempts
    assert alert.evidence["distinct_sources"] == attempts
    expected = f"{attempts} half-open connections to {FLOOD_TARGET} port 80 from {attempts} sources"
    assert alert.summary.startswith(expected)
    assert alert.count == 1


def test_window_restart_in_one_batch(tmp_path):
    # 12 sessions, then 12 more once the 300 s window has passed: two
    # windows of one key, both ended and reported within one batch.
    frames = []
    for i in range(12):
        frames += login_session(41000 + i, START_S + 2.0 * i)
    for i in range(12):
        frames += login_session(42000 + i, START_S + 400.0 + 2.0 * i)
    detections = run_rules(write_pcap(tmp_path / "two-windows.pcap", frames), 8192)
    reports = [d for d in detections if d.origin == "rule:bruteforce"]
    # A window grown again when the last flows are flushed at the end of
    # input is reported again; its latest report carries the total.
    latest = {}
    for detection in reports:
        latest[detection.evidence["window_start"]] = detection.evidence["sessions"]
    assert list(latest.values()) == [12, 12]
    # The windows lie 400 s apart, past the 300 s quiet period of an
    # alert, so each gets its own alert.
    alerts = closing_alerts(detections, "rule:bruteforce")
    assert [a.evidence["sessions"] for a in alerts] == [12, 12]
    assert [a.count for a in alerts] == [1, 1]


def test_full_port_set_says_at_least(tmp_path):
    # 4100 unanswered SYNs to 4100 ports of one host: the port set stops at
    # its cap of 4096 items, so the figure is a lower bound.
    frames = [(START_S + 0.001 * i, tcp_frame(ATTACKER, SSH_SERVER, 30000, 1 + i, dpkt.tcp.TH_SYN))
              for i in range(4100)]
    detections = run_rules(write_pcap(tmp_path / "scan.pcap", frames), 8192)
    scans = [d for d in detections if d.origin == "rule:port_scan"]
    assert scans[-1].evidence["distinct_ports"] == 4096
    assert scans[-1].evidence["lower_bound"] == ["distinct_ports"]
    (alert,) = closing_alerts(detections, "rule:port_scan")
    assert alert.summary.startswith(f"{ATTACKER} probed at least 4,096 ports of {SSH_SERVER}")


def test_window_after_eviction_says_at_least(tmp_path):
    # The rule table has room for one key. The attacker's first 3 sessions
    # are lost when another client's session evicts its key, so the 25
    # sessions counted after that are a lower bound of the 28 it made.
    frames = []
    for i in range(3):
        frames += login_session(41000 + i, START_S + 2.0 * i)
    frames += login_session(50000, START_S + 10.0, client="10.20.0.77")
    for i in range(25):
        frames += login_session(42000 + i, START_S + 20.0 + 2.0 * i)
    options = AnalyzeOptions(rules=RuleConfig(max_keys=1))
    detections = run_rules(write_pcap(tmp_path / "evicted.pcap", frames), 64, options)
    (alert,) = closing_alerts(detections, "rule:bruteforce")
    assert alert.evidence["sessions"] == 25
    assert alert.evidence["lower_bound"] == ["sessions"]
    assert alert.summary.startswith(f"{ATTACKER} opened at least 25 short login sessions")


def ftp_login_sessions(path):
    """Return the client ports of the capture's FTP sessions that the brute-force rule counts, per dpkt.

    A session counts when the server answered, it lasted at most 30 s and
    carried at most 20,000 bytes, the rule's defaults.
    """
    sessions = {}
    with open(path, "rb") as handle:
        for when, buf in dpkt.pcap.Reader(handle):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            if tcp.dport == 21:
                client_port, from_server = tcp.sport, False
            elif tcp.sport == 21:
                client_port, from_server = tcp.dport, True
            else:
                continue
            session = sessions.setdefault(client_port, {"first": when, "last": when, "bytes": 0, "answered": False})
            session["last"] = when
            session["bytes"] += len(buf)
            session["answered"] |= from_server
    return {
        port for port, s in sessions.items()
        if s["answered"] and s["last"] - s["first"] <= 30.0 and s["bytes"] <= 20_000
    }


def stored_closing_alert(store, origin):
    with sqlite3.connect(store) as conn:
        rows = conn.execute("SELECT body FROM alert_events ORDER BY seq").fetchall()
    alerts = [msgpack.unpackb(row[0], raw=False) for row in rows]
    closing = [a for a in alerts if a["state"] == "closed" and a["evidence"].get("origin") == origin]
    assert len(closing) == 1, [a["summary"] for a in closing]
    return closing[0]


@pytest.mark.parametrize("batch_size", [16, 8192])
def test_ftp_capture_states_every_session(shared_pcaps, tmp_path, batch_size):
    capture = shared_pcaps / "zeek-ftp-bruteforce.pcap"
    sessions = ftp_login_sessions(capture)
    store = tmp_path / "ftp.db"
    result = subprocess.run(
        [sys.executable, "-m", "engine", "analyze", "--store", str(store), "--no-bus", "-q",
         "--batch-size", str(batch_size), str(capture)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    alert = stored_closing_alert(store, "rule:bruteforce")
    assert alert["evidence"]["sessions"] == len(sessions)
    assert f"opened {len(sessions)} short login sessions to 192.168.56.101 port 21" in alert["summary"]
    assert alert["count"] == 1
    assert len(alert["flow_ids"]) == len(set(alert["flow_ids"]))

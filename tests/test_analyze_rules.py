"""Threshold rules of the analysis pipeline, on built packets and real captures."""

import socket
import struct
import subprocess

import dpkt
import numpy as np
import pytest

from conftest import require_tool
from engine.analyze.pipeline import Pipeline
from engine.analyze.rules import RuleConfig
from engine.analyze.pipeline import AnalyzeOptions
from engine.capture import open_capture
from engine.decode.batches import build_batch

ATTACKER = "10.20.0.66"
TARGET = "10.10.1.5"
BASE_TIME_NS = 1_700_000_000 * 10**9


def tcp_frame(src, dst, sport, dport, flags, src_mac=b"\x02\x00\x00\x00\x00\x01"):
    segment = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=1000, win=8192)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, data=segment)
    ip.len = len(ip)
    frame = dpkt.ethernet.Ethernet(src=src_mac, dst=b"\x02\x00\x00\x00\x00\x02", data=ip)
    return bytes(frame)


def arp_frame(op, sender_ip, target_ip, sender_mac):
    arp = dpkt.arp.ARP(op=op, sha=sender_mac, spa=socket.inet_aton(sender_ip),
                       tha=b"\x00" * 6, tpa=socket.inet_aton(target_ip))
    frame = dpkt.ethernet.Ethernet(src=sender_mac, dst=b"\xff" * 6, type=dpkt.ethernet.ETH_TYPE_ARP, data=arp)
    return bytes(frame)


def run_frames(frames, spacing_ns=1_000_000, options=None):
    """Run frames through a model-less pipeline; return the detections."""
    packets, data = build_batch(frames)
    packets["ts_ns"] = BASE_TIME_NS + np.arange(len(frames), dtype=np.int64) * spacing_ns
    pipeline = Pipeline(None, options)
    detections = pipeline.process(packets, data)
    detections += pipeline.finish()
    return detections


def run_capture(path):
    pipeline = Pipeline(None)
    detections = []
    with open_capture(path) as reader:
        for batch in reader:
            detections += pipeline.process(batch.packets, batch.data)
    detections += pipeline.finish()
    return detections


def test_port_scan_from_unanswered_syns():
    # 20 SYNs to 20 ports of one host, none with a reply: 20 S0 flows.
    frames = [tcp_frame(ATTACKER, TARGET, 40000 + i, 1000 + i, dpkt.tcp.TH_SYN) for i in range(20)]
    detections = run_frames(frames)
    scans = [d for d in detections if d.attack_class == "port_scan"]
    assert len(scans) == 1
    assert scans[0].src_ip == ATTACKER
    assert scans[0].dst_ip == TARGET
    # One report per batch with the window's running total: all 20 ports.
    assert scans[0].evidence["distinct_ports"] == 20
    assert scans[0].technique == "T1046"


def test_port_scan_below_threshold_is_silent():
    frames = [tcp_frame(ATTACKER, TARGET, 40000 + i, 1000 + i, dpkt.tcp.TH_SYN) for i in range(14)]
    assert [d for d in run_frames(frames) if d.attack_class == "port_scan"] == []


def test_syn_flood_keyed_by_target():
    # 600 SYNs from 600 spoofed sources to one web server port.
    frames = [
        tcp_frame(f"198.51.{i // 250}.{i % 250 + 1}", TARGET, 1024 + i, 80, dpkt.tcp.TH_SYN)
        for i in range(600)
    ]
    detections = run_frames(frames, spacing_ns=100_000)
    floods = [d for d in detections if d.attack_class == "syn_flood"]
    assert len(floods) == 1
    assert floods[0].dst_ip == TARGET
    assert floods[0].dst_port == 80
    assert floods[0].src_ip is None  # many sources
    assert floods[0].evidence["half_open_attempts"] == 600
    assert floods[0].evidence["distinct_sources"] == 600


def test_arp_binding_change_is_spoofing():
    legitimate = b"\x00\x1b\x21\x00\x00\x01"
    attacker = b"\x02\xde\xad\xbe\xef\x01"
    frames = [
        arp_frame(2, "10.10.0.1", "10.10.0.20", legitimate),
        arp_frame(2, "10.10.0.1", "10.10.0.20", legitimate),
        arp_frame(2, "10.10.0.1", "10.10.0.20", attacker),
    ]
    spoofs = [d for d in run_frames(frames) if d.attack_class == "arp_spoof"]
    assert len(spoofs) == 1
    assert spoofs[0].src_ip is None  # 10.10.0.1 is the victim's address
    assert spoofs[0].src_mac == "02:de:ad:be:ef:01"
    assert spoofs[0].evidence == {
        "claimed_address": "10.10.0.1",
        "previous_mac": "00:1b:21:00:00:01",
        "new_mac": "02:de:ad:be:ef:01",
    }


def test_unsolicited_arp_replies_are_spoofing():
    # Five replies claiming the gateway, sent to five hosts that never asked.
    attacker = b"\x02\xde\xad\xbe\xef\x02"
    frames = [arp_frame(2, "10.10.0.1", f"10.10.0.{20 + i}", attacker) for i in range(5)]
    spoofs = [d for d in run_frames(frames) if d.attack_class == "arp_spoof"]
    assert len(spoofs) == 1
    assert spoofs[0].src_mac == "02:de:ad:be:ef:02"
    assert spoofs[0].evidence["unsolicited_replies"] == 5
    assert spoofs[0].evidence["receivers"] == 5


def test_solicited_arp_replies_are_not_spoofing():
    gateway = b"\x00\x1b\x21\x00\x00\x09"
    frames = []
    for i in range(6):
        frames.append(arp_frame(1, f"10.10.0.{20 + i}", "10.10.0.1", b"\x02\x00\x00\x00\x01" + bytes([i])))
        frames.append(arp_frame(2, "10.10.0.1", f"10.10.0.{20 + i}", gateway))
    assert [d for d in run_frames(frames) if d.attack_class == "arp_spoof"] == []


def test_rule_thresholds_come_from_config():
    frames = [tcp_frame(ATTACKER, TARGET, 40000 + i, 1000 + i, dpkt.tcp.TH_SYN) for i in range(5)]
    options = AnalyzeOptions(rules=RuleConfig(scan_ports_per_host=5))
    scans = [d for d in run_frames(frames, options=options) if d.attack_class == "port_scan"]
    assert len(scans) == 1


# Real captures: (file, expected attack class, expected source or target).
CAPTURE_CASES = [
    ("zeek-ftp-bruteforce.pcap", "ftp_bruteforce", "192.168.56.1"),
    ("zeek-nmap-vsn.pcap", "host_sweep", "192.168.1.71"),
    ("ndpi-dns-exfiltration.pcap", "dns_tunnel", "192.168.220.56"),
]


@pytest.mark.parametrize("name,attack_class,source", CAPTURE_CASES)
def test_rules_on_real_attack_captures(shared_pcaps, name, attack_class, source):
    detections = run_capture(shared_pcaps / name)
    classes = {d.attack_class for d in detections}
    assert classes == {attack_class}
    assert {d.src_ip for d in detections} == {source}


def test_ftp_bruteforce_counts_sessions(shared_pcaps):
    capture = shared_pcaps / "zeek-ftp-bruteforce.pcap"
    # Every connection the client opened to port 21, by its client port.
    output = subprocess.run(
        [require_tool("tshark"), "-r", str(capture), "-Y", "tcp.flags.syn==1 && tcp.flags.ack==0 && tcp.dstport==21",
         "-T", "fields", "-e", "tcp.srcport"],
        capture_output=True, text=True, check=True,
    ).stdout
    client_ports = set(output.split())
    detections = run_capture(capture)
    # The window's latest report states every session, not the threshold.
    assert detections[-1].evidence["sessions"] == len(client_ports)
    assert detections[-1].dst_ip == "192.168.56.101"
    assert detections[-1].dst_port == 21


def test_dns_reflection_is_udp_flood(shared_pcaps):
    detections = run_capture(shared_pcaps / "ddos-dns-rrsig-fragmented.pcap")
    assert [d.attack_class for d in detections] == ["udp_flood"]
    assert detections[0].dst_ip == "10.10.10.10"
    assert detections[0].evidence["reflectors"] >= 5


def test_web_browsing_has_no_rule_hits(shared_pcaps):
    assert run_capture(shared_pcaps / "ppp-example-web-browsing.pcap") == []

"""A small capture with every protocol and every attack: tshark, dpkt and label checks."""

import ipaddress
import io
import subprocess
from collections import defaultdict

import dpkt
import pytest

from engine.simulate.attacks import SCENARIOS
from engine.simulate.generator import PROFILES, parse_attack, simulate
from engine.simulate.labels import write_labels, read_labels
from engine.taxonomy import ATTACK_CLASSES
from tests.conftest import require_tool

# Every scenario once, with low intensities so the capture stays near 8k packets.
ALL_ATTACKS = (
    "port_scan@5s", "port_scan@8s:mode=udp", "port_scan@12s:mode=connect", "host_sweep@15s",
    "ssh_bruteforce@20s:intensity=0.2", "rdp_bruteforce@25s:intensity=0.2", "ftp_bruteforce@30s:intensity=0.2",
    "password_spray@35s:intensity=0.3", "smb_lateral@40s:intensity=0.3", "ransomware@45s:intensity=0.2",
    "dicom_exfil@50s:intensity=0.5", "hl7_unauthorized@55s", "syn_flood@60s:duration=2,intensity=0.5",
    "udp_flood@65s:duration=2,intensity=0.5", "mqtt_wildcard@70s:intensity=0.3", "mqtt_flood@75s:intensity=0.2",
    "dns_tunnel@80s:intensity=0.2", "c2_beacon@10s:interval=10,beacons=10", "arp_spoof@90s:intensity=0.5",
    "cleartext_credentials@95s",
)
SEED = 11

# tshark display filter -> the generator's message counter of the same protocol.
TSHARK_PROTOCOLS = {
    "hl7": "hl7", "dicom": "dicom", "mqtt": "mqtt", "tls": "tls", "kerberos": "kerberos", "ldap": "ldap",
    "smb2": "smb2", "dns": "dns", "ssh": "ssh", "ftp": "ftp", "telnet": "telnet", "http": "http",
    "ntp": "ntp", "rdp": "rdp",
}


def generate(seed, attacks=ALL_ATTACKS, duration_s=120):
    out = io.BytesIO()
    result = simulate(out, PROFILES["small"], duration_s, seed, [parse_attack(a) for a in attacks])
    return out.getvalue(), result


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    data, result = generate(SEED)
    path = tmp_path_factory.mktemp("simulate") / "all.pcap"
    path.write_bytes(data)
    labels_path = path.with_suffix(".labels.jsonl")
    with open(labels_path, "w", encoding="utf-8") as handle:
        write_labels(result.labels, handle)
    return path, data, result, read_labels(labels_path)


@pytest.fixture(scope="module")
def packets(capture):
    """(time, src, sport, dst, dport, proto) for every IPv4 packet, from dpkt."""
    _, data, _, _ = capture
    rows = []
    for ts, frame in dpkt.pcap.Reader(io.BytesIO(data)):
        eth = dpkt.ethernet.Ethernet(frame)
        ip = eth.data
        if not isinstance(ip, dpkt.ip.IP):
            continue
        src, dst = str(ipaddress.IPv4Address(ip.src)), str(ipaddress.IPv4Address(ip.dst))
        l4 = ip.data
        if isinstance(l4, dpkt.tcp.TCP):
            rows.append((ts, src, l4.sport, dst, l4.dport, "tcp"))
        elif isinstance(l4, dpkt.udp.UDP):
            rows.append((ts, src, l4.sport, dst, l4.dport, "udp"))
        elif isinstance(l4, dpkt.icmp.ICMP):
            rows.append((ts, src, l4.type, dst, l4.code, "icmp"))
    return rows


def test_same_seed_identical_bytes(capture):
    _, data, _, _ = capture
    again, _ = generate(SEED)
    assert again == data


def test_different_seed_different_traffic(capture):
    _, data, _, _ = capture
    other, _ = generate(SEED + 1)
    assert other != data
    assert len(other) != len(data)


def test_packet_count_matches_result(capture, packets):
    _, data, result, _ = capture
    frames = sum(1 for _ in dpkt.pcap.Reader(io.BytesIO(data)))
    assert frames == result.packets
    assert len(data) == result.bytes


def test_tshark_reports_no_malformed(capture):
    tshark = require_tool("tshark")
    path, _, _, _ = capture
    output = subprocess.run([tshark, "-r", str(path), "-Y", "_ws.malformed"], capture_output=True,
                            text=True, check=True).stdout
    assert output.strip() == ""


def test_tshark_checksums_valid(capture):
    tshark = require_tool("tshark")
    path, _, _, _ = capture
    checks = ["-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"]
    bad = subprocess.run([tshark, "-r", str(path), *checks, "-Y",
                          "ip.checksum.status == 0 || tcp.checksum.status == 0 || udp.checksum.status == 0"],
                         capture_output=True, text=True, check=True).stdout
    assert bad.strip() == ""


@pytest.mark.parametrize("display_filter", sorted(TSHARK_PROTOCOLS))
def test_tshark_protocol_counts(capture, display_filter):
    tshark = require_tool("tshark")
    path, _, result, _ = capture
    output = subprocess.run([tshark, "-r", str(path), "-Y", display_filter, "-T", "fields", "-e", "frame.number"],
                            capture_output=True, text=True, check=True).stdout
    expected = result.message_counts.get(TSHARK_PROTOCOLS[display_filter], 0)
    assert expected > 0, f"the capture has no {display_filter} traffic"
    assert len(output.split()) == expected


def test_every_scenario_labelled(capture):
    _, _, _, labels = capture
    assert {label["attack_class"] for label in labels} == set(SCENARIOS)


def test_labels_carry_taxonomy(capture):
    _, _, _, labels = capture
    for label in labels:
        row = ATTACK_CLASSES[label["attack_class"]]
        assert label["technique"] == row.technique
        assert label["category"] == row.category
        assert label["start"] <= label["end"]


def test_label_flows_exist_in_capture(capture, packets):
    _, _, _, labels = capture
    seen = defaultdict(list)
    for ts, src, sport, dst, dport, proto in packets:
        seen[(src, sport, dst, dport, proto)].append(ts)
    for label in labels:
        for flow in label["flows"]:
            key = (flow["src"], flow["sport"], flow["dst"], flow["dport"], flow["proto"])
            times = seen.get(key)
            assert times, f"{label['attack_class']}: flow {key} not in the capture"
            assert label["start"] - 1e-6 <= min(times)
            assert max(times) <= label["end"] + 1e-6


def test_attack_tuples_unique_in_time_range(capture, packets):
    # Every packet of an attack 5-tuple, either direction, lies inside the label's
    # time range, so no benign flow shares the tuple there.
    _, _, _, labels = capture
    ranges = {}
    for label in labels:
        for flow in label["flows"]:
            key = (flow["src"], flow["sport"], flow["dst"], flow["dport"], flow["proto"])
            ranges[key] = (label["start"], label["end"])
    for ts, src, sport, dst, dport, proto in packets:
        for key in ((src, sport, dst, dport, proto), (dst, dport, src, sport, proto)):
            if key in ranges and proto != "icmp":
                start, end = ranges[key]
                assert start - 1e-6 <= ts <= end + 1e-6, f"packet of {key} at {ts} outside [{start}, {end}]"


def test_flood_selectors_match_packets(capture, packets):
    _, _, _, labels = capture
    floods = [label for label in labels if label["selector"] and "src_cidr" in label["selector"]]
    assert {label["attack_class"] for label in floods} == {"syn_flood", "udp_flood"}
    for label in floods:
        selector = label["selector"]
        network = ipaddress.IPv4Network(selector["src_cidr"])
        matched = [p for p in packets if p[5] == selector["proto"] and p[3] == selector["dst"]
                   and ipaddress.IPv4Address(p[1]) in network]
        counted = label["details"].get("syn_packets", label["details"].get("udp_packets"))
        assert len(matched) == counted
        assert all(label["start"] - 1e-6 <= p[0] <= label["end"] + 1e-6 for p in matched)
    spoofed = [p for p in packets if p[1].startswith("192.0.2.")]
    assert len(spoofed) == sum(label["details"].get("syn_packets", 0) + label["details"].get("udp_packets", 0)
                               for label in floods)


def test_arp_spoof_replies_claim_gateway(capture):
    _, data, _, labels = capture
    (label,) = [label for label in labels if label["attack_class"] == "arp_spoof"]
    selector = label["selector"]
    spoofed = 0
    for ts, frame in dpkt.pcap.Reader(io.BytesIO(data)):
        eth = dpkt.ethernet.Ethernet(frame)
        if eth.type != dpkt.ethernet.ETH_TYPE_ARP:
            continue
        mac = ":".join(f"{b:02x}" for b in eth.src)
        claimed = str(ipaddress.IPv4Address(eth.data.spa))
        if mac == selector["src_mac"] and claimed == selector["claimed_ip"]:
            spoofed += 1
            assert label["start"] - 1e-6 <= ts <= label["end"] + 1e-6
    assert spoofed == label["details"]["replies"]


def test_hl7_patients_are_synthetic(capture):
    _, data, _, _ = capture
    pid_segments = [segment for segment in data.split(b"\r") if segment.startswith(b"PID|")]
    assert pid_segments
    for segment in pid_segments:
        fields = segment.split(b"|")
        assert fields[3].startswith(b"SIM"), segment
        assert fields[5].startswith(b"ZZ"), segment

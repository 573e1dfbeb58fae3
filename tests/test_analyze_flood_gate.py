"""Model flood, port scan and host sweep verdicts need volume before they become alerts."""

import collections
import socket

import dpkt
import numpy as np

from engine.analyze.pipeline import AnalyzeOptions, _distinct_per_group
from tests.analysis import analyze_alerts, simulate


def count_bare_syns(capture) -> int:
    """Count TCP segments with SYN set and ACK clear, read with dpkt as an oracle."""
    count = 0
    with open(capture, "rb") as handle:
        for _, frame in dpkt.pcap.Reader(handle):
            ip = dpkt.ethernet.Ethernet(frame).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            flags = ip.data.flags
            if flags & dpkt.tcp.TH_SYN and not flags & dpkt.tcp.TH_ACK:
                count += 1
    return count


def test_rdp_session_not_a_flood(tmp_path, shared_pcaps):
    # A benign RDP capture between two private hosts, where the model used
    # to class three flows as a SYN flood with high severity.
    capture = shared_pcaps / "sv-rdp-003.pcap"
    assert count_bare_syns(capture) < AnalyzeOptions().flood_min_flows
    alerts = analyze_alerts(tmp_path / "s.db", capture)
    assert [a for a in alerts if a["category"] == "dos"] == []


def test_simulated_syn_flood_still_reported(tmp_path):
    capture = tmp_path / "flood.pcap"
    labels = simulate(capture, "--profile", "small", "--duration", "90s", "--seed", "3",
                      "--no-default-attacks", "--attack", "syn_flood@20s")
    target = labels[0]["dst"]
    alerts = analyze_alerts(tmp_path / "s.db", capture)
    dos = [a for a in alerts if a["category"] == "dos"]
    assert len(dos) == 1
    assert dos[0]["dst"]["ip"] == target
    assert dos[0]["count"] >= AnalyzeOptions().flood_min_flows


def count_targets_per_source(capture) -> dict[str, set[str]]:
    """Map each IPv4 source to the destinations it sent to, read with dpkt (802.1Q tags included)."""
    targets = collections.defaultdict(set)
    with open(capture, "rb") as handle:
        for _, frame in dpkt.pcap.Reader(handle):
            ip = dpkt.ethernet.Ethernet(frame).data
            if isinstance(ip, dpkt.ip.IP):
                targets[socket.inet_ntoa(ip.src)].add(socket.inet_ntoa(ip.dst))
    return targets


def test_broadcast_ping_not_a_sweep(tmp_path, shared_pcaps):
    # Three ICMP echoes to 255.255.255.255 behind VLAN tags, which the model
    # used to class as a host sweep with full confidence.
    capture = shared_pcaps / "sv-eve-flow-vlan-02.pcap"
    targets = count_targets_per_source(capture)
    assert targets
    assert max(len(hosts) for hosts in targets.values()) < AnalyzeOptions().sweep_min_hosts
    alerts = analyze_alerts(tmp_path / "s.db", capture)
    assert [a for a in alerts if a["category"] == "scan"] == []


def test_distinct_per_group_matches_sets():
    rng = np.random.default_rng(7)
    groups = rng.integers(0, 3, size=(200, 2), dtype=np.uint8)
    items = rng.integers(0, 6, size=(200, 1), dtype=np.uint8)
    expected = collections.defaultdict(set)
    for group, item in zip(map(bytes, groups), map(bytes, items)):
        expected[group].add(item)
    counts = _distinct_per_group(groups, items)
    assert counts.tolist() == [len(expected[bytes(group)]) for group in groups]


def test_single_dns_flow_not_a_tunnel(tmp_path, shared_pcaps):
    # ppp-many-interfaces.pcapng has only ordinary lookups, and the model once
    # called one of its DNS flows a tunnel with high severity.
    alerts = analyze_alerts(tmp_path / "s.db", shared_pcaps / "ppp-many-interfaces.pcapng")
    assert [a for a in alerts if a["category"] == "tunneling"] == []


def test_simulated_dns_tunnel_still_reported(tmp_path):
    capture = tmp_path / "tunnel.pcap"
    labels = simulate(capture, "--profile", "small", "--duration", "90s", "--seed", "4",
                      "--no-default-attacks", "--attack", "dns_tunnel@20s")
    alerts = analyze_alerts(tmp_path / "s.db", capture)
    tunnels = [a for a in alerts if a["category"] == "tunneling"]
    assert len(tunnels) >= 1
    assert {a["src"]["ip"] for a in tunnels} == {labels[0]["src"]}

"""Decoder on real public captures: pinned fields, anomaly counts and a tshark cross-check."""

import ipaddress
import subprocess

import numpy as np
import pytest

from conftest import require_tool
from engine.capture import open_capture
from engine.decode import (
    ANOMALY_NAMES,
    anomaly_counts,
    decode_batch,
    new_anomaly_counters,
    new_link_type_table,
    unknown_link_type_counts,
)

STATUS_OK, STATUS_TRUNCATED, STATUS_MALFORMED, STATUS_UNSUPPORTED, STATUS_NOT_IP = range(5)
TUNNEL_NONE, TUNNEL_GRE, TUNNEL_VXLAN, TUNNEL_IPIP = range(4)


def decode_capture(path):
    """Return (all decoded records, anomaly counts, unknown link type counts)."""
    counters = new_anomaly_counters()
    table = new_link_type_table()
    records = []
    with open_capture(path) as reader:
        for batch in reader:
            decode_batch(batch.packets, batch.data, counters, table)
            records.append(batch.packets.copy())
    return np.concatenate(records), anomaly_counts(counters), unknown_link_type_counts(table)


def text_address(raw, version):
    if version == 4:
        return str(ipaddress.IPv4Address(bytes(raw[:4])))
    if version == 6:
        return str(ipaddress.IPv6Address(bytes(raw)))
    return ""


def status_counts(records):
    return np.bincount(records["status"], minlength=5).tolist()


def test_gre_sample(shared_pcaps):
    records, counts, _ = decode_capture(shared_pcaps / "sv-gre-sample.pcap")
    assert counts == {}
    assert len(records) == 40
    assert status_counts(records) == [40, 0, 0, 0, 0]
    assert set(records["tunnel_type"].tolist()) == {TUNNEL_GRE}
    # No GRE key in this capture (tshark lists none).
    assert set(records["tunnel_id"].tolist()) == {0}
    first = records[0]
    assert text_address(first["outer_src_addr"], 4) == "172.27.1.66"
    assert text_address(first["outer_dst_addr"], 4) == "66.59.109.137"
    assert text_address(first["src_addr"], 4) == "66.59.111.190"
    assert text_address(first["dst_addr"], 4) == "172.28.2.3"
    assert first["ip_proto"] == 1
    assert first["icmp_type"] == 8
    # Ethernet 14 + outer IPv4 20 + GRE 4 = inner IP at 38.
    assert first["l3_offset"] == 38
    assert np.bincount(records["ip_proto"], minlength=18)[[1, 6, 17]].tolist() == [10, 22, 8]


def test_vxlan_aws_mirror(shared_pcaps):
    records, counts, _ = decode_capture(shared_pcaps / "sv-vxlan-ssh-aws-mirror.pcap")
    assert counts == {}
    assert status_counts(records) == [100, 0, 0, 0, 0]
    assert set(records["tunnel_type"].tolist()) == {TUNNEL_VXLAN}
    assert set(records["tunnel_id"].tolist()) == {5569041}
    assert {text_address(a, 4) for a in records["outer_src_addr"]} == {"172.31.0.238"}
    first = records[0]
    assert first["src_port"] == 60631
    assert first["dst_port"] == 123
    assert first["l3_offset"] == 14 + 20 + 8 + 8 + 14
    ssh = records[(records["src_port"] == 22) | (records["dst_port"] == 22)]
    assert len(ssh) == 82
    assert set(ssh["ip_proto"].tolist()) == {6}


def test_mixed_vlan_mpls(shared_pcaps):
    records, counts, _ = decode_capture(shared_pcaps / "zeek-mixed-vlan-mpls.pcap")
    assert counts == {}
    assert status_counts(records) == [47, 0, 0, 0, 0]
    assert np.bincount(records["vlan_depth"]).tolist() == [33, 14]
    assert np.bincount(records["mpls_depth"]).tolist() == [36, 11]
    assert set(records["ip_proto"].tolist()) == {6}
    # Some frames carry F5 Ethernet trailers: the payload stops at the IP
    # total length, never in the trailer.
    ends = records["payload_offset"].astype(int) + records["payload_len"]
    ip_ends = records["l3_offset"].astype(int) + records["ip_total_len"]
    assert (ends <= ip_ends).all()
    assert (records["caplen"] > ip_ends).sum() > 0


def test_eve_flow_vlan_depths(shared_pcaps):
    records, counts, _ = decode_capture(shared_pcaps / "sv-eve-flow-vlan-02.pcap")
    assert counts == {}
    assert records["vlan_depth"].tolist() == [1, 2, 3]
    assert records["vlan_ids"].tolist() == [[6, 0, 0], [1, 10, 0], [1, 10, 100]]
    assert records["l3_offset"].tolist() == [18, 22, 26]
    assert set(records["icmp_type"].tolist()) == {8}


def test_ipv6_fragments_with_options(shared_pcaps):
    records, counts, _ = decode_capture(shared_pcaps / "ppp-ipv6-opt-fragments.pcap")
    assert counts == {}
    assert records["frag_offset"].tolist() == [0, 1448, 2896, 4344]
    assert records["frag_flags"].tolist() == [3, 3, 3, 1]
    assert set(records["frag_id"].tolist()) == {4170101862}
    assert set(records["ip_proto"].tolist()) == {17}
    # Only the first fragment carries the UDP header.
    assert records["src_port"].tolist() == [6363, 0, 0, 0]
    assert records["l4_offset"].tolist()[1:] == [0, 0, 0]
    # The UDP length covers the whole datagram: 8 + 5379 bytes.
    assert records[0]["payload_wire_len"] == 5379


def test_ipv4_total_length_past_frame(shared_pcaps):
    records, counts, _ = decode_capture(shared_pcaps / "sv-ipv4-truncated.pcap")
    assert counts == {"bad_ip_total_length": 1}
    record = records[0]
    assert record["status"] == STATUS_MALFORMED
    # Total length 65028 in a 1530-byte frame: the IP header is not trusted,
    # so no address or port is reported.
    assert bytes(record["src_addr"]) == bytes(16)
    assert record["src_port"] == 0
    assert record["ip_version"] == 0


def test_unsupported_link_type(shared_pcaps):
    records, counts, link_types = decode_capture(
        shared_pcaps / "tcpd-unsupported-linktype-160.pcap")
    assert counts == {"unknown_link_type": 1}
    assert link_types == {160: 1}
    assert records[0]["status"] == STATUS_UNSUPPORTED


def test_too_many_layers(shared_pcaps):
    records, counts, _ = decode_capture(shared_pcaps / "sv-decode-too-many-layers.pcap")
    assert counts == {"too_many_layers": 1}
    record = records[0]
    assert record["status"] == STATUS_MALFORMED
    assert ANOMALY_NAMES[record["anomaly"]] == "too_many_layers"
    # Each repeat is one MPLS label and one pseudowire Ethernet: 8 pairs fill
    # the 16-layer cap.
    assert record["mpls_depth"] == 8
    assert bytes(record["eth_src"]).hex() == "010203040507"


def test_ipv6_jumbogram_capture(shared_pcaps):
    records, counts, _ = decode_capture(shared_pcaps / "tcpd-ipv6-jumbogram.pcap")
    assert counts == {}
    record = records[0]
    assert record["caplen"] == 65590
    assert record["icmp_type"] == 128
    # Jumbo Payload length 65536 minus 8 hop-by-hop and 4 ICMPv6 bytes.
    assert record["payload_wire_len"] == 65524
    assert record["payload_len"] == 65524
    assert record["ip_total_len"] == 65535


def test_ipv6_routing_type0_capture(shared_pcaps):
    records, counts, _ = decode_capture(shared_pcaps / "zeek-ipv6-hbh-routing0.pcap")
    assert counts == {}
    record = records[0]
    assert record["ip_proto"] == 17
    assert record["src_port"] == 53
    assert record["dst_port"] == 53


def tshark_fields(path, fields):
    tshark = require_tool("tshark")
    command = [tshark, "-n", "-r", str(path), "-o", "ip.defragment:FALSE",
               "-o", "ipv6.defragment:FALSE", "-T", "fields", "-E", "separator=|"]
    for field in fields:
        command += ["-e", field]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in output.splitlines()]


def innermost_expected(row):
    """Return the innermost (src, dst, sport, dport) that tshark shows for one frame."""
    ip_src, ip_dst, ip6_src, ip6_dst, tcp_sport, tcp_dport, udp_sport, udp_dport, protocols = row
    layers = protocols.split(":")
    # An ICMP error quotes the offending packet: tshark decodes the quote,
    # the decoder stops at the ICMP header.
    if "icmp" in layers:
        layers = layers[: layers.index("icmp") + 1]
    if "icmpv6" in layers:
        layers = layers[: layers.index("icmpv6") + 1]
    ip_layers = [layer for layer in layers if layer in ("ip", "ipv6")]
    if not ip_layers:
        return ("", "", "", "")
    ipv4_count = ip_layers.count("ip")
    ipv6_count = ip_layers.count("ipv6")
    if ip_layers[-1] == "ip":
        src, dst = ip_src.split(",")[ipv4_count - 1], ip_dst.split(",")[ipv4_count - 1]
    else:
        src, dst = ip6_src.split(",")[ipv6_count - 1], ip6_dst.split(",")[ipv6_count - 1]
    ports = ("", "")
    if layers[-1] != "icmp" and "tcp" in layers:
        ports = (tcp_sport.split(",")[-1], tcp_dport.split(",")[-1])
    elif layers[-1] != "icmp" and "udp" in layers:
        ports = (udp_sport.split(",")[-1], udp_dport.split(",")[-1])
    return (src, dst) + ports


@pytest.mark.parametrize(
    "name",
    [
        "sv-gre-sample.pcap",
        "sv-vxlan-ssh-aws-mirror.pcap",
        "zeek-mixed-vlan-mpls.pcap",
        "sv-eve-flow-vlan-02.pcap",
        "ppp-ipv6-opt-fragments.pcap",
        "ppp-ip4-fragments.pcap",
        "zeek-ipv6-hbh-routing0.pcap",
        "sv-ipv6-covert-dstopts.pcap",
        "ppp-sll.pcap",
        "ppp-null-loopback.pcap",
        "ppp-raw-ip.pcap",
    ],
)
def test_addresses_and_ports_match_tshark(shared_pcaps, name):
    rows = tshark_fields(shared_pcaps / name, [
        "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "tcp.srcport", "tcp.dstport",
        "udp.srcport", "udp.dstport", "frame.protocols"])
    records, _, _ = decode_capture(shared_pcaps / name)
    assert len(rows) == len(records)
    mismatches = []
    for index, (record, row) in enumerate(zip(records, rows)):
        version = int(record["ip_version"])
        decoded = (text_address(record["src_addr"], version),
                   text_address(record["dst_addr"], version))
        if record["l4_offset"] and record["ip_proto"] in (6, 17):
            decoded += (str(record["src_port"]), str(record["dst_port"]))
        else:
            decoded += ("", "")
        expected = innermost_expected(row)
        if decoded != expected:
            mismatches.append((index, expected, decoded))
    assert mismatches == []


def test_vlan_ids_and_vni_match_tshark(shared_pcaps):
    rows = tshark_fields(shared_pcaps / "sv-eve-flow-vlan-02.pcap", ["vlan.id"])
    records, _, _ = decode_capture(shared_pcaps / "sv-eve-flow-vlan-02.pcap")
    for record, (vlan_ids,) in zip(records, rows):
        expected = [int(v) for v in vlan_ids.split(",")]
        assert record["vlan_ids"].tolist()[: len(expected)] == expected

    rows = tshark_fields(shared_pcaps / "sv-vxlan-ssh-aws-mirror.pcap", ["vxlan.vni"])
    records, _, _ = decode_capture(shared_pcaps / "sv-vxlan-ssh-aws-mirror.pcap")
    assert [int(record["tunnel_id"]) for record in records] == [int(v) for (v,) in rows]

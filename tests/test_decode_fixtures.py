"""Decoder on hand-made frames: one fixture per tricky case, a comment per field."""

import ipaddress
import struct

import numpy as np
import pytest

from engine.decode import (
    ANOMALY_NAMES,
    anomaly_counts,
    decode_batch,
    new_anomaly_counters,
    new_link_type_table,
    unknown_link_type_counts,
)
from engine.decode.batches import build_batch
from engine.decode.layout import PACKET_DTYPE, empty_packets

STATUS_OK, STATUS_TRUNCATED, STATUS_MALFORMED, STATUS_UNSUPPORTED, STATUS_NOT_IP = range(5)
TUNNEL_NONE, TUNNEL_GRE, TUNNEL_VXLAN, TUNNEL_IPIP = range(4)
FRAG_IS_FRAGMENT, FRAG_MORE = 0x01, 0x02
TCPOPT_MSS, TCPOPT_WSCALE, TCPOPT_SACK_PERMITTED, TCPOPT_SACK, TCPOPT_TIMESTAMP = (
    0x01, 0x02, 0x04, 0x08, 0x10)


def hexframe(text):
    """Join hex lines, ignoring everything after '#' on each line."""
    return bytes.fromhex("".join("".join(line.split("#")[0].split()) for line in text.splitlines()))


def decode_one(frame, link_type=1, wirelen=None):
    packets, data = build_batch(
        [frame], link_type, None if wirelen is None else [wirelen])
    counters = decode_batch(packets, data)
    return packets[0], anomaly_counts(counters)


def address(record, field):
    raw = bytes(record[field])
    if record["ip_version"] == 6 and field in ("src_addr", "dst_addr"):
        return str(ipaddress.IPv6Address(raw))
    if raw[4:] == bytes(12):
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw))


def anomaly_name(record):
    return ANOMALY_NAMES[record["anomaly"]]


ETHERNET_IPV4 = """
001122334455            # destination MAC
66778899aabb            # source MAC
0800                    # EtherType IPv4
"""

def test_ipv4_options_and_tcp_options():
    frame = hexframe(ETHERNET_IPV4 + """
46 00 0044 1234 4000 40 06 0000 # IPv4: IHL 6, total 68, id 0x1234, DF, TTL 64, TCP
0a000001 0a000002               # 10.0.0.1 -> 10.0.0.2
94040000                        # option: router alert (RFC 2113), length 4
c350 0050                       # TCP ports 50000 -> 80
01020304 0a0b0c0d               # seq, ack
a0 18 ffff 0000 0000            # data offset 10 words, PSH|ACK, window 65535
020405b4                        # MSS 1460
0402                            # SACK permitted
080a 00000064 000000c8          # timestamps: TSval 100, TSecr 200
01                              # NOP
030307                          # window scale 7
41424344                        # payload "ABCD"
""")
    record, counts = decode_one(frame)
    assert counts == {}
    assert record["status"] == STATUS_OK
    assert record["l3_offset"] == 14
    assert record["ip_version"] == 4
    assert record["ip_total_len"] == 68
    assert record["ttl"] == 64
    assert record["ip_proto"] == 6
    assert address(record, "src_addr") == "10.0.0.1"
    assert address(record, "dst_addr") == "10.0.0.2"
    assert record["frag_id"] == 0x1234
    assert record["frag_flags"] == 0
    assert record["l4_offset"] == 14 + 24
    assert record["src_port"] == 50000
    assert record["dst_port"] == 80
    assert record["tcp_seq"] == 0x01020304
    assert record["tcp_ack"] == 0x0A0B0C0D
    assert record["tcp_flags"] == 0x18
    assert record["tcp_window"] == 65535
    assert record["tcp_mss"] == 1460
    assert record["tcp_wscale"] == 7
    assert record["tcp_tsval"] == 100
    assert record["tcp_tsecr"] == 200
    assert record["tcp_opt_flags"] == (
        TCPOPT_MSS | TCPOPT_WSCALE | TCPOPT_SACK_PERMITTED | TCPOPT_TIMESTAMP)
    assert record["payload_offset"] == 14 + 24 + 40
    assert record["payload_len"] == 4
    assert record["payload_wire_len"] == 4
    assert bytes(record["eth_dst"]).hex() == "001122334455"
    assert bytes(record["eth_src"]).hex() == "66778899aabb"
    assert record["ether_type"] == 0x0800


def test_ethernet_trailer_not_in_payload():
    # Same shape as a frame padded to the 60-byte Ethernet minimum: the IP
    # total length (28) ends before the frame does.
    frame = hexframe(ETHERNET_IPV4 + """
45 00 001c 0001 0000 40 11 0000 # IPv4: IHL 5, total 28, TTL 64, UDP
c0a80001 c0a80002               # 192.168.0.1 -> 192.168.0.2
1f90 0035 0008 0000             # UDP 8080 -> 53, length 8: no payload
""") + bytes(18)                # trailer padding to 60 bytes
    record, counts = decode_one(frame)
    assert counts == {}
    assert record["payload_len"] == 0
    assert record["payload_wire_len"] == 0
    assert record["payload_offset"] == 14 + 20 + 8


def test_ipv6_hop_by_hop_and_routing_type0():
    frame = hexframe("""
ffffffffffff 000000000000 86dd  # Ethernet: broadcast <- 00:00:00:00:00:00, IPv6
60000000                        # version 6, traffic class 0, flow label 0
002c                            # payload length 44 = 8 HBH + 24 routing + 12 UDP
00                              # next header: hop-by-hop options
40                              # hop limit 64
20010db8000000000000000000000001  # source 2001:db8::1
20010db8000000000000000000000002  # destination 2001:db8::2
2b 00                           # HBH: next header routing (43), length 0: 8 bytes
01040000 0000                   # PadN option filling the 6 option bytes
11 02                           # routing: next header UDP, length 2: 24 bytes
00 01                           # routing type 0 (deprecated by RFC 5095), 1 segment left
00000000                        # reserved
20010db8000000000000000000000003  # segment address 2001:db8::3
0035 c000 000c 0000             # UDP 53 -> 49152, length 12
deadbeef                        # payload
""")
    record, counts = decode_one(frame)
    assert counts == {}
    assert record["status"] == STATUS_OK
    assert record["ip_version"] == 6
    assert record["ip_total_len"] == 40 + 44
    assert record["ttl"] == 64
    assert record["ip_proto"] == 17
    assert address(record, "src_addr") == "2001:db8::1"
    assert address(record, "dst_addr") == "2001:db8::2"
    assert record["l4_offset"] == 14 + 40 + 8 + 24
    assert record["src_port"] == 53
    assert record["dst_port"] == 49152
    assert record["payload_len"] == 4
    assert record["ether_type"] == 0x86DD


def jumbogram_frame(jumbo_payload_len):
    header = hexframe("""
0013c4c784f0 00123fae22f7 86dd  # Ethernet, IPv6
60000000                        # version 6
0000                            # payload length 0: see the Jumbo Payload option
00                              # next header: hop-by-hop options
40                              # hop limit 64
20010db8000000000000000000000001  # source 2001:db8::1
20010db8000000000000000000000002  # destination 2001:db8::2
3a 00                           # HBH: next header ICMPv6, length 0: 8 bytes
c2 04                           # Jumbo Payload option (RFC 2675), 4 bytes of data
""")
    hbh_value = struct.pack("!I", jumbo_payload_len)
    icmp = hexframe("80 00 0000 0001 0001")  # echo request, checksum, id 1, seq 1
    body = bytes(jumbo_payload_len - 8 - len(icmp))
    return header + hbh_value + icmp + body


def test_ipv6_jumbogram():
    frame = jumbogram_frame(70000)
    record, counts = decode_one(frame)
    assert counts == {}
    assert record["status"] == STATUS_OK
    assert record["ip_proto"] == 58
    assert record["icmp_type"] == 128
    assert record["l4_offset"] == 14 + 40 + 8
    assert record["payload_offset"] == 14 + 40 + 8 + 4
    # 70000 - 8 HBH - 4 ICMPv6 header; the uint16 fields saturate.
    assert record["payload_wire_len"] == 69988
    assert record["payload_len"] == 65535
    assert record["ip_total_len"] == 65535


def test_ipv6_zero_length_without_jumbo_option():
    frame = bytearray(jumbogram_frame(70000)[:200])
    frame[14 + 40 + 2] = 0x01  # Jumbo option type becomes PadN
    record, counts = decode_one(bytes(frame))
    assert counts == {"bad_ip_total_length": 1}
    assert record["status"] == STATUS_MALFORMED
    assert record["ip_version"] == 0


GRE_WITH_KEY = """
001122334455 66778899aabb 0800  # Ethernet, IPv4
45 00 003a 0000 0000 40 2f 0000 # outer IPv4: total 58, TTL 64, GRE
c0000201 c0000202               # 192.0.2.1 -> 192.0.2.2
2000                            # GRE flags: K (key present), version 0
0800                            # protocol IPv4
00000457                        # key 1111
45 00 001e 0007 0000 3f 11 0000 # inner IPv4: total 30, id 7, TTL 63, UDP
0a010101 0a010102               # 10.1.1.1 -> 10.1.1.2
04d2 162e 000a 0000             # UDP 1234 -> 5678, length 10
6869                            # payload "hi"
"""


def test_gre_with_key():
    record, counts = decode_one(hexframe(GRE_WITH_KEY))
    assert counts == {}
    assert record["status"] == STATUS_OK
    assert record["tunnel_type"] == TUNNEL_GRE
    assert record["tunnel_id"] == 1111
    assert address(record, "outer_src_addr") == "192.0.2.1"
    assert address(record, "outer_dst_addr") == "192.0.2.2"
    assert address(record, "src_addr") == "10.1.1.1"
    assert address(record, "dst_addr") == "10.1.1.2"
    assert record["ip_proto"] == 17
    assert record["ttl"] == 63
    assert record["frag_id"] == 7
    assert record["l3_offset"] == 14 + 20 + 8
    assert record["src_port"] == 1234
    assert record["dst_port"] == 5678
    assert record["payload_len"] == 2


VXLAN = """
0a0000000001 0a0000000002 0800  # outer Ethernet, IPv4
45 00 005a 0000 0000 40 11 0000 # outer IPv4: total 90, TTL 64, UDP
ac100001 ac100002               # 172.16.0.1 -> 172.16.0.2
d431 12b5 0046 0000             # UDP 54321 -> 4789, length 70
08 000000                       # VXLAN flags: I (VNI valid); reserved
001388 00                       # VNI 5000; reserved
020000000001 020000000002 0800  # inner Ethernet, IPv4
45 00 0028 0000 4000 40 06 0000 # inner IPv4: total 40, DF, TTL 64, TCP
0a020001 0a020002               # 10.2.0.1 -> 10.2.0.2
9c40 0016                       # TCP 40000 -> 22
00000001 00000000               # seq 1, ack 0
50 02 7210 0000 0000            # data offset 5 words, SYN, window 29200
"""


def test_vxlan_inner_ethernet():
    record, counts = decode_one(hexframe(VXLAN))
    assert counts == {}
    assert record["status"] == STATUS_OK
    assert record["tunnel_type"] == TUNNEL_VXLAN
    assert record["tunnel_id"] == 5000
    assert address(record, "outer_src_addr") == "172.16.0.1"
    assert address(record, "outer_dst_addr") == "172.16.0.2"
    assert address(record, "src_addr") == "10.2.0.1"
    assert address(record, "dst_addr") == "10.2.0.2"
    assert record["src_port"] == 40000
    assert record["dst_port"] == 22
    assert record["tcp_flags"] == 0x02
    assert record["tcp_window"] == 29200
    assert record["l3_offset"] == 14 + 20 + 8 + 8 + 14
    # The outermost Ethernet addresses are kept, not the inner frame's.
    assert bytes(record["eth_dst"]).hex() == "0a0000000001"
    assert bytes(record["eth_src"]).hex() == "0a0000000002"


def test_vxlan_without_i_flag_is_plain_udp():
    frame = bytearray(hexframe(VXLAN))
    frame[14 + 20 + 8] = 0x00
    record, counts = decode_one(bytes(frame))
    assert counts == {}
    assert record["tunnel_type"] == TUNNEL_NONE
    assert record["dst_port"] == 4789
    assert address(record, "src_addr") == "172.16.0.1"


QINQ = """
ffffffffffff 000102030405       # Ethernet addresses
88a8 0064                       # 802.1ad S-tag: PCP 0, VLAN 100
8100 20c8                       # 802.1Q C-tag: PCP 1, VLAN 200
0800                            # EtherType IPv4
45 00 001c 0001 0000 40 01 0000 # IPv4: total 28, TTL 64, ICMP
c0a80001 c0a80002               # 192.168.0.1 -> 192.168.0.2
08 00 f7ff 0000 0000            # ICMP echo request
"""


def test_qinq_tags():
    record, counts = decode_one(hexframe(QINQ))
    assert counts == {}
    assert record["vlan_depth"] == 2
    assert list(record["vlan_ids"]) == [100, 200, 0]
    assert record["l3_offset"] == 22
    assert record["icmp_type"] == 8
    assert record["icmp_code"] == 0
    assert record["src_port"] == 0


def test_vlan_ids_past_three_not_kept():
    tags = b"".join(b"\x81\x00" + struct.pack("!H", vid) for vid in (1, 2, 3, 4, 5))
    frame = hexframe(QINQ)[:12] + tags + hexframe(QINQ)[20:]
    record, counts = decode_one(frame)
    assert counts == {}
    assert record["vlan_depth"] == 5
    assert list(record["vlan_ids"]) == [1, 2, 3]
    assert record["ip_proto"] == 1


def test_vlan_stack_past_layer_cap():
    tags = b"\x81\x00\x00\x01" * 20
    frame = hexframe(QINQ)[:12] + tags + hexframe(QINQ)[20:]
    record, counts = decode_one(frame)
    assert counts == {"too_many_layers": 1}
    assert record["status"] == STATUS_MALFORMED
    assert record["ip_version"] == 0


def test_mpls_label_stack_then_ipv4():
    frame = hexframe("""
001122334455 66778899aabb 8847  # Ethernet, MPLS unicast
00064 0 40                      # label 100, TC 0, S 0, TTL 64
000c8 1 40                      # label 200, S 1 (bottom of stack), TTL 64
45 00 001c 0001 0000 40 01 0000 # IPv4: total 28, ICMP
c0a80001 c0a80002               # 192.168.0.1 -> 192.168.0.2
00 00 0000 0000 0000            # ICMP echo reply
""")
    record, counts = decode_one(frame)
    assert counts == {}
    assert record["mpls_depth"] == 2
    assert record["l3_offset"] == 14 + 8
    assert record["ether_type"] == 0x0800
    assert address(record, "src_addr") == "192.168.0.1"


def test_mpls_pseudowire_ethernet():
    inner = hexframe(QINQ)[:12] + hexframe(QINQ)[20:]
    frame = hexframe("""
001122334455 66778899aabb 8847  # Ethernet, MPLS unicast
00010 1 ff                      # label 16, bottom of stack, TTL 255
00000000                        # pseudowire control word (RFC 4385)
""") + inner
    record, counts = decode_one(frame)
    assert counts == {}
    assert record["mpls_depth"] == 1
    assert record["l3_offset"] == 14 + 4 + 4 + 14
    assert bytes(record["eth_src"]).hex() == "66778899aabb"
    assert record["icmp_type"] == 8


def test_arp_request():
    frame = hexframe("""
ffffffffffff 66778899aabb 0806  # Ethernet broadcast, ARP
0001 0800 06 04                 # hardware Ethernet, protocol IPv4, lengths 6 and 4
0001                            # opcode 1: request
66778899aabb c0a80001           # sender MAC, sender IP 192.168.0.1
000000000000 c0a800fe           # target MAC unknown, target IP 192.168.0.254
""")
    record, counts = decode_one(frame)
    assert counts == {}
    assert record["status"] == STATUS_NOT_IP
    assert record["arp_op"] == 1
    assert record["ip_version"] == 0
    assert record["ether_type"] == 0x0806
    assert bytes(record["src_addr"][:4]) == bytes([192, 168, 0, 1])
    assert bytes(record["dst_addr"][:4]) == bytes([192, 168, 0, 254])


def test_arp_cut_inside_addresses():
    frame = hexframe("ffffffffffff 66778899aabb 0806 0001 0800 06 04 0002 66778899aabb c0a8")
    record, counts = decode_one(frame)
    assert counts == {"truncated_arp": 1}
    assert record["status"] == STATUS_TRUNCATED
    assert record["arp_op"] == 2
    assert bytes(record["src_addr"]) == bytes(16)


IPV4_UDP = hexframe("""
45 00 0020 abcd 0000 80 11 0000 # IPv4: total 32, id 0xabcd, TTL 128, UDP
0a000001 0a000002               # 10.0.0.1 -> 10.0.0.2
0044 0043 000c 0000             # UDP 68 -> 67, length 12
01020304                        # payload
""")


@pytest.mark.parametrize(
    "link_type, header, l3_offset",
    [
        (0, struct.pack("<I", 2), 4),        # NULL, family AF_INET written little-endian
        (0, struct.pack(">I", 2), 4),        # NULL written by a big-endian host
        (0, bytes.fromhex("0f000800"), 4),   # NULL with an EtherType in bytes 2-3
        (108, struct.pack(">I", 2), 4),      # LOOP: family in network order
        (101, b"", 0),                       # raw IP
        (12, b"", 0),                        # raw IP, DLT_RAW value
        (14, b"", 0),                        # raw IP, OpenBSD DLT_RAW value
        (228, b"", 0),                       # raw IPv4
        # SLL: packet type 0 (to us), ARPHRD_ETHER, address length 6,
        # 8 address bytes, protocol IPv4.
        (113, bytes.fromhex("0000 0001 0006 66778899aabb0000 0800"), 16),
        # SLL2: protocol IPv4, reserved, ifindex 2, ARPHRD_ETHER, packet
        # type 0, address length 6, 8 address bytes.
        (276, bytes.fromhex("0800 0000 00000002 0001 00 06 66778899aabb0000"), 20),
    ],
)
def test_link_types_to_ipv4(link_type, header, l3_offset):
    record, counts = decode_one(header + IPV4_UDP, link_type)
    assert counts == {}
    assert record["status"] == STATUS_OK
    assert record["l3_offset"] == l3_offset
    assert address(record, "src_addr") == "10.0.0.1"
    assert record["src_port"] == 68
    assert record["dst_port"] == 67
    assert record["ttl"] == 128


def test_sll_source_mac():
    header = bytes.fromhex("0000 0001 0006 66778899aabb0000 0800")
    record, _ = decode_one(header + IPV4_UDP, 113)
    assert bytes(record["eth_src"]).hex() == "66778899aabb"
    assert bytes(record["eth_dst"]) == bytes(6)


@pytest.mark.parametrize("family", [24, 28, 30])
def test_null_ipv6_families(family):
    ipv6 = hexframe("""
60000000 0008 3a 40             # IPv6: payload 8, ICMPv6, hop limit 64
00000000000000000000000000000001  # ::1
00000000000000000000000000000001  # ::1
80 00 0000 0001 0002            # echo request
""")
    record, counts = decode_one(struct.pack("<I", family) + ipv6, 0)
    assert counts == {}
    assert record["ip_version"] == 6
    assert record["icmp_type"] == 128


def test_null_unknown_family():
    record, counts = decode_one(struct.pack("<I", 7) + IPV4_UDP, 0)
    assert counts == {"unknown_address_family": 1}
    assert record["status"] == STATUS_UNSUPPORTED


def test_unknown_link_type_table():
    frames = [IPV4_UDP] * 3 + [IPV4_UDP]
    packets, data = build_batch(frames, [160, 160, 147, 101])
    counters = new_anomaly_counters()
    table = new_link_type_table()
    decode_batch(packets, data, counters, table)
    assert anomaly_counts(counters) == {"unknown_link_type": 3}
    assert unknown_link_type_counts(table) == {160: 2, 147: 1}
    assert list(packets["status"]) == [STATUS_UNSUPPORTED] * 3 + [STATUS_OK]


def test_unknown_link_type_table_overflow():
    link_types = list(range(300, 320))  # 20 distinct values for 16 rows
    packets, data = build_batch([IPV4_UDP] * 20, link_types)
    table = new_link_type_table()
    decode_batch(packets, data, None, table)
    counts = unknown_link_type_counts(table)
    assert counts[-1] == 4
    assert counts[300] == 1
    assert 319 not in counts


def test_pppoe_session_ipv4():
    frame = hexframe("""
001122334455 66778899aabb 8864  # Ethernet, PPPoE session
11 00 1234 0022                 # version 1 type 1, code 0, session 0x1234, length 34
0021                            # PPP protocol IPv4
""") + IPV4_UDP
    record, counts = decode_one(frame)
    assert counts == {}
    assert record["l3_offset"] == 14 + 8
    assert record["dst_port"] == 67


def test_known_non_ip_ethertype():
    frame = hexframe("0180c200000e 66778899aabb 88cc") + bytes(30)  # LLDP
    record, counts = decode_one(frame)
    assert counts == {}
    assert record["status"] == STATUS_NOT_IP
    assert record["ether_type"] == 0x88CC


def test_llc_frame_not_ip():
    # 802.3 length 38, then an STP BPDU (LLC DSAP 0x42, SSAP 0x42, UI).
    frame = hexframe("0180c2000000 66778899aabb 0026 42 42 03") + bytes(35)
    record, counts = decode_one(frame)
    assert counts == {}
    assert record["status"] == STATUS_NOT_IP


def test_unknown_ethertype():
    frame = hexframe("001122334455 66778899aabb 88b5") + bytes(20)  # local experimental
    record, counts = decode_one(frame)
    assert counts == {"unknown_ethertype": 1}
    assert record["status"] == STATUS_UNSUPPORTED
    assert record["ether_type"] == 0x88B5


def test_ipv4_fragments():
    first = hexframe(ETHERNET_IPV4 + """
45 00 0024 4242 2000 40 11 0000 # IPv4: total 36, id 0x4242, MF, offset 0, UDP
0a000001 0a000002               # 10.0.0.1 -> 10.0.0.2
1388 1389 0100 0000             # UDP 5000 -> 5001, length 256: spans fragments
0102030405060708                # first 8 payload bytes
""")
    later = hexframe(ETHERNET_IPV4 + """
45 00 0024 4242 0002 40 11 0000 # IPv4: total 36, same id, offset 2 words = 16 bytes
0a000001 0a000002
1112131415161718191a1b1c1d1e1f20  # 16 bytes of fragment data
""")
    packets, data = build_batch([first, later])
    counters = decode_batch(packets, data)
    assert anomaly_counts(counters) == {}
    head, tail = packets
    assert head["frag_flags"] == FRAG_IS_FRAGMENT | FRAG_MORE
    assert head["frag_offset"] == 0
    assert head["frag_id"] == 0x4242
    assert head["src_port"] == 5000
    assert head["payload_len"] == 8
    assert head["payload_wire_len"] == 248
    assert tail["frag_flags"] == FRAG_IS_FRAGMENT
    assert tail["frag_offset"] == 16
    assert tail["frag_id"] == 0x4242
    assert tail["ip_proto"] == 17
    assert tail["src_port"] == 0
    assert tail["l4_offset"] == 0
    assert tail["payload_offset"] == 34
    assert tail["payload_len"] == 16


def test_ipv6_later_fragment():
    frame = hexframe("""
001122334455 66778899aabb 86dd  # Ethernet, IPv6
60000000 0010 2c 40             # payload 16, next header fragment, hop limit 64
20010db8000000000000000000000001
20010db8000000000000000000000002
11 00 0059 0badcafe             # fragment: next UDP, offset 11 words (88 bytes), M=1, id
0102030405060708                # fragment data
""")
    record, counts = decode_one(frame)
    assert counts == {}
    assert record["frag_offset"] == 88
    assert record["frag_flags"] == FRAG_IS_FRAGMENT | FRAG_MORE
    assert record["frag_id"] == 0x0BADCAFE
    assert record["ip_proto"] == 17
    assert record["src_port"] == 0
    assert record["payload_len"] == 8


def test_ipv4_in_ipv6_tunnel():
    inner = IPV4_UDP
    frame = hexframe("""
001122334455 66778899aabb 86dd  # Ethernet, IPv6
60000000 0020 04 40             # payload 32, next header IPv4 (4), hop limit 64
20010db8000000000000000000000001
20010db8000000000000000000000002
""") + inner
    record, counts = decode_one(frame)
    assert counts == {}
    assert record["tunnel_type"] == TUNNEL_IPIP
    assert address(record, "outer_src_addr") == "2001:db8::1"
    assert address(record, "src_addr") == "10.0.0.1"
    assert record["ip_version"] == 4
    assert record["dst_port"] == 67


def test_erspan_type2():
    mirrored = hexframe(QINQ)[:12] + hexframe(QINQ)[20:]
    frame = hexframe(ETHERNET_IPV4 + """
45 00 004e 0000 0000 40 2f 0000 # IPv4: total 78 = 20 + 8 GRE + 8 ERSPAN + 42 mirrored
c0000201 c0000202               # 192.0.2.1 -> 192.0.2.2
1000 88be 00000001              # GRE: S (sequence), ERSPAN; sequence 1
1000 002a 00000000              # ERSPAN II: version 1, VLAN 0, session 42, index 0
""") + mirrored
    record, counts = decode_one(frame)
    assert counts == {}
    assert record["tunnel_type"] == TUNNEL_GRE
    assert record["tunnel_id"] == 42
    assert record["icmp_type"] == 8
    assert address(record, "src_addr") == "192.168.0.1"


@pytest.mark.parametrize(
    "gre_header, expected",
    [
        ("0001 0800", "unsupported_gre_version"),  # version 1: PPTP
        ("0002 0800", "bad_gre_version"),
        ("4000 0800", "bad_gre_flags"),            # routing present (RFC 1701)
    ],
)
def test_gre_header_checks(gre_header, expected):
    frame = hexframe(ETHERNET_IPV4 + """
45 00 0038 0000 0000 40 2f 0000 c0000201 c0000202  # total 56, GRE
""" + gre_header) + IPV4_UDP
    record, counts = decode_one(frame)
    assert counts == {expected: 1}
    assert record["tunnel_type"] == TUNNEL_NONE
    assert address(record, "src_addr") == "192.0.2.1"


def ipv4_tcp_frame(tcp_header_hex, total_len=40):
    return hexframe(ETHERNET_IPV4 + f"""
45 00 {total_len:04x} 0000 0000 40 06 0000 0a000001 0a000002
""" + tcp_header_hex)


@pytest.mark.parametrize(
    "frame, expected, status",
    [
        # IHL 4: a header shorter than its fixed part.
        (hexframe(ETHERNET_IPV4 + "44 00 0014 0000 0000 40 06 0000 0a000001 0a000002"),
         "bad_ip_header_length", STATUS_MALFORMED),
        # Version 5 behind EtherType IPv4.
        (hexframe(ETHERNET_IPV4 + "55 00 0014 0000 0000 40 06 0000 0a000001 0a000002"),
         "bad_ip_version", STATUS_MALFORMED),
        # Total length 19: less than the header.
        (hexframe(ETHERNET_IPV4 + "45 00 0013 0000 0000 40 06 0000 0a000001 0a000002"),
         "bad_ip_total_length", STATUS_MALFORMED),
        # Total length 40 in a 20-byte IP packet that was not cut by the snaplen.
        (hexframe(ETHERNET_IPV4 + "45 00 0028 0000 0000 40 06 0000 0a000001 0a000002"),
         "bad_ip_total_length", STATUS_MALFORMED),
        # Total length 30: only 10 bytes for a TCP header.
        (ipv4_tcp_frame("0050 0050 00000000 0000", total_len=30),
         "ip_payload_too_short", STATUS_MALFORMED),
        # TCP data offset 4 words.
        (ipv4_tcp_frame("0050 0050 00000000 00000000 40 02 ffff 0000 0000"),
         "bad_tcp_header_length", STATUS_MALFORMED),
        # MSS option with length 5 in a 24-byte header.
        (ipv4_tcp_frame("0050 0050 00000000 00000000 60 02 ffff 0000 0000 0205 0000",
                        total_len=44),
         "bad_tcp_option_length", STATUS_MALFORMED),
        # UDP length 7.
        (hexframe(ETHERNET_IPV4 + "45 00 001c 0000 0000 40 11 0000 0a000001 0a000002"
                  "0035 0035 0007 0000"),
         "bad_udp_length", STATUS_MALFORMED),
        # IPv4 header cut by the capture.
        (hexframe(ETHERNET_IPV4 + "45 00 0028 0000 0000 40 06"),
         "truncated_ipv4", STATUS_TRUNCATED),
        # Ethernet header cut.
        (hexframe("001122334455 6677"), "truncated_ethernet", STATUS_TRUNCATED),
    ],
)
def test_malformed_headers(frame, expected, status):
    # wirelen 1500 where the case is about truncation, so only caplen cuts it.
    wirelen = 1500 if status == STATUS_TRUNCATED else None
    record, counts = decode_one(frame, wirelen=wirelen)
    assert counts == {expected: 1}
    assert anomaly_name(record) == expected
    assert record["status"] == status


def test_bad_tcp_option_keeps_fixed_header():
    frame = ipv4_tcp_frame("0050 0051 00000000 00000000 60 02 ffff 0000 0000 0205 0000",
                           total_len=44)
    record, _ = decode_one(frame)
    assert record["src_port"] == 80
    assert record["dst_port"] == 81
    assert record["tcp_flags"] == 0x02


def test_snaplen_cut_in_payload_is_ok():
    frame = hexframe(ETHERNET_IPV4 + """
45 00 0064 0000 0000 40 11 0000 # IPv4: total 100, UDP
0a000001 0a000002
0035 0035 0050 0000             # UDP 53 -> 53, length 80
0102                            # 2 of the 72 payload bytes captured
""")
    record, counts = decode_one(frame, wirelen=14 + 100)
    assert counts == {}
    assert record["status"] == STATUS_OK
    assert record["payload_len"] == 2
    assert record["payload_wire_len"] == 72


def test_ipv6_extension_chain_too_long():
    hops = b"".join(bytes([0, 0]) + bytes(6) for _ in range(8)) + bytes([59, 0]) + bytes(6)
    frame = hexframe("""
001122334455 66778899aabb 86dd
60000000 0048 00 40             # payload 72 = 9 extension headers of 8 bytes
20010db8000000000000000000000001
20010db8000000000000000000000002
""") + hops
    record, counts = decode_one(frame)
    assert counts == {"ipv6_extension_chain_too_long": 1}
    assert record["status"] == STATUS_MALFORMED


def test_ipv6_extension_past_payload_length():
    frame = hexframe("""
001122334455 66778899aabb 86dd
60000000 0008 3c 40             # payload 8, destination options
20010db8000000000000000000000001
20010db8000000000000000000000002
3b 01 000000000000              # length 1: 16 bytes, past the 8-byte payload
0000000000000000
""")
    record, counts = decode_one(frame)
    assert counts == {"bad_ipv6_extension_length": 1}


def test_decode_overwrites_previous_fields():
    packets, data = build_batch([hexframe(GRE_WITH_KEY)])
    decode_batch(packets, data)
    data[14 + 9] = 0x59  # outer protocol OSPF: no tunnel any more
    decode_batch(packets, data)
    assert packets[0]["tunnel_type"] == TUNNEL_NONE
    assert packets[0]["tunnel_id"] == 0
    assert packets[0]["ip_proto"] == 0x59
    assert packets[0]["src_port"] == 0


def test_counters_accumulate_across_batches():
    counters = new_anomaly_counters()
    for _ in range(3):
        packets, data = build_batch([hexframe("0011")])
        decode_batch(packets, data, counters)
    assert anomaly_counts(counters) == {"truncated_ethernet": 3}


def test_anomaly_names_unique_snake_case():
    assert ANOMALY_NAMES[0] == "none"
    assert len(set(ANOMALY_NAMES)) == len(ANOMALY_NAMES)
    for name in ANOMALY_NAMES:
        assert name.replace("_", "").isalnum() and name == name.lower()


def test_rejects_wrong_packet_dtype():
    _, data = build_batch([IPV4_UDP])
    with pytest.raises(TypeError, match="packets has dtype"):
        decode_batch(np.zeros(1, dtype=np.int64), data)


def test_rejects_non_contiguous_packets():
    packets, data = build_batch([IPV4_UDP] * 4, 101)
    with pytest.raises(ValueError, match="not C-contiguous"):
        decode_batch(packets[::2], data)


def test_rejects_wrong_data_dtype():
    packets, data = build_batch([IPV4_UDP], 101)
    with pytest.raises(TypeError, match="uint8"):
        decode_batch(packets, data.astype(np.int16))


def test_rejects_wrong_counter_size():
    packets, data = build_batch([IPV4_UDP], 101)
    with pytest.raises(ValueError, match="counters has 3 entries"):
        decode_batch(packets, data, np.zeros(3, dtype=np.int64))


def test_rejects_packet_past_data_end():
    packets, data = build_batch([IPV4_UDP, IPV4_UDP, IPV4_UDP], 101)
    packets[1]["caplen"] = 65
    with pytest.raises(ValueError, match="packet 1 .* ends past the 96-byte data buffer"):
        decode_batch(packets, data)
    # Decoding stops at the bad packet: the one before it is decoded, the one after is not.
    assert packets[0]["ip_version"] == 4
    assert packets[1]["ip_version"] == 0
    assert packets[2]["ip_version"] == 0


def test_empty_batch():
    counters = decode_batch(empty_packets(0), np.zeros(0, dtype=np.uint8))
    assert anomaly_counts(counters) == {}


def test_packet_dtype_is_shared_layout():
    packets, _ = build_batch([IPV4_UDP])
    assert packets.dtype == PACKET_DTYPE


def test_ipv6_authentication_header():
    frame = hexframe("""
001122334455 66778899aabb 86dd
60000000 002c 33 40             # payload 44 = 24 AH + 20 TCP, next header AH (51)
20010db8000000000000000000000001
20010db8000000000000000000000002
06 04 0000                      # AH: next header TCP, length 4: (4 + 2) * 4 = 24 bytes
00000100 00000001               # SPI 256, sequence 1
0000000000000000 00000000       # 12-byte integrity check value
""") + hexframe("0050 0051 00000000 00000000 30 10 ffff 0000 0000")[:12]
    record, counts = decode_one(frame, wirelen=14 + 40 + 44)
    # The TCP header is cut after 12 of its 20 bytes, so the AH was skipped to it.
    assert counts == {"truncated_tcp": 1}
    assert record["ip_proto"] == 6
    assert record["l4_offset"] == 0
    assert address(record, "src_addr") == "2001:db8::1"


def test_every_truncation_anomaly_reachable():
    pppoe = hexframe("001122334455 66778899aabb 8864 11 00 1234 0022 0021") + IPV4_UDP
    erspan = hexframe(ETHERNET_IPV4 + """
45 00 004e 0000 0000 40 2f 0000 c0000201 c0000202
1000 88be 00000001 1000 002a 00000000
""") + hexframe(QINQ)[:12] + hexframe(QINQ)[20:]
    arp = hexframe("""
ffffffffffff 66778899aabb 0806 0001 0800 06 04 0001
66778899aabb c0a80001 000000000000 c0a800fe
""")
    mpls = hexframe("001122334455 66778899aabb 8847 00064140") + IPV4_UDP
    hop_by_hop = hexframe("""
001122334455 66778899aabb 86dd 60000000 0010 00 40
20010db8000000000000000000000001 20010db8000000000000000000000002
11 00 010400000000 0035 0035 0008 0000
""")
    cases = [
        (hexframe(GRE_WITH_KEY), 1), (hexframe(VXLAN), 1), (hexframe(QINQ), 1),
        (pppoe, 1), (erspan, 1), (arp, 1), (mpls, 1), (hop_by_hop, 1),
        (bytes.fromhex("0000 0001 0006 66778899aabb0000 0800") + IPV4_UDP, 113),
        (struct.pack("<I", 2) + IPV4_UDP, 0),
        (IPV4_UDP, 101),
    ]
    seen = set()
    for frame, link_type in cases:
        for caplen in range(len(frame)):
            record, counts = decode_one(frame[:caplen], link_type, wirelen=len(frame))
            seen.update(counts)
    expected = {name for name in ANOMALY_NAMES if name.startswith("truncated_")}
    assert expected - seen == set()

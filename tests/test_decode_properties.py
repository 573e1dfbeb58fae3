"""Decoder properties: dpkt-built packets read back the same, and no input crashes it.

Frames are built with dpkt (VLAN stacks, MPLS, IPv6 extension chains, GRE,
VXLAN and IP-in-IP around TCP, UDP and ICMP) and the decoded fields are
compared with what dpkt parses back from the same bytes. Every cut of a valid
frame, and random bytes on every link type, must give a named anomaly and no
crash. To show that the decoder never reads past caplen, each frame is
decoded from the end of an exactly-sized buffer and twice with different
guard bytes after it, and the three results must match.
"""

import struct

import dpkt
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.decode import ANOMALY_NAMES, SUPPORTED_LINK_TYPES, decode_batch
from engine.decode.batches import build_batch
from engine.decode.layout import empty_packets

STATUS_OK, STATUS_TRUNCATED, STATUS_MALFORMED, STATUS_UNSUPPORTED, STATUS_NOT_IP = range(5)
TUNNEL_NONE, TUNNEL_GRE, TUNNEL_VXLAN, TUNNEL_IPIP = range(4)

DECODE_FIELDS = [
    name for name in empty_packets(0).dtype.names
    if name not in ("ts_ns", "data_offset", "caplen", "wirelen", "link_type",
                    "iface_id", "record_index", "direction", "flow_slot", "flow_id")
]

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_frame(frame, link_type=1, caplen=None, wirelen=None, guard=None):
    """Decode `frame[:caplen]` and return its record.

    Without `guard` the frame ends exactly at the end of the data buffer, so
    a read past caplen leaves the allocation. With `guard` (one byte value)
    64 guard bytes follow the captured bytes.
    """
    caplen = len(frame) if caplen is None else caplen
    wirelen = len(frame) if wirelen is None else wirelen
    captured = frame[:caplen]
    padding = b"" if guard is None else bytes([guard]) * 64
    packets, data = build_batch([captured + padding], link_type, [wirelen])
    packets[0]["caplen"] = caplen
    data = np.ascontiguousarray(data[:caplen + len(padding)])
    decode_batch(packets, data)
    return packets[0]


def decoded_fields(record):
    return {name: np.asarray(record[name]).tolist() for name in DECODE_FIELDS}


def assert_reads_within_caplen(frame, link_type=1, caplen=None, wirelen=None):
    """Decode with two guard patterns and at a buffer's end; return the record."""
    exact = decode_frame(frame, link_type, caplen, wirelen)
    zeros = decode_frame(frame, link_type, caplen, wirelen, guard=0x00)
    ones = decode_frame(frame, link_type, caplen, wirelen, guard=0xFF)
    assert decoded_fields(zeros) == decoded_fields(ones)
    assert decoded_fields(exact) == decoded_fields(zeros)
    return exact


def assert_record_consistent(record, caplen):
    status = int(record["status"])
    name = ANOMALY_NAMES[record["anomaly"]]
    assert status in (STATUS_OK, STATUS_TRUNCATED, STATUS_MALFORMED,
                      STATUS_UNSUPPORTED, STATUS_NOT_IP)
    if status in (STATUS_OK, STATUS_NOT_IP):
        assert name == "none"
    else:
        assert name != "none"
    if status == STATUS_TRUNCATED:
        assert name.startswith("truncated_")
    assert record["l3_offset"] <= caplen
    assert record["l4_offset"] <= caplen
    if record["payload_offset"]:
        assert int(record["payload_offset"]) + int(record["payload_len"]) <= caplen


# --- building frames with dpkt ----------------------------------------------

ipv4_addresses = st.binary(min_size=4, max_size=4)
ipv6_addresses = st.binary(min_size=16, max_size=16)
ports = st.integers(0, 65535)
payloads = st.binary(max_size=24)


@st.composite
def tcp_options(draw):
    """Return encoded TCP options padded with NOPs to a multiple of 4 bytes."""
    chosen = draw(st.lists(st.sampled_from(["mss", "wscale", "sackok", "ts", "sack"]),
                           unique=True, max_size=5))
    options = b""
    for kind in chosen:
        if kind == "mss":
            options += struct.pack("!BBH", 2, 4, draw(st.integers(0, 65535)))
        elif kind == "wscale":
            options += struct.pack("!BBB", 3, 3, draw(st.integers(0, 14)))
        elif kind == "sackok":
            options += b"\x04\x02"
        elif kind == "ts":
            options += struct.pack("!BBII", 8, 10, draw(st.integers(0, 2**32 - 1)),
                                   draw(st.integers(0, 2**32 - 1)))
        else:
            blocks = draw(st.integers(1, 2))
            options += struct.pack("!BB", 5, 2 + 8 * blocks) + bytes(8 * blocks)
    options += b"\x01" * (-len(options) % 4)
    return options


@st.composite
def transport_segments(draw, ip_version):
    """Return (protocol number, dpkt transport object)."""
    kind = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    if kind == "tcp":
        options = draw(tcp_options())
        segment = dpkt.tcp.TCP(
            sport=draw(ports), dport=draw(ports),
            seq=draw(st.integers(0, 2**32 - 1)), ack=draw(st.integers(0, 2**32 - 1)),
            flags=draw(st.integers(0, 255)), win=draw(ports),
            off=(20 + len(options)) // 4, opts=options, data=draw(payloads))
        return 6, segment
    if kind == "udp":
        # Port 4789 would make the payload a VXLAN header.
        segment = dpkt.udp.UDP(sport=draw(ports), dport=draw(ports.filter(lambda p: p != 4789)),
                               data=draw(payloads))
        segment.ulen = len(bytes(segment))
        return 17, segment
    icmp_type = draw(st.integers(0, 255))
    segment = dpkt.icmp.ICMP(type=icmp_type, code=draw(st.integers(0, 255)),
                             data=draw(payloads))
    return (1 if ip_version == 4 else 58), segment


@st.composite
def ipv6_extension_chains(draw, final_protocol):
    """Return (first next-header value, extension header bytes)."""
    kinds = draw(st.lists(st.sampled_from([0, 43, 60]), max_size=4))
    chain = b""
    next_headers = kinds[1:] + [final_protocol]
    for kind, next_header in zip(kinds, next_headers):
        if kind == 43:
            # Routing type 0 with one address: 24 bytes, length field 2.
            chain += struct.pack("!BBBB4x", next_header, 2, 0, 1) + draw(ipv6_addresses)
        else:
            words = draw(st.integers(0, 2))
            padding = 6 + 8 * words
            # One PadN option fills the header.
            chain += struct.pack("!BBBB", next_header, words, 1, padding - 2) + bytes(padding - 2)
    first = kinds[0] if kinds else final_protocol
    return first, chain


@st.composite
def ip_packets(draw, allow_extensions=True):
    """Return a dict describing an IP packet and its bytes."""
    version = draw(st.sampled_from([4, 6]))
    protocol, segment = draw(transport_segments(version))
    ttl = draw(st.integers(1, 255))
    if version == 4:
        packet = dpkt.ip.IP(src=draw(ipv4_addresses), dst=draw(ipv4_addresses), ttl=ttl,
                            p=protocol, id=draw(st.integers(0, 65535)), data=segment)
        raw = bytes(packet)
    else:
        transport = bytes(segment)
        first, chain = (draw(ipv6_extension_chains(protocol)) if allow_extensions
                        else (protocol, b""))
        header = dpkt.ip6.IP6(src=draw(ipv6_addresses), dst=draw(ipv6_addresses),
                              hlim=ttl, nxt=first, plen=len(chain) + len(transport))
        raw = bytes(header) + chain + transport
    return {"version": version, "protocol": protocol, "bytes": raw}


def ethernet_header(ether_type, dst=b"\x00\x11\x22\x33\x44\x55", src=b"\x66\x77\x88\x99\xaa\xbb"):
    return dst + src + struct.pack("!H", ether_type)


@st.composite
def frames(draw):
    """Return (frame bytes, expected tunnel fields) for a random encapsulation."""
    inner = draw(ip_packets())
    ip_ether_type = 0x0800 if inner["version"] == 4 else 0x86DD
    tunnel = draw(st.sampled_from(["none", "gre", "gre_teb", "vxlan", "ipip"]))
    vlan_ids = draw(st.lists(st.integers(0, 4095), max_size=4))
    mpls_labels = draw(st.lists(st.integers(16, 2**20 - 1), max_size=3))
    expected = {"tunnel_type": TUNNEL_NONE, "tunnel_id": 0, "outer": None,
                "vlan_ids": vlan_ids, "mpls_depth": len(mpls_labels), "inner": inner}

    if tunnel == "none":
        l3 = inner["bytes"]
    else:
        outer_src, outer_dst = draw(ipv4_addresses), draw(ipv4_addresses)
        if tunnel in ("gre", "gre_teb"):
            key = draw(st.none() | st.integers(0, 2**32 - 1))
            flags = 0x2000 if key is not None else 0
            with_checksum = draw(st.booleans())
            flags |= 0x8000 if with_checksum else 0
            protocol = ip_ether_type if tunnel == "gre" else 0x6558
            gre = struct.pack("!HH", flags, protocol)
            if with_checksum:
                gre += bytes(4)
            if key is not None:
                gre += struct.pack("!I", key)
            body = inner["bytes"] if tunnel == "gre" else ethernet_header(ip_ether_type) + inner["bytes"]
            outer = dpkt.ip.IP(src=outer_src, dst=outer_dst, p=47, data=gre + body)
            expected.update(tunnel_type=TUNNEL_GRE, tunnel_id=key or 0)
        elif tunnel == "vxlan":
            vni = draw(st.integers(0, 2**24 - 1))
            vxlan = struct.pack("!II", 0x08000000, vni << 8)
            udp = dpkt.udp.UDP(sport=draw(ports), dport=4789,
                               data=vxlan + ethernet_header(ip_ether_type) + inner["bytes"])
            udp.ulen = len(bytes(udp))
            outer = dpkt.ip.IP(src=outer_src, dst=outer_dst, p=17, data=udp)
            expected.update(tunnel_type=TUNNEL_VXLAN, tunnel_id=vni)
        else:
            outer = dpkt.ip.IP(src=outer_src, dst=outer_dst,
                               p=4 if inner["version"] == 4 else 41, data=inner["bytes"])
            expected.update(tunnel_type=TUNNEL_IPIP)
        l3 = bytes(outer)
        expected["outer"] = (outer_src, outer_dst)
        ip_ether_type = 0x0800

    # EtherType after the VLAN tags: MPLS when labels follow, else the IP version.
    after_vlans = ip_ether_type
    if mpls_labels:
        after_vlans = 0x8847
    l2 = ethernet_header(0x8100 if vlan_ids else after_vlans)
    for index, vid in enumerate(vlan_ids):
        next_type = 0x8100
        if index == len(vlan_ids) - 1:
            next_type = after_vlans
        l2 += struct.pack("!HH", vid, next_type)
    for index, label in enumerate(mpls_labels):
        bottom = 1 if index == len(mpls_labels) - 1 else 0
        l2 += struct.pack("!I", (label << 12) | (bottom << 8) | 64)
    return l2 + l3, expected


def dpkt_view(ip_bytes, version):
    """Parse an IP packet with dpkt and return the fields the decoder fills."""
    packet = dpkt.ip.IP(ip_bytes) if version == 4 else dpkt.ip6.IP6(ip_bytes)
    segment = packet.data
    view = {
        "src_addr": bytes(packet.src).ljust(16, b"\0"),
        "dst_addr": bytes(packet.dst).ljust(16, b"\0"),
        "ttl": packet.ttl if version == 4 else packet.hlim,
        "ip_proto": packet.p,
    }
    if isinstance(segment, dpkt.tcp.TCP):
        view.update(src_port=segment.sport, dst_port=segment.dport, tcp_seq=segment.seq,
                    tcp_ack=segment.ack, tcp_flags=segment.flags, tcp_window=segment.win,
                    payload_len=len(segment.data), l4_header_len=segment.off * 4)
        for kind, value in dpkt.tcp.parse_opts(segment.opts):
            if kind == 2:
                view["tcp_mss"] = struct.unpack("!H", value)[0]
            elif kind == 3:
                view["tcp_wscale"] = value[0]
            elif kind == 8:
                view["tcp_tsval"], view["tcp_tsecr"] = struct.unpack("!II", value)
    elif isinstance(segment, dpkt.udp.UDP):
        view.update(src_port=segment.sport, dst_port=segment.dport,
                    payload_len=len(segment.data))
    else:
        # dpkt may decode the ICMP body into a message object; its length is
        # the bytes after type, code and checksum either way.
        view.update(icmp_type=segment.type, icmp_code=segment.code,
                    payload_len=len(bytes(segment)) - 4)
    view.pop("l4_header_len", None)
    return view


# --- properties ---------------------------------------------------------------

@PROPERTY_SETTINGS
@given(frames())
def test_decode_matches_dpkt(case):
    frame, expected = case
    record = assert_reads_within_caplen(frame)
    assert record["status"] == STATUS_OK
    assert record["anomaly"] == 0
    inner = expected["inner"]
    assert record["ip_version"] == inner["version"]
    for field, value in dpkt_view(inner["bytes"], inner["version"]).items():
        actual = record[field]
        actual = bytes(actual) if field.endswith("_addr") else int(actual)
        assert actual == value, field
    assert record["vlan_depth"] == len(expected["vlan_ids"])
    assert list(record["vlan_ids"][: len(expected["vlan_ids"])]) == expected["vlan_ids"][:3]
    assert record["mpls_depth"] == expected["mpls_depth"]
    assert record["tunnel_type"] == expected["tunnel_type"]
    assert record["tunnel_id"] == expected["tunnel_id"]
    if expected["outer"]:
        assert bytes(record["outer_src_addr"][:4]) == expected["outer"][0]
        assert bytes(record["outer_dst_addr"][:4]) == expected["outer"][1]


@PROPERTY_SETTINGS
@given(frames(), st.data())
def test_every_cut_names_truncation(case, data):
    frame, _ = case
    full = decoded_fields(decode_frame(frame))
    # Every cut inside the headers plus a sample of cuts in the payload.
    header_end = int(full["payload_offset"]) or len(frame)
    cuts = list(range(header_end)) + [data.draw(st.integers(header_end, len(frame)))]
    for caplen in cuts:
        record = assert_reads_within_caplen(frame, caplen=caplen)
        assert_record_consistent(record, caplen)
        if caplen < header_end:
            assert record["status"] == STATUS_TRUNCATED, caplen
        else:
            # A cut in the payload changes payload_len and nothing else.
            assert record["status"] == STATUS_OK
            cut = decoded_fields(record)
            assert cut.pop("payload_len") <= full["payload_len"]
            assert cut == {k: v for k, v in full.items() if k != "payload_len"}


@st.composite
def fragmented_ipv4(draw):
    """Return (first fragment, later fragment, datagram payload, split offset)."""
    protocol, segment = draw(transport_segments(4))
    data = bytes(segment) + draw(st.binary(min_size=8, max_size=64))
    split = 8 * draw(st.integers(1, len(data) // 8))
    fields = dict(src=draw(ipv4_addresses), dst=draw(ipv4_addresses), p=protocol,
                  id=draw(st.integers(0, 65535)))
    # dpkt counts the fragment offset in 8-byte units.
    first = dpkt.ip.IP(mf=1, offset=0, data=data[:split], **fields)
    later = dpkt.ip.IP(mf=0, offset=split // 8, data=data[split:], **fields)
    return bytes(first), bytes(later), data, split


@PROPERTY_SETTINGS
@given(fragmented_ipv4())
def test_ipv4_fragments_match_dpkt(case):
    first, later, data, split = case
    protocol = first[9]
    head = assert_reads_within_caplen(ethernet_header(0x0800) + first)
    tail = assert_reads_within_caplen(ethernet_header(0x0800) + later)
    parsed_head, parsed_tail = dpkt.ip.IP(first), dpkt.ip.IP(later)
    assert head["frag_id"] == parsed_head.id
    assert tail["frag_id"] == parsed_tail.id
    assert head["frag_offset"] == 0
    assert tail["frag_offset"] == parsed_tail.offset * 8
    assert head["frag_flags"] == 0x03
    assert tail["frag_flags"] == 0x01
    assert tail["src_port"] == 0
    assert tail["payload_len"] == len(data) - split
    if protocol == 6:
        header_len = (data[12] >> 4) * 4
    elif protocol == 17:
        header_len = 8
    else:
        header_len = 4
    if split >= header_len:
        assert head["status"] == STATUS_OK
        assert head["l4_offset"] == 14 + 20
    else:
        # The transport header continues in the next fragment (RFC 1858).
        assert ANOMALY_NAMES[head["anomaly"]] == "ip_payload_too_short"
    if split >= header_len and protocol in (6, 17):
        assert head["src_port"] == struct.unpack("!H", data[:2])[0]
        assert head["dst_port"] == struct.unpack("!H", data[2:4])[0]


@PROPERTY_SETTINGS
@given(st.sampled_from(sorted(SUPPORTED_LINK_TYPES) + [147, 160, 65535]),
       st.binary(max_size=160))
def test_random_bytes_never_crash(link_type, frame):
    record = assert_reads_within_caplen(frame, link_type=link_type)
    assert_record_consistent(record, len(frame))


@PROPERTY_SETTINGS
@given(frames(), st.integers(0, 2**31), st.integers(0, 255))
def test_flipped_byte_never_crashes(case, position, value):
    frame, _ = case
    mutated = bytearray(frame)
    mutated[position % len(frame)] = value
    record = assert_reads_within_caplen(bytes(mutated))
    assert_record_consistent(record, len(frame))

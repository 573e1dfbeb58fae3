"""Build decoded packet batches from a capture with dpkt, as a reference feeder.

The engine's own reader, decoder and flow table fill ww_packet records in
compiled code. This module fills the same fields the inspectors read (times,
addresses, ports, MACs, TCP sequence and flags, payload offsets, flow id and
direction) in plain Python, one packet at a time. Tests use it as an
independent oracle, and the `assets` command uses it when the compiled
pipeline is not installed. It is not meant for live traffic rates.
"""

from __future__ import annotations

from dataclasses import dataclass

import dpkt
import numpy as np

from engine.decode.layout import empty_packets


LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_NULL = 0


@dataclass
class Batch:
    packets: np.ndarray  # PACKET_DTYPE records
    data: np.ndarray  # uint8 buffer the records' data_offset points into
    count: int


def _unwrap_link(link_type: int, frame: bytes):
    """Return (ip packet object, eth_src, eth_dst) or (None, b"", b"")."""
    eth_src = eth_dst = b""
    if link_type == LINKTYPE_ETHERNET:
        eth = dpkt.ethernet.Ethernet(frame)
        eth_src, eth_dst = eth.src, eth.dst
        ip = eth.data
    elif link_type == LINKTYPE_LINUX_SLL:
        ip = dpkt.sll.SLL(frame).data
    elif link_type == LINKTYPE_RAW:
        version = frame[0] >> 4 if frame else 0
        ip = dpkt.ip.IP(frame) if version == 4 else dpkt.ip6.IP6(frame)
    elif link_type == LINKTYPE_NULL:
        ip = dpkt.loopback.Loopback(frame).data
    else:
        return None, eth_src, eth_dst
    if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
        return None, eth_src, eth_dst
    return ip, eth_src, eth_dst


def read_batch(path: str, max_packets: int = 1_000_000) -> Batch:
    """Read up to `max_packets` records of a pcap or pcapng file into one batch.

    Packets that dpkt cannot decode keep status 2 (malformed) and no flow id,
    so the inspectors skip them.
    """
    with open(path, "rb") as handle:
        try:
            reader = dpkt.pcap.Reader(handle)
        except ValueError:
            handle.seek(0)
            reader = dpkt.pcapng.Reader(handle)
        link_type = reader.datalink()
        if not 0 <= link_type <= 0xFFFF:
            raise ValueError(f"invalid link type {link_type} in {path}")
        records = []
        for index, (ts, frame) in enumerate(reader):
            if index >= max_packets:
                break
            records.append((ts, frame))

    packets = empty_packets(len(records))
    data = np.frombuffer(b"".join(frame for _, frame in records), dtype=np.uint8).copy()
    flow_ids: dict[tuple, int] = {}
    offset = 0
    for index, (ts, frame) in enumerate(records):
        record = packets[index]
        record["ts_ns"] = int(round(float(ts) * 1e9))
        record["data_offset"] = offset
        record["caplen"] = len(frame)
        record["wirelen"] = len(frame)
        record["link_type"] = link_type
        record["record_index"] = index
        record["direction"] = 0xFF
        _fill_record(record, link_type, frame, flow_ids)
        offset += len(frame)
    return Batch(packets=packets, data=data, count=len(records))


def _fill_record(record, link_type: int, frame: bytes, flow_ids: dict) -> None:
    try:
        ip, eth_src, eth_dst = _unwrap_link(link_type, frame)
    except (dpkt.UnpackError, IndexError, ValueError):
        record["status"] = 2
        return
    if ip is None:
        record["status"] = 4
        return
    if eth_src:
        record["eth_src"] = np.frombuffer(eth_src, dtype=np.uint8)
        record["eth_dst"] = np.frombuffer(eth_dst, dtype=np.uint8)
    l4 = ip.data
    if isinstance(ip, dpkt.ip.IP):
        record["ip_version"] = 4
        src, dst = ip.src, ip.dst
        proto = ip.p
        l4_wire_len = ip.len - ip.hl * 4
    else:
        record["ip_version"] = 6
        src, dst = ip.src, ip.dst
        proto = ip.nxt if not isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)) else (
            6 if isinstance(l4, dpkt.tcp.TCP) else 17
        )
        l4_wire_len = ip.plen
    record["src_addr"][: len(src)] = np.frombuffer(src, dtype=np.uint8)
    record["dst_addr"][: len(dst)] = np.frombuffer(dst, dtype=np.uint8)
    record["ip_proto"] = proto
    if isinstance(l4, dpkt.tcp.TCP):
        header_len = l4.off * 4
        record["tcp_seq"] = l4.seq
        record["tcp_ack"] = l4.ack
        record["tcp_flags"] = l4.flags
    elif isinstance(l4, dpkt.udp.UDP):
        header_len = 8
    else:
        return
    payload = bytes(l4.data)
    record["src_port"] = l4.sport
    record["dst_port"] = l4.dport
    if payload:
        # Ethernet padding may follow the IP packet, so count from the end of
        # the IP packet rather than from the end of the frame.
        ip_bytes = bytes(ip)
        ip_start = frame.find(ip_bytes[:20])
        start = ip_start + len(ip_bytes) - len(l4.data)
        if ip_start < 0 or frame[start : start + len(payload)] != payload:
            start = frame.rfind(payload)
        record["payload_offset"] = start
        record["payload_len"] = len(payload)
    record["payload_wire_len"] = max(l4_wire_len - header_len, len(payload))
    record["status"] = 0

    forward = (src, l4.sport, dst, l4.dport, proto)
    reverse = (dst, l4.dport, src, l4.sport, proto)
    if reverse in flow_ids:
        record["flow_id"] = flow_ids[reverse]
        record["direction"] = 1
    else:
        if forward not in flow_ids:
            flow_ids[forward] = len(flow_ids) + 1
        record["flow_id"] = flow_ids[forward]
        record["direction"] = 0


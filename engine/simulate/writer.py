"""Packet accumulation and the vectorised pcap writer.

Protocol builders never construct Ethernet, IPv4, TCP or UDP headers. They
register a flow once (addresses, ports, MACs, TTLs, windows) and then append
one row per packet: time, flow, direction, TCP flags, sequence and
acknowledgement numbers and a payload. Payloads are interned, so a message
sent a thousand times is stored and checksummed once.

At each flush the rows become NumPy columns, are sorted by time, and all
headers are filled in at once from the flow table. IPv4 header checksums and
TCP/UDP checksums (RFC 791, RFC 793 and RFC 768 one's-complement sums with
the pseudo-header) are computed column-wise, except the payload part of
each checksum and the payload copy, which are compiled loops (kernels.py).

Output is classic pcap (microsecond timestamps, LINKTYPE_ETHERNET, snaplen
65535), written in time order; frames are not padded to 60 bytes.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np

from engine.simulate import kernels

PCAP_MAGIC_US = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
SNAPLEN = 65535

KIND_RAW = 0  # a complete frame built by the caller (ARP, ICMP)
KIND_TCP = 1
KIND_UDP = 2

ETH_IP_LEN = 34  # Ethernet II (14) + IPv4 without options (20)
HEADER_LEN = np.array([0, ETH_IP_LEN + 20, ETH_IP_LEN + 8], dtype=np.int64)
# TCP options on SYN and SYN/ACK: MSS 1460, NOP, NOP, SACK permitted (RFC 879, RFC 2018).
SYN_OPTIONS = bytes([2, 4, 0x05, 0xB4, 1, 1, 4, 2])
SYN_OPTIONS_WORD_SUM = sum(int.from_bytes(SYN_OPTIONS[i:i + 2], "big") for i in range(0, len(SYN_OPTIONS), 2))
MAX_HEADER_LEN = ETH_IP_LEN + 20 + len(SYN_OPTIONS)
PCAP_RECORD_LEN = 16
CHUNK_BYTES = 8 << 20  # output assembled per chunk; a chunk with one huge packet may exceed it

# TCP flag bits (RFC 793 and RFC 3168).
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def header_lengths(kind: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Bytes of Ethernet, IPv4 and TCP/UDP header per packet (0 for raw frames)."""
    with_options = (kind == KIND_TCP) & ((flags & SYN) != 0)
    return HEADER_LEN[kind] + np.where(with_options, len(SYN_OPTIONS), 0)

IP_PROTO = {KIND_TCP: 6, KIND_UDP: 17}


def pcap_file_header() -> bytes:
    return struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)


def ip_to_int(ip: str) -> int:
    a, b, c, d = (int(x) for x in ip.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


class FlowTable:
    """Flow templates: per flow, the client (direction 0 sender) and server sides.

    Flow ids are global and increase. Builders emit a whole session when they
    create it, so after a flush only buffered packets refer to flows. Then
    drop_before() evicts every older row. The table is therefore bounded by
    the flows of one window plus those of sessions still open across its end.
    """

    def __init__(self):
        self.rows: list[tuple] = []
        self.arrays: dict[str, np.ndarray] | None = None
        self._compacted = 0
        self.base = 0  # id of the first row in `arrays`

    def add(self, kind: int, client_mac: bytes, client_ip: str, sport: int,
            server_mac: bytes, server_ip: str, dport: int,
            client_ttl: int, server_ttl: int, client_window: int, server_window: int) -> int:
        self.rows.append((kind, client_mac, ip_to_int(client_ip), sport, server_mac,
                          ip_to_int(server_ip), dport, client_ttl, server_ttl,
                          client_window, server_window))
        return self._compacted + len(self.rows) - 1

    def compact(self) -> dict[str, np.ndarray]:
        """Move new rows into NumPy columns and return all columns."""
        if self.rows:
            kind, cmac, cip, sport, smac, sip, dport, cttl, sttl, cwin, swin = zip(*self.rows)
            fresh = {
                "kind": np.array(kind, dtype=np.uint8),
                "client_mac": np.frombuffer(b"".join(cmac), dtype=np.uint8).reshape(-1, 6),
                "client_ip": np.array(cip, dtype=np.int64),
                "sport": np.array(sport, dtype=np.int64),
                "server_mac": np.frombuffer(b"".join(smac), dtype=np.uint8).reshape(-1, 6),
                "server_ip": np.array(sip, dtype=np.int64),
                "dport": np.array(dport, dtype=np.int64),
                "client_ttl": np.array(cttl, dtype=np.int64),
                "server_ttl": np.array(sttl, dtype=np.int64),
                "client_window": np.array(cwin, dtype=np.int64),
                "server_window": np.array(swin, dtype=np.int64),
            }
            self._compacted += len(self.rows)
            self.rows = []
            if self.arrays is None:
                self.arrays = fresh
            else:
                self.arrays = {k: np.concatenate([self.arrays[k], fresh[k]]) for k in fresh}
        return self.arrays

    def drop_before(self, first_id: int) -> None:
        """Evict compacted rows with ids below `first_id`, which no packet refers to any more."""
        if self.arrays is None or first_id <= self.base:
            return
        keep_from = min(first_id, self._compacted) - self.base
        self.arrays = {k: v[keep_from:] for k, v in self.arrays.items()}
        self.base += keep_from


class PacketBuffer:
    """Packets appended in any order, written in time order by flush().

    Memory: rows that are not yet flushed plus the payloads they refer to. The
    generator flushes after each time window, so the buffer contains one window
    plus the tail of sessions still open across its end.
    """

    def __init__(self):
        self.flows = FlowTable()
        self._reset_columns()
        self.payloads: list[bytes] = [b""]
        self.payload_ids: dict[bytes, int] = {b"": 0}
        self.carry: dict[str, np.ndarray] | None = None
        self.packets_written = 0
        self.bytes_written = 0
        self._scratch = np.empty(0, dtype=np.uint8)

    def _reset_columns(self):
        self.c_time: list[float] = []
        self.c_kind: list[int] = []
        self.c_flow: list[int] = []
        self.c_dir: list[int] = []
        self.c_flags: list[int] = []
        self.c_seq: list[int] = []
        self.c_ack: list[int] = []
        self.c_payload: list[int] = []
        self.c_offset: list[int] = []  # start of the packet's bytes within its payload
        self.c_length: list[int] = []  # byte count, or -1 for the whole payload

    def intern(self, payload: bytes) -> int:
        pid = self.payload_ids.get(payload)
        if pid is None:
            pid = len(self.payloads)
            self.payloads.append(payload)
            self.payload_ids[payload] = pid
        return pid

    def tcp(self, t: float, flow: int, direction: int, flags: int, seq: int, ack: int,
            payload: bytes = b"") -> None:
        self.c_time.append(t)
        self.c_kind.append(KIND_TCP)
        self.c_flow.append(flow)
        self.c_dir.append(direction)
        self.c_flags.append(flags)
        self.c_seq.append(seq & 0xFFFFFFFF)
        self.c_ack.append(ack & 0xFFFFFFFF)
        self.c_payload.append(self.intern(payload))
        self.c_offset.append(0)
        self.c_length.append(-1)

    def udp(self, t: float, flow: int, direction: int, payload: bytes) -> None:
        self.c_time.append(t)
        self.c_kind.append(KIND_UDP)
        self.c_flow.append(flow)
        self.c_dir.append(direction)
        self.c_flags.append(0)
        self.c_seq.append(0)
        self.c_ack.append(0)
        self.c_payload.append(self.intern(payload))
        self.c_offset.append(0)
        self.c_length.append(-1)

    def raw(self, t: float, frame: bytes) -> None:
        self.c_time.append(t)
        self.c_kind.append(KIND_RAW)
        self.c_flow.append(-1)
        self.c_dir.append(0)
        self.c_flags.append(0)
        self.c_seq.append(0)
        self.c_ack.append(0)
        self.c_payload.append(self.intern(frame))
        self.c_offset.append(0)
        self.c_length.append(-1)

    def add_columns(self, columns: dict[str, np.ndarray]) -> None:
        """Append packets given as NumPy columns (bulk floods and scans).

        `columns` contains time (float seconds), kind, flow, dir, flags, seq, ack
        and payload (ids from intern()), all of one length, and optionally
        offset and length: the slice of the payload each packet carries.
        """
        count = len(columns["time"])
        offset = columns.get("offset")
        length = columns.get("length")
        self.c_offset.extend([0] * count if offset is None else offset.tolist())
        self.c_length.extend([-1] * count if length is None else length.tolist())
        self.c_time.extend(columns["time"].tolist())
        self.c_kind.extend(columns["kind"].tolist())
        self.c_flow.extend(columns["flow"].tolist())
        self.c_dir.extend(columns["dir"].tolist())
        self.c_flags.extend(columns["flags"].tolist())
        self.c_seq.extend((columns["seq"].astype(np.int64) & 0xFFFFFFFF).tolist())
        self.c_ack.extend((columns["ack"].astype(np.int64) & 0xFFFFFFFF).tolist())
        self.c_payload.extend(columns["payload"].tolist())

    def pending(self) -> int:
        carried = 0 if self.carry is None else len(self.carry["time_us"])
        return carried + len(self.c_time)

    def _take_columns(self) -> dict[str, np.ndarray]:
        columns = {
            "time_us": np.rint(np.array(self.c_time, dtype=np.float64) * 1e6).astype(np.int64),
            "kind": np.array(self.c_kind, dtype=np.int64),
            "flow": np.array(self.c_flow, dtype=np.int64),
            "dir": np.array(self.c_dir, dtype=np.int64),
            "flags": np.array(self.c_flags, dtype=np.int64),
            "seq": np.array(self.c_seq, dtype=np.int64),
            "ack": np.array(self.c_ack, dtype=np.int64),
            "payload": np.array(self.c_payload, dtype=np.int64),
            "offset": np.array(self.c_offset, dtype=np.int64),
            "length": np.array(self.c_length, dtype=np.int64),
        }
        self._reset_columns()
        if self.carry is not None:
            columns = {k: np.concatenate([self.carry[k], columns[k]]) for k in columns}
            self.carry = None
        return columns

    def flush(self, out: BinaryIO, before: float | None = None) -> int:
        """Write every packet with time < `before` (all if None); return the count written.

        Packets at or after `before` stay buffered, with their payloads.
        """
        columns = self._take_columns()
        order = np.argsort(columns["time_us"], kind="stable")
        columns = {k: v[order] for k, v in columns.items()}
        if before is None:
            cut = len(order)
        else:
            cut = int(np.searchsorted(columns["time_us"], int(round(before * 1e6)), side="left"))
        now = {k: v[:cut] for k, v in columns.items()}
        later = {k: v[cut:] for k, v in columns.items()}

        flows = self.flows.compact()
        base = self.flows.base
        if cut:
            table = _payload_table(self.payloads)
            record_len = PCAP_RECORD_LEN + header_lengths(now["kind"], now["flags"]) + np.where(
                now["length"] < 0, table[2][now["payload"]], now["length"])
            # Assemble in chunks of about CHUNK_BYTES into one reused buffer, so the
            # output pages stay mapped and in cache instead of faulting in per flush.
            ends = np.searchsorted(np.cumsum(record_len), np.arange(1, 1 + int(record_len.sum()) // CHUNK_BYTES + 1)
                                   * CHUNK_BYTES, side="right")
            bounds = sorted(set([0] + [int(e) for e in ends if 0 < e < cut] + [cut]))
            for begin, end in zip(bounds, bounds[1:]):
                chunk = {k: v[begin:end] for k, v in now.items()}
                size = int(record_len[begin:end].sum())
                if len(self._scratch) < size:
                    self._scratch = np.empty(size, dtype=np.uint8)
                data = assemble_records(chunk, flows, table, self._scratch[:size],
                                        first_index=self.packets_written + begin, flow_base=base)
                out.write(memoryview(data))
                self.bytes_written += size
            self.packets_written += cut

        self._keep_payloads(later)
        referenced = later["flow"][later["flow"] >= 0]
        self.flows.drop_before(int(referenced.min()) if len(referenced) else self.flows._compacted)
        return cut

    def _keep_payloads(self, later: dict[str, np.ndarray]) -> None:
        # Drop every payload that no buffered packet still refers to, and renumber.
        used = np.unique(later["payload"]) if len(later["payload"]) else np.zeros(0, np.int64)
        used = np.union1d(used, [0])
        new_payloads = [self.payloads[i] for i in used.tolist()]
        remap = np.zeros(len(self.payloads), dtype=np.int64)
        remap[used] = np.arange(len(used))
        later["payload"] = remap[later["payload"]]
        self.payloads = new_payloads
        self.payload_ids = {p: i for i, p in enumerate(new_payloads)}
        self.carry = later if len(later["time_us"]) else None


def _fold(total: np.ndarray) -> np.ndarray:
    # One's-complement folding of 64-bit partial sums into 16 bits.
    for _ in range(4):
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _put16(block: np.ndarray, column: int, values: np.ndarray) -> None:
    block[:, column] = (values >> 8) & 0xFF
    block[:, column + 1] = values & 0xFF


def _put32(block: np.ndarray, column: int, values: np.ndarray) -> None:
    block[:, column] = (values >> 24) & 0xFF
    block[:, column + 1] = (values >> 16) & 0xFF
    block[:, column + 2] = (values >> 8) & 0xFF
    block[:, column + 3] = values & 0xFF


def _payload_table(payloads: list[bytes]) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Join the payloads into one blob; return the blob, starts and lengths."""
    lengths = np.fromiter((len(p) for p in payloads), dtype=np.int64, count=len(payloads))
    starts = np.zeros(len(payloads), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return b"".join(payloads), starts, lengths


def assemble_records(packets: dict[str, np.ndarray], flows: dict[str, np.ndarray] | None,
                     table: tuple[bytes, np.ndarray, np.ndarray], out: np.ndarray,
                     first_index: int = 0, flow_base: int = 0) -> np.ndarray:
    """Fill `out` (uint8, exactly the records' size) with pcap records for time-sorted packets.

    `table` is _payload_table() of the payloads that the packets' ids refer
    to. Row i of `flows` is flow id `flow_base + i`.
    """
    count = len(packets["time_us"])
    blob, p_start, p_len = table
    kind = packets["kind"]
    pid = packets["payload"]
    payload_offset = packets["offset"]
    payload_len = np.where(packets["length"] < 0, p_len[pid], packets["length"])
    if np.any(payload_offset < 0) or np.any(payload_offset + payload_len > p_len[pid]):
        raise ValueError("packet payload slice runs outside its payload")
    header_len = header_lengths(kind, packets["flags"])
    frame_len = header_len + payload_len
    record_len = PCAP_RECORD_LEN + frame_len
    offsets = np.zeros(count, dtype=np.int64)
    np.cumsum(record_len[:-1], out=offsets[1:])
    total = int(offsets[-1] + record_len[-1]) if count else 0
    if len(out) != total:
        raise ValueError(f"output buffer has {len(out)} bytes, the records need {total}")

    # Record headers: ts_sec, ts_usec, incl_len, orig_len (little-endian u32).
    record = np.empty((count, 4), dtype="<u4")
    record[:, 0] = packets["time_us"] // 1_000_000
    record[:, 1] = packets["time_us"] % 1_000_000
    record[:, 2] = frame_len
    record[:, 3] = frame_len
    kernels.copy_rows(out, offsets, record.view(np.uint8).reshape(count, 16), np.full(count, PCAP_RECORD_LEN))

    ip_rows = np.nonzero(kind != KIND_RAW)[0]
    if len(ip_rows):
        if flows is None:
            raise ValueError("packets refer to flows but no flow was registered")
        slice_sums = kernels.slice_word_sums(np.frombuffer(blob, dtype=np.uint8), p_start[pid] + payload_offset,
                                             payload_len)
        headers = _ip_headers(packets, ip_rows, flows, payload_len, slice_sums[ip_rows], first_index, flow_base)
        kernels.copy_rows(out, offsets[ip_rows] + PCAP_RECORD_LEN, headers, header_len[ip_rows])

    with_payload = np.nonzero(payload_len)[0]
    kernels.copy_slices(out, offsets[with_payload] + PCAP_RECORD_LEN + header_len[with_payload],
                        np.frombuffer(blob, dtype=np.uint8), p_start[pid[with_payload]] + payload_offset[with_payload],
                        payload_len[with_payload])
    return out


def _ip_headers(packets, rows, flows, payload_len, payload_sums, first_index, flow_base) -> np.ndarray:
    """Build Ethernet + IPv4 + TCP/UDP headers, checksums included, one row per packet.

    Checksums are summed from the field values (16-bit words), not from the
    header bytes, so no wide copy of the header block is needed.
    """
    n = len(rows)
    kind = packets["kind"][rows]
    flow = packets["flow"][rows] - flow_base
    reverse = packets["dir"][rows] == 1
    is_tcp = kind == KIND_TCP
    plen = payload_len[rows]
    h = np.zeros((n, MAX_HEADER_LEN), dtype=np.uint8)

    client_mac = flows["client_mac"][flow]
    server_mac = flows["server_mac"][flow]
    h[:, 0:6] = np.where(reverse[:, None], client_mac, server_mac)
    h[:, 6:12] = np.where(reverse[:, None], server_mac, client_mac)
    h[:, 12] = 0x08  # EtherType IPv4

    src_ip = np.where(reverse, flows["server_ip"][flow], flows["client_ip"][flow])
    dst_ip = np.where(reverse, flows["client_ip"][flow], flows["server_ip"][flow])
    sport = np.where(reverse, flows["dport"][flow], flows["sport"][flow])
    dport = np.where(reverse, flows["sport"][flow], flows["dport"][flow])
    ttl = np.where(reverse, flows["server_ttl"][flow], flows["client_ttl"][flow])
    protocol = np.where(is_tcp, 6, 17)
    flags_all = packets["flags"][rows]
    has_options = is_tcp & ((flags_all & SYN) != 0)
    tcp_header_len = np.where(has_options, 20 + len(SYN_OPTIONS), 20)
    l4_len = np.where(is_tcp, tcp_header_len, 8) + plen
    total_len = 20 + l4_len
    # IP id: a fixed hash of the packet's position in the capture, so output is reproducible.
    ip_id = ((first_index + rows) * 40503 + (flow + flow_base) * 131) & 0xFFFF
    fragment = np.where(is_tcp, 0x4000, 0)  # DF on TCP, as common stacks set it
    address_sum = (src_ip >> 16) + (src_ip & 0xFFFF) + (dst_ip >> 16) + (dst_ip & 0xFFFF)

    h[:, 14] = 0x45  # version 4, IHL 5
    _put16(h, 16, total_len)
    _put16(h, 18, ip_id)
    _put16(h, 20, fragment)
    h[:, 22] = ttl
    h[:, 23] = protocol
    ip_sum = 0x4500 + total_len + ip_id + fragment + (ttl << 8) + protocol + address_sum
    _put16(h, 24, (~_fold(ip_sum)) & 0xFFFF)
    _put32(h, 26, src_ip)
    _put32(h, 30, dst_ip)
    _put16(h, 34, sport)
    _put16(h, 36, dport)

    # Pseudo-header (addresses, protocol, L4 length), ports and the payload's sum.
    l4_sum = address_sum + protocol + l4_len + sport + dport + payload_sums
    tcp = np.nonzero(is_tcp)[0]
    udp = np.nonzero(~is_tcp)[0]
    if len(tcp):
        t_rows = rows[tcp]
        flags = packets["flags"][t_rows]
        seq = packets["seq"][t_rows]
        ack = np.where(flags & ACK, packets["ack"][t_rows], 0)
        window = np.where(reverse[tcp], flows["server_window"][flow[tcp]], flows["client_window"][flow[tcp]])
        window = np.where(flags & RST, 0, window)
        offset_byte = (tcp_header_len[tcp] // 4) << 4  # data offset in 32-bit words, high nibble
        sub = h[tcp]
        _put32(sub, 38, seq)
        _put32(sub, 42, ack)
        sub[:, 46] = offset_byte
        sub[:, 47] = flags
        _put16(sub, 48, window)
        options = has_options[tcp]
        sub[options, 54:54 + len(SYN_OPTIONS)] = np.frombuffer(SYN_OPTIONS, dtype=np.uint8)
        h[tcp] = sub
        l4_sum[tcp] += ((seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF) + (offset_byte << 8) + flags
                        + window + np.where(options, SYN_OPTIONS_WORD_SUM, 0))
    if len(udp):
        h[udp, 38] = (l4_len[udp] >> 8) & 0xFF
        h[udp, 39] = l4_len[udp] & 0xFF
        l4_sum[udp] += l4_len[udp]  # the UDP length field, besides the pseudo-header's copy

    checksum = (~_fold(l4_sum)) & 0xFFFF
    checksum = np.where(~is_tcp & (checksum == 0), 0xFFFF, checksum)  # RFC 768: 0 means "none"
    h[tcp, 50] = (checksum[tcp] >> 8) & 0xFF
    h[tcp, 51] = checksum[tcp] & 0xFF
    h[udp, 40] = (checksum[udp] >> 8) & 0xFF
    h[udp, 41] = checksum[udp] & 0xFF
    return h

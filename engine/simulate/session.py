"""TCP and UDP conversations on top of the packet buffer.

A TcpSession keeps both sides' next sequence numbers and a clock. It emits
the three-way handshake, data segmented at the MSS with delayed ACKs every
second segment, occasional retransmissions, and FIN or RST teardown, so
tshark's TCP analysis and reassembly see a consistent stream.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from engine.simulate.topology import Device, Topology
from engine.simulate.writer import ACK, FIN, KIND_TCP, KIND_UDP, PSH, RST, SYN, PacketBuffer

EPHEMERAL_FIRST = 49152
EPHEMERAL_COUNT = 65536 - EPHEMERAL_FIRST
MSS = 1460
BULK_SEGMENTS = 8  # messages longer than this many segments are built as NumPy columns
CLIENT = 0  # direction 0: from the flow's client (the side that opened it)
SERVER = 1


class PortAllocator:
    """Ephemeral source ports, sequential per client address.

    Sequential allocation means a (client, sport) pair repeats only after
    16384 connections from that client, so benign flows cannot reuse an
    attack flow's 5-tuple within a capture of realistic length.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.next_port: dict[str, int] = {}

    def allocate(self, ip: str) -> int:
        offset = self.next_port.get(ip)
        if offset is None:
            # A stable per-host starting point, independent of allocation order elsewhere.
            offset = (hash_text(ip) ^ self.seed * 7919) % EPHEMERAL_COUNT
        self.next_port[ip] = (offset + 1) % EPHEMERAL_COUNT
        return EPHEMERAL_FIRST + offset


def hash_text(text: str) -> int:
    # FNV-1a: stable across processes, unlike hash() with PYTHONHASHSEED.
    value = 0x811C9DC5
    for byte in text.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


@dataclass
class FlowKey:
    src: str
    sport: int
    dst: str
    dport: int
    proto: str

    def as_dict(self) -> dict:
        return {"src": self.src, "sport": self.sport, "dst": self.dst, "dport": self.dport, "proto": self.proto}


@dataclass
class SimContext:
    """State shared by every builder during one run."""

    topology: Topology
    buffer: PacketBuffer
    seed: int
    start: float  # capture start, epoch seconds
    end: float  # capture end, epoch seconds
    ports: PortAllocator
    retransmit_probability: float = 0.004
    message_counts: Counter = field(default_factory=Counter)
    flows_opened: int = 0

    def rng(self, *stream: int | str) -> np.random.Generator:
        """Return a generator for one named stream, independent of every other stream."""
        key = [self.seed] + [hash_text(s) if isinstance(s, str) else int(s) for s in stream]
        return np.random.default_rng(key)

    def count(self, protocol: str, messages: int = 1) -> None:
        self.message_counts[protocol] += messages


def default_ttl(device: Device) -> int:
    # Windows hosts start at 128, Linux and embedded stacks at 64; external hosts
    # arrive a few hops away.
    if device.role in ("external", "attacker"):
        return 64 - 12
    if device.role in ("nurse_workstation", "physician_workstation", "admin_workstation",
                       "reading_workstation", "domain_controller", "file_server"):
        return 128
    return 64


class TcpSession:
    """One TCP connection between two devices, with its own clock `t`.

    SYN and SYN/ACK carry MSS 1460 and SACK-permitted; other segments carry
    no options. NOTE: no window scale or timestamps, whatever the device's
    operating system, so SYN option fingerprints are the same for all hosts.
    """

    def __init__(self, ctx: SimContext, client: Device, server: Device, dport: int, t: float,
                 rng: np.random.Generator, sport: int | None = None, rtt: float | None = None,
                 client_ip: str | None = None, client_window: int = 64240, server_window: int = 65160):
        self.ctx = ctx
        self.rng = rng
        self.client = client
        self.server = server
        self.sport = sport if sport is not None else ctx.ports.allocate(client_ip or client.ip)
        self.dport = dport
        self.client_ip = client_ip or client.ip
        self.t = t
        if rtt is None:
            external = client.role in ("external", "attacker") or server.role in ("external", "attacker")
            rtt = float(rng.uniform(0.030, 0.090)) if external else float(rng.uniform(0.0002, 0.0012))
        self.rtt = rtt
        self.flow = ctx.buffer.flows.add(
            KIND_TCP, client.mac, self.client_ip, self.sport, server.mac, server.ip, dport,
            default_ttl(client), default_ttl(server), client_window, server_window)
        ctx.flows_opened += 1
        self.next_seq = [int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32))]
        self.closed = False
        self.first_time = t
        self.latest = t  # time of the latest packet emitted, retransmissions and late ACKs included

    @property
    def key(self) -> FlowKey:
        return FlowKey(self.client_ip, self.sport, self.server.ip, self.dport, "tcp")

    def _emit(self, direction: int, flags: int, payload: bytes = b"") -> None:
        self.latest = max(self.latest, self.t)
        other = 1 - direction
        self.ctx.buffer.tcp(self.t, self.flow, direction, flags, self.next_seq[direction],
                            self.next_seq[other], payload)

    def _half_rtt(self) -> float:
        return self.rtt / 2

    def open(self) -> TcpSession:
        """Three-way handshake; the client sends a retried SYN now and then."""
        if self.rng.random() < self.ctx.retransmit_probability:
            self._emit(CLIENT, SYN)
            self.t += 1.0  # initial RTO (RFC 6298)
        self._emit(CLIENT, SYN)
        self.next_seq[CLIENT] += 1
        self.t += self._half_rtt()
        self._emit(SERVER, SYN | ACK)
        self.next_seq[SERVER] += 1
        self.t += self._half_rtt()
        self._emit(CLIENT, ACK)
        return self

    def reject(self) -> None:
        """Emit a SYN and the RST/ACK of a port that nothing listens on."""
        self._emit(CLIENT, SYN)
        self.next_seq[CLIENT] += 1
        self.t += self._half_rtt()
        self._emit(SERVER, RST | ACK)
        self.closed = True

    def send(self, direction: int, data: bytes, protocol: str | None = None,
             think: float = 0.0, pdu_ends: list[int] | None = None, count_starts: bool = False) -> None:
        """Send one application message, segmented at the MSS and acknowledged.

        `think` is the sender's delay before the first byte. `protocol`, when
        given, counts frames for the tshark cross-check: tshark 4.0 labels a
        frame with the protocol when a PDU ends in it. `pdu_ends` lists the
        end offsets of the PDUs in `data` (default: one PDU, the whole
        message). `count_starts` also counts the frame where a PDU starts,
        because the TLS dissector marks the first segment of a record that
        needs reassembly.
        """
        if protocol is not None and data:
            ends = pdu_ends if pdu_ends is not None else [len(data)]
            frames = {(end - 1) // MSS for end in ends if end > 0}
            if count_starts:
                frames |= {start // MSS for start in [0] + ends[:-1] if start < len(data)}
            self.ctx.count(protocol, len(frames))
        self.t += think
        if len(data) > BULK_SEGMENTS * MSS:
            self._send_bulk(direction, data)
            return
        other = 1 - direction
        segments = [data[i:i + MSS] for i in range(0, len(data), MSS)] or [b""]
        last = len(segments) - 1
        for index, segment in enumerate(segments):
            flags = ACK | PSH if index == last else ACK
            resend = index != last and self.rng.random() < self.ctx.retransmit_probability
            self._emit(direction, flags, segment)
            if resend:
                # The sensor saw the segment but the receiver did not: it is sent again
                # after the retransmission timeout, with the same sequence number.
                saved = self.t
                self.t += 0.2 + self.rtt
                self._emit(direction, flags, segment)
                self.t = saved
            self.next_seq[direction] += len(segment)
            # 1 Gbit/s serialisation of a full segment is about 12 microseconds.
            self.t += 12e-6 if index != last else 0.0
            if index % 2 == 1 or index == last:
                saved = self.t
                self.t += self._half_rtt() + (0.2 + self.rtt if resend else 0.0)
                self._emit(other, ACK)
                self.t = saved
        # The sender's next message waits for the ACK of any retransmitted segment.
        self.t = max(self.t + self._half_rtt() + 1e-5, self.latest + 1e-5)

    def _send_bulk(self, direction: int, data: bytes) -> None:
        """Emit the same segments, ACKs and retransmissions as send(), built as NumPy columns."""
        other = 1 - direction
        count = (len(data) + MSS - 1) // MSS
        index = np.arange(count, dtype=np.int64)
        offset = index * MSS
        length = np.minimum(MSS, len(data) - offset)
        times = self.t + index * 12e-6
        last = count - 1
        seq = self.next_seq[direction] + offset
        resend = self.rng.random(count) < self.ctx.retransmit_probability
        resend[last] = False
        acked = (index % 2 == 1) | (index == last)
        half_rtt = self._half_rtt()
        retry = 0.2 + self.rtt
        payload = self.ctx.buffer.intern(data)

        # Rows: the data segments, their retransmitted copies one RTO later, and
        # the receiver's ACK after every second segment and the last.
        data_rows = np.concatenate([index, index[resend]])
        ack_rows = index[acked]
        n_data = len(data_rows)
        n_ack = len(ack_rows)
        flags = np.full(n_data + n_ack, ACK, dtype=np.int64)
        flags[:n_data][data_rows == last] = ACK | PSH
        self.ctx.buffer.add_columns({
            "time": np.concatenate([times, times[resend] + retry,
                                    times[acked] + half_rtt + np.where(resend[acked], retry, 0.0)]),
            "kind": np.full(n_data + n_ack, KIND_TCP),
            "flow": np.full(n_data + n_ack, self.flow),
            "dir": np.concatenate([np.full(n_data, direction), np.full(n_ack, other)]),
            "flags": flags,
            "seq": np.concatenate([seq[data_rows], np.full(n_ack, self.next_seq[other])]),
            "ack": np.concatenate([np.full(n_data, self.next_seq[other]), seq[ack_rows] + length[ack_rows]]),
            "payload": np.concatenate([np.full(n_data, payload), np.zeros(n_ack, np.int64)]),
            "offset": np.concatenate([offset[data_rows], np.zeros(n_ack, np.int64)]),
            "length": np.concatenate([length[data_rows], np.zeros(n_ack, np.int64)]),
        })
        self.next_seq[direction] += len(data)
        latest = float(times[last]) + half_rtt
        if resend.any():
            latest = max(latest, float(times[resend].max()) + retry + half_rtt)
        self.latest = max(self.latest, latest)
        self.t = latest + 1e-5

    def close(self, initiator: int = CLIENT) -> None:
        """FIN handshake started by `initiator`."""
        if self.closed:
            return
        other = 1 - initiator
        self.t += 1e-4
        self._emit(initiator, FIN | ACK)
        self.next_seq[initiator] += 1
        self.t += self._half_rtt()
        self._emit(other, ACK)
        self.t += 1e-4
        self._emit(other, FIN | ACK)
        self.next_seq[other] += 1
        self.t += self._half_rtt()
        self._emit(initiator, ACK)
        self.closed = True

    def reset(self, direction: int = CLIENT) -> None:
        self.t += 1e-4
        self._emit(direction, RST | ACK)
        self.closed = True


class UdpFlow:
    """A UDP conversation: datagrams in both directions between fixed ports."""

    def __init__(self, ctx: SimContext, client: Device, server: Device, dport: int,
                 rng: np.random.Generator, sport: int | None = None, client_ip: str | None = None):
        self.ctx = ctx
        self.client = client
        self.server = server
        self.client_ip = client_ip or client.ip
        self.sport = sport if sport is not None else ctx.ports.allocate(self.client_ip)
        self.dport = dport
        self.flow = ctx.buffer.flows.add(
            KIND_UDP, client.mac, self.client_ip, self.sport, server.mac, server.ip, dport,
            default_ttl(client), default_ttl(server), 0, 0)
        ctx.flows_opened += 1

    @property
    def key(self) -> FlowKey:
        return FlowKey(self.client_ip, self.sport, self.server.ip, self.dport, "udp")

    def send(self, t: float, direction: int, payload: bytes, protocol: str | None = None) -> None:
        self.ctx.buffer.udp(t, self.flow, direction, payload)
        if protocol is not None:
            self.ctx.count(protocol)

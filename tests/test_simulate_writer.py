"""The vectorised pcap writer against dpkt as the reference encoder."""

import io
import struct

import dpkt
import numpy as np
import pytest

from engine.simulate.session import CLIENT, MSS, SERVER, PortAllocator, SimContext, TcpSession, UdpFlow
from engine.simulate.topology import load_topology
from engine.simulate.writer import ACK, PSH, SYN, PacketBuffer


@pytest.fixture()
def context():
    topology = load_topology(0.05)
    return SimContext(topology, PacketBuffer(), 5, 1_700_000_000.0, 1_700_000_060.0, PortAllocator(5))


def write(buffer):
    out = io.BytesIO()
    out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    buffer.flush(out)
    return out.getvalue()


def reference_checksums(frame):
    """Return (ip, l4) checksums as dpkt computes them for the same headers and payload."""
    eth = dpkt.ethernet.Ethernet(frame)
    ip = eth.data
    ip.sum = 0
    ip.data.sum = 0
    rebuilt = dpkt.ip.IP(bytes(ip))  # dpkt fills zero checksums when serialising
    return rebuilt.sum, rebuilt.data.sum


def test_pcap_file_header_fields(context):
    session = UdpFlow(context, context.topology.one("dns_ntp"), context.topology.one("pacs"), 53, np.random.default_rng(1))
    session.send(context.start, CLIENT, b"x")
    data = write(context.buffer)
    magic, major, minor, _, _, snaplen, linktype = struct.unpack("<IHHiIII", data[:24])
    assert (magic, major, minor) == (0xA1B2C3D4, 2, 4)
    assert snaplen == 65535
    assert linktype == 1  # LINKTYPE_ETHERNET


def test_headers_and_checksums_match_dpkt(context):
    rng = np.random.default_rng(3)
    client = context.topology.role("nurse_workstation")[0]
    server = context.topology.one("file_server")
    session = TcpSession(context, client, server, 445, context.start, rng).open()
    session.send(CLIENT, b"abc")  # odd length: checksum pads with a zero byte
    session.send(SERVER, bytes(range(256)) * 3)
    session.send(CLIENT, rng.bytes(MSS * 12 + 1))  # bulk path with an odd-length last segment
    session.close()
    flow = UdpFlow(context, client, context.topology.one("dns_ntp"), 53, rng)
    flow.send(session.t, CLIENT, b"\x00\x01\x02")

    data = write(context.buffer)
    frames = list(dpkt.pcap.Reader(io.BytesIO(data)))
    assert len(frames) == context.buffer.packets_written
    for _, frame in frames:
        eth = dpkt.ethernet.Ethernet(frame)
        ip = eth.data
        expected_ip_sum, expected_l4_sum = reference_checksums(frame)
        assert ip.sum == expected_ip_sum
        assert ip.data.sum == expected_l4_sum
        assert ip.len == len(frame) - 14


def test_tcp_sequence_numbers_consistent(context):
    rng = np.random.default_rng(4)
    client = context.topology.role("nurse_workstation")[0]
    server = context.topology.one("ehr_server")
    session = TcpSession(context, client, server, 443, context.start, rng).open()
    message = rng.bytes(MSS * 20 + 100)
    session.send(CLIENT, message)
    session.send(SERVER, b"ok")
    session.close()
    data = write(context.buffer)

    stream = {}
    syn_seq = {}
    last_ack = {}
    for _, frame in dpkt.pcap.Reader(io.BytesIO(data)):
        tcp = dpkt.ethernet.Ethernet(frame).data.data
        direction = CLIENT if tcp.sport == session.sport else SERVER
        if tcp.flags & SYN:
            syn_seq[direction] = tcp.seq
            continue
        if tcp.data:
            stream.setdefault(direction, {})[tcp.seq] = bytes(tcp.data)
        if tcp.flags & ACK:
            last_ack[direction] = tcp.ack
    # Reassemble the client's bytes by sequence number, as a receiver would.
    first = (syn_seq[CLIENT] + 1) & 0xFFFFFFFF
    assembled = b""
    while True:
        segment = stream[CLIENT].get((first + len(assembled)) & 0xFFFFFFFF)
        if segment is None:
            break
        assembled += segment
    assert assembled == message
    # The server's final ACK covers the data and the client's FIN.
    assert last_ack[SERVER] == (first + len(message) + 1) & 0xFFFFFFFF


def test_psh_flag_on_last_segment_only(context):
    rng = np.random.default_rng(6)
    client = context.topology.role("nurse_workstation")[0]
    session = TcpSession(context, client, context.topology.one("pacs"), 104, context.start, rng).open()
    session.send(CLIENT, rng.bytes(MSS * 10 + 7))
    data = write(context.buffer)
    segments = []
    for _, frame in dpkt.pcap.Reader(io.BytesIO(data)):
        tcp = dpkt.ethernet.Ethernet(frame).data.data
        if tcp.data and tcp.sport == session.sport:
            segments.append(tcp)
    unique = {t.seq: t for t in segments}
    assert len(unique) == 11
    ordered = [unique[k] for k in sorted(unique)]
    assert all(not (t.flags & PSH) for t in ordered[:-1])
    assert ordered[-1].flags & PSH
    assert len(ordered[-1].data) == 7


def test_flush_keeps_later_packets(context):
    rng = np.random.default_rng(8)
    flow = UdpFlow(context, context.topology.one("dns_ntp"), context.topology.one("pacs"), 123, rng)
    flow.send(context.start + 5, CLIENT, b"late")
    flow.send(context.start + 1, CLIENT, b"early")
    out = io.BytesIO()
    written = context.buffer.flush(out, before=context.start + 2)
    assert written == 1
    assert context.buffer.pending() == 1
    assert b"early" in out.getvalue()
    assert b"late" not in out.getvalue()
    rest = io.BytesIO()
    assert context.buffer.flush(rest) == 1
    assert b"late" in rest.getvalue()


def test_frames_in_time_order(context):
    rng = np.random.default_rng(9)
    flow = UdpFlow(context, context.topology.one("dns_ntp"), context.topology.one("pacs"), 53, rng)
    for offset in (3.0, 1.0, 2.0, 0.5):
        flow.send(context.start + offset, CLIENT, b"q")
    data = write(context.buffer)
    times = [ts for ts, _ in dpkt.pcap.Reader(io.BytesIO(data))]
    assert times == sorted(times)
    assert times[0] == pytest.approx(context.start + 0.5)


def test_flush_evicts_finished_flows(context):
    rng = np.random.default_rng(10)
    pacs = context.topology.one("pacs")
    early = UdpFlow(context, context.topology.one("dns_ntp"), pacs, 123, rng)
    late = UdpFlow(context, context.topology.one("lis"), pacs, 2575, rng)
    early.send(context.start + 1, CLIENT, b"early")
    late.send(context.start + 5, CLIENT, b"late")
    context.buffer.flush(io.BytesIO(), before=context.start + 2)
    assert context.buffer.flows.base == late.flow
    assert len(context.buffer.flows.arrays["kind"]) == 1

    rest = io.BytesIO()
    rest.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    context.buffer.flush(rest)
    rest.seek(0)
    ((_, frame),) = list(dpkt.pcap.Reader(rest))
    ip = dpkt.ethernet.Ethernet(frame).data
    assert ip.src == context.topology.one("lis").ip_bytes
    assert ip.data.dport == 2575

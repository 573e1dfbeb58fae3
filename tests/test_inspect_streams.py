"""The compiled stream table: TCP ordering, holes, caps, UDP datagrams, table bounds."""

import random

import numpy as np
import pytest

from engine._native.inspect import StreamTable
from engine.decode.layout import empty_packets

SYN, FIN, RST, ACK = 0x02, 0x01, 0x04, 0x10


def make_batch(segments):
    """Build (packets, data) from (flow_id, direction, seq, flags, payload[, wire_len, proto]) tuples."""
    packets = empty_packets(len(segments))
    data = bytearray()
    for index, segment in enumerate(segments):
        flow_id, direction, seq, flags, payload = segment[:5]
        wire_len = segment[5] if len(segment) > 5 else len(payload)
        proto = segment[6] if len(segment) > 6 else 6
        record = packets[index]
        record["ts_ns"] = 1_000_000_000 * (index + 1)
        record["data_offset"] = len(data)
        header = bytes(54)  # placeholder for the Ethernet, IPv4 and TCP headers
        data += header + payload
        record["caplen"] = len(header) + len(payload)
        record["ip_version"] = 4
        record["ip_proto"] = proto
        record["src_addr"][:4] = [10, 0, 0, 1 + (direction & 1)]
        record["dst_addr"][:4] = [10, 0, 0, 2 - (direction & 1)]
        record["src_port"] = 40000 if direction == 0 else 104
        record["dst_port"] = 104 if direction == 0 else 40000
        record["tcp_seq"] = seq
        record["tcp_flags"] = flags
        record["payload_offset"] = len(header) if payload else 0
        record["payload_len"] = len(payload)
        record["payload_wire_len"] = wire_len
        record["flow_id"] = flow_id
        record["direction"] = direction
    return packets, np.frombuffer(bytes(data), dtype=np.uint8).copy()


def run(table, segments):
    packets, data = make_batch(segments)
    table.update(packets, data)


def streams_after_end(table):
    table.end_all()
    return {int(record["flow_id"]): (initiator, responder, record) for record, initiator, responder in table.take_ready()}


def test_in_order_stream_both_directions():
    table = StreamTable(16, 256)
    run(table, [(1, 0, 100, SYN, b""), (1, 1, 500, SYN | ACK, b""),
                (1, 0, 101, ACK, b"hello "), (1, 0, 107, ACK, b"world"), (1, 1, 501, ACK, b"ok")])
    initiator, responder, record = streams_after_end(table)[1]
    assert initiator == b"hello world"
    assert responder == b"ok"
    assert list(record["packets"]) == [3, 2]
    assert int(record["initiator_port"]) == 40000
    assert int(record["responder_port"]) == 104


def test_out_of_order_segment_fills_hole():
    table = StreamTable(16, 256)
    run(table, [(1, 0, 100, SYN, b""), (1, 0, 107, ACK, b"world"), (1, 0, 101, ACK, b"hello ")])
    initiator, _, _ = streams_after_end(table)[1]
    assert initiator == b"hello world"
    assert table.counters_dict()["tcp_out_of_order"] == 1


def test_retransmission_and_overlap_trimmed():
    table = StreamTable(16, 256)
    run(table, [(1, 0, 100, SYN, b""), (1, 0, 101, ACK, b"abcd"), (1, 0, 101, ACK, b"abcd"),
                (1, 0, 103, ACK, b"cdef")])
    initiator, _, _ = streams_after_end(table)[1]
    assert initiator == b"abcdef"
    assert table.counters_dict()["tcp_retransmitted"] == 1


def test_disjoint_segment_dropped_counted():
    table = StreamTable(16, 256)
    run(table, [(1, 0, 100, SYN, b""), (1, 0, 101, ACK, b"ab"), (1, 0, 110, ACK, b"xx"),
                (1, 0, 120, ACK, b"yy"), (1, 0, 103, ACK, b"cd")])
    initiator, _, record = streams_after_end(table)[1]
    assert initiator == b"abcd"
    assert record["stream_flags"][0] & 0x02  # gap
    assert table.counters_dict()["tcp_gap"] == 1


def test_stream_cap_bounds_bytes():
    table = StreamTable(16, 64)
    run(table, [(1, 0, 1, ACK, bytes(range(50))), (1, 0, 51, ACK, bytes(range(50)))])
    initiator, _, record = streams_after_end(table)[1]
    assert len(initiator) == 64
    assert initiator == (bytes(range(50)) + bytes(range(50)))[:64]
    assert record["stream_flags"][0] & 0x01  # full
    assert record["stream_flags"][0] & 0x10  # midstream: no SYN seen


def test_snaplen_cut_segment_ends_direction():
    table = StreamTable(16, 256)
    run(table, [(1, 0, 1, ACK, b"abc", 10), (1, 0, 11, ACK, b"later")])
    initiator, _, record = streams_after_end(table)[1]
    assert initiator == b"abc"
    assert record["stream_flags"][0] & 0x04
    assert table.counters_dict()["snaplen_cut"] == 1


def test_udp_datagrams_length_prefixed():
    table = StreamTable(16, 64)
    run(table, [(1, 0, 0, 0, b"first", 5, 17), (1, 0, 0, 0, b"second", 6, 17), (1, 0, 0, 0, bytes(60), 60, 17)])
    initiator, _, record = streams_after_end(table)[1]
    assert initiator == b"\x00\x05first\x00\x06second"  # the 60-byte datagram does not fit whole
    assert record["stream_flags"][0] & 0x01


def test_ready_when_both_directions_closed():
    table = StreamTable(16, 256)
    packets, data = make_batch([(1, 0, 1, ACK, b"q"), (1, 0, 2, FIN | ACK, b""), (1, 1, 1, ACK, b"r"),
                                (1, 1, 2, FIN | ACK, b"")])
    assert table.update(packets, data) == 1
    ready = table.take_ready()
    assert [(bytes(a), bytes(b)) for _, a, b in ready] == [(b"q", b"r")]
    assert table.take_ready() == []  # parsed once; the slot stays until the flow ends
    assert table.tracked == 1


def test_table_full_counts_and_skips():
    table = StreamTable(4, 64)  # tracks at most 3 flows (3/4 of capacity)
    run(table, [(flow, 0, 1, ACK, b"x") for flow in range(1, 6)])
    assert table.tracked == 3
    assert table.counters_dict()["table_full"] == 2


def test_end_flows_frees_slots():
    table = StreamTable(8, 64)
    run(table, [(flow, 0, 1, ACK, b"x") for flow in (1, 2, 3)])
    table.end_flows(np.array([2], dtype=np.uint64))
    assert [int(r["flow_id"]) for r, _, _ in table.take_ready()] == [2]
    assert table.tracked == 2


def test_random_insert_free_matches_reference():
    # Backward-shift deletion must keep every live flow findable.
    rng = random.Random(7)
    table = StreamTable(64, 64)
    live = {}
    for step in range(600):
        if live and rng.random() < 0.4:
            flow_id = rng.choice(sorted(live))
            table.end_flows(np.array([flow_id], dtype=np.uint64))
            freed = {int(r["flow_id"]): bytes(a) for r, a, _ in table.take_ready()}
            assert freed[flow_id] == live.pop(flow_id)
        elif len(live) < 40:
            flow_id = rng.randrange(1, 1 << 40)
            if flow_id in live:
                continue
            payload = flow_id.to_bytes(8, "big")
            run(table, [(flow_id, 0, 1, ACK, payload)])
            live[flow_id] = payload
        assert table.tracked == len(live)
    remaining = streams_after_end(table)
    assert {k: v[0] for k, v in remaining.items()} == live


def test_invalid_sizes_rejected():
    with pytest.raises(ValueError, match="power of two"):
        StreamTable(100, 64)
    with pytest.raises(ValueError, match="stream_cap"):
        StreamTable(16, 8)


def test_packets_without_flow_skipped():
    table = StreamTable(16, 64)
    packets, data = make_batch([(0, 0, 1, ACK, b"x"), (5, 0xFF, 1, ACK, b"y")])
    table.update(packets, data)
    assert table.tracked == 0
    assert table.counters_dict()["packets_skipped"] == 2


def test_hole_bytes_hidden_until_filled():
    table = StreamTable(16, 256)
    run(table, [(1, 0, 100, SYN, b""), (1, 0, 101, ACK, b"ab"), (1, 0, 110, ACK, b"xx")])
    table.end_flows(np.array([1], dtype=np.uint64))
    assert [bytes(a) for _, a, _ in table.take_ready()] == [b"ab"]

    table = StreamTable(16, 256)
    run(table, [(1, 0, 100, SYN, b""), (1, 0, 101, ACK, b"ab"), (1, 0, 110, ACK, b"xx"),
                (1, 0, 112, ACK, b"yy"), (1, 0, 103, ACK, b"cdefghi")])
    initiator, _, _ = streams_after_end(table)[1]
    assert initiator == b"abcdefghixxyy"


def test_data_on_syn_starts_stream():
    # Crafted captures and TCP Fast Open put data on the SYN itself.
    table = StreamTable(16, 256)
    run(table, [(1, 0, 100, SYN, b"MSH|"), (1, 0, 100, SYN, b"MSH|"), (1, 0, 105, ACK, b"rest")])
    initiator, _, record = streams_after_end(table)[1]
    assert initiator == b"MSH|rest"
    assert record["stream_flags"][0] & 0x20  # syn seen
    assert table.counters_dict()["tcp_retransmitted"] == 1


def test_inspector_warns_once_when_full(caplog):
    from engine.inspect.inspector import Inspector

    inspector = Inspector(capacity=4, stream_cap=64)
    packets, data = make_batch([(flow, 0, 1, ACK, b"x") for flow in range(1, 8)])
    inspector.process(packets, data)
    inspector.process(packets, data)
    warnings = [r for r in caplog.records if "inspection table full" in r.getMessage()]
    assert len(warnings) == 1
    assert inspector.counters()["table_full"] == 8

"""Flows across a backward clock step, on captures written here and shared ones.

Captures made here with dpkt state their expected flows per packet. The
shared captures are checked against tshark's conversation statistics and
against a slow per-key reference that reads them with dpkt.
"""

import json
import socket
import subprocess
from collections import Counter

import dpkt
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import require_tool
from engine.capture import open_capture
from engine.cli import main
from engine.decode import decode_batch, new_anomaly_counters
from engine.flows import EXPIRATION_NAMES, FlowTable

HOST_A, HOST_B = "192.0.2.10", "198.51.100.7"
HOST_C = "203.0.113.9"


def udp_frame(src, dst, sport, dport, payload=b"x" * 8):
    datagram = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    datagram.ulen = len(datagram)
    packet = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_UDP,
                        ttl=64, data=datagram)
    packet.len = len(packet)
    frame = dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x0a", dst=b"\x02\x00\x00\x00\x00\x07",
                                   type=dpkt.ethernet.ETH_TYPE_IP, data=packet)
    return bytes(frame)


def write_pcap(path, records):
    """Write (timestamp_s, frame) records in the order given."""
    with open(path, "wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        for ts_s, frame in records:
            writer.writepkt(frame, ts=ts_s)
    return path


def conversation_key(src, dst, sport, dport):
    return tuple(sorted([(src, sport), (dst, dport)]))


def packets_per_conversation(path):
    """Count packets per UDP/TCP conversation with dpkt (the expected flows when no timeout ends one)."""
    counts = Counter()
    with open(path, "rb") as handle:
        for _, buf in dpkt.pcap.Reader(handle):
            ip = dpkt.ethernet.Ethernet(buf).data
            counts[conversation_key(socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst),
                                    ip.data.sport, ip.data.dport)] += 1
    return counts


def run_table(paths, batch_size=None, **table_options):
    """Run captures through one FlowTable; return (flow records, table)."""
    table = FlowTable(**table_options)
    counters = new_anomaly_counters()
    parts = []
    for path in paths:
        options = {} if batch_size is None else {"batch_size": batch_size}
        with open_capture(str(path), **options) as reader:
            for batch in reader:
                decode_batch(batch.packets, batch.data, counters)
                parts.append(table.update(batch.packets, batch.data))
    parts.append(table.flush())
    return np.concatenate(parts), table


def flows_per_conversation(flows):
    counts = Counter()
    for flow in flows:
        src = socket.inet_ntoa(bytes(flow["src_addr"][:4]))
        dst = socket.inet_ntoa(bytes(flow["dst_addr"][:4]))
        counts[conversation_key(src, dst, int(flow["src_port"]), int(flow["dst_port"]))] += 1
    return counts


@pytest.fixture
def step_back_pcap(tmp_path):
    """Flow A for 5 s at t=100000, then the clock steps back and flow B runs for 10 s at t=1000."""
    records = [(100000.0 + i, udp_frame(HOST_A, HOST_B, 5000, 53)) for i in range(5)]
    records += [(1000.0 + i, udp_frame(HOST_C, HOST_B, 6000, 123)) for i in range(10)]
    return write_pcap(tmp_path / "step_back.pcap", records)


def test_step_back_keeps_later_flow_whole(step_back_pcap):
    expected = packets_per_conversation(step_back_pcap)
    flows, table = run_table([step_back_pcap])
    assert len(flows) == len(expected) == 2
    packets = {key: int(flow["bidirectional_packets"])
               for key, flow in zip(flows_per_conversation(flows), flows)}
    assert packets == dict(expected)
    assert table.stats["clock_steps_back"] == 1
    assert table.stats["timestamp_backwards"] == 1


def test_step_back_flows_end_flushed(step_back_pcap):
    # Neither flow idles out: flow A is ahead of the stepped-back clock and
    # flow B lasts 10 s, so both stay until the end of the capture.
    flows, _ = run_table([step_back_pcap])
    assert [EXPIRATION_NAMES[int(f["expiration_id"])] for f in flows] == ["flushed", "flushed"]


def test_step_back_across_batches(step_back_pcap):
    # With 6-packet batches the first packet behind the step ends a batch,
    # so the sweep at that batch's end must not take the clock at its
    # word before the next packet confirms the step.
    flows, table = run_table([step_back_pcap], batch_size=6)
    assert Counter(int(f["bidirectional_packets"]) for f in flows) == Counter({5: 1, 10: 1})
    assert table.stats["clock_steps_back"] == 1


@pytest.fixture
def same_key_pcap(tmp_path):
    """Flow A for 3 s at t=100000, flow C for 4 s after the step to t=1000, then one reply of flow A at t=1005."""
    records = [(100000.0 + i, udp_frame(HOST_A, HOST_B, 5000, 53)) for i in range(3)]
    records += [(1000.0 + i, udp_frame(HOST_C, HOST_B, 6000, 123)) for i in range(4)]
    records += [(1005.0, udp_frame(HOST_B, HOST_A, 53, 5000))]
    return write_pcap(tmp_path / "step_back_same_key.pcap", records)


def test_step_back_splits_flow_of_same_key(same_key_pcap):
    # The reply of flow A lies 98,995 s before A's first packet, more than
    # the 120 s idle timeout, so it starts a flow of its own and A ends as
    # idle. tshark's conversations join the two (one per key), so the count
    # is one more than theirs.
    expected = packets_per_conversation(same_key_pcap)
    flows, table = run_table([same_key_pcap], idle_timeout_s=120)
    assert len(expected) == 2
    assert len(flows) == 3
    assert table.stats["flows_expired_idle"] == 1
    by_start = {int(f["bidirectional_first_seen_ns"]) // 10**9: f for f in flows}
    assert sorted(by_start) == [1000, 1005, 100000]
    before_step = by_start[100000]
    assert int(before_step["bidirectional_packets"]) == 3
    assert float(before_step["bidirectional_duration_ms"]) == 2000.0
    assert EXPIRATION_NAMES[int(before_step["expiration_id"])] == "idle"
    after_step = by_start[1005]
    assert int(after_step["bidirectional_packets"]) == 1
    assert float(after_step["bidirectional_duration_ms"]) == 0.0
    assert int(by_start[1000]["bidirectional_packets"]) == 4


def test_flow_across_step_keeps_duration(tmp_path):
    # One key sends at t=5000..5004 s, then the clock steps back 3600 s and
    # it sends at t=1400..1404 s. Each side is its own flow of 4 s with 1 s
    # between packets, never one flow of 3604 s.
    records = [(5000.0 + i, udp_frame(HOST_A, HOST_B, 5000, 53)) for i in range(5)]
    records += [(1400.0 + i, udp_frame(HOST_A, HOST_B, 5000, 53)) for i in range(5)]
    path = write_pcap(tmp_path / "one_key_step.pcap", records)
    result = CliRunner().invoke(main, ["flows", "--format", "jsonl", str(path)])
    assert result.exit_code == 0, result.output
    flows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [f["bidirectional_first_seen_ns"] // 10**9 for f in flows] == [5000, 1400]
    assert [f["bidirectional_packets"] for f in flows] == [5, 5]
    assert [f["bidirectional_duration_ms"] for f in flows] == [4000.0, 4000.0]
    assert [f["bidirectional_max_piat_ms"] for f in flows] == [1000.0, 1000.0]
    assert [f["expiration"] for f in flows] == ["idle", "flushed"]


def test_step_back_within_idle_joins_flow(same_key_pcap):
    # With an idle timeout longer than the step, the reply may belong to
    # flow A, so it joins it as in tshark's conversations.
    expected = packets_per_conversation(same_key_pcap)
    flows, _ = run_table([same_key_pcap], idle_timeout_s=200_000, active_timeout_s=200_000)
    assert len(flows) == len(expected) == 2
    assert sorted(int(f["bidirectional_packets"]) for f in flows) == sorted(expected.values())


def test_single_old_packet_keeps_the_clock(tmp_path):
    # One record of flow E dated 5000 s back (a corrupt timestamp) between
    # packets of flow A. The clock stays, so flows A and B end by idle
    # timeout when flow D starts 126 s after their last packets. D's second
    # packet confirms that gap.
    records = [(10000.0, udp_frame(HOST_C, HOST_B, 6000, 123))]
    records += [(10000.0 + i, udp_frame(HOST_A, HOST_B, 5000, 53)) for i in range(3)]
    records += [(5000.0, udp_frame(HOST_C, HOST_B, 8000, 53))]
    records += [(10003.0 + i, udp_frame(HOST_A, HOST_B, 5000, 53)) for i in range(3)]
    records += [(10131.0 + i, udp_frame(HOST_C, HOST_A, 7000, 80)) for i in range(2)]
    path = write_pcap(tmp_path / "old_outlier.pcap", records)
    flows, table = run_table([path], idle_timeout_s=120)
    assert table.stats["clock_steps_back"] == 0
    # Only the old record is earlier than the packet before it.
    assert table.stats["timestamp_backwards"] == 1
    assert len(flows) == 4
    by_port = {int(f["src_port"]): f for f in flows}
    assert EXPIRATION_NAMES[int(by_port[6000]["expiration_id"])] == "idle"
    assert EXPIRATION_NAMES[int(by_port[5000]["expiration_id"])] == "idle"
    assert int(by_port[5000]["bidirectional_packets"]) == 6
    assert int(by_port[8000]["bidirectional_packets"]) == 1
    assert EXPIRATION_NAMES[int(by_port[7000]["expiration_id"])] == "flushed"


def test_flows_command_counts_step(step_back_pcap):
    result = CliRunner().invoke(main, ["flows", str(step_back_pcap)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2
    assert "clock_steps_back: 1" in result.stderr


# ------------------------------------------------------------------ shared captures

def tshark_conversations(path, kind):
    tshark = require_tool("tshark")
    output = subprocess.run([tshark, "-r", str(path), "-q", "-z", f"conv,{kind}"],
                            capture_output=True, text=True, check=True).stdout
    return sum("<->" in line for line in output.splitlines())


def gap_split_reference(path, idle_timeout_s):
    """Count flows per key in file order, a new one for a packet more than idle_timeout_s outside the key's flow.

    Outside means after the flow's latest packet or before its first one
    (behind a backward clock step). Only the idle timeout applies, so the
    table under test gets an active timeout longer than the capture.
    """
    flows = 0
    span_ns = {}  # key -> [first, latest] packet time of its current flow
    with open(path, "rb") as handle:
        for ts, buf in dpkt.pcap.Reader(handle):
            ip = dpkt.ethernet.Ethernet(buf).data
            key = (conversation_key(ip.src, ip.dst, ip.data.sport, ip.data.dport), ip.p)
            ts_ns = round(ts * 1e9)
            span = span_ns.get(key)
            if span is None or ts_ns - span[1] > idle_timeout_s * 1e9 or span[0] - ts_ns > idle_timeout_s * 1e9:
                flows += 1
                span_ns[key] = [ts_ns, ts_ns]
            else:
                span[0] = min(span[0], ts_ns)
                span[1] = max(span[1], ts_ns)
    return flows


IPSEC = "ndpi-ipsec-time-backwards.pcap"  # UDP only; steps back 69,414 s at frame 287
NO_TIMEOUT_S = 10**6  # longer than any shared capture, so no flow times out


def test_ipsec_step_back_matches_tshark(shared_pcaps):
    path = shared_pcaps / IPSEC
    flows, table = run_table([path], idle_timeout_s=NO_TIMEOUT_S, active_timeout_s=NO_TIMEOUT_S)
    assert len(flows) == tshark_conversations(path, "udp")
    assert table.stats["clock_steps_back"] >= 1


def test_ipsec_idle_splits_match_reference(shared_pcaps):
    path = shared_pcaps / IPSEC
    flows, _ = run_table([path], idle_timeout_s=120, active_timeout_s=NO_TIMEOUT_S)
    assert len(flows) == gap_split_reference(path, 120)
    single_packet = int(np.count_nonzero(flows["bidirectional_packets"] == 1))
    assert single_packet == 0


def test_captures_out_of_time_order_match_tshark(shared_pcaps):
    # A glob can put a newer capture first; the flows are those of each
    # capture read alone.
    paths = [shared_pcaps / "mpa-synthetic-hl7-alerts.pcap", shared_pcaps / "ndpi-hl7.pcap"]
    result = CliRunner().invoke(main, ["flows", *map(str, paths)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    expected = sum(tshark_conversations(path, "tcp") + tshark_conversations(path, "udp") for path in paths)
    assert len(records) == expected
    # The synthetic capture has backward steps of its own, so count at least the one between the files.
    assert "clock_steps_back: " in result.stderr

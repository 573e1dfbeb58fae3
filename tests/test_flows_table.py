"""The flow table on hand-built packet records: keys, direction, states, timeouts, bounds."""

import base64
import hashlib
import ipaddress
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine._native.flowtable import community_id_for, flow_entry_size, flow_itemsize, flow_key_size
from engine.decode.layout import PACKET_DTYPE
from engine.flows import CONN_STATE_NAMES, EXPIRATION_NAMES, FLOW_DTYPE, FlowTable, flows_to_records

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
WW_FRAG_IS_FRAGMENT, WW_FRAG_MORE = 0x01, 0x02
DIRECTION_UNSET = 0xFF

CLIENT = "10.0.0.2"
SERVER = "10.0.0.1"  # numerically smaller, so the client is the key's hi endpoint


def make_packet(ts_s, src, dst, sport=0, dport=0, proto=TCP, flags=0, wirelen=60,
                payload=0, vlans=(), icmp=(0, 0), frag=None, tunnel_id=0):
    """Return one PACKET_DTYPE record with the fields the decoder would fill."""
    p = np.zeros(1, dtype=PACKET_DTYPE)[0]
    src_ip = ipaddress.ip_address(src)
    dst_ip = ipaddress.ip_address(dst)
    p["ts_ns"] = int(round(ts_s * 1e9))
    p["caplen"] = wirelen
    p["wirelen"] = wirelen
    p["link_type"] = 1
    p["ip_version"] = src_ip.version
    p["ip_proto"] = proto
    p["src_addr"][: len(src_ip.packed)] = np.frombuffer(src_ip.packed, np.uint8)
    p["dst_addr"][: len(dst_ip.packed)] = np.frombuffer(dst_ip.packed, np.uint8)
    p["ether_type"] = 0x0800 if src_ip.version == 4 else 0x86DD
    p["l3_offset"] = 14
    p["l4_offset"] = 34 if src_ip.version == 4 else 54
    p["src_port"] = sport
    p["dst_port"] = dport
    p["tcp_flags"] = flags
    p["payload_len"] = payload
    p["payload_wire_len"] = payload
    p["icmp_type"], p["icmp_code"] = icmp
    p["vlan_depth"] = len(vlans)
    for i, vlan in enumerate(vlans[:3]):
        p["vlan_ids"][i] = vlan
    p["tunnel_id"] = tunnel_id
    # Locally administered MACs that encode the last address byte.
    p["eth_src"] = [2, 0, 0, 0, 0, src_ip.packed[-1]]
    p["eth_dst"] = [2, 0, 0, 0, 0, dst_ip.packed[-1]]
    if frag is not None:
        frag_id, offset, more = frag
        p["frag_id"] = frag_id
        p["frag_offset"] = offset
        p["frag_flags"] = WW_FRAG_IS_FRAGMENT | (WW_FRAG_MORE if more else 0)
        if offset > 0:
            p["src_port"] = 0
            p["dst_port"] = 0
            p["tcp_flags"] = 0
            p["l4_offset"] = 0
    return p


def batch(*packets):
    out = np.zeros(len(packets), dtype=PACKET_DTYPE)
    for i, p in enumerate(packets):
        out[i] = p
    return out


def tcp(ts, src, dst, flags, payload=0, sport=None, dport=None):
    """A TCP packet between CLIENT:40000 and SERVER:443, in either direction."""
    if sport is None:
        sport = 40000 if src == CLIENT else 443
    if dport is None:
        dport = 443 if dst == SERVER else 40000
    return make_packet(ts, src, dst, sport, dport, TCP, flags, wirelen=54 + payload, payload=payload)


def run(packets, **table_options):
    """Feed one batch, flush, and return (all flows by flow_id, packets, table)."""
    table = FlowTable(capacity=table_options.pop("capacity", 64), **table_options)
    ended = table.update(packets)
    rest = table.flush()
    flows = np.concatenate([ended, rest])
    return flows[np.argsort(flows["flow_id"])], packets, table


def reference_community_id(proto, src, dst, sport, dport, seed=0, one_way=False):
    """Community ID v1 with hashlib, written from the specification's steps."""
    saddr = ipaddress.ip_address(src).packed
    daddr = ipaddress.ip_address(dst).packed
    if not one_way and (saddr > daddr or (saddr == daddr and sport > dport)):
        saddr, daddr, sport, dport = daddr, saddr, dport, sport
    message = struct.pack("!H", seed) + saddr + daddr + struct.pack("!BB", proto, 0)
    if proto in (TCP, UDP, ICMP, ICMPV6, 132):
        message += struct.pack("!HH", sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(message).digest()).decode()


# ------------------------------------------------------------------ layout

def test_flow_dtype_matches_struct():
    assert FLOW_DTYPE.itemsize == flow_itemsize()
    assert flow_key_size() == 56


def test_flow_dtype_pinned_offsets():
    # Pinned so a change to ww_flow is a deliberate change: downstream
    # stages index these columns.
    fields = FLOW_DTYPE.fields
    assert fields["flow_id"][1] == 0
    assert fields["src_addr"][1] == 8
    assert fields["src_addr"][0] == np.dtype(("u1", (16,)))
    assert fields["community_id"][0] == np.dtype("S32")
    assert fields["history"][0] == np.dtype("S16")
    assert fields["src2dst_packets"][0] == np.dtype("<u8")
    assert fields["dst2src_mean_piat_ms"][0] == np.dtype("<f8")
    assert FLOW_DTYPE.itemsize == 536


# ------------------------------------------------------------------ Community ID

@pytest.mark.parametrize(
    "proto,src,dst,sport,dport,seed,one_way",
    [
        (TCP, "1.2.3.4", "5.6.7.8", 1122, 3344, 0, False),
        (TCP, "5.6.7.8", "1.2.3.4", 3344, 1122, 0, False),
        (UDP, "192.168.1.52", "8.8.8.8", 54585, 53, 0, False),
        (UDP, "10.0.0.1", "10.0.0.1", 5000, 4000, 0, False),  # equal addresses: ports decide
        (TCP, "2001:db8::1", "2001:db8::2", 80, 50000, 7, False),
        (ICMP, "192.168.0.89", "192.168.0.1", 8, 0, 0, False),
        (ICMP, "192.168.0.1", "192.168.0.89", 0, 8, 0, False),
        (ICMP, "192.168.0.89", "10.0.0.1", 3, 1, 0, True),  # unreachable is one-way
        (ICMP, "10.0.0.1", "192.168.0.89", 3, 1, 0, True),
        (ICMPV6, "fe80::1", "fe80::2", 135, 136, 1234, False),
        (47, "10.1.1.1", "10.2.2.2", 0, 0, 0, False),  # GRE: no ports hashed
    ],
)
def test_community_id_matches_hashlib(proto, src, dst, sport, dport, seed, one_way):
    version = ipaddress.ip_address(src).version
    computed = community_id_for(
        version, proto, ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed,
        sport, dport, one_way, seed,
    )
    assert computed == reference_community_id(proto, src, dst, sport, dport, seed, one_way)


def test_community_id_random_tuples_match_hashlib():
    rng = np.random.default_rng(7)
    for _ in range(300):
        version = int(rng.choice([4, 6]))
        size = 4 if version == 4 else 16
        src = bytes(rng.integers(0, 256, size, dtype=np.uint8))
        dst = bytes(rng.integers(0, 256, size, dtype=np.uint8))
        if rng.random() < 0.1:
            dst = src
        proto = int(rng.choice([TCP, UDP, 132]))
        sport, dport = (int(x) for x in rng.integers(0, 65536, 2))
        seed = int(rng.integers(0, 65536))
        expected = reference_community_id(
            proto, ipaddress.ip_address(src), ipaddress.ip_address(dst), sport, dport, seed
        )
        assert community_id_for(version, proto, src, dst, sport, dport, False, seed) == expected


# ------------------------------------------------------------------ TCP life

def test_handshake_and_close_is_sf():
    packets = batch(
        tcp(0.000, CLIENT, SERVER, SYN),
        tcp(0.010, SERVER, CLIENT, SYN | ACK),
        tcp(0.020, CLIENT, SERVER, ACK),
        tcp(0.030, CLIENT, SERVER, PSH | ACK, payload=100),
        tcp(0.050, SERVER, CLIENT, PSH | ACK, payload=300),
        tcp(0.060, CLIENT, SERVER, FIN | ACK),
        tcp(0.070, SERVER, CLIENT, FIN | ACK),
        tcp(0.080, CLIENT, SERVER, ACK),
    )
    table = FlowTable(capacity=8)
    # The closed flow waits out the close delay in the table; flush() then
    # exports it as ended, not as flushed.
    assert len(table.update(packets)) == 0
    assert table.live_flows == 1
    ended = table.flush()
    assert len(ended) == 1
    flow = ended[0]

    assert EXPIRATION_NAMES[flow["expiration_id"]] == "end_of_flow"
    assert CONN_STATE_NAMES[flow["conn_state"]] == "SF"
    assert flow["history"] == b"ShADdFf"
    assert bytes(flow["src_addr"][:4]) == ipaddress.ip_address(CLIENT).packed
    assert flow["src_port"] == 40000
    assert flow["dst_port"] == 443

    assert flow["src2dst_packets"] == 5
    assert flow["dst2src_packets"] == 3
    assert flow["bidirectional_packets"] == 8
    assert flow["src2dst_payload_bytes"] == 100
    assert flow["dst2src_payload_bytes"] == 300
    assert flow["bidirectional_bytes"] == 8 * 54 + 400
    assert flow["src2dst_syn_packets"] == 1
    assert flow["dst2src_syn_packets"] == 1
    assert flow["bidirectional_ack_packets"] == 7
    assert flow["src2dst_fin_packets"] == 1
    assert flow["dst2src_psh_packets"] == 1
    assert flow["bidirectional_duration_ms"] == pytest.approx(80.0)

    assert table.live_flows == 0
    assert table.stats["flows_ended"] == 1
    assert packets["direction"].tolist() == [0, 1, 0, 0, 1, 0, 1, 0]
    assert set(packets["flow_id"].tolist()) == {int(flow["flow_id"])}
    assert flow["community_id"].decode() == reference_community_id(TCP, CLIENT, SERVER, 40000, 443)


@pytest.mark.parametrize(
    "steps,state",
    [
        # (sender, flags, payload) in order; sender "c" is the client.
        ([("c", SYN, 0)], "S0"),
        ([("c", SYN, 0), ("s", SYN | ACK, 0), ("c", ACK, 0)], "S1"),
        ([("c", SYN, 0), ("s", RST | ACK, 0)], "REJ"),
        ([("c", SYN, 0), ("s", SYN | ACK, 0), ("c", ACK, 0), ("c", RST, 0)], "RSTO"),
        ([("c", SYN, 0), ("s", SYN | ACK, 0), ("c", ACK, 0), ("s", RST, 0)], "RSTR"),
        ([("c", SYN, 0), ("c", RST, 0)], "RSTOS0"),
        ([("c", SYN, 0), ("c", FIN, 0)], "SH"),
        ([("c", SYN, 0), ("s", SYN | ACK, 0), ("c", ACK, 0), ("c", FIN | ACK, 0)], "S2"),
        ([("c", SYN, 0), ("s", SYN | ACK, 0), ("c", ACK, 0), ("s", FIN | ACK, 0)], "S3"),
        ([("c", ACK, 10), ("s", ACK, 20)], "OTH"),
    ],
)
def test_conn_state_transitions(steps, state):
    packets = batch(*(
        tcp(0.001 * i, CLIENT if who == "c" else SERVER, SERVER if who == "c" else CLIENT, flags, payload)
        for i, (who, flags, payload) in enumerate(steps)
    ))
    flows, _, _ = run(packets)
    assert len(flows) == 1
    assert CONN_STATE_NAMES[flows[0]["conn_state"]] == state


def test_syn_ack_first_makes_receiver_initiator():
    # The capture starts after the SYN: the server's SYN-ACK comes first.
    packets = batch(
        tcp(0.0, SERVER, CLIENT, SYN | ACK),
        tcp(0.1, CLIENT, SERVER, ACK),
        tcp(0.2, CLIENT, SERVER, PSH | ACK, payload=10),
    )
    flows, packets, _ = run(packets)
    assert len(flows) == 1
    flow = flows[0]
    assert bytes(flow["src_addr"][:4]) == ipaddress.ip_address(CLIENT).packed
    assert flow["src_port"] == 40000
    assert flow["src2dst_packets"] == 2
    assert flow["dst2src_packets"] == 1
    assert flow["history"] == b"^hAD"
    assert packets["direction"].tolist() == [1, 0, 0]
    # MACs follow the initiator too.
    assert flow["src_mac"].tolist() == [2, 0, 0, 0, 0, 2]


def test_syn_ack_then_rst_is_rstrh():
    packets = batch(tcp(0.0, SERVER, CLIENT, SYN | ACK), tcp(0.1, SERVER, CLIENT, RST))
    flows, _, _ = run(packets)
    assert CONN_STATE_NAMES[flows[0]["conn_state"]] == "RSTRH"


def test_syn_ack_then_fin_is_shr():
    packets = batch(tcp(0.0, SERVER, CLIENT, SYN | ACK), tcp(0.1, SERVER, CLIENT, FIN | ACK))
    flows, _, _ = run(packets)
    assert CONN_STATE_NAMES[flows[0]["conn_state"]] == "SHR"


def test_rst_ends_flow_and_next_packet_starts_new():
    packets = batch(
        tcp(0.0, CLIENT, SERVER, SYN),
        tcp(0.1, SERVER, CLIENT, RST | ACK),
        tcp(0.2, CLIENT, SERVER, SYN),
    )
    table = FlowTable(capacity=8)
    ended = table.update(packets)
    assert len(ended) == 1
    assert EXPIRATION_NAMES[ended[0]["expiration_id"]] == "end_of_flow"
    assert packets["flow_id"][0] == packets["flow_id"][1]
    assert packets["flow_id"][2] != packets["flow_id"][0]
    assert table.live_flows == 1


def test_udp_and_other_protocols_state():
    one_way = batch(make_packet(0, CLIENT, SERVER, 5353, 53, UDP, payload=20))
    flows, _, _ = run(one_way)
    assert CONN_STATE_NAMES[flows[0]["conn_state"]] == "S0"
    assert flows[0]["history"] == b"D"
    both = batch(
        make_packet(0, CLIENT, SERVER, 5353, 53, UDP, payload=20),
        make_packet(0.01, SERVER, CLIENT, 53, 5353, UDP, payload=80),
    )
    flows, _, _ = run(both)
    assert CONN_STATE_NAMES[flows[0]["conn_state"]] == "SF"
    assert flows[0]["history"] == b"Dd"


# ------------------------------------------------------------------ statistics

def test_welford_statistics_match_numpy():
    rng = np.random.default_rng(3)
    times = np.cumsum(rng.uniform(0.0005, 0.05, 40))
    senders = rng.integers(0, 2, 40)
    senders[0] = 0
    sizes = rng.integers(60, 1500, 40)
    packets = batch(*(
        make_packet(t, CLIENT if s == 0 else SERVER, SERVER if s == 0 else CLIENT,
                    40000 if s == 0 else 53, 53 if s == 0 else 40000, UDP,
                    wirelen=int(n), payload=int(n) - 42)
        for t, s, n in zip(times, senders, sizes)
    ))
    flows, _, _ = run(packets)
    assert len(flows) == 1
    flow = flows[0]
    ts_ns = np.round(times * 1e9).astype(np.int64)
    for prefix, mask in (("src2dst", senders == 0), ("dst2src", senders == 1),
                         ("bidirectional", np.ones(40, bool))):
        sel_sizes = sizes[mask]
        iat_ms = np.diff(ts_ns[mask]) / 1e6
        assert flow[f"{prefix}_packets"] == mask.sum()
        assert flow[f"{prefix}_bytes"] == sel_sizes.sum()
        assert flow[f"{prefix}_min_ps"] == sel_sizes.min()
        assert flow[f"{prefix}_max_ps"] == sel_sizes.max()
        assert flow[f"{prefix}_mean_ps"] == pytest.approx(sel_sizes.mean())
        assert flow[f"{prefix}_stddev_ps"] == pytest.approx(sel_sizes.std(ddof=1))
        assert flow[f"{prefix}_min_piat_ms"] == pytest.approx(iat_ms.min())
        assert flow[f"{prefix}_max_piat_ms"] == pytest.approx(iat_ms.max())
        assert flow[f"{prefix}_mean_piat_ms"] == pytest.approx(iat_ms.mean())
        assert flow[f"{prefix}_stddev_piat_ms"] == pytest.approx(iat_ms.std(ddof=1))
        first, last = ts_ns[mask].min(), ts_ns[mask].max()
        assert flow[f"{prefix}_first_seen_ns"] == first
        assert flow[f"{prefix}_last_seen_ns"] == last
        assert flow[f"{prefix}_duration_ms"] == pytest.approx((last - first) / 1e6)


def test_statistics_split_across_batches():
    packets = [make_packet(i * 0.01, CLIENT, SERVER, 1000, 2000, UDP, wirelen=100 + i) for i in range(10)]
    table = FlowTable(capacity=8)
    for i in range(0, 10, 3):
        table.update(batch(*packets[i:i + 3]))
    flow = table.flush()[0]
    assert flow["src2dst_packets"] == 10
    assert flow["src2dst_mean_ps"] == pytest.approx(104.5)
    assert flow["src2dst_mean_piat_ms"] == pytest.approx(10.0)


# ------------------------------------------------------------------ timeouts

def test_idle_timeout_uses_capture_time():
    packets = batch(
        make_packet(0.0, CLIENT, SERVER, 1000, 2000, UDP),
        make_packet(100.0, CLIENT, SERVER, 1000, 2000, UDP),  # 100 s gap: same flow
        make_packet(221.0, CLIENT, SERVER, 1000, 2000, UDP),  # 121 s gap: new flow
    )
    table = FlowTable(capacity=8, idle_timeout_s=120)
    ended = table.update(packets)
    assert len(ended) == 1
    assert EXPIRATION_NAMES[ended[0]["expiration_id"]] == "idle"
    assert ended[0]["bidirectional_packets"] == 2
    assert packets["flow_id"][0] == packets["flow_id"][1] != packets["flow_id"][2]


def test_one_outlying_timestamp_keeps_the_clock():
    # Two steady UDP flows. One record of the first is dated 80 years ahead
    # (a corrupt timestamp). The flow clock must not jump, or every live
    # flow would end by idle timeout at its next packet. Only the flow that
    # carries the outlier is split there, against the outlier's own time.
    # The outlier's one-packet flow ends at the next packet of its key,
    # which lies more than the idle timeout before it.
    outlier_s = 80 * 365 * 86400.0
    packets = batch(
        make_packet(0.0, CLIENT, SERVER, 1000, 2000, UDP),
        make_packet(0.5, "10.9.9.9", SERVER, 3, 4, UDP),
        make_packet(1.0, CLIENT, SERVER, 1000, 2000, UDP),
        make_packet(outlier_s, CLIENT, SERVER, 1000, 2000, UDP),
        make_packet(3.0, "10.9.9.9", SERVER, 3, 4, UDP),
        make_packet(4.0, CLIENT, SERVER, 1000, 2000, UDP),
    )
    table = FlowTable(capacity=8, idle_timeout_s=120)
    ended = table.update(packets)
    assert table.stats["timestamp_jumps_held"] == 1
    assert len(ended) == 2
    assert ended["src_port"].tolist() == [1000, 1000]
    assert ended["bidirectional_packets"].tolist() == [2, 1]
    assert [EXPIRATION_NAMES[e] for e in ended["expiration_id"]] == ["idle", "idle"]
    assert ended[1]["bidirectional_first_seen_ns"] == int(outlier_s * 1e9)
    other = packets["flow_id"][[1, 4]].tolist()
    assert other[0] == other[1]
    assert packets["flow_id"][3] != packets["flow_id"][5]


def test_real_gap_in_traffic_moves_the_clock():
    # Ten minutes of silence, then two packets: the second confirms the
    # jump, so the first flow of the other pair ends by idle timeout.
    packets = batch(
        make_packet(0.0, "10.9.9.9", SERVER, 3, 4, UDP),
        make_packet(600.0, CLIENT, SERVER, 1000, 2000, UDP),
        make_packet(601.0, CLIENT, SERVER, 1000, 2000, UDP),
    )
    table = FlowTable(capacity=8, idle_timeout_s=120)
    ended = table.update(packets)
    assert len(ended) == 1
    assert ended[0]["src_port"] == 3
    assert EXPIRATION_NAMES[ended[0]["expiration_id"]] == "idle"
    assert table.stats["timestamp_jumps_held"] == 0


def test_idle_flow_swept_without_own_packets():
    table = FlowTable(capacity=8, idle_timeout_s=10)
    assert len(table.update(batch(make_packet(0.0, CLIENT, SERVER, 1, 2, UDP)))) == 0
    ended = table.update(batch(make_packet(30.0, "10.9.9.9", SERVER, 3, 4, UDP)))
    assert len(ended) == 1
    assert ended[0]["src_port"] == 1
    assert EXPIRATION_NAMES[ended[0]["expiration_id"]] == "idle"
    assert table.stats["flows_expired_idle"] == 1
    assert table.live_flows == 1


def test_active_timeout_splits_long_flow():
    # A packet every 10 s for 95 s, from the server first; active timeout 30 s.
    packets = batch(*(
        make_packet(10.0 * i, SERVER if i % 2 == 0 else CLIENT, CLIENT if i % 2 == 0 else SERVER,
                    53 if i % 2 == 0 else 40000, 40000 if i % 2 == 0 else 53, UDP)
        for i in range(10)
    ))
    flows, _, table = run(packets, idle_timeout_s=120, active_timeout_s=30)
    reasons = [EXPIRATION_NAMES[x] for x in flows["expiration_id"]]
    assert reasons == ["active", "active", "flushed"]
    assert flows["bidirectional_packets"].tolist() == [4, 4, 2]
    # Every segment keeps the first segment's initiator (the server).
    assert all(f["src_port"] == 53 for f in flows)
    assert table.stats["flows_expired_active"] == 2


def test_backwards_timestamps_do_not_break_flows():
    times = [10.0, 10.5, 10.2, 11.0, 5.0, 11.5]
    packets = batch(*(make_packet(t, CLIENT, SERVER, 1000, 2000, UDP) for t in times))
    flows, _, table = run(packets, idle_timeout_s=1)
    assert len(flows) == 1
    flow = flows[0]
    assert flow["bidirectional_packets"] == 6
    assert flow["bidirectional_first_seen_ns"] == 5 * 10**9
    assert flow["bidirectional_last_seen_ns"] == int(11.5e9)
    assert flow["bidirectional_min_piat_ms"] == 0.0
    # Intervals from the latest timestamp so far: 500, 0, 500, 0, 500 ms.
    assert flow["bidirectional_max_piat_ms"] == pytest.approx(500.0)
    assert flow["bidirectional_mean_piat_ms"] == pytest.approx(300.0)
    assert table.stats["timestamp_backwards"] == 2


# ------------------------------------------------------------------ bounds

def test_eviction_when_full_takes_least_recently_seen():
    # Capacity 4 gives 16 index buckets, inside one eviction window, so the
    # victim is the least recently seen flow of the whole table.
    packets = [make_packet(float(i), CLIENT, SERVER, 1000 + i, 53, UDP) for i in range(4)]
    packets.append(make_packet(4.0, CLIENT, SERVER, 1000, 53, UDP))  # refresh flow 0
    packets.append(make_packet(5.0, CLIENT, SERVER, 2000, 53, UDP))  # table full
    packets.append(make_packet(6.0, CLIENT, SERVER, 2001, 53, UDP))
    table = FlowTable(capacity=4)
    ended = table.update(batch(*packets))
    assert [EXPIRATION_NAMES[x] for x in ended["expiration_id"]] == ["evicted", "evicted"]
    assert ended["src_port"].tolist() == [1001, 1002]
    assert table.stats["flows_evicted"] == 2
    assert table.stats["flow_table_full"] == 2
    assert table.live_flows == 4
    assert sorted(table.flush()["src_port"].tolist()) == [1000, 1003, 2000, 2001]


def test_full_table_many_flows_stays_consistent():
    # 5000 flows through a 100-flow table: every packet's flow survives
    # the backward-shift deletions and each flow is exported exactly once.
    rng = np.random.default_rng(11)
    ports = rng.integers(1, 5000, 20000)
    packets = batch(*(make_packet(i * 0.001, CLIENT, SERVER, int(p), 53, UDP) for i, p in enumerate(ports)))
    flows, packets, table = run(packets, capacity=100)
    assert flows["bidirectional_packets"].sum() == 20000
    assert len(np.unique(flows["flow_id"])) == len(flows)
    assert len(flows) == table.stats["flows_created"]
    counts = np.bincount(packets["flow_id"].astype(np.int64))
    assert (counts[flows["flow_id"].astype(np.int64)] == flows["bidirectional_packets"]).all()


def test_index_growth_keeps_every_flow():
    # 20000 flows pass the index's 4096 starting buckets several times over;
    # the second packet of each flow must still find the first one's flow.
    count = 20000
    packets = np.zeros(2 * count, dtype=PACKET_DTYPE)
    template = make_packet(0.0, CLIENT, SERVER, 0, 53, UDP)
    packets[:] = template
    ports = np.arange(count) % 60000 + 1024
    hosts = np.arange(count) // 60000 + 1
    for half in (0, 1):
        part = packets[half * count:(half + 1) * count]
        part["src_port"] = ports
        part["src_addr"][:, 3] = hosts
        part["ts_ns"] = (np.arange(count) + half * count) * 1000
    table = FlowTable()
    assert len(table.update(packets)) == 0
    assert table.live_flows == count
    assert (packets["flow_id"][:count] == packets["flow_id"][count:]).all()
    flows = table.flush()
    assert len(flows) == count
    assert (flows["bidirectional_packets"] == 2).all()
    assert table.stats["index_grow_failed"] == 0
    assert table.stats["flows_evicted"] == 0


def test_fragments_attributed_to_first_fragment_flow():
    packets = batch(
        make_packet(0.00, CLIENT, SERVER, 5000, 53, UDP, wirelen=1514, payload=1472, frag=(77, 0, True)),
        make_packet(0.01, CLIENT, SERVER, 0, 0, UDP, wirelen=600, payload=0, frag=(77, 1480, False)),
        make_packet(0.02, SERVER, CLIENT, 53, 5000, UDP, wirelen=100, payload=58),
        # A later fragment whose first fragment was never seen.
        make_packet(0.03, CLIENT, SERVER, 0, 0, UDP, wirelen=600, frag=(78, 1480, False)),
    )
    flows, packets, table = run(packets)
    assert packets["flow_id"][0] == packets["flow_id"][1] == packets["flow_id"][2]
    assert packets["flow_id"][3] != packets["flow_id"][0]
    main = flows[flows["flow_id"] == packets["flow_id"][0]][0]
    assert main["src2dst_packets"] == 2
    assert main["src2dst_bytes"] == 2114
    assert main["fragments"] == 1
    assert table.stats["fragments_attributed"] == 1
    assert table.stats["fragments_unattributed"] == 1


def test_vlan_and_tunnel_keying():
    packets = batch(
        make_packet(0.0, CLIENT, SERVER, 1000, 53, UDP, vlans=(10,)),
        make_packet(0.1, CLIENT, SERVER, 1000, 53, UDP, vlans=(20,)),
        make_packet(0.2, SERVER, CLIENT, 53, 1000, UDP, vlans=(10,)),
        make_packet(0.3, CLIENT, SERVER, 1000, 53, UDP, vlans=(1, 10, 100)),
        make_packet(0.4, CLIENT, SERVER, 1000, 53, UDP, tunnel_id=42),
    )
    flows, packets, _ = run(packets)
    assert len(flows) == 4
    assert packets["flow_id"][0] == packets["flow_id"][2]
    records = {tuple(r["vlan_ids"]): r for r in flows_to_records(flows)}
    assert records[(10,)]["bidirectional_packets"] == 2
    assert records[(1, 10, 100)]["vlan_depth"] == 3
    assert records[()]["tunnel_id"] == 42


def test_icmp_echo_pairs_and_errors_stay_apart():
    packets = batch(
        make_packet(0.0, CLIENT, SERVER, proto=ICMP, icmp=(8, 0)),
        make_packet(0.1, SERVER, CLIENT, proto=ICMP, icmp=(0, 0)),
        make_packet(0.2, SERVER, CLIENT, proto=ICMP, icmp=(3, 3)),
    )
    flows, packets, _ = run(packets)
    assert packets["flow_id"][0] == packets["flow_id"][1] != packets["flow_id"][2]
    echo = flows[flows["flow_id"] == packets["flow_id"][0]][0]
    assert (echo["src_port"], echo["dst_port"]) == (8, 0)
    assert echo["dst2src_packets"] == 1
    assert echo["community_id"].decode() == reference_community_id(ICMP, CLIENT, SERVER, 8, 0)
    error = flows[flows["flow_id"] == packets["flow_id"][2]][0]
    assert error["community_id"].decode() == reference_community_id(
        ICMP, SERVER, CLIENT, 3, 3, one_way=True
    )


def test_ipv6_flow_keys_and_records():
    packets = batch(
        make_packet(0.0, "2001:db8::10", "2001:db8::1", 50000, 443, TCP, SYN),
        make_packet(0.1, "2001:db8::1", "2001:db8::10", 443, 50000, TCP, SYN | ACK),
    )
    flows, _, _ = run(packets)
    record = flows_to_records(flows)[0]
    assert record["src_ip"] == "2001:db8::10"
    assert record["dst_ip"] == "2001:db8::1"
    assert record["ip_version"] == 6
    assert record["conn_state"] == "S1"
    assert record["expiration"] == "flushed"
    assert record["src_mac"] == "02:00:00:00:00:10"


def test_non_ip_packets_get_no_flow():
    arp = make_packet(0.0, CLIENT, SERVER, proto=0)
    arp["ip_version"] = 0
    arp["status"] = 4
    packets = batch(arp, make_packet(0.1, CLIENT, SERVER, 1, 2, UDP))
    flows, packets, table = run(packets)
    assert packets["flow_id"][0] == 0
    assert packets["direction"][0] == DIRECTION_UNSET
    assert packets["flow_id"][1] != 0
    assert table.stats["packets_without_flow"] == 1
    assert len(flows) == 1


def test_flow_slot_is_stable_while_flow_lives():
    packets = batch(*(make_packet(i * 0.1, CLIENT, SERVER, 1000 + i % 3, 53, UDP) for i in range(9)))
    _, packets, _ = run(packets)
    for flow_id in np.unique(packets["flow_id"]):
        assert len(np.unique(packets["flow_slot"][packets["flow_id"] == flow_id])) == 1
    assert len(np.unique(packets["flow_slot"])) == 3


def test_active_snapshot_returns_old_live_flows():
    table = FlowTable(capacity=8)
    table.update(batch(
        make_packet(0.0, CLIENT, SERVER, 1, 2, UDP),
        make_packet(50.0, CLIENT, SERVER, 3, 4, UDP),
        make_packet(60.0, CLIENT, SERVER, 1, 2, UDP),
    ))
    snapshot = table.active_snapshot(min_age_s=30)
    assert snapshot["src_port"].tolist() == [1]
    assert EXPIRATION_NAMES[snapshot[0]["expiration_id"]] == "live"
    assert snapshot[0]["bidirectional_packets"] == 2
    assert table.live_flows == 2


# ------------------------------------------------------------------ edges

def test_update_rejects_wrong_input():
    table = FlowTable(capacity=8)
    with pytest.raises(TypeError, match="PACKET_DTYPE"):
        table.update(np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        table.update(np.zeros(6, dtype=PACKET_DTYPE)[::2])


@pytest.mark.parametrize(
    "options",
    [{"capacity": 0}, {"capacity": 1 << 31}, {"idle_timeout_s": 0}, {"active_timeout_s": -1},
     {"community_id_seed": 70000}],
)
def test_constructor_rejects_invalid_options(options):
    with pytest.raises(ValueError, match="invalid"):
        FlowTable(**options)


def test_empty_batch_and_empty_flush():
    table = FlowTable(capacity=8)
    assert len(table.update(np.zeros(0, dtype=PACKET_DTYPE))) == 0
    assert len(table.flush()) == 0
    assert table.stats["packets"] == 0


# ------------------------------------------------------------------ against a slow reference

HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1", "2001:db8::2"]


def reference_flows(events):
    """Group (ts, src, dst, sport, dport, proto, flags, size) tuples into flows, slowly.

    No timeouts, no capacity limit and no TCP end: one flow per canonical
    key, whose initiator is its first sender unless that packet is a SYN-ACK.
    """
    flows = {}
    for ts, src, dst, sport, dport, proto, flags, size in events:
        a = (ipaddress.ip_address(src).packed.ljust(16, b"\0"), sport)
        b = (ipaddress.ip_address(dst).packed.ljust(16, b"\0"), dport)
        key = (proto, min(a, b), max(a, b))
        if key not in flows:
            syn_ack = proto == TCP and flags & (SYN | ACK) == (SYN | ACK)
            flows[key] = {"initiator": b if syn_ack else a, "sizes": ([], []), "times": ([], [])}
        flow = flows[key]
        # A flow from an endpoint to itself has only the initiator's direction.
        direction = 0 if a == flow["initiator"] or a == b else 1
        flow["sizes"][direction].append(size)
        flow["times"][direction].append(ts)
    return flows


packet_events = st.lists(
    st.tuples(
        st.sampled_from(HOSTS[:3]),
        st.sampled_from(HOSTS[:3]),
        st.sampled_from([53, 80, 40000]),
        st.sampled_from([53, 80, 40000]),
        st.sampled_from([TCP, UDP]),
        st.sampled_from([0, ACK, SYN, SYN | ACK, PSH | ACK]),
        st.integers(min_value=60, max_value=1514),
        st.integers(min_value=0, max_value=2_000_000),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(packet_events)
def test_table_matches_slow_reference(raw_events):
    # Timestamps rise by the drawn gaps (in ns), far below the idle timeout.
    ts = 0
    events = []
    for src, dst, sport, dport, proto, flags, size, gap_ns in raw_events:
        ts += gap_ns
        events.append((ts, src, dst, sport, dport, proto, flags if proto == TCP else 0, size))
    packets = batch(*(
        make_packet(t / 1e9, src, dst, sport, dport, proto, flags, wirelen=size)
        for t, src, dst, sport, dport, proto, flags, size in events
    ))
    table = FlowTable(capacity=256)
    assert len(table.update(packets)) == 0
    flows = table.flush()
    expected = reference_flows(events)
    assert len(flows) == len(expected)

    for flow in flows:
        src = (bytes(flow["src_addr"]), int(flow["src_port"]))
        dst = (bytes(flow["dst_addr"]), int(flow["dst_port"]))
        reference = expected[(int(flow["ip_proto"]), min(src, dst), max(src, dst))]
        assert src == reference["initiator"] or src == dst
        for prefix, direction in (("src2dst", 0), ("dst2src", 1)):
            sizes = reference["sizes"][direction]
            times = reference["times"][direction]
            assert flow[f"{prefix}_packets"] == len(sizes)
            assert flow[f"{prefix}_bytes"] == sum(sizes)
            if sizes:
                assert flow[f"{prefix}_min_ps"] == min(sizes)
                assert flow[f"{prefix}_max_ps"] == max(sizes)
                assert flow[f"{prefix}_mean_ps"] == pytest.approx(np.mean(sizes))
                assert flow[f"{prefix}_first_seen_ns"] == times[0]
                assert flow[f"{prefix}_last_seen_ns"] == times[-1]
            if len(sizes) > 2:
                iat_ms = np.diff(times) / 1e6
                assert flow[f"{prefix}_stddev_piat_ms"] == pytest.approx(iat_ms.std(ddof=1), abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(packet_events)
def test_bidirectional_merge_matches_reference(raw_events):
    # Bidirectional sizes and flag counts are merged from the two
    # directions at export; check them against all packets of the flow.
    ts = 0
    events = []
    for src, dst, sport, dport, proto, flags, size, gap_ns in raw_events:
        ts += gap_ns
        events.append((ts, src, dst, sport, dport, proto, flags if proto == TCP else 0, size))
    packets = batch(*(
        make_packet(t / 1e9, src, dst, sport, dport, proto, flags, wirelen=size)
        for t, src, dst, sport, dport, proto, flags, size in events
    ))
    table = FlowTable(capacity=256)
    table.update(packets)
    flows = table.flush()

    for flow in flows:
        members = packets["flow_id"] == flow["flow_id"]
        sizes = packets["wirelen"][members].astype(float)
        times = packets["ts_ns"][members]
        flags = packets["tcp_flags"][members]
        assert flow["bidirectional_packets"] == len(sizes)
        assert flow["bidirectional_bytes"] == sizes.sum()
        assert flow["bidirectional_min_ps"] == sizes.min()
        assert flow["bidirectional_max_ps"] == sizes.max()
        assert flow["bidirectional_mean_ps"] == pytest.approx(sizes.mean())
        if len(sizes) > 1:
            assert flow["bidirectional_stddev_ps"] == pytest.approx(sizes.std(ddof=1), abs=1e-9)
        else:
            assert flow["bidirectional_stddev_ps"] == 0.0
        if len(sizes) > 2:
            iat_ms = np.diff(times) / 1e6
            assert flow["bidirectional_mean_piat_ms"] == pytest.approx(iat_ms.mean(), abs=1e-9)
            assert flow["bidirectional_stddev_piat_ms"] == pytest.approx(iat_ms.std(ddof=1), abs=1e-9)
        for name, bit in (("syn", SYN), ("ack", ACK), ("psh", PSH)):
            assert flow[f"bidirectional_{name}_packets"] == np.count_nonzero(flags & bit), name


def test_batch_split_gives_same_flows():
    # update() builds keys and prefetches entries ahead of each packet, so
    # one large batch must assign exactly the flows that single-packet
    # batches do, across fragments, truncated and non-IP packets.
    rng = np.random.default_rng(7)
    records = []
    for i in range(600):
        ts = i * 0.001
        kind = rng.integers(0, 10)
        host = f"10.1.{rng.integers(0, 4)}.{rng.integers(1, 40)}"
        if kind == 0:
            p = make_packet(ts, host, SERVER, 0, 0, proto=UDP, frag=(i, 0, True), wirelen=1514)
            records.append(p)
            p = make_packet(ts, host, SERVER, 0, 0, proto=UDP, frag=(i, 185, False), wirelen=300)
        elif kind == 1:
            p = make_packet(ts, host, SERVER, proto=ICMP, icmp=(8, 0))
        elif kind == 2:
            p = make_packet(ts, host, SERVER, 5000, 53, proto=UDP)
            p["ip_version"] = 0  # no IP layer
        elif kind == 3:
            p = make_packet(ts, host, SERVER, 0, 0, proto=TCP)
            p["l4_offset"] = 0
            p["status"] = 1  # WW_STATUS_TRUNCATED before the ports
        else:
            sport = int(rng.integers(40000, 40008))
            if rng.random() < 0.5:
                p = make_packet(ts, host, SERVER, sport, 443, flags=PSH | ACK, payload=100)
            else:
                p = make_packet(ts, SERVER, host, 443, sport, flags=PSH | ACK, payload=100)
        records.append(p)
    whole = batch(*records)
    single = whole.copy()

    table_whole = FlowTable(capacity=1024)
    flows_whole = np.concatenate([table_whole.update(whole), table_whole.flush()])
    table_single = FlowTable(capacity=1024)
    parts = [table_single.update(single[i : i + 1]) for i in range(len(single))]
    flows_single = np.concatenate(parts + [table_single.flush()])

    for field in ("flow_id", "direction", "flow_slot"):
        assert np.array_equal(whole[field], single[field]), field
    assert table_whole.stats == table_single.stats
    order_whole = np.argsort(flows_whole["flow_id"])
    order_single = np.argsort(flows_single["flow_id"])
    assert flows_whole[order_whole].tobytes() == flows_single[order_single].tobytes()


def test_flow_entry_fills_whole_cache_lines():
    # The hot/cold layout relies on entries starting on a 64-byte line.
    assert flow_entry_size() % 64 == 0
    assert flow_entry_size() == 448

"""Flow edges on captures: who started a flow, and packets after a TCP close.

The hand-built captures are written with dpkt and go through the same reader
and decoder as any capture, so the flow table gets the packet records that
the decoder builds from real frames.
"""

import ipaddress
import json
import subprocess

import dpkt
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.capture import open_capture
from engine.cli import main
from engine.decode import decode_batch, new_anomaly_counters
from engine.flows import CONN_STATE_NAMES, EXPIRATION_NAMES, FlowTable
from engine.flows.table import DEFAULT_CLOSE_DELAY_S
from tests.conftest import require_tool
from tests.test_flows_table import batch as table_batch
from tests.test_flows_table import make_packet

FIN, SYN, RST, PSH, ACK = dpkt.tcp.TH_FIN, dpkt.tcp.TH_SYN, dpkt.tcp.TH_RST, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_ACK

CLIENT = ("192.168.10.20", 51000)
SERVER = ("192.168.10.5", 443)
# Capture time of the first frame, s since the Unix epoch.
START_S = 1_700_000_000.0


def tcp_frame(sender, receiver, flags, payload=b""):
    """Return one Ethernet/IPv4/TCP frame from `sender` to `receiver`, (address, port) each."""
    segment = dpkt.tcp.TCP(sport=sender[1], dport=receiver[1], flags=flags, seq=1000, ack=2000 if flags & ACK else 0,
                           data=payload)
    packet = dpkt.ip.IP(src=ipaddress.ip_address(sender[0]).packed, dst=ipaddress.ip_address(receiver[0]).packed,
                        p=dpkt.ip.IP_PROTO_TCP, data=segment)
    packet.len = len(packet)
    # Locally administered MACs whose last byte is the last address byte.
    src_mac = bytes([2, 0, 0, 0, 0, ipaddress.ip_address(sender[0]).packed[-1]])
    dst_mac = bytes([2, 0, 0, 0, 0, ipaddress.ip_address(receiver[0]).packed[-1]])
    return bytes(dpkt.ethernet.Ethernet(src=src_mac, dst=dst_mac, type=dpkt.ethernet.ETH_TYPE_IP, data=packet))


def write_capture(path, frames):
    """Write (offset_s, frame) pairs as a classic pcap, offsets counted from START_S."""
    with open(path, "wb") as stream:
        writer = dpkt.pcap.Writer(stream, linktype=dpkt.pcap.DLT_EN10MB)
        for offset_s, frame in frames:
            writer.writepkt(frame, ts=START_S + offset_s)
    return path


def track(path, **table_options):
    """Read, decode and track a capture; return (ended flows by flow_id, packets, table)."""
    table = FlowTable(capacity=table_options.pop("capacity", 64), **table_options)
    counters = new_anomaly_counters()
    flows, packets = [], []
    with open_capture(path) as reader:
        for batch in reader:
            decode_batch(batch.packets, batch.data, counters)
            flows.append(table.update(batch.packets, batch.data))
            packets.append(batch.packets.copy())
    flows.append(table.flush())
    flows = np.concatenate(flows)
    return flows[np.argsort(flows["flow_id"])], np.concatenate(packets), table


def address_of(flow, side):
    return str(ipaddress.ip_address(bytes(flow[f"{side}_addr"][:4])))


def closed_handshake(start_s=0.0):
    """A whole connection from CLIENT to SERVER, ending with the ACK of the second FIN (8 frames)."""
    steps = [
        (CLIENT, SERVER, SYN, b""),
        (SERVER, CLIENT, SYN | ACK, b""),
        (CLIENT, SERVER, ACK, b""),
        (CLIENT, SERVER, PSH | ACK, b"GET / HTTP/1.1\r\n\r\n"),
        (SERVER, CLIENT, PSH | ACK, b"HTTP/1.1 204 No Content\r\n\r\n"),
        (CLIENT, SERVER, FIN | ACK, b""),
        (SERVER, CLIENT, FIN | ACK, b""),
        (CLIENT, SERVER, ACK, b""),
    ]
    return [(start_s + 0.010 * i, tcp_frame(*step)) for i, step in enumerate(steps)]


# ------------------------------------------------------------------ who started it

def test_syn_ack_first_receiver_is_initiator(tmp_path):
    capture = write_capture(tmp_path / "syn-ack-first.pcap", [
        (0.00, tcp_frame(SERVER, CLIENT, SYN | ACK)),
        (0.01, tcp_frame(CLIENT, SERVER, ACK)),
        (0.02, tcp_frame(CLIENT, SERVER, PSH | ACK, b"hello")),
        (0.03, tcp_frame(SERVER, CLIENT, PSH | ACK, b"world!")),
    ])
    flows, packets, _ = track(capture)

    assert len(flows) == 1
    flow = flows[0]
    assert address_of(flow, "src") == CLIENT[0]
    assert flow["src_port"] == CLIENT[1]
    assert flow["dst_port"] == SERVER[1]
    # "^" marks the inferred direction; then the server's SYN-ACK (h), the
    # client's ACK (A) and data from both sides.
    assert flow["history"] == b"^hADd"
    assert flow["src2dst_packets"] == 2
    assert flow["dst2src_packets"] == 2
    assert flow["src2dst_payload_bytes"] == 5
    assert flow["dst2src_payload_bytes"] == 6
    assert flow["src_mac"].tolist() == [2, 0, 0, 0, 0, 20]
    assert packets["direction"].tolist() == [1, 0, 0, 1]


def test_rst_ack_first_from_service_port(tmp_path):
    # The reply of a closed port, without the SYN that it rejects: a scan
    # seen from one side, or the backscatter of a spoofed SYN.
    capture = write_capture(tmp_path / "rst-ack-first.pcap", [(0.0, tcp_frame(SERVER, CLIENT, RST | ACK))])
    flows, packets, table = track(capture)

    assert len(flows) == 1
    flow = flows[0]
    assert address_of(flow, "src") == CLIENT[0]
    assert address_of(flow, "dst") == SERVER[0]
    assert flow["src_port"] == CLIENT[1]
    assert flow["dst_port"] == SERVER[1]
    assert flow["history"] == b"^r"
    assert CONN_STATE_NAMES[flow["conn_state"]] == "RSTR"
    assert EXPIRATION_NAMES[flow["expiration_id"]] == "end_of_flow"
    assert flow["src2dst_packets"] == 0
    assert flow["dst2src_packets"] == 1
    assert flow["dst2src_rst_packets"] == 1
    assert packets["direction"].tolist() == [1]
    assert table.stats["flows_ended"] == 1


def test_rst_ack_first_from_client_port(tmp_path):
    # A client aborting a connection that began before the capture: the
    # RST-ACK comes from the higher port, so its sender stays the initiator.
    capture = write_capture(tmp_path / "rst-ack-abort.pcap", [(0.0, tcp_frame(CLIENT, SERVER, RST | ACK))])
    flows, packets, _ = track(capture)

    assert len(flows) == 1
    flow = flows[0]
    assert address_of(flow, "src") == CLIENT[0]
    assert flow["src_port"] == CLIENT[1]
    assert flow["history"] == b"R"
    assert CONN_STATE_NAMES[flow["conn_state"]] == "RSTO"
    assert packets["direction"].tolist() == [0]


def test_plain_ack_first_keeps_sender(tmp_path):
    # A midstream ACK could come from either side, so nothing is inferred.
    capture = write_capture(tmp_path / "ack-first.pcap", [
        (0.0, tcp_frame(SERVER, CLIENT, ACK)),
        (0.1, tcp_frame(CLIENT, SERVER, PSH | ACK, b"x")),
    ])
    flows, _, _ = track(capture)

    assert len(flows) == 1
    assert address_of(flows[0], "src") == SERVER[0]
    assert flows[0]["history"] == b"Ad"
    assert CONN_STATE_NAMES[flows[0]["conn_state"]] == "OTH"


# ------------------------------------------------------------------ after the close

def test_late_ack_within_close_delay_joins(tmp_path):
    frames = closed_handshake()
    closed_at_s = frames[-1][0]
    # The server repeats its last ACK and the client replies with a RST,
    # both before the close delay has passed.
    frames.append((closed_at_s + 1.0, tcp_frame(SERVER, CLIENT, ACK)))
    frames.append((closed_at_s + 2.0, tcp_frame(CLIENT, SERVER, RST)))
    capture = write_capture(tmp_path / "late-ack.pcap", frames)
    flows, packets, table = track(capture)

    assert len(flows) == 1
    flow = flows[0]
    assert EXPIRATION_NAMES[flow["expiration_id"]] == "end_of_flow"
    assert flow["src2dst_packets"] == 6
    assert flow["dst2src_packets"] == 4
    assert flow["bidirectional_last_seen_ns"] == packets["ts_ns"][-1]
    # The late packets add their letters after the FINs: the server's first
    # pure ACK (a) and the client's RST (R), which then decides the state.
    assert flow["history"] == b"ShADdFfaR"
    assert CONN_STATE_NAMES[flow["conn_state"]] == "RSTO"
    assert set(packets["flow_id"].tolist()) == {int(flow["flow_id"])}
    assert packets["direction"].tolist()[-2:] == [1, 0]
    assert table.stats["packets_after_close"] == 2
    assert table.stats["flows_created"] == 1
    assert table.stats["flows_ended"] == 1
    assert table.stats["flows_flushed"] == 0


def test_close_delay_runs_from_last_packet(tmp_path):
    # Each late packet restarts the delay: the second one comes 1.6 delays
    # after the close but 0.8 after the first late packet, so it joins too.
    frames = closed_handshake()
    closed_at_s = frames[-1][0]
    frames.append((closed_at_s + 0.8 * DEFAULT_CLOSE_DELAY_S, tcp_frame(SERVER, CLIENT, ACK)))
    frames.append((closed_at_s + 1.6 * DEFAULT_CLOSE_DELAY_S, tcp_frame(SERVER, CLIENT, ACK)))
    capture = write_capture(tmp_path / "late-twice.pcap", frames)
    flows, _, table = track(capture)

    assert len(flows) == 1
    assert flows[0]["bidirectional_packets"] == 10
    assert table.stats["packets_after_close"] == 2


def test_late_ack_after_close_delay_starts_flow(tmp_path):
    frames = closed_handshake()
    late_s = frames[-1][0] + DEFAULT_CLOSE_DELAY_S + 1.0
    frames.append((late_s, tcp_frame(SERVER, CLIENT, ACK)))
    capture = write_capture(tmp_path / "very-late-ack.pcap", frames)
    flows, packets, table = track(capture)

    assert len(flows) == 2
    first, second = flows
    assert EXPIRATION_NAMES[first["expiration_id"]] == "end_of_flow"
    assert first["bidirectional_packets"] == 8
    assert CONN_STATE_NAMES[first["conn_state"]] == "SF"
    assert second["bidirectional_packets"] == 1
    assert second["history"] == b"A"
    assert address_of(second, "src") == SERVER[0]
    assert EXPIRATION_NAMES[second["expiration_id"]] == "flushed"
    assert packets["flow_id"][-1] == second["flow_id"]
    assert table.stats["packets_after_close"] == 0


def test_close_delay_zero_ends_at_close(tmp_path):
    frames = closed_handshake()
    frames.append((frames[-1][0] + 0.05, tcp_frame(SERVER, CLIENT, ACK)))
    capture = write_capture(tmp_path / "no-delay.pcap", frames)
    flows, _, table = track(capture, close_delay_s=0)

    assert len(flows) == 2
    assert flows[0]["bidirectional_packets"] == 8
    assert flows[1]["bidirectional_packets"] == 1
    assert table.stats["packets_after_close"] == 0


def test_close_delay_capped_by_idle_timeout(tmp_path):
    # A closed flow never outlives the idle timeout: 2 s after the close is
    # past an idle timeout of 1 s, although within the default close delay.
    frames = closed_handshake()
    frames.append((frames[-1][0] + 2.0, tcp_frame(SERVER, CLIENT, ACK)))
    capture = write_capture(tmp_path / "idle-cap.pcap", frames)
    flows, _, table = track(capture, idle_timeout_s=1.0)

    assert len(flows) == 2
    assert EXPIRATION_NAMES[flows[0]["expiration_id"]] == "end_of_flow"
    assert table.stats["packets_after_close"] == 0


def test_new_syn_after_close_opens_flow(tmp_path):
    # The client reuses its port right after the close: the SYN is a new
    # connection, not a late packet of the old one.
    frames = closed_handshake()
    reopen_s = frames[-1][0] + 0.5
    frames.append((reopen_s, tcp_frame(CLIENT, SERVER, SYN)))
    frames.append((reopen_s + 0.01, tcp_frame(SERVER, CLIENT, SYN | ACK)))
    capture = write_capture(tmp_path / "port-reuse.pcap", frames)

    table = FlowTable(capacity=64)
    counters = new_anomaly_counters()
    ended = []
    with open_capture(capture) as reader:
        for batch in reader:
            decode_batch(batch.packets, batch.data, counters)
            ended.append(table.update(batch.packets, batch.data))
    ended = np.concatenate(ended)
    rest = table.flush()

    # The SYN exported the closed flow at once, without waiting for the delay.
    assert len(ended) == 1
    assert EXPIRATION_NAMES[ended[0]["expiration_id"]] == "end_of_flow"
    assert ended[0]["bidirectional_packets"] == 8
    assert CONN_STATE_NAMES[ended[0]["conn_state"]] == "SF"
    assert len(rest) == 1
    assert rest[0]["flow_id"] != ended[0]["flow_id"]
    assert rest[0]["history"] == b"Sh"
    assert address_of(rest[0], "src") == CLIENT[0]
    assert CONN_STATE_NAMES[rest[0]["conn_state"]] == "S1"
    assert table.stats["packets_after_close"] == 0


def test_rejected_syn_retry_is_new_flow(tmp_path):
    # A client that retries after a RST sends a new SYN from the same port:
    # each attempt is a REJ flow of its own, as a scan rule expects.
    frames = []
    for attempt in range(3):
        frames.append((attempt * 0.5, tcp_frame(CLIENT, SERVER, SYN)))
        frames.append((attempt * 0.5 + 0.001, tcp_frame(SERVER, CLIENT, RST | ACK)))
    capture = write_capture(tmp_path / "syn-retry.pcap", frames)
    flows, _, table = track(capture)

    assert len(flows) == 3
    assert [CONN_STATE_NAMES[state] for state in flows["conn_state"]] == ["REJ"] * 3
    assert flows["bidirectional_packets"].tolist() == [2, 2, 2]
    assert table.stats["flows_ended"] == 3


def test_closed_flow_swept_after_delay(tmp_path):
    # Other traffic moves the clock past the close delay: the sweep exports
    # the closed flow although it gets no packet of its own.
    frames = closed_handshake()
    other = (("192.168.10.30", 52000), SERVER)
    for i in range(8):
        frames.append((1.0 + i, tcp_frame(*other, ACK)))
    capture = write_capture(tmp_path / "sweep.pcap", frames)

    table = FlowTable(capacity=64)
    counters = new_anomaly_counters()
    with open_capture(capture) as reader:
        ended = []
        for batch in reader:
            decode_batch(batch.packets, batch.data, counters)
            # One packet per call, so the sweep runs after every packet.
            for i in range(batch.count):
                ended.append(table.update(batch.packets[i : i + 1]))
    ended = np.concatenate(ended)

    assert len(ended) == 1
    assert EXPIRATION_NAMES[ended[0]["expiration_id"]] == "end_of_flow"
    assert ended[0]["bidirectional_packets"] == 8
    assert table.live_flows == 1


def test_full_table_exports_closed_flow_first(tmp_path):
    # Two slots: an older open flow and a newer closed one. A third flow
    # takes the closed flow's slot, which is exported as ended, not evicted.
    older = (("192.168.10.40", 53000), SERVER)
    frames = [(0.0, tcp_frame(*older, PSH | ACK, b"data"))]
    frames += closed_handshake(start_s=0.1)
    newer = (("192.168.10.50", 54000), SERVER)
    frames.append((0.5, tcp_frame(*newer, SYN)))
    capture = write_capture(tmp_path / "full.pcap", frames)
    flows, _, table = track(capture, capacity=2)

    assert len(flows) == 3
    reasons = {address_of(flow, "src"): EXPIRATION_NAMES[flow["expiration_id"]] for flow in flows}
    assert reasons == {"192.168.10.40": "flushed", CLIENT[0]: "end_of_flow", "192.168.10.50": "flushed"}
    assert table.stats["flow_table_full"] == 1
    assert table.stats["flows_evicted"] == 0
    assert table.stats["flows_ended"] == 1


def test_snapshot_leaves_out_closed_flows(tmp_path):
    frames = closed_handshake()
    frames.append((0.2, tcp_frame(("192.168.10.60", 55000), SERVER, SYN)))
    capture = write_capture(tmp_path / "snapshot.pcap", frames)
    table = FlowTable(capacity=64)
    counters = new_anomaly_counters()
    with open_capture(capture) as reader:
        for batch in reader:
            decode_batch(batch.packets, batch.data, counters)
            table.update(batch.packets, batch.data)

    live = table.active_snapshot()
    assert table.live_flows == 2
    assert len(live) == 1
    assert address_of(live[0], "src") == "192.168.10.60"


def test_cli_close_delay_option(tmp_path):
    frames = closed_handshake()
    frames.append((frames[-1][0] + 1.0, tcp_frame(SERVER, CLIENT, ACK)))
    capture = write_capture(tmp_path / "cli.pcap", frames)
    runner = CliRunner()

    joined = runner.invoke(main, ["flows", str(capture)])
    assert joined.exit_code == 0, joined.output
    records = [json.loads(line) for line in joined.stdout.splitlines()]
    assert len(records) == 1
    assert records[0]["bidirectional_packets"] == 9
    assert records[0]["expiration"] == "end_of_flow"

    no_delay = runner.invoke(main, ["flows", "--close-delay", "0", str(capture)])
    assert no_delay.exit_code == 0, no_delay.output
    assert len(no_delay.stdout.splitlines()) == 2

    rejected = runner.invoke(main, ["flows", "--close-delay", "-1", str(capture)])
    assert rejected.exit_code == 2
    assert "--close-delay" in rejected.output


def test_close_delay_rejects_negative():
    with pytest.raises(ValueError, match="close_delay_s"):
        FlowTable(close_delay_s=-1.0)
    with pytest.raises(ValueError, match="close_delay_s"):
        FlowTable(close_delay_s=float("nan"))


# ------------------------------------------------------------------ real capture

def test_web_browsing_flows_match_tshark(shared_pcaps):
    require_tool("tshark")
    capture = shared_pcaps / "ppp-example-web-browsing.pcap"
    output = subprocess.run(
        ["tshark", "-n", "-q", "-r", str(capture), "-z", "conv,tcp", "-z", "conv,udp"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    # Each conversation is one row: A <-> B, then frames, bytes and unit for
    # B to A, A to B and both, so the total frames are the tenth field.
    conversations = [line.split() for line in output.splitlines() if "<->" in line]
    assert conversations, "tshark listed no conversation"

    flows, _, table = track(capture, capacity=1 << 12)
    assert len(flows) == len(conversations)
    tshark_frames = sum(int(row[9]) for row in conversations)
    assert flows["bidirectional_packets"].sum() == tshark_frames
    # Late ACKs and RSTs joined their closed flows instead of opening new ones.
    assert table.stats["packets_after_close"] > 0


# ------------------------------------------------------------------ slow reference

def reference_tcp_flows(events, close_delay_ns):
    """Group (ts_ns, sender, receiver, flags) TCP events into flows, slowly, by the documented rules.

    Endpoints are (address, port) pairs. No idle or active timeout applies,
    and the close delay runs from a closed flow's last packet.
    Returns (flows in creation order, packets after close), each flow a
    dict with its initiator, packets per direction and whether it closed.
    """
    flows, live = [], {}
    after_close = 0
    for ts_ns, sender, receiver, flags in events:
        key = (min(sender, receiver), max(sender, receiver))
        flow = live.get(key)
        if flow is not None and flow["closed"]:
            new_connection = flags & (SYN | ACK) == SYN
            if ts_ns - flow["last_ns"] > close_delay_ns or new_connection:
                flow = None
        if flow is None:
            syn_ack = flags & (SYN | ACK) == SYN | ACK
            rst_ack_from_lower_port = flags & (SYN | RST | ACK) == RST | ACK and sender[1] < receiver[1]
            reply = syn_ack or rst_ack_from_lower_port
            flow = {"initiator": receiver if reply else sender, "packets": [0, 0], "closed": False,
                    "fin_directions": set(), "last_fin_direction": None}
            flows.append(flow)
            live[key] = flow
        direction = 0 if sender == flow["initiator"] else 1
        flow["packets"][direction] += 1
        flow["last_ns"] = ts_ns
        if flow["closed"]:
            after_close += 1
            continue
        # A RST closes at once. Both FINs close at the next ACK from the
        # side whose FIN came first.
        closes = bool(flags & RST)
        if not closes and flags & FIN:
            if direction not in flow["fin_directions"]:
                flow["fin_directions"].add(direction)
                flow["last_fin_direction"] = direction
        elif not closes and len(flow["fin_directions"]) == 2 and flags & ACK:
            closes = direction != flow["last_fin_direction"]
        if closes:
            flow["closed"] = True
    return flows, after_close


tcp_events = st.lists(
    st.tuples(
        st.sampled_from([40000, 40001]),                       # client port of the key
        st.booleans(),                                         # sent by the client
        st.sampled_from([SYN, SYN | ACK, ACK, PSH | ACK, FIN | ACK, RST, RST | ACK]),
        st.sampled_from([0, 500_000_000, 1_500_000_000, 2_500_000_000]),  # gap before it, ns
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(tcp_events)
def test_close_rules_match_slow_reference(raw_events):
    close_delay_ns = 2_000_000_000
    server = ("10.0.0.1", 443)
    events, ts_ns = [], 0
    for client_port, from_client, flags, gap_ns in raw_events:
        ts_ns += gap_ns
        client = ("10.0.0.2", client_port)
        sender, receiver = (client, server) if from_client else (server, client)
        events.append((ts_ns, sender, receiver, flags))

    packets = table_batch(*(
        make_packet(0, sender[0], receiver[0], sender[1], receiver[1], flags=flags, wirelen=60)
        for _, sender, receiver, flags in events
    ))
    packets["ts_ns"] = [event[0] for event in events]
    table = FlowTable(capacity=64, idle_timeout_s=1000.0, close_delay_s=close_delay_ns / 1e9)
    flows = np.concatenate([table.update(packets), table.flush()])
    flows = flows[np.argsort(flows["flow_id"])]
    expected, after_close = reference_tcp_flows(events, close_delay_ns)

    assert len(flows) == len(expected)
    assert table.stats["packets_after_close"] == after_close
    for flow, reference in zip(flows, expected):
        src = (address_of(flow, "src"), int(flow["src_port"]))
        assert src == reference["initiator"]
        assert [int(flow["src2dst_packets"]), int(flow["dst2src_packets"])] == reference["packets"]
        reason = EXPIRATION_NAMES[flow["expiration_id"]]
        assert reason == ("end_of_flow" if reference["closed"] else "flushed")

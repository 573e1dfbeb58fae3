"""Flow records of real captures against the upstream expected results and tshark.

The expected results come from the tools that published the captures: Suricata
(Community ID, per-direction packets and bytes), nDPI (per-flow packets and
bytes), NFStream (per-flow totals). The other captures are checked against
tshark's conversation statistics.

Two differences are by design and handled here, not hidden:
- A TCP flow closes at RST, or at the ACK after both FINs. A packet more
  than the close delay later, or a gap longer than the idle timeout, starts
  a new flow, where Suricata, nDPI and tshark may keep one conversation.
  Comparisons therefore sum our flows per endpoint pair.
- Later IP fragments carry no ports. We attribute them to the flow of their
  first fragment; tshark (with reassembly off) counts the first fragment only.
"""

import csv
import ipaddress
import re
import subprocess
from collections import defaultdict

import numpy as np
import pytest
import yaml

from engine.capture import CaptureError, open_capture
from engine.decode import decode_batch, new_anomaly_counters
from engine.flows import FlowTable, flows_to_records
from tests.conftest import require_tool




def flows_of_capture(path, **options):
    """Read, decode and track one capture; return (flow records, table stats)."""
    table = FlowTable(capacity=options.pop("capacity", 1 << 14), **options)
    counters = new_anomaly_counters()
    parts = []
    with open_capture(path) as reader:
        for batch in reader:
            decode_batch(batch.packets, batch.data, counters)
            parts.append(table.update(batch.packets, batch.data))
    parts.append(table.flush())
    records = [record for part in parts for record in flows_to_records(part)]
    return records, table.stats


def endpoint(ip, port):
    return (ipaddress.ip_address(ip), int(port))


def totals_by_endpoints(records, with_ports=True):
    """Sum packets and bytes sent by each endpoint, per endpoint pair and protocol.

    Returns {(proto, low endpoint, high endpoint): {endpoint: [packets, bytes, later fragments]}}.
    """
    totals = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
    for r in records:
        src = endpoint(r["src_ip"], r["src_port"] if with_ports else 0)
        dst = endpoint(r["dst_ip"], r["dst_port"] if with_ports else 0)
        low, high = sorted([src, dst])
        pair = totals[(r["ip_proto"], low, high)]
        pair[src][0] += r["src2dst_packets"]
        pair[src][1] += r["src2dst_bytes"]
        pair[dst][0] += r["dst2src_packets"]
        pair[dst][1] += r["dst2src_bytes"]
        pair[src][2] += r["fragments"]
    return totals


def sent_by(totals, proto, a, b):
    """Return ((packets, bytes) sent by a, (packets, bytes) sent by b) for a pair."""
    low, high = sorted([a, b])
    pair = totals.get((proto, low, high))
    assert pair is not None, f"no flow between {a} and {b} (protocol {proto})"
    return tuple(pair[a][:2]), tuple(pair[b][:2])


# ------------------------------------------------------------------ Suricata

def suricata_flow_events(test_yaml):
    """Return the `match` dicts of the flow events a suricata-verify test expects."""
    with open(test_yaml) as handle:
        spec = yaml.safe_load(handle)
    events = []
    for check in spec["checks"]:
        match = check.get("filter", {}).get("match", {})
        if match.get("event_type") == "flow":
            events.append(match)
    return events


@pytest.mark.parametrize(
    "capture,seed",
    [
        ("sv-community-id-ipv6.pcap", 7),  # community-id-seed in its suricata.yaml
        ("sv-nfs3-bigendian.pcap", 1234),
    ],
)
def test_suricata_flows_community_id_and_counts(shared_pcaps, capture, seed):
    records, _ = flows_of_capture(shared_pcaps / capture, community_id_seed=seed)
    totals = totals_by_endpoints(records)
    events = suricata_flow_events(shared_pcaps / "expected" / capture / "test.yaml")
    assert events, "the expected results list no flow events"
    proto_numbers = {"TCP": 6, "UDP": 17}
    for event in events:
        client = endpoint(event["src_ip"], event["src_port"])
        server = endpoint(event["dest_ip"], event["dest_port"])
        proto = proto_numbers[event["proto"]]
        ours = [
            r for r in records
            if {endpoint(r["src_ip"], r["src_port"]), endpoint(r["dst_ip"], r["dst_port"])} == {client, server}
        ]
        assert {r["community_id"] for r in ours} == {event["community_id"]}
        if "ether.src_macs[0]" in event:
            initiated = [r for r in ours if endpoint(r["src_ip"], r["src_port"]) == client]
            assert {r["src_mac"] for r in initiated} == {event["ether.src_macs[0]"]}
            assert {r["dst_mac"] for r in initiated} == {event["ether.dest_macs[0]"]}
        to_server, to_client = sent_by(totals, proto, client, server)
        assert to_server == (event["flow.pkts_toserver"], event["flow.bytes_toserver"])
        assert to_client == (event["flow.pkts_toclient"], event["flow.bytes_toclient"])


def test_suricata_vlan_keyed_flows(shared_pcaps):
    # Suricata expects one flow per VLAN stack: [6], [1, 10], [1, 10, 100].
    records, _ = flows_of_capture(shared_pcaps / "sv-eve-flow-vlan-02.pcap")
    assert sorted(r["vlan_ids"] for r in records) == [[1, 10], [1, 10, 100], [6]]


def test_suricata_vxlan_inner_flows(shared_pcaps):
    # Suricata expects 4 SSH sessions and 1 NTP flow inside the VXLAN
    # tunnel. Our flows are the inner ones, keyed with the tunnel's VNI.
    records, _ = flows_of_capture(shared_pcaps / "sv-vxlan-ssh-aws-mirror.pcap")
    ssh = [r for r in records if r["dst_port"] == 22 and r["ip_proto"] == 6]
    ntp = [r for r in records if r["dst_port"] == 123 and r["ip_proto"] == 17]
    assert len(ssh) == 4
    assert len(ntp) == 1
    assert {r["tunnel_type"] for r in records} == {2}  # VXLAN
    assert len({r["tunnel_id"] for r in records}) == 1


def test_suricata_gre_inner_ssh_flow(shared_pcaps):
    # Suricata expects one SSH session inside the GRE tunnel.
    records, _ = flows_of_capture(shared_pcaps / "sv-gre-sample.pcap")
    ssh = [r for r in records if r["dst_port"] == 22 and r["ip_proto"] == 6]
    assert len(ssh) == 1
    assert ssh[0]["tunnel_type"] == 1  # GRE
    assert ssh[0]["conn_state"] != "OTH"


# ------------------------------------------------------------------ nDPI and NFStream

NDPI_FLOW = re.compile(
    r"^\t\d+\t(?P<proto>\w+) (?P<src>\S+):(?P<sport>\d+) (?:<->|->) (?P<dst>\S+):(?P<dport>\d+) .*?"
    r"\[(?P<c2s_packets>\d+) pkts/(?P<c2s_bytes>\d+) bytes (?:<->|->) "
    r"(?P<s2c_packets>\d+) pkts/(?P<s2c_bytes>\d+) bytes\]"
)


def ndpi_flows(result_path):
    flows = []
    with open(result_path) as handle:
        for line in handle:
            match = NDPI_FLOW.match(line)
            if match:
                flows.append(match.groupdict())
    return flows


@pytest.mark.parametrize(
    "capture",
    [
        "ndpi-hl7.pcap",
        "ndpi-bacnet.pcap",
        "ndpi-dns-exfiltration.pcap",
        "ndpi-emotet.pcap",
        "ndpi-ipsec-time-backwards.pcap",
    ],
)
def test_ndpi_flow_packets_and_bytes(shared_pcaps, capture):
    expected = ndpi_flows(shared_pcaps / "expected" / capture / "ndpi_result.out")
    assert expected, "the expected results list no flows"
    records, _ = flows_of_capture(shared_pcaps / capture)
    totals = totals_by_endpoints(records)
    proto_numbers = {"TCP": 6, "UDP": 17}
    for flow in expected:
        client = endpoint(flow["src"].strip("[]"), flow["sport"])
        server = endpoint(flow["dst"].strip("[]"), flow["dport"])
        c2s, s2c = sent_by(totals, proto_numbers[flow["proto"]], client, server)
        assert c2s == (int(flow["c2s_packets"]), int(flow["c2s_bytes"])), f"{client} -> {server}"
        assert s2c == (int(flow["s2c_packets"]), int(flow["s2c_bytes"])), f"{server} -> {client}"


def test_ndpi_hl7_statistics(shared_pcaps):
    # ndpiReader prints packet lengths c2s/s2c as min 60/54, avg 155/99,
    # max 531/222 and stddev 188/71, rounded to integers. Its stddev divides
    # by n and ours by n - 1. Its inter-arrival times skip some packets, so
    # they are not compared.
    records, _ = flows_of_capture(shared_pcaps / "ndpi-hl7.pcap")
    flow = sum_flows_between(records, "10.0.0.155", "10.0.0.126")
    assert (flow["src2dst_min_ps"], flow["dst2src_min_ps"]) == (60, 54)
    assert (flow["src2dst_max_ps"], flow["dst2src_max_ps"]) == (531, 222)
    assert (round(flow["src2dst_mean_ps"]), round(flow["dst2src_mean_ps"])) == (155, 99)
    n_c2s, n_s2c = flow["src2dst_packets"], flow["dst2src_packets"]
    assert round(flow["src2dst_stddev_ps"] * np.sqrt((n_c2s - 1) / n_c2s)) == 188
    assert round(flow["dst2src_stddev_ps"] * np.sqrt((n_s2c - 1) / n_s2c)) == 71


def sum_flows_between(records, client_ip, server_ip):
    ours = [r for r in records if (r["src_ip"], r["dst_ip"]) == (client_ip, server_ip)]
    assert len(ours) == 1, f"expected one flow {client_ip} -> {server_ip}, found {len(ours)}"
    return ours[0]


def test_nfstream_one_flow(shared_pcaps):
    with open(shared_pcaps / "expected" / "nfs-one-flow.pcap" / "nfstream_results.csv") as handle:
        expected = list(csv.DictReader(handle))
    records, _ = flows_of_capture(shared_pcaps / "nfs-one-flow.pcap")
    assert len(records) == len(expected) == 1
    assert records[0]["bidirectional_packets"] == int(expected[0]["bidirectional_packets"])
    assert records[0]["bidirectional_bytes"] == int(expected[0]["bidirectional_bytes"])


# ------------------------------------------------------------------ time going backwards

@pytest.mark.parametrize("capture", ["sv-smtp-time-backwards.pcap", "ndpi-ipsec-time-backwards.pcap"])
def test_time_backwards_captures(shared_pcaps, capture):
    records, stats = flows_of_capture(shared_pcaps / capture)
    assert stats["timestamp_backwards"] > 0
    packets_in_flows = sum(r["bidirectional_packets"] for r in records)
    assert packets_in_flows == stats["packets"] - stats["packets_without_flow"] - stats["packets_without_ports"]
    for r in records:
        assert r["bidirectional_min_piat_ms"] >= 0
        assert r["bidirectional_duration_ms"] >= 0
        assert r["bidirectional_first_seen_ns"] <= r["bidirectional_last_seen_ns"]


# ------------------------------------------------------------------ tshark conversations

TSHARK_ROW = re.compile(
    r"^(?P<a>\S+):(?P<a_port>\d+)\s+<->\s+(?P<b>\S+):(?P<b_port>\d+)\s+"
    r"(?P<to_a_frames>\d+) (?P<to_a_bytes>\d+) (?P<to_a_unit>bytes|kB|MB)\s+"
    r"(?P<to_b_frames>\d+) (?P<to_b_bytes>\d+) (?P<to_b_unit>bytes|kB|MB)"
)
UNIT_BYTES = {"bytes": 1, "kB": 1000, "MB": 1000 * 1000}


def tshark_conversations(path):
    """Return [(proto, a, b, (frames, bytes, unit) a->b, (frames, bytes, unit) b->a)]."""
    output = subprocess.run(
        [
            "tshark", "-n", "-q", "-r", str(path),
            # Reassembly off: a datagram counts on its first fragment, as our
            # flows count it (plus its later fragments, handled below).
            "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE",
            "-z", "conv,tcp", "-z", "conv,udp",
        ],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    conversations = []
    proto = None
    for line in output.splitlines():
        if line.startswith("TCP Conversations"):
            proto = 6
        elif line.startswith("UDP Conversations"):
            proto = 17
        match = TSHARK_ROW.match(line)
        if match and proto:
            g = match.groupdict()
            a, b = endpoint(g["a"], g["a_port"]), endpoint(g["b"], g["b_port"])
            a_to_b = (int(g["to_b_frames"]), int(g["to_b_bytes"]), g["to_b_unit"])
            b_to_a = (int(g["to_a_frames"]), int(g["to_a_bytes"]), g["to_a_unit"])
            conversations.append((proto, a, b, a_to_b, b_to_a))
    return conversations


def tshark_totals(conversations):
    """Sum tshark rows per endpoint pair and sender.

    tshark starts a new TCP conversation when a SYN reuses the ports of an
    earlier one, so one endpoint pair may have several rows. Returns
    {(proto, low, high): {sender: [frames, min bytes, max bytes]}}: from
    10 kB up tshark 4.0 prints whole SI units rounded down, so a row of
    "48 kB" means 48000 to 48999 bytes.
    """
    totals = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
    for proto, a, b, a_to_b, b_to_a in conversations:
        low, high = sorted([a, b])
        for sender, (frames, shown, unit) in ((a, a_to_b), (b, b_to_a)):
            entry = totals[(proto, low, high)][sender]
            entry[0] += frames
            entry[1] += shown * UNIT_BYTES[unit]
            entry[2] += shown * UNIT_BYTES[unit] + (UNIT_BYTES[unit] - 1)
    return totals


# Captures checked against tshark. Those with upstream expected results
# above are not repeated, and the deliberately broken ones are left to the
# reader and decoder tests.
TSHARK_CAPTURES = [
    "sv-mqtt5-pub-jpeg.pcap",
    "sv-mqtt311-pub-userpass.pcap",
    "sv-modbus.pcap",
    "sv-rdp-003.pcap",
    "sv-dcerpc-zerologon.pcap",
    "sv-ftp-bounce.pcap",
    "sv-telnet.pcap",
    "sv-tls-glupteba.pcap",
    "sv-smtp-time-backwards.pcap",
    "zeek-ftp-bruteforce.pcap",
    "zeek-nmap-vsn.pcap",
    "zeek-heartbleed-success.pcap",
    "zeek-mqtt.pcap",
    "zeek-ldap-simpleauth.pcap",
    "zeek-merlin-c2-quic.pcapng",
    "zeek-get-to-ssh-server-nsec.pcap",
    "zeek-tcp-timestamp-snaplen.pcap",
    "ppp-sll.pcap",
    "ppp-raw-ip.pcap",
    "ppp-null-loopback.pcap",
    "ppp-many-interfaces.pcapng",
    "ppp-ip4-fragments.pcap",
    "ppp-ipv6-opt-fragments.pcap",
    "ppp-unidir-tcp-missing-pkt.pcap",
    "ppp-example-web-browsing.pcap",
    "cl-log4j-attack.pcap",
    "cl-asyncrat.pcap",
    "mpa-synthetic-hl7-alerts.pcap",
    "ddos-dns-rrsig-fragmented.pcap",
]


# Packets the decoder rejects, so they have no flow, while tshark still
# counts them in a conversation.
DECODER_REJECTED = {
    # Five client packets claim an IPv4 total length of 137 bytes in a
    # 66-byte frame: the decoder counts bad_ip_total_length and stops there.
    "sv-telnet.pcap": 5,
}


@pytest.mark.parametrize("capture", TSHARK_CAPTURES)
def test_flows_match_tshark_conversations(shared_pcaps, capture):
    require_tool("tshark")
    path = shared_pcaps / capture
    try:
        records, stats = flows_of_capture(path)
    except CaptureError as error:
        pytest.fail(f"{capture}: reader rejected the capture: {error}")
    totals = totals_by_endpoints(records)
    expected = tshark_totals(tshark_conversations(path))
    assert expected, f"tshark lists no TCP or UDP conversation in {capture}"
    missing = 0
    for (proto, low, high), senders in expected.items():
        pair = totals.get((proto, low, high))
        assert pair is not None, f"{capture}: no flow for tshark conversation {low} <-> {high}"
        for sender, (frames, min_bytes, max_bytes) in senders.items():
            packets, sent_bytes, later_fragments = pair[sender]
            where = f"{capture}: from {sender} in {low} <-> {high}"
            if packets - later_fragments != frames:
                missing += frames - (packets - later_fragments)
                continue
            if later_fragments == 0:
                assert min_bytes <= sent_bytes <= max_bytes, f"bytes {where}"
    assert missing == DECODER_REJECTED.get(capture, 0)
    assert missing <= stats["packets_without_flow"]

    # And no TCP or UDP flow of ours is unknown to tshark, except the port-0
    # flows of later fragments whose first fragment never came.
    for (proto, low, high), senders in totals.items():
        if proto not in (6, 17) or (low[1] == 0 and high[1] == 0):
            continue
        assert (proto, low, high) in expected, f"{capture}: flow {low} <-> {high} unknown to tshark"

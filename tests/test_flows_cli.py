"""`wardwatch flows` on captures written here with dpkt and on shared captures."""

import csv
import json
import os
import socket

import dpkt
import pytest
from click.testing import CliRunner

from engine.cli import main

CLIENT_IP, SERVER_IP = "192.0.2.10", "198.51.100.7"
CLIENT_PORT, SERVER_PORT = 51000, 2575  # 2575: HL7 over MLLP


def tcp_frame(src, dst, sport, dport, flags, payload=b""):
    segment = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=1, ack=1, data=payload)
    packet = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_TCP,
                        ttl=64, data=segment)
    packet.len = len(packet)
    frame = dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x0a", dst=b"\x02\x00\x00\x00\x00\x07",
                                   type=dpkt.ethernet.ETH_TYPE_IP, data=packet)
    return bytes(frame)


@pytest.fixture
def handshake_pcap(tmp_path):
    """A complete TCP connection: handshake, one request and reply, FIN both ways."""
    c = (CLIENT_IP, SERVER_IP, CLIENT_PORT, SERVER_PORT)
    s = (SERVER_IP, CLIENT_IP, SERVER_PORT, CLIENT_PORT)
    frames = [
        tcp_frame(*c, dpkt.tcp.TH_SYN),
        tcp_frame(*s, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK),
        tcp_frame(*c, dpkt.tcp.TH_ACK),
        tcp_frame(*c, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK, b"\x0bMSH|^~\\&|TEST\r\x1c\r"),
        tcp_frame(*s, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK, b"\x0bMSA|AA|1\r\x1c\r"),
        tcp_frame(*c, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK),
        tcp_frame(*s, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK),
        tcp_frame(*c, dpkt.tcp.TH_ACK),
    ]
    path = tmp_path / "handshake.pcap"
    with open(path, "wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        for i, frame in enumerate(frames):
            writer.writepkt(frame, ts=1_700_000_000 + i * 0.01)
    return path, frames


def invoke(*args, input=None):
    return CliRunner().invoke(main, ["flows", *map(str, args)], input=input)


def test_jsonl_output_one_record(handshake_pcap, tmp_path):
    path, frames = handshake_pcap
    out = tmp_path / "flows.jsonl"
    result = invoke(path, "-o", out)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 1
    record = records[0]
    assert (record["src_ip"], record["src_port"]) == (CLIENT_IP, CLIENT_PORT)
    assert (record["dst_ip"], record["dst_port"]) == (SERVER_IP, SERVER_PORT)
    assert record["conn_state"] == "SF"
    assert record["expiration"] == "end_of_flow"
    assert record["src2dst_packets"] == 5
    assert record["dst2src_packets"] == 3
    assert record["bidirectional_bytes"] == sum(len(f) for f in frames)
    assert record["src_mac"] == "02:00:00:00:00:0a"
    assert record["community_id"].startswith("1:")
    assert "packets: 8" in result.output
    assert "flows: 1" in result.output


def test_csv_output_has_header_and_rows(handshake_pcap, tmp_path):
    path, _ = handshake_pcap
    out = tmp_path / "flows.csv"
    result = invoke(path, "-o", out, "--idle-timeout", "30", "--active-timeout", "600")
    assert result.exit_code == 0, result.output
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    assert rows[0]["conn_state"] == "SF"
    assert rows[0]["src2dst_syn_packets"] == "1"


def test_stdin_and_stdout(handshake_pcap):
    path, _ = handshake_pcap
    result = invoke("-", input=path.read_bytes())
    assert result.exit_code == 0, result.output
    # result.output mixes stdout with the stderr summary on every Click 8
    # release, so the records are the lines that are JSON objects.
    records = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert len(records) == 1
    assert records[0]["history"] == "ShADdFf"


def test_missing_capture_exits_1(tmp_path):
    result = invoke(tmp_path / "absent.pcap")
    assert result.exit_code == 1
    assert "absent.pcap" in result.output


def test_unknown_output_suffix_exits_2(handshake_pcap, tmp_path):
    path, _ = handshake_pcap
    result = invoke(path, "-o", tmp_path / "flows.txt")
    assert result.exit_code == 2
    assert ".jsonl or .csv" in result.output


def test_format_option_for_suffixless_output(handshake_pcap, tmp_path):
    # A FIFO or /dev/null has no suffix to take the format from.
    path, frames = handshake_pcap
    out = tmp_path / "flows-pipe"
    result = invoke(path, "-o", out, "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == 1
    assert rows[0]["bidirectional_bytes"] == str(sum(len(f) for f in frames))
    assert invoke(path, "-o", os.devnull, "--format", "jsonl").exit_code == 0


def test_format_must_match_suffix(handshake_pcap, tmp_path):
    path, _ = handshake_pcap
    result = invoke(path, "-o", tmp_path / "flows.jsonl", "--format", "csv")
    assert result.exit_code == 2
    assert "--format csv contradicts the suffix" in result.output
    assert not (tmp_path / "flows.jsonl").exists()


def test_dash_output_is_stdout(handshake_pcap, tmp_path, monkeypatch):
    path, _ = handshake_pcap
    monkeypatch.chdir(tmp_path)
    result = invoke(path, "-o", "-", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("flow_id,src_ip,")
    assert not (tmp_path / "-").exists()


def test_invalid_timeout_exits_2(handshake_pcap):
    path, _ = handshake_pcap
    result = invoke(path, "--idle-timeout", "0")
    assert result.exit_code == 2


def test_shared_capture_summary_names_anomalies(shared_pcaps, tmp_path):
    # Later fragments of this DDoS capture arrive without their first
    # fragment; the summary names that counter.
    out = tmp_path / "flows.jsonl"
    result = invoke(shared_pcaps / "ddos-dns-rrsig-fragmented.pcap", "-o", out)
    assert result.exit_code == 0, result.output
    assert "packets: 4412" in result.output
    assert "fragments_unattributed" in result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(r["bidirectional_packets"] for r in records) == 4412

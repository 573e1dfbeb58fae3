"""The compiled detection and parsers give the same output as the pure-Python references."""

import struct
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.decode.layout import empty_packets
from engine.inspect import asn1, clinical, detect, dns, jndi, textproto, tls
from engine.inspect.inspector import PARSERS, REFERENCE_PARSERS, Inspector
from engine.inspect.pipeline import iter_inspections
from engine.inspect.wire import Malformed, Truncated
from test_inspect_fuzz import VALID_STREAMS
from test_inspect_protocols import ber, client_hello, dns_query, principal, server_hello

compiled = pytest.importorskip("engine._native.inspect_parse", reason="engine._native.inspect_parse is not built")

SAMPLE_CAPTURE = Path(__file__).resolve().parent.parent / "engine" / "data" / "sample.pcap"

# (protocol, reference parser, compiled parser)
PARSER_PAIRS = [
    ("dns", dns.parse_dns, compiled.parse_dns),
    ("http", textproto.parse_http, compiled.parse_http),
    ("tls", tls.parse_tls, compiled.parse_tls),
    ("mqtt", clinical.parse_mqtt, compiled.parse_mqtt),
    ("hl7", clinical.parse_hl7, compiled.parse_hl7),
    ("dicom", clinical.parse_dicom, compiled.parse_dicom),
    ("kerberos", asn1.parse_kerberos, compiled.parse_kerberos),
    ("kerberos over UDP", partial(asn1.parse_kerberos, is_udp=True), partial(compiled.parse_kerberos, is_udp=True)),
]
# Ports that change detection: DNS over TCP needs port 53, the 220 greeting
# uses 21 and 25, and Telnet falls back to port 23.
DETECT_PORTS = [(40000, 53), (40000, 21), (40000, 25), (40000, 23), (40000, 8080), (53, 40000)]


def run_parser(parser, initiator: bytes, responder: bytes) -> tuple[dict, str]:
    fields: dict = {}
    try:
        parser(initiator, responder, fields)
    except Truncated:
        return fields, "truncated"
    except Malformed:
        return fields, "malformed"
    return fields, "ok"


def assert_same_output(initiator: bytes, responder: bytes) -> None:
    for protocol, reference, fast in PARSER_PAIRS:
        expected = run_parser(reference, initiator, responder)
        actual = run_parser(fast, initiator, responder)
        assert actual[1] == expected[1], (protocol, initiator[:64], responder[:64])
        assert actual[0] == expected[0], (protocol, initiator[:64], responder[:64])


def assert_same_protocol(initiator: bytes, responder: bytes) -> None:
    for ip_proto in (6, 17):
        for initiator_port, responder_port in DETECT_PORTS:
            args = (initiator, responder, ip_proto, initiator_port, responder_port)
            assert compiled.detect_protocol(*args) == detect.detect_protocol(*args), args


class RecordingInspector(Inspector):
    """Inspector that also keeps the captured streams of every flow it parses."""

    def __init__(self):
        super().__init__()
        self.streams = []

    def _inspect(self, record, initiator, responder):
        self.streams.append((record, initiator, responder))
        return super()._inspect(record, initiator, responder)


def capture_streams(path: Path) -> list:
    inspector = RecordingInspector()
    for _ in iter_inspections(str(path), inspector=inspector):
        pass
    return inspector.streams


def capture_paths(shared_pcaps: Path) -> list[Path]:
    paths = sorted(p for p in shared_pcaps.iterdir() if p.suffix in (".pcap", ".pcapng") or p.name.endswith(".zst"))
    if SAMPLE_CAPTURE.is_file():
        paths.append(SAMPLE_CAPTURE)
    return paths


def test_inspector_runs_compiled_parsers():
    assert PARSERS["dns"] is compiled.parse_dns
    assert PARSERS["http"] is compiled.parse_http
    assert PARSERS["tls"] is compiled.parse_tls
    assert PARSERS["mqtt"] is compiled.parse_mqtt
    assert PARSERS["hl7"] is compiled.parse_hl7
    assert PARSERS["dicom"] is compiled.parse_dicom
    assert PARSERS["kerberos"] is compiled.parse_kerberos
    assert REFERENCE_PARSERS["dns"] is dns.parse_dns


def test_compiled_limits_match_reference():
    references = {
        "dns.MAX_NAME_LENGTH": dns.MAX_NAME_LENGTH,
        "dns.MAX_POINTER_JUMPS": dns.MAX_POINTER_JUMPS,
        "dns.MAX_DNS_MESSAGES": dns.MAX_DNS_MESSAGES,
        "textproto.MAX_LINES": textproto.MAX_LINES,
        "tls.MAX_HANDSHAKE_BYTES": tls.MAX_HANDSHAKE_BYTES,
        "tls.MAX_TLS_RECORDS": tls.MAX_TLS_RECORDS,
        "jndi.MAX_LOOKUP_DEPTH": jndi.MAX_LOOKUP_DEPTH,
        "jndi.MAX_LOOKUP_BYTES": jndi.MAX_LOOKUP_BYTES,
        "jndi.MAX_LOOKUPS": jndi.MAX_LOOKUPS,
        "jndi.MAX_DECODE_ROUNDS": jndi.MAX_DECODE_ROUNDS,
        "jndi.MAX_SCHEME_BYTES": jndi.MAX_SCHEME_BYTES,
        "clinical.MAX_MQTT_PACKETS": clinical.MAX_MQTT_PACKETS,
        "clinical.MAX_HL7_MESSAGES": clinical.MAX_HL7_MESSAGES,
        "clinical.AE_TITLE_LENGTH": clinical.AE_TITLE_LENGTH,
        "clinical.MAX_PDU_LENGTH": clinical.MAX_PDU_LENGTH,
    }
    assert compiled.LIMITS == references


def test_detect_every_http_method():
    for method in textproto.HTTP_METHODS:
        request = method + b" / HTTP/1.1\r\nHost: h\r\n\r\n"
        assert compiled.detect_protocol(request, b"", 6, 40000, 8080) == "http", method
        fields, outcome = run_parser(compiled.parse_http, request, b"")
        assert outcome == "ok"
        assert fields["requests"][0]["method"] == method.decode()
    # One letter more or less is not a method.
    assert compiled.detect_protocol(b"GETS / HTTP/1.1\r\n", b"", 6, 40000, 8080) == ""
    assert compiled.detect_protocol(b"GE / HTTP/1.1\r\n", b"", 6, 40000, 8080) == ""


def test_compiled_matches_on_captures(shared_pcaps):
    flows = 0
    protocols = set()
    for path in capture_paths(shared_pcaps):
        for record, initiator, responder in capture_streams(path):
            flows += 1
            args = (initiator, responder, record["ip_proto"], record["initiator_port"], record["responder_port"])
            protocol = detect.detect_protocol(*args)
            protocols.add(protocol)
            assert compiled.detect_protocol(*args) == protocol, (path.name, record["flow_id"])
            # Every parser runs on every flow, so each also meets bytes of
            # other protocols, as it does after a wrong port hint.
            assert_same_output(initiator, responder)
    assert flows > 800
    assert {"dns", "http", "tls", "hl7", "dicom", "mqtt", "kerberos"} <= protocols


def kerberos_exchange(record_mark: str) -> tuple[bytes, bytes]:
    """Return an AS-REQ, and an AS-REP then a KRB-ERROR, each with a TCP record mark or UDP prefix."""
    req_body = ber(0x30, ber(0xA1, principal(b"jsmith"))  # cname
                   + ber(0xA2, ber(0x1B, b"HOSP.ORG"))  # realm
                   + ber(0xA3, principal(b"krbtgt", b"HOSP.ORG")))  # sname
    as_req = ber(0x6A, ber(0x30, ber(0xA1, ber(0x02, b"\x05")) + ber(0xA4, req_body)))  # pvno 5, req-body
    as_rep = ber(0x6B, ber(0x30, ber(0xA3, ber(0x1B, b"HOSP.ORG"))  # crealm
                           + ber(0xA4, principal(b"jsmith"))))  # cname
    error = ber(0x7E, ber(0x30, ber(0xA6, ber(0x02, b"\x18"))  # error-code 24
                          + ber(0xA8, principal(b"jsmith"))  # cname
                          + ber(0xA9, ber(0x1B, b"HOSP.ORG"))))  # realm
    prefix = ">I" if record_mark == "tcp" else ">H"
    return (
        struct.pack(prefix, len(as_req)) + as_req,
        struct.pack(prefix, len(as_rep)) + as_rep + struct.pack(prefix, len(error)) + error,
    )


def test_compiled_matches_every_truncation():
    streams = dict(VALID_STREAMS)
    streams["kerberos"] = kerberos_exchange("tcp")
    streams["kerberos over UDP"] = kerberos_exchange("udp")
    streams["tls_grease_weak"] = (
        client_hello(b"pacs.example.org", [0x1301, 0x0A0A, 0x0005]),  # TLS 1.3 suite, GREASE, RC4
        server_hello(0x0303, 0x0005),
    )
    streams["dns_two_messages"] = (
        b"\x00\x1f" + dns_query(7, [b"a", b"example", b"org"], 1) + b"\x00\x1d" + dns_query(8, [b"pacs", b"lan"], 28),
        b"",
    )
    for initiator, responder in streams.values():
        for cut in range(len(initiator) + 1):
            assert_same_output(initiator[:cut], responder)
            assert_same_protocol(initiator[:cut], responder)
        for cut in range(len(responder) + 1):
            assert_same_output(initiator, responder[:cut])
            assert_same_protocol(initiator, responder[:cut])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initiator=st.binary(max_size=600), responder=st.binary(max_size=600))
def test_compiled_matches_random_bytes(initiator, responder):
    assert_same_output(initiator, responder)
    assert_same_protocol(initiator, responder)


# Streams that start like a real message, so random bytes reach deep branches.
PREFIXES = [
    b"\x16\x03\x01",  # TLS handshake record
    b"\x80\x2e\x01\x03\x01",  # SSLv2-format ClientHello
    b"GET / HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"\x00\x1d",  # DNS over TCP length prefix
    b"\x0bMSH|",  # MLLP start block and MSH
    b"MSH|^~\\&|",  # bare HL7 message
    b"\x0bMSH|^~\\&|A|B|C|D|E||ACK|1|P|2.5\rMSA|",  # HL7 ACK up to MSA-1
    b"\x1c\x0d\x0bMSH^",  # end block before a start block, caret as field separator
    b"\x01\x00\x00\x00\x00\x44\x00\x01",  # DICOM A-ASSOCIATE-RQ header
    b"\x04\x00\x00\x00\x00\x20\x00\x00\x00\x1c\x01\x03",  # DICOM P-DATA-TF with a last command fragment
    b"\x10\x0c\x00\x04MQTT",  # MQTT CONNECT
    b"\x10\x0c\x00\x04MQTT\x05\xc6",  # MQTT 5 CONNECT with user, password and will flags
    b"\x82\x09\x00\x01",  # MQTT SUBSCRIBE
    b"\x30\x20\x00\x05",  # MQTT PUBLISH
    b"\x00\x00\x00\x2f\xfeSMB",  # SMB2 session message
    b"\x30\x0c\x02\x01\x01\x60",  # LDAP bind request
    b"\x00\x00\x00\x40\x6a\x3e\x30\x3c\xa1\x03\x02\x01\x05\xa4",  # Kerberos AS-REQ after a TCP record mark
    b"\x00\x40\x6a\x3e\x30\x3c\xa4\x30\x30\x2e\xa1",  # Kerberos AS-REQ after a UDP length prefix
    b"\x00\x00\x00\x30\x7e\x2e\x30\x2c\xa6\x03\x02\x01",  # KRB-ERROR with an error-code
    b"SSH-2.0-",
    b"\xff\xfd\x18",  # Telnet DO terminal type
    b"220 ",
    b"+OK",
    b"* OK",
    b"\x03\x00\x00\x2b\x26\xe0",  # TPKT and X.224 connection request
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(PREFIXES), initiator=st.binary(max_size=300),
       responder_prefix=st.sampled_from(PREFIXES + [b""]), responder=st.binary(max_size=300))
def test_compiled_matches_message_prefixes(prefix, initiator, responder_prefix, responder):
    assert_same_output(prefix + initiator, responder_prefix + responder)
    assert_same_protocol(prefix + initiator, responder_prefix + responder)


MUTATED_STREAMS = dict(VALID_STREAMS, kerberos=kerberos_exchange("tcp"), kerberos_udp=kerberos_exchange("udp"))


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(MUTATED_STREAMS)), side=st.sampled_from([0, 1]), data=st.data())
def test_compiled_matches_mutated_messages(name, side, data):
    streams = list(MUTATED_STREAMS[name])
    stream = streams[side]
    if not stream:
        return
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(stream) - 1))
        stream = stream[:position] + bytes([data.draw(st.integers(0, 255))]) + stream[position + 1:]
    streams[side] = stream
    assert_same_output(*streams)
    assert_same_protocol(*streams)


labels = st.lists(st.binary(min_size=1, max_size=63), min_size=0, max_size=6)


@settings(max_examples=150, deadline=None)
@given(names=st.lists(labels, min_size=1, max_size=4), qtype=st.integers(0, 0xFFFF), flags=st.integers(0, 0xFFFF))
def test_dns_built_messages_match(names, qtype, flags):
    stream = b""
    for index, name in enumerate(names):
        message = bytearray(dns_query(index, name, qtype))
        message[2:4] = struct.pack(">H", flags)  # QR, opcode, rcode and the rest at random
        stream += struct.pack(">H", len(message)) + bytes(message)
    assert_same_output(stream, stream)
    assert_same_protocol(stream, b"")


http_text = st.binary(max_size=40).map(lambda raw: raw.replace(b"\n", b""))
HEADER_NAMES = st.sampled_from([b"Host", b"HOST ", b"User-Agent", b"authorization", b"Server", b"X"])


@settings(max_examples=150, deadline=None)
@given(method=st.sampled_from(textproto.HTTP_METHODS + (b"get", b"FOO")), path=http_text,
       headers=st.lists(st.tuples(HEADER_NAMES, http_text), max_size=6),
       status=st.integers(0, 999), line_end=st.sampled_from([b"\r\n", b"\n", b"\r\r\n"]))
def test_http_built_requests_match(method, path, headers, status, line_end):
    request = method + b" " + path + b" HTTP/1.1" + line_end
    request += b"".join(name + b":" + value + line_end for name, value in headers)
    response = b"HTTP/1.1 %d OK" % status + line_end
    response += b"".join(name + b": " + value + line_end for name, value in headers)
    for ending in (line_end, b""):
        assert_same_output(request + ending, response)
    basic = request + b"Authorization: Basic dXNlcjpwYXNz" + line_end  # user:pass
    assert_same_output(basic, response)


@settings(max_examples=150, deadline=None)
@given(sni=st.binary(max_size=80), suites=st.lists(st.integers(0, 0xFFFF), max_size=40),
       version=st.integers(0, 0xFFFF), suite=st.integers(0, 0xFFFF), record_split=st.integers(1, 200))
def test_tls_built_hellos_match(sni, suites, version, suite, record_split):
    hello = client_hello(sni, suites)
    assert_same_output(hello, server_hello(version, suite))
    # The same handshake split over two records, as large hellos are.
    handshake = hello[5:]
    first, second = handshake[:record_split], handshake[record_split:]
    split = b"\x16\x03\x01" + struct.pack(">H", len(first)) + first
    if second:
        split += b"\x16\x03\x01" + struct.pack(">H", len(second)) + second
    assert_same_output(split, server_hello(version, suite))


def test_idle_scan_skipped_until_needed():
    # One UDP datagram per flow: flow 1 at t=0 s, flow 2 at t=100 s.
    inspector = Inspector(idle_timeout_s=120)
    payload = b"\x00\x01" + bytes(10)
    # Each frame is one header byte, then the payload: the stream table
    # reads payload_offset 0 as "no payload".
    frame = b"\x00" + payload
    data = np.frombuffer(frame * 2, dtype=np.uint8).copy()
    packets = empty_packets(2)
    for index, (flow_id, ts_s) in enumerate([(1, 0), (2, 100)]):
        packets[index]["flow_id"] = flow_id
        packets[index]["direction"] = 0
        packets[index]["ip_proto"] = 17
        packets[index]["ip_version"] = 4
        packets[index]["ts_ns"] = ts_s * 1_000_000_000
        packets[index]["data_offset"] = index * len(frame)
        packets[index]["payload_offset"] = 1
        packets[index]["payload_len"] = len(payload)
        packets[index]["payload_wire_len"] = len(payload)
    assert inspector.process(packets, data) == []
    assert inspector.table.oldest_ts_ns == 0
    assert inspector.table.tracked == 2

    # t=130 s: flow 1 is idle for 130 s and ends; flow 2 (30 s) stays.
    later = empty_packets(1)
    later[0]["ts_ns"] = 130 * 1_000_000_000
    later[0]["status"] = 1  # not decoded: only moves the clock
    results = inspector.process(later, data)
    assert [r.flow_id for r in results] == [1]
    assert inspector.table.tracked == 1
    assert inspector.table.oldest_ts_ns == 100 * 1_000_000_000

    # t=200 s is within 120 s of flow 2, so nothing ends and no scan runs.
    later[0]["ts_ns"] = 200 * 1_000_000_000
    assert inspector.process(later, data) == []
    assert inspector.table.pending == 0
    assert [r.flow_id for r in inspector.flush()] == [2]
    assert inspector.table.tracked == 0


segment_ids = st.sampled_from([b"EVN", b"PID", b"PV1", b"OBX", b"MSA", b"ERR", b"Z1", b"A", b"ab1", b"P-D", b"\xffID"])
hl7_text = st.binary(max_size=12).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x0b", b""))
field_values = st.sampled_from([b"AA", b"AE", b"ZZ", b""]) | hl7_text  # ZZ is not an MSA-1 code


@settings(max_examples=150, deadline=None)
@given(separator=st.sampled_from([b"|", b"^", b"#"]), msh_fields=st.lists(hl7_text, max_size=14),
       segments=st.lists(st.tuples(segment_ids, st.lists(field_values, max_size=3)), max_size=8),
       segment_end=st.sampled_from([b"\r", b"\n", b"\r\n", b"\r\r"]), framing=st.sampled_from(["mllp", "none", "cut"]))
def test_hl7_built_messages_match(separator, msh_fields, segments, segment_end, framing):
    message = b"MSH" + separator + b"^~\\&" + b"".join(separator + value for value in msh_fields) + segment_end
    for segment_id, values in segments:
        message += segment_id + b"".join(separator + value for value in values) + segment_end
    if framing == "mllp":
        stream = b"\x0b" + message + b"\x1c\x0d"
        stream += stream  # two blocks
    elif framing == "cut":
        stream = b"\x0b" + message
    else:
        stream = message
    assert_same_output(stream, stream)
    assert_same_protocol(stream, b"")

"""Every inspector survives random bytes and every truncation of a valid message."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine._native.inspect import StreamTable
from engine.decode.layout import empty_packets
from engine.inspect.detect import detect_protocol
from engine.inspect.inspector import PARSERS, parse_streams
from engine.inspect.wire import Malformed, Truncated
from test_inspect_protocols import (
    DICOM_INITIATOR,
    DICOM_RESPONDER,
    HL7_ACK,
    HL7_ADT,
    MQTT_CONNACK_OK,
    MQTT_CONNECT_ANONYMOUS,
    MQTT_SUBSCRIBE,
    client_hello,
    dns_query,
    server_hello,
)

# A result keeps at most MAX_ITEMS entries per list, each cut to a set width,
# so its JSON size stays far below this however large the input.
MAX_RESULT_BYTES = 256 * 1024
STREAM_BYTES = st.binary(max_size=4096)

VALID_STREAMS = {
    "hl7": (HL7_ADT, HL7_ACK),
    "dicom": (DICOM_INITIATOR, DICOM_RESPONDER),
    "mqtt": (MQTT_CONNECT_ANONYMOUS + MQTT_SUBSCRIBE, MQTT_CONNACK_OK),
    "tls": (client_hello(b"pacs.example.org", [0x1301, 0xC02F]), server_hello(0x0303, 0xC02F)),
    "dns": (b"\x00\x1f" + dns_query(1, [b"a", b"example", b"org"], 1), b""),  # 31-byte query
    "http": (b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Basic dTpw\r\n\r\n", b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n"),
    "ftp": (b"USER a\r\nPASS b\r\n", b"220 hi\r\n331 pw\r\n230 ok\r\n"),
    "telnet": (b"\xff\xfd\x18user\r\npw\r\n", b"\xff\xfb\x01login: \r\nPassword:\r\n$ "),
    "rdp": (b"\x03\x00\x00\x29\x24\xe0\x00\x00\x00\x00\x00Cookie: mstshash=abc\r\n\x01\x00\x08\x00\x03\x00\x00\x00", b""),
    # session header (47 bytes), SMB1 NEGOTIATE header, word count 0, byte count 12, one dialect
    "smb": (b"\x00\x00\x00\x2f\xffSMB\x72" + bytes(27) + b"\x00\x0c\x00\x02NT LM 0.12\x00", b""),
}


def check_result(protocol, initiator, responder, is_udp=False):
    fields, outcome = parse_streams(protocol, initiator, responder, is_udp)
    assert outcome in ("ok", "truncated", "malformed")
    assert len(json.dumps(fields, default=str)) < MAX_RESULT_BYTES


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initiator=STREAM_BYTES, responder=STREAM_BYTES)
def test_parsers_survive_random_bytes(initiator, responder):
    for protocol in PARSERS:
        check_result(protocol, initiator, responder)
    check_result("kerberos", initiator, responder, is_udp=True)
    detect_protocol(initiator, responder, 6, 1234, 104)
    detect_protocol(initiator, responder, 17, 1234, 53)


@settings(max_examples=60, deadline=None)
@given(protocol=st.sampled_from(sorted(VALID_STREAMS)), data=st.data())
def test_parsers_survive_mutated_messages(protocol, data):
    initiator, responder = VALID_STREAMS[protocol]
    position = data.draw(st.integers(0, max(len(initiator) - 1, 0)))
    value = data.draw(st.integers(0, 255))
    mutated = initiator[:position] + bytes([value]) + initiator[position + 1:]
    check_result(protocol, mutated, responder)


def test_parsers_survive_every_truncation():
    for protocol, (initiator, responder) in VALID_STREAMS.items():
        for cut in range(len(initiator) + 1):
            check_result(protocol, initiator[:cut], responder)
        for cut in range(len(responder) + 1):
            check_result(protocol, initiator, responder[:cut])


def test_valid_streams_parse_ok():
    for protocol, (initiator, responder) in VALID_STREAMS.items():
        fields, outcome = parse_streams(protocol, initiator, responder)
        assert outcome == "ok", protocol


packet_fields = st.fixed_dictionaries({
    "flow_id": st.integers(0, 6),
    "direction": st.sampled_from([0, 1, 0xFF]),
    "ip_proto": st.sampled_from([6, 17, 1]),
    "tcp_seq": st.integers(0, 2**32 - 1),
    "tcp_flags": st.integers(0, 255),
    "payload_offset": st.integers(0, 600),
    "payload_len": st.integers(0, 700),
    "payload_wire_len": st.integers(0, 70000),
    "status": st.sampled_from([0, 0, 0, 1]),
})


@settings(max_examples=80, deadline=None)
@given(records=st.lists(packet_fields, min_size=1, max_size=40), capacity=st.sampled_from([4, 8]))
def test_stream_table_survives_random_packets(records, capacity):
    table = StreamTable(capacity, 64)
    packets = empty_packets(len(records))
    data = np.frombuffer(bytes(range(256)) * 3, dtype=np.uint8).copy()
    for index, values in enumerate(records):
        for name, value in values.items():
            packets[index][name] = value
        packets[index]["data_offset"] = index % 7
        packets[index]["ts_ns"] = index
    table.update(packets, data)
    assert table.tracked <= capacity - capacity // 4
    for record, initiator, responder in table.take_ready() + (table.end_all() or table.take_ready()):
        assert len(initiator) <= 64
        assert len(responder) <= 64
        assert record["stored_len"][0] <= 64
    assert table.tracked == 0


operations = st.lists(st.tuples(st.sampled_from(["take", "skip", "u8", "u16", "u24", "u32", "u16le", "u32le", "sub"]),
                                st.integers(-2, 12)), max_size=20)


@settings(max_examples=150, deadline=None)
@given(buffer=st.binary(max_size=40), steps=operations)
def test_compiled_reader_matches_python_reader(buffer, steps):
    from engine.inspect.wire import PyReader, Reader

    if Reader is PyReader:
        pytest.skip("engine._native.inspect_wire is not built")
    compiled, reference = Reader(buffer), PyReader(buffer)
    for name, count in steps:
        args = (count,) if name in ("take", "skip", "sub") else ()
        outcomes = []
        for reader in (compiled, reference):
            try:
                value = getattr(reader, name)(*args)
                outcomes.append(("ok", value.take(value.remaining) if name == "sub" else value))
            except (Truncated, Malformed) as error:
                outcomes.append((type(error).__name__, None))
        assert outcomes[0] == outcomes[1]
        assert compiled.position == reference.position
        assert compiled.remaining == reference.remaining

"""SMB1 use: negotiated or merely offered, on hand-made messages and real captures.

A Windows client that speaks SMB2 opens with an SMB1-format Negotiate
Request offering "NT LM 0.12", "SMB 2.002" and "SMB 2.???". SMB1 is in use
only when the server's SMB1 Negotiate Response selects an SMB1 dialect, or
when SMB1 commands other than Negotiate follow.
"""

import struct
import subprocess

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import require_tool
from engine.inspect import smb
from engine.inspect.inspector import parse_streams
from engine.inspect.pipeline import analyse
from test_inspect_captures import inspect, write_tcp_session

SMB1_NEGOTIATE = 0x72
SMB1_SESSION_SETUP_ANDX = 0x73
SMB2_NEGOTIATE = 0x0000


def session_message(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(3, "big") + message  # RFC 1002 SESSION MESSAGE, 24-bit length


def smb1_header(command: int, response: bool) -> bytes:
    header = (
        b"\xffSMB"  # protocol id
        + bytes([command])  # command
        + bytes(4)  # status: STATUS_SUCCESS
        + bytes([0x98 if response else 0x18])  # flags: 0x80 reply, 0x10 canonical paths, 0x08 case-insensitive
        + struct.pack("<H", 0x4001)  # flags2: 0x4000 extended security, 0x0001 long names (OEM strings)
        + bytes(2)  # PID high
        + bytes(8)  # security features
        + bytes(2)  # reserved
        + struct.pack("<H", 0xFFFF)  # TID: none yet
        + struct.pack("<H", 0xFEFF)  # PID low
        + bytes(2)  # UID: no session yet
        + struct.pack("<H", 1)  # MID
    )
    assert len(header) == 32
    return header


def smb1_negotiate_request(dialects: list[bytes]) -> bytes:
    data = b"".join(b"\x02" + name + b"\x00" for name in dialects)  # buffer format 0x02, OEM string, NUL
    body = b"\x00" + struct.pack("<H", len(data)) + data  # word count 0, byte count
    return session_message(smb1_header(SMB1_NEGOTIATE, response=False) + body)


def smb1_negotiate_response(dialect_index: int) -> bytes:
    """Return an NT LM 0.12 Negotiate Response ([MS-CIFS] 2.2.4.52.2) selecting `dialect_index`."""
    words = (
        struct.pack("<H", dialect_index)  # DialectIndex
        + b"\x03"  # SecurityMode: user-level security, encrypted passwords
        + struct.pack("<H", 50)  # MaxMpxCount
        + struct.pack("<H", 1)  # MaxNumberVcs
        + struct.pack("<I", 16644)  # MaxBufferSize
        + struct.pack("<I", 65536)  # MaxRawSize
        + struct.pack("<I", 0)  # SessionKey
        + struct.pack("<I", 0x0000F3FD)  # Capabilities
        + bytes(8)  # SystemTime (FILETIME)
        + struct.pack("<h", 0)  # ServerTimeZone, minutes from UTC
        + b"\x08"  # ChallengeLength
    )
    assert len(words) == 2 * 17
    data = bytes(range(8)) + b"HOSPITAL\x00"  # challenge, then the OEM domain name
    body = b"\x11" + words + struct.pack("<H", len(data)) + data  # word count 17, words, byte count, bytes
    return session_message(smb1_header(SMB1_NEGOTIATE, response=True) + body)


def smb1_no_dialect_response() -> bytes:
    body = b"\x01" + struct.pack("<H", 0xFFFF) + struct.pack("<H", 0)  # word count 1, DialectIndex none, no bytes
    return session_message(smb1_header(SMB1_NEGOTIATE, response=True) + body)


def smb1_session_setup_request() -> bytes:
    # Word count 0 and byte count 0: only the command matters to the parser.
    return session_message(smb1_header(SMB1_SESSION_SETUP_ANDX, response=False) + b"\x00\x00\x00")


def smb2_negotiate_response(dialect: int) -> bytes:
    header = (
        b"\xfeSMB"  # protocol id
        + struct.pack("<H", 64)  # structure size
        + struct.pack("<H", 0)  # credit charge
        + struct.pack("<I", 0)  # status
        + struct.pack("<H", SMB2_NEGOTIATE)  # command
        + struct.pack("<H", 1)  # credits granted
        + struct.pack("<I", 1)  # flags: server to redirector
        + struct.pack("<I", 0)  # next command
        + struct.pack("<Q", 0)  # message id
        + struct.pack("<I", 0)  # reserved (process id)
        + struct.pack("<I", 0)  # tree id
        + struct.pack("<Q", 0)  # session id
        + bytes(16)  # signature
    )
    assert len(header) == 64
    body = (
        struct.pack("<H", 65)  # structure size
        + struct.pack("<H", 1)  # security mode: signing enabled
        + struct.pack("<H", dialect)  # dialect revision
        + bytes(2)  # negotiate context count or reserved
        + bytes(16)  # server GUID
    )
    return session_message(header + body)


def netbios_session_request() -> bytes:
    names = b"\x20" + b"CA" * 16 + b"\x00" + b"\x20" + b"CA" * 16 + b"\x00"  # called and calling NetBIOS names
    return b"\x81" + len(names).to_bytes(3, "big") + names  # RFC 1002 4.3.2 SESSION REQUEST


NETBIOS_POSITIVE_RESPONSE = b"\x82\x00\x00\x00"  # RFC 1002 4.3.3, no trailer


WINDOWS_DIALECTS = [b"NT LM 0.12", b"SMB 2.002", b"SMB 2.???"]
SMB1_ONLY_DIALECTS = [b"PC NETWORK PROGRAM 1.0", b"LANMAN1.0", b"LM1.2X002", b"NT LM 0.12"]


# --- parser on hand-made messages ---------------------------------------------------

def test_smb1_offer_smb2_response():
    fields, outcome = parse_streams("smb", smb1_negotiate_request(WINDOWS_DIALECTS), smb2_negotiate_response(0x02FF))
    assert outcome == "ok"
    assert fields["smb1"] is False
    assert fields["smb1_negotiate_request"] is True
    assert fields["smb1_dialects"] == ["NT LM 0.12", "SMB 2.002", "SMB 2.???"]
    assert fields["dialect"] == "2.x"
    assert "smb1_dialect_index" not in fields


def test_smb1_request_without_response():
    fields, outcome = parse_streams("smb", smb1_negotiate_request(WINDOWS_DIALECTS), b"")
    assert outcome == "ok"
    assert fields["smb1"] is False
    assert fields["smb1_negotiate_request"] is True


@pytest.mark.parametrize("index, dialect", [(3, "NT LM 0.12"), (1, "LANMAN1.0"), (0, "PC NETWORK PROGRAM 1.0")])
def test_smb1_dialect_selected(index, dialect):
    fields, outcome = parse_streams("smb", smb1_negotiate_request(SMB1_ONLY_DIALECTS), smb1_negotiate_response(index))
    assert outcome == "ok"
    assert fields["smb1"] is True
    assert fields["smb1_dialect_index"] == index
    assert fields["smb1_dialect"] == dialect


def test_smb1_response_selecting_smb2_dialect():
    # A server that chooses SMB2 responds in SMB2 format, so an SMB1
    # response naming "SMB 2.002" selects no SMB1 dialect.
    fields, _ = parse_streams("smb", smb1_negotiate_request(WINDOWS_DIALECTS), smb1_negotiate_response(1))
    assert fields["smb1_dialect"] == "SMB 2.002"
    assert fields["smb1"] is False


def test_smb1_no_acceptable_dialect():
    fields, outcome = parse_streams("smb", smb1_negotiate_request(SMB1_ONLY_DIALECTS), smb1_no_dialect_response())
    assert outcome == "ok"
    assert fields["smb1_dialect_index"] == 0xFFFF
    assert fields["smb1"] is False


def test_smb1_response_without_captured_request():
    fields, outcome = parse_streams("smb", b"", smb1_negotiate_response(0))
    assert outcome == "ok"
    assert fields["smb1"] is True
    assert "smb1_dialect" not in fields


def test_smb1_command_after_negotiate():
    initiator = smb1_negotiate_request(WINDOWS_DIALECTS) + smb1_session_setup_request()
    fields, outcome = parse_streams("smb", initiator, b"")
    assert outcome == "ok"
    assert fields["smb1_other_commands"] == 1
    assert fields["smb1"] is True


def test_netbios_session_request_skipped():
    keep_alive = b"\x85\x00\x00\x00"  # RFC 1002 4.3.7 SESSION KEEP ALIVE
    initiator = netbios_session_request() + smb1_negotiate_request(SMB1_ONLY_DIALECTS)
    responder = NETBIOS_POSITIVE_RESPONSE + keep_alive + smb1_negotiate_response(3)
    fields, outcome = parse_streams("smb", initiator, responder)
    assert outcome == "ok"
    assert fields["smb1_dialect"] == "NT LM 0.12"
    assert fields["smb1"] is True


@pytest.mark.parametrize("initiator, responder", [
    (netbios_session_request() + smb1_negotiate_request(SMB1_ONLY_DIALECTS), b""),
    (netbios_session_request(), NETBIOS_POSITIVE_RESPONSE + smb1_negotiate_response(3)),
    (smb1_negotiate_request(SMB1_ONLY_DIALECTS), b""),
])
def test_smb_detected_after_session_request(initiator, responder):
    from engine.inspect.detect import detect_protocol

    assert detect_protocol(initiator, responder, 6, 40000, 139) == "smb"
    compiled = pytest.importorskip("engine._native.inspect_parse")
    assert compiled.detect_protocol(initiator, responder, 6, 40000, 139) == "smb"


@pytest.mark.parametrize("stream", [
    netbios_session_request(),  # nothing after the session request
    netbios_session_request()[:20],  # session request cut by the capture
    b"\x81\xff\xff\xff" + smb1_negotiate_request(SMB1_ONLY_DIALECTS),  # length past the stream
    NETBIOS_POSITIVE_RESPONSE + b"\x00\x00\x00\x04HTTP",  # session message without an SMB header
])
def test_session_request_without_smb_not_detected(stream):
    assert not smb.looks_like_smb(stream)
    compiled = pytest.importorskip("engine._native.inspect_parse")
    assert compiled.detect_protocol(stream, b"", 6, 40000, 8139) == ""


@settings(max_examples=300, deadline=None)
@given(packet_type=st.sampled_from([0x00, 0x81, 0x82, 0x85]), declared_length=st.integers(0, 120),
       trailer=st.binary(max_size=100), cut=st.integers(0, 200))
def test_detection_compiled_matches_reference(packet_type, declared_length, trailer, cut):
    from engine.inspect.detect import detect_protocol

    compiled = pytest.importorskip("engine._native.inspect_parse")
    # A NetBIOS packet header whose declared length may or may not match the trailer, then SMB.
    stream = bytes([packet_type]) + declared_length.to_bytes(3, "big") + trailer
    stream = (stream + smb1_negotiate_request(WINDOWS_DIALECTS))[:cut]
    for initiator, responder in ((stream, b""), (b"", stream)):
        expected = detect_protocol(initiator, responder, 6, 40000, 8139)
        assert compiled.detect_protocol(initiator, responder, 6, 40000, 8139) == expected


def test_invalid_session_packet_type_malformed():
    responder = smb1_negotiate_response(3) + b"\x42\x00\x00\x00"
    fields, outcome = parse_streams("smb", smb1_negotiate_request(SMB1_ONLY_DIALECTS), responder)
    assert outcome == "malformed"
    # The response parsed before the bad packet still counts.
    assert fields["smb1"] is True


def test_negotiate_response_cut_truncated():
    fields, outcome = parse_streams("smb", smb1_negotiate_request(WINDOWS_DIALECTS), smb1_negotiate_response(0)[:30])
    assert outcome == "truncated"
    assert fields["smb1"] is False


# --- real and written captures -------------------------------------------------------

def smbv1_findings(path):
    output = analyse(inspect(path))
    return [a for a in output.alerts if a.category == "smbv1"]


def tshark_rows(path, display_filter, fields):
    tshark = require_tool("tshark")
    command = [tshark, "-r", str(path), "-Y", display_filter, "-T", "fields"]
    for field in fields:
        command += ["-e", field]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split("\t") for line in output.splitlines()]


def test_zerologon_offer_not_smbv1(shared_pcaps):
    path = shared_pcaps / "sv-dcerpc-zerologon.pcap"
    # tshark: every SMB1 message is a client Negotiate Request, and SMB2 Negotiate Responses follow each.
    smb1_rows = tshark_rows(path, "smb", ["smb.cmd", "smb.flags.response"])
    assert smb1_rows
    for command, is_response in smb1_rows:
        assert command == "0x72"
        assert is_response in ("0", "False")  # tshark prints booleans as 0/1 or False/True by version
    smb2_responses = tshark_rows(path, "smb2.cmd == 0 && smb2.flags.response == 1 && smb2.dialect == 0x02ff",
                               ["tcp.dstport"])
    assert len(smb2_responses) == len(smb1_rows)

    results = inspect(path, "smb")
    offered = [r for r in results if r.fields["smb1_negotiate_request"]]
    assert len(offered) == len(smb1_rows)
    assert all(r.fields["smb1"] is False for r in results)
    assert smbv1_findings(path) == []


def test_written_smb1_session_is_smbv1(tmp_path):
    path = tmp_path / "smb1.pcap"
    write_tcp_session(path, [(0, smb1_negotiate_request(SMB1_ONLY_DIALECTS)), (1, smb1_negotiate_response(3)),
                             (0, smb1_session_setup_request())], server_port=445)
    rows = tshark_rows(path, "smb.cmd == 0x72 && smb.flags.response == 1", ["smb.dialect.index"])
    assert rows == [["3"]]
    (result,) = inspect(path, "smb")
    assert result.fields["smb1_dialect"] == "NT LM 0.12"
    (finding,) = smbv1_findings(path)
    assert finding.severity == "high"
    assert finding.dst.ip == "10.0.0.9"  # the server write_tcp_session puts on port 445


def test_written_port_139_session_is_smbv1(tmp_path):
    path = tmp_path / "smb1-139.pcap"
    write_tcp_session(path, [(0, netbios_session_request()), (1, NETBIOS_POSITIVE_RESPONSE),
                             (0, smb1_negotiate_request(SMB1_ONLY_DIALECTS)), (1, smb1_negotiate_response(3))],
                      server_port=139)
    assert tshark_rows(path, "nbss.type == 0x81", ["tcp.dstport"]) == [["139"]]
    (result,) = inspect(path, "smb")
    assert result.fields["smb1_dialect"] == "NT LM 0.12"
    assert len(smbv1_findings(path)) == 1


def test_written_smb2_response_no_finding(tmp_path):
    path = tmp_path / "smb2.pcap"
    write_tcp_session(path, [(0, smb1_negotiate_request(WINDOWS_DIALECTS)), (1, smb2_negotiate_response(0x02FF))],
                      server_port=445)
    assert tshark_rows(path, "smb2.cmd == 0", ["smb2.dialect"]) == [["0x02ff"]]
    assert smbv1_findings(path) == []


def test_analyze_zerologon_without_smbv1(shared_pcaps, tmp_path):
    from engine.cli import main
    from engine.store import open_store

    store = tmp_path / "wardwatch.db"
    result = CliRunner().invoke(main, ["analyze", str(shared_pcaps / "sv-dcerpc-zerologon.pcap"),
                                       "--store", str(store), "--no-bus", "-q"])
    assert result.exit_code == 0, result.output
    conn = open_store(store)
    categories = [row[0] for row in conn.execute("SELECT category FROM alerts")]
    conn.close()
    assert "smbv1" not in categories
    assert "SMBv1" not in result.output

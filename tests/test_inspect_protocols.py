"""Protocol parsers on hand-made messages, one comment per wire field."""

import base64
import hashlib
import struct

import pytest

from engine.inspect import asn1, dns, smb, textproto
from engine.inspect.detect import detect_protocol
from engine.inspect.inspector import parse_streams

# --- HL7 over MLLP -------------------------------------------------------------

HL7_ADT = (
    b"\x0b"  # MLLP start block
    b"MSH|^~\\&|ADT1|GOOD HEALTH HOSPITAL|LAB|RIVERSIDE|202401011200||ADT^A01^ADT_A01|MSG00001|P|2.5.1\r"
    b"EVN|A01|202401011200\r"
    b"PID|1||PATID1234^^^GOOD HEALTH HOSPITAL^MR||EVERYMAN^ADAM^A||19610615|M\r"
    b"\x1c\x0d"  # MLLP end block + carriage return
)
HL7_ACK = (
    b"\x0bMSH|^~\\&|LAB|RIVERSIDE|ADT1|GOOD HEALTH HOSPITAL|202401011201||ACK^A01|ACK00001|P|2.5.1\r"
    b"MSA|AE|MSG00001\r\x1c\x0d"  # MSA-1 application error, MSA-2 the acknowledged control id
)


def test_hl7_msh_fields():
    fields, outcome = parse_streams("hl7", HL7_ADT, HL7_ACK)
    assert outcome == "ok"
    request, reply = fields["messages"]
    assert request["sending_application"] == "ADT1"
    assert request["sending_facility"] == "GOOD HEALTH HOSPITAL"
    assert request["receiving_application"] == "LAB"
    assert request["receiving_facility"] == "RIVERSIDE"
    assert request["message_type"] == "ADT^A01^ADT_A01"
    assert request["control_id"] == "MSG00001"
    assert request["version"] == "2.5.1"
    assert request["direction"] == 0
    assert reply["ack_code"] == "AE"
    assert reply["direction"] == 1
    assert fields["framing"] == "mllp"
    assert fields["patient_data"] is True


def test_hl7_pid_never_in_fields():
    fields, _ = parse_streams("hl7", HL7_ADT, HL7_ACK)
    text = repr(fields)
    for secret in ("EVERYMAN", "ADAM", "PATID1234", "19610615"):
        assert secret not in text


def test_hl7_detected_on_any_port():
    assert detect_protocol(HL7_ADT, HL7_ACK, 6, 50000, 9999) == "hl7"


def test_hl7_unterminated_block_truncated():
    fields, outcome = parse_streams("hl7", HL7_ADT[:-2], b"")
    assert outcome == "truncated"
    assert fields["messages"][0]["control_id"] == "MSG00001"


def test_hl7_bare_message_without_mllp():
    bare = HL7_ADT[1:-2]
    fields, outcome = parse_streams("hl7", bare, b"")
    assert outcome == "ok"
    assert fields["framing"] == "none"
    assert fields["messages"][0]["message_type"] == "ADT^A01^ADT_A01"


def test_hl7_invalid_ack_code_malformed():
    bad = HL7_ACK.replace(b"MSA|AE", b"MSA|ZZ")
    assert parse_streams("hl7", bad, b"")[1] == "malformed"


# --- DICOM upper layer ---------------------------------------------------------

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
APP_CONTEXT = "1.2.840.10008.3.1.1.1"


def dicom_item(item_type: int, value: bytes) -> bytes:
    return bytes([item_type, 0]) + struct.pack(">H", len(value)) + value  # type, reserved, length


def dicom_pdu(pdu_type: int, body: bytes) -> bytes:
    return bytes([pdu_type, 0]) + struct.pack(">I", len(body)) + body  # type, reserved, length


def associate(pdu_type: int, called: bytes, calling: bytes, contexts: bytes) -> bytes:
    body = (
        b"\x00\x01"  # protocol version 1
        + b"\x00\x00"  # reserved
        + called.ljust(16)  # called AE title, space padded
        + calling.ljust(16)  # calling AE title
        + bytes(32)  # reserved
        + dicom_item(0x10, APP_CONTEXT.encode())  # application context
        + contexts
        + dicom_item(0x50, dicom_item(0x51, struct.pack(">I", 16384))  # max PDU length
                     + dicom_item(0x52, b"1.2.3.4.5")  # implementation class UID
                     + dicom_item(0x55, b"WW_TEST_1"))  # implementation version name
    )
    return dicom_pdu(pdu_type, body)


def request_context(context_id: int, abstract: str) -> bytes:
    value = bytes([context_id, 0, 0, 0])  # id, reserved x3
    value += dicom_item(0x30, abstract.encode())  # abstract syntax
    value += dicom_item(0x40, IMPLICIT_LE.encode())  # transfer syntax
    return dicom_item(0x20, value)


def accept_context(context_id: int, result: int) -> bytes:
    value = bytes([context_id, 0, result, 0])  # id, reserved, result, reserved
    value += dicom_item(0x40, IMPLICIT_LE.encode())
    return dicom_item(0x21, value)


def command_element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value  # group 0000, element, length


def pdata(context_id: int, control: int, payload: bytes) -> bytes:
    pdv = bytes([context_id, control]) + payload  # context id, message control header
    return dicom_pdu(0x04, struct.pack(">I", len(pdv)) + pdv)


MOVE_RQ = (
    command_element(0x0002, STUDY_MOVE.encode())  # affected SOP class UID
    + command_element(0x0100, struct.pack("<H", 0x0021))  # command field C-MOVE-RQ
    + command_element(0x0600, b"EVIL_AE ")  # move destination, space padded
)
MOVE_RSP = (
    command_element(0x0100, struct.pack("<H", 0x8021))  # C-MOVE-RSP
    + command_element(0x0900, struct.pack("<H", 0xA801))  # status: move destination unknown
)
PATIENT_DATASET = struct.pack("<HHI", 0x0010, 0x0010, 10) + b"DOE^JOHN^^"  # (0010,0010) patient name

DICOM_INITIATOR = (
    associate(0x01, b"PACS1", b"CT01", request_context(1, CT_STORAGE) + request_context(3, STUDY_MOVE))
    + pdata(3, 0x03, MOVE_RQ)  # command, last fragment
    + pdata(3, 0x02, PATIENT_DATASET)  # data set, last fragment
    + dicom_pdu(0x05, bytes(4))  # A-RELEASE-RQ
)
DICOM_RESPONDER = (
    associate(0x02, b"PACS1", b"CT01", accept_context(1, 0) + accept_context(3, 3))
    + pdata(3, 0x03, MOVE_RSP)
    + dicom_pdu(0x06, bytes(4))  # A-RELEASE-RP
)


def test_dicom_association_fields():
    fields, outcome = parse_streams("dicom", DICOM_INITIATOR, DICOM_RESPONDER)
    assert outcome == "ok"
    assert fields["called_ae"] == "PACS1"
    assert fields["calling_ae"] == "CT01"
    assert fields["application_context"] == APP_CONTEXT
    assert fields["association"] == "accepted"
    contexts = {c["id"]: c for c in fields["presentation_contexts"]}
    assert contexts[1]["abstract_syntax"] == CT_STORAGE
    assert contexts[1]["sop_class"] == "CT Image Storage"
    assert contexts[1]["result"] == 0
    assert contexts[3]["result"] == 3
    assert contexts[3]["transfer_syntaxes"] == [IMPLICIT_LE]
    assert contexts[1]["accepted_transfer_syntax"] == IMPLICIT_LE
    assert fields["requestor_implementation_class_uid"] == "1.2.3.4.5"
    assert fields["requestor_implementation_version"] == "WW_TEST_1"
    assert fields["released"] is True


def test_dicom_move_command_and_status():
    fields, _ = parse_streams("dicom", DICOM_INITIATOR, DICOM_RESPONDER)
    request, response = fields["commands"]
    assert request["command"] == "C-MOVE-RQ"
    assert request["move_destination"] == "EVIL_AE"
    assert request["sop_class"] == STUDY_MOVE
    assert response["command"] == "C-MOVE-RSP"
    assert response["status"] == 0xA801
    assert fields["dataset_bytes"] == len(PATIENT_DATASET)


def test_dicom_dataset_never_in_fields():
    fields, _ = parse_streams("dicom", DICOM_INITIATOR, DICOM_RESPONDER)
    assert "DOE" not in repr(fields)


def test_dicom_reject_and_abort():
    reject = dicom_pdu(0x03, bytes([0, 1, 1, 3]))  # reserved, result permanent, source user, reason calling AE not recognised
    abort = dicom_pdu(0x07, bytes([0, 0, 2, 6]))  # reserved x2, source provider, reason invalid parameter
    fields, outcome = parse_streams("dicom", associate(0x01, b"PACS1", b"X", b""), reject + abort)
    assert outcome == "ok"
    assert fields["association"] == "rejected"
    assert fields["reject"] == {"result": 1, "source": 1, "reason": 3}
    assert fields["abort"] == {"direction": 1, "source": 2, "reason": 6}


def test_dicom_detected_by_content():
    assert detect_protocol(DICOM_INITIATOR, DICOM_RESPONDER, 6, 40000, 4242) == "dicom"


def test_dicom_bad_pdu_type_malformed():
    assert parse_streams("dicom", b"\x09\x00\x00\x00\x00\x04abcd", b"")[1] == "malformed"


# --- MQTT ------------------------------------------------------------------------

def mqtt_string(text: bytes) -> bytes:
    return struct.pack(">H", len(text)) + text


def mqtt_packet(first_byte: int, body: bytes) -> bytes:
    assert len(body) < 128  # one-byte remaining length
    return bytes([first_byte, len(body)]) + body


MQTT_CONNECT_ANONYMOUS = mqtt_packet(0x10, mqtt_string(b"MQTT")  # protocol name
                                     + b"\x04"  # level 4 (3.1.1)
                                     + b"\x02"  # flags: clean session only
                                     + b"\x00\x3c"  # keepalive 60 s
                                     + mqtt_string(b"pump-17"))  # client id
MQTT_SUBSCRIBE = mqtt_packet(0x82, b"\x00\x01"  # packet id
                             + mqtt_string(b"ward/+/vitals") + b"\x00"  # filter, options QoS 0
                             + mqtt_string(b"#") + b"\x00")
MQTT_CONNACK_OK = mqtt_packet(0x20, b"\x00\x00")  # session present 0, return code 0


def test_mqtt_anonymous_wildcard_subscription():
    fields, outcome = parse_streams("mqtt", MQTT_CONNECT_ANONYMOUS + MQTT_SUBSCRIBE, MQTT_CONNACK_OK)
    assert outcome == "ok"
    assert fields["client_id"] == "pump-17"
    assert fields["protocol_version"] == 4
    assert fields["username_present"] is False
    assert fields["password_present"] is False
    assert fields["connack_code"] == 0
    assert fields["subscribed_topics"] == ["ward/+/vitals", "#"]
    assert fields["wildcard_subscription"] is True


def test_mqtt_password_not_kept():
    connect = mqtt_packet(0x10, mqtt_string(b"MQTT") + b"\x04"
                          + b"\xc2"  # username, password, clean session
                          + b"\x00\x3c" + mqtt_string(b"monitor-3")
                          + mqtt_string(b"nurse") + mqtt_string(b"s3cret-pw"))
    fields, outcome = parse_streams("mqtt", connect, MQTT_CONNACK_OK)
    assert outcome == "ok"
    assert fields["username_present"] is True
    assert "s3cret-pw" not in repr(fields)


# --- TLS -------------------------------------------------------------------------

def tls_extension(ext_type: int, body: bytes) -> bytes:
    return struct.pack(">HH", ext_type, len(body)) + body


def client_hello(sni: bytes, suites: list[int]) -> bytes:
    server_name = struct.pack(">BH", 0, len(sni)) + sni  # host_name entry
    extensions = (
        tls_extension(0x0A0A, b"")  # GREASE extension, skipped by JA3
        + tls_extension(0, struct.pack(">H", len(server_name)) + server_name)
        + tls_extension(10, struct.pack(">HHH", 4, 29, 23))  # groups x25519, secp256r1
        + tls_extension(11, b"\x01\x00")  # point formats: uncompressed
        + tls_extension(43, b"\x04\x03\x04\x03\x03")  # supported versions 1.3, 1.2
    )
    body = (
        b"\x03\x03"  # legacy version TLS 1.2
        + bytes(32)  # random
        + b"\x00"  # empty session id
        + struct.pack(">H", 2 * len(suites)) + b"".join(struct.pack(">H", s) for s in suites)
        + b"\x01\x00"  # compression methods: null
        + struct.pack(">H", len(extensions)) + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body  # ClientHello
    return b"\x16\x03\x01" + struct.pack(">H", len(handshake)) + handshake  # handshake record


def server_hello(version: int, suite: int) -> bytes:
    body = struct.pack(">H", version) + bytes(32) + b"\x00" + struct.pack(">H", suite) + b"\x00"
    handshake = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(handshake)) + handshake


def test_tls_client_hello_fields_and_ja3():
    fields, outcome = parse_streams("tls", client_hello(b"pacs.example.org", [0x1301, 0x0A0A, 0xC02F]),
                                    server_hello(0x0303, 0xC02F))
    assert outcome == "ok"
    assert fields["sni"] == "pacs.example.org"
    assert fields["client_versions"] == ["TLS 1.3", "TLS 1.2"]
    assert fields["client_cipher_suites"] == [0x1301, 0xC02F]
    expected_ja3 = "771,4865-49199,0-10-11-43,29-23,0"
    assert fields["ja3"] == expected_ja3
    assert fields["ja3_md5"] == hashlib.md5(expected_ja3.encode()).hexdigest()
    assert fields["version"] == "TLS 1.2"
    assert fields["weak_cipher_suite"] is False


def test_tls_weak_suite_and_old_version():
    fields, _ = parse_streams("tls", client_hello(b"x", [0x0005]), server_hello(0x0301, 0x0005))
    assert fields["version"] == "TLS 1.0"
    assert fields["weak_cipher_suite"] is True
    assert fields["client_weak_suites"] == [0x0005]


def test_tls_hello_split_across_records():
    record = client_hello(b"split.example", [0x1301])
    handshake = record[5:]
    split = (b"\x16\x03\x01" + struct.pack(">H", 20) + handshake[:20]
             + b"\x16\x03\x01" + struct.pack(">H", len(handshake) - 20) + handshake[20:])
    fields, outcome = parse_streams("tls", split, b"")
    assert outcome == "ok"
    assert fields["sni"] == "split.example"


# --- DNS ------------------------------------------------------------------------

def dns_query(query_id: int, labels: list[bytes], qtype: int) -> bytes:
    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    header = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0)  # RD set, one question
    return header + name + struct.pack(">HH", qtype, 1)


def test_dns_names_types_and_rcode():
    query = dns_query(7, [b"pacs", b"hospital", b"local"], 1)
    response = bytearray(query)
    response[2:4] = struct.pack(">H", 0x8183)  # QR, RD, RA, rcode 3 NXDOMAIN
    stream_in = struct.pack(">H", len(query)) + query  # stream table length prefix
    stream_out = struct.pack(">H", len(response)) + bytes(response)
    fields, outcome = parse_streams("dns", stream_in, stream_out, is_udp=True)
    assert outcome == "ok"
    assert fields["names"] == ["pacs.hospital.local"]
    assert fields["queries"][0]["qtype"] == "A"
    assert fields["responses"][0]["rcode"] == "NXDOMAIN"
    assert fields["query_count"] == 1
    assert fields["response_count"] == 1


def test_dns_pointer_loop_malformed():
    message = struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c" + b"\x00\x01\x00\x01"  # name points at itself
    with pytest.raises(dns.Malformed):
        dns.parse_dns_message(message)


# --- text protocols -----------------------------------------------------------------

def test_http_basic_auth_user_only():
    credential = base64.b64encode(b"tech:hunter2")
    request = (b"GET /config HTTP/1.1\r\nHost: pump-12.ward\r\nUser-Agent: curl/8.0\r\n"
               b"Authorization: Basic " + credential + b"\r\n\r\n")
    fields, outcome = parse_streams("http", request, b"HTTP/1.1 401 Unauthorized\r\nServer: Boa/0.94.13\r\n\r\n")
    assert outcome == "ok"
    assert fields["requests"][0]["host"] == "pump-12.ward"
    assert fields["requests"][0]["path"] == "/config"
    assert fields["basic_auth"] is True
    assert fields["responses"][0]["status"] == 401
    assert fields["server"] == "Boa/0.94.13"
    assert fields["_logins"] == [("tech", "failure")]
    assert "hunter2" not in repr(fields)


def test_ftp_login_outcomes():
    client = b"USER alice\r\nPASS wrong\r\nUSER alice\r\nPASS right\r\nQUIT\r\n"
    server = (b"220 vsFTPd 2.3.4\r\n331 Please specify the password.\r\n530 Login incorrect.\r\n"
              b"331 Please specify the password.\r\n230-Welcome\r\n230 Login successful.\r\n221 Goodbye.\r\n")
    fields, _ = parse_streams("ftp", client, server)
    assert fields["banner"] == "vsFTPd 2.3.4"
    assert fields["_logins"] == [("alice", "failure"), ("alice", "success")]
    assert fields["login_failures"] == 1


def test_pop3_and_imap_logins():
    pop3, _ = parse_streams("pop3", b"USER bob\r\nPASS x\r\n", b"+OK ready\r\n+OK\r\n-ERR denied\r\n")
    assert pop3["_logins"] == [("bob", "failure")]
    imap, _ = parse_streams("imap", b'a1 LOGIN "carol" pw\r\n', b"* OK IMAP ready\r\na1 OK done\r\n")
    assert imap["_logins"] == [("carol", "success")]


def test_telnet_commands_stripped():
    stream = b"\xff\xfb\x01" + b"ab" + b"\xff\xff" + b"\xff\xfa\x18\x00xterm\xff\xf0" + b"c"
    assert textproto.strip_telnet_commands(stream) == b"ab\xffc"


def test_ssh_banners():
    fields, _ = parse_streams("ssh", b"SSH-2.0-PuTTY_Release_0.80\r\n", b"SSH-2.0-OpenSSH_7.4 Debian\r\n")
    assert fields["server_software"] == "OpenSSH_7.4"
    assert fields["client_software"] == "PuTTY_Release_0.80"


# --- LDAP and Kerberos (BER built by hand) ---------------------------------------------

def ber(tag: int, value: bytes) -> bytes:
    assert len(value) < 128  # short-form length
    return bytes([tag, len(value)]) + value


def test_ldap_bind_failure():
    bind = ber(0x30, ber(0x02, b"\x01")  # messageID 1
               + ber(0x60, ber(0x02, b"\x03")  # BindRequest, version 3
                     + ber(0x04, b"cn=admin,dc=hosp,dc=org")  # name
                     + ber(0x80, b"pw")))  # simple authentication
    result = ber(0x30, ber(0x02, b"\x01") + ber(0x61, ber(0x0A, b"\x31")  # resultCode 49
                                                 + ber(0x04, b"") + ber(0x04, b"")))
    assert detect_protocol(bind, result, 6, 50000, 3389) == "ldap"
    fields, outcome = parse_streams("ldap", bind, result)
    assert outcome == "ok"
    assert fields["binds"][0]["bind_dn"] == "cn=admin,dc=hosp,dc=org"
    assert fields["bind_results"][0]["result"] == "invalidCredentials"
    assert fields["_logins"] == [("cn=admin,dc=hosp,dc=org", "failure")]


def principal(*names: bytes) -> bytes:
    strings = b"".join(ber(0x1B, n) for n in names)  # GeneralString
    return ber(0x30, ber(0xA0, ber(0x02, b"\x01")) + ber(0xA1, ber(0x30, strings)))  # name-type 1, name-string


def test_kerberos_preauth_failed():
    req_body = ber(0x30, ber(0xA0, ber(0x03, b"\x00\x40\x00\x00\x00"))  # kdc-options
                   + ber(0xA1, principal(b"jsmith"))  # cname
                   + ber(0xA2, ber(0x1B, b"HOSP.ORG"))  # realm
                   + ber(0xA3, principal(b"krbtgt", b"HOSP.ORG")))  # sname
    as_req = ber(0x6A, ber(0x30, ber(0xA1, ber(0x02, b"\x05"))  # pvno 5
                                 + ber(0xA2, ber(0x02, b"\x0a"))  # msg-type 10
                                 + ber(0xA4, req_body)))
    error = ber(0x7E, ber(0x30, ber(0xA0, ber(0x02, b"\x05")) + ber(0xA1, ber(0x02, b"\x1e"))
                          + ber(0xA6, ber(0x02, b"\x18"))  # error-code 24
                          + ber(0xA9, ber(0x1B, b"HOSP.ORG"))))
    initiator = struct.pack(">I", len(as_req)) + as_req  # TCP record mark
    responder = struct.pack(">I", len(error)) + error
    assert detect_protocol(initiator, responder, 6, 50000, 88) == "kerberos"
    fields, outcome = parse_streams("kerberos", initiator, responder)
    assert outcome == "ok"
    assert fields["requests"][0]["client"] == "jsmith"
    assert fields["requests"][0]["realm"] == "HOSP.ORG"
    assert fields["requests"][0]["service"] == "krbtgt/HOSP.ORG"
    assert fields["errors"][0]["error"] == "KDC_ERR_PREAUTH_FAILED"
    assert fields["_logins"] == [("jsmith", "failure")]


def test_ber_indefinite_length_malformed():
    with pytest.raises(asn1.Malformed):
        asn1.read_tlv(asn1.Reader(b"\x30\x80\x00\x00"))


# --- SMB and RDP -------------------------------------------------------------------

def test_smb1_negotiate_dialects():
    header = b"\xffSMB" + b"\x72" + bytes(27)  # protocol id, command NEGOTIATE, rest of header
    dialects = b"\x02NT LM 0.12\x00\x02SMB 2.002\x00"
    body = b"\x00" + struct.pack("<H", len(dialects)) + dialects  # word count 0, byte count
    message = header + body
    stream = b"\x00" + len(message).to_bytes(3, "big") + message  # session message
    assert smb.looks_like_smb(stream)
    fields, outcome = parse_streams("smb", stream, b"")
    assert outcome == "ok"
    assert fields["smb1_negotiate_request"] is True
    assert fields["smb1_dialects"] == ["NT LM 0.12", "SMB 2.002"]
    # An offer alone is not SMB1 in use: no server response was captured.
    assert fields["smb1"] is False


def test_rdp_cookie_and_protocols():
    payload = b"Cookie: mstshash=nurse01\r\n" + b"\x01\x00\x08\x00\x03\x00\x00\x00"  # RDP_NEG_REQ: ssl|hybrid
    x224 = bytes([6 + len(payload), 0xE0, 0, 0, 0, 0, 0]) + payload  # LI, CR, dst ref, src ref, class
    tpkt = b"\x03\x00" + struct.pack(">H", 4 + len(x224)) + x224
    confirm = b"\x03\x00\x00\x13\x0e\xd0\x00\x00\x12\x34\x00" + b"\x02\x00\x08\x00\x02\x00\x00\x00"  # NEG_RSP hybrid
    fields, outcome = parse_streams("rdp", tpkt, confirm)
    assert outcome == "ok"
    assert fields["cookie"] == "nurse01"
    assert fields["requested_protocols"] == ["ssl", "hybrid"]
    assert fields["selected_protocol"] == "hybrid"

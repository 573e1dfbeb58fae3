"""Inspection of real captures through the engine's reader, decoder and flow table.

Expected values come from the captures' upstream test expectations
(suricata-verify test.yaml, the capture manifest) and from tshark's
dissectors, never from this code.
"""

import json
import re
import subprocess

import dpkt
import pytest
import yaml

from conftest import require_tool
from engine.inspect.inspector import Inspector
from engine.inspect.pipeline import analyse, iter_inspections
from test_inspect_protocols import DICOM_INITIATOR, DICOM_RESPONDER, HL7_ADT, HL7_ACK, STUDY_MOVE, CT_STORAGE


def inspect(path, protocol=None):
    results = list(iter_inspections(str(path), Inspector(capacity=256)))
    if protocol:
        results = [r for r in results if r.protocol == protocol]
    return results


def tshark_fields(path, fields, display_filter=None, extra=()):
    tshark = require_tool("tshark")
    command = [tshark, "-r", str(path), "-T", "fields", "-E", "aggregator=\x1f", *extra]
    for field in fields:
        command += ["-e", field]
    if display_filter:
        command += ["-Y", display_filter]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split("\t") for line in output.splitlines()]


def answer_key(shared_pcaps, name):
    with open(shared_pcaps / "expected" / name / "test.yaml") as handle:
        return [check["filter"]["match"] for check in yaml.safe_load(handle)["checks"] if "filter" in check]


# --- HL7 -------------------------------------------------------------------------

def test_hl7_msh_matches_tshark(shared_pcaps):
    path = shared_pcaps / "ndpi-hl7.pcap"
    (result,) = inspect(path, "hl7")
    assert (result.responder_port, result.initiator_port) == (6661, 49242)  # MANIFEST: 10.0.0.155:49242 -> :6661
    rows = tshark_fields(path, ["hl7.segment"], "hl7", ["-d", "tcp.port==6661,hl7"])
    # tshark shows each segment's closing carriage return as the two characters "\\r".
    tshark_msh = [row[0].split("\x1f")[0].removesuffix("\\r").split("|") for row in rows]
    assert len(result.fields["messages"]) == len(tshark_msh) == 2
    for message, msh in zip(result.fields["messages"], tshark_msh):
        # tshark keeps MSH-1 as the split point, so MSH-n is at index n - 1.
        assert message["sending_application"] == msh[2]
        assert message["sending_facility"] == msh[3]
        assert message["receiving_application"] == msh[4]
        assert message["receiving_facility"] == msh[5]
        assert message["message_type"] == msh[8]
        assert message["control_id"] == msh[9]
        assert message["version"] == msh[11]
    assert result.fields["messages"][1]["ack_code"] == "AA"


def test_hl7_patient_names_never_output(shared_pcaps, tmp_path):
    from engine.assets.inventory import Inventory
    from engine.store import open_store

    conn = open_store(tmp_path / "store.db")
    inventory = Inventory(conn)
    output = analyse(iter_inspections(str(shared_pcaps / "ndpi-hl7.pcap")), inventory=inventory)
    assert any(a.category == "cleartext_patient_data" for a in output.alerts)
    text = json.dumps({
        "fields": [r.fields for r in output.results],
        "alerts": [a.to_dict() for a in output.alerts],
        "logins": [vars(login) for login in output.logins],
        "assets": inventory.assets(),
    }, default=str)
    # PID-5 name, PID-3 id, PID-7 birth date and NK1-2 name in this capture.
    for secret in ("MOUSE", "MICKEY", "MINNIE", "135769", "19281118", "notdisney"):
        assert secret not in text


# --- MQTT -------------------------------------------------------------------------

def test_mqtt311_userpass_answer_key(shared_pcaps):
    (result,) = inspect(shared_pcaps / "sv-mqtt311-pub-userpass.pcap", "mqtt")
    # MANIFEST expected facts: client_id, clean_session and password flags, return code 0.
    assert result.fields["client_id"] == "myvoiceismypassport"
    assert result.fields["clean_session"] is True
    assert result.fields["password_present"] is True
    assert result.fields["connack_code"] == 0
    assert result.fields["published_topics"] == ["topicX"]
    assert [login.outcome for login in result.logins] == ["success"]
    assert "baabaablacksheep" not in repr(result.fields)


def test_mqtt5_jpeg_answer_key(shared_pcaps):
    (result,) = inspect(shared_pcaps / "sv-mqtt5-pub-jpeg.pcap", "mqtt")
    assert result.fields["protocol_version"] == 5
    assert result.fields["client_id"] == ""
    assert result.fields["connack_code"] == 0
    assert result.fields["published_topics"] == ["topicX"]
    assert result.outcome == "truncated"  # the JPEG PUBLISH is longer than the stream cap


def test_mqtt_client_ids_and_topics_match_tshark(shared_pcaps):
    path = shared_pcaps / "zeek-mqtt.pcap"
    results = inspect(path, "mqtt")
    rows = tshark_fields(path, ["mqtt.clientid", "mqtt.topic"], "mqtt")
    tshark_clients = sorted({row[0] for row in rows if row[0]})
    tshark_topics = sorted({topic for row in rows for topic in row[1].split("\x1f") if topic})
    assert sorted(r.fields["client_id"] for r in results) == tshark_clients
    topics = {t for r in results for t in r.fields["published_topics"] + r.fields["subscribed_topics"]}
    assert sorted(topics) == tshark_topics


# --- LDAP, Telnet, RDP, FTP ---------------------------------------------------------

def test_ldap_binds_match_tshark(shared_pcaps):
    path = shared_pcaps / "zeek-ldap-simpleauth.pcap"
    (result,) = inspect(path, "ldap")
    names = [row[0] for row in tshark_fields(path, ["ldap.name"], "ldap.protocolOp == 0")]
    codes = [int(row[0]) for row in tshark_fields(path, ["ldap.resultCode"], "ldap.protocolOp == 1")]
    assert [b["bind_dn"] for b in result.fields["binds"]] == names
    assert [r["result_code"] for r in result.fields["bind_results"]] == codes
    assert all(b["auth"] == "simple" for b in result.fields["binds"])
    assert [login.outcome for login in result.logins] == ["success", "success"]


def test_telnet_login_user_and_outcome(shared_pcaps):
    (result,) = inspect(shared_pcaps / "sv-telnet.pcap", "telnet")
    assert result.responder_port == 23
    assert result.fields["banner"] == "OpenBSD/i386 (oof) (ttyp2)"
    (login,) = result.logins
    assert login.user == "fake"  # typed after "login:" in this capture
    assert login.outcome == "success"  # the server printed "Last login"
    assert "user" not in repr(result.fields)  # the password typed in this capture


def test_rdp_cookie_answer_key(shared_pcaps):
    key = answer_key(shared_pcaps, "sv-rdp-003.pcap")
    cookie = next(m["rdp.cookie"] for m in key if "rdp.cookie" in m)
    connect = next(m for m in key if m.get("rdp.event_type") == "connect_request")
    (result,) = inspect(shared_pcaps / "sv-rdp-003.pcap", "rdp")
    assert result.fields["cookie"] == cookie == "A70067"
    assert result.fields["client_build"] == connect["rdp.client.build"]
    assert result.fields["client_name"] == connect["rdp.client.client_name"]
    assert result.fields["channels"][:2] == [connect["rdp.channels[0]"], connect["rdp.channels[1]"]]
    assert result.logins[0].user == "A70067"


def test_ftp_failed_logins_match_tshark(shared_pcaps):
    path = shared_pcaps / "zeek-ftp-bruteforce.pcap"
    failures = sum(1 for r in inspect(path, "ftp") for login in r.logins if login.outcome == "failure")
    rows = tshark_fields(path, ["frame.number"], "ftp.response.code == 530")
    assert failures == len(rows) == 30


# --- TLS and DNS ------------------------------------------------------------------------

def test_tls_sni_and_version_answer_key(shared_pcaps):
    key = [m for m in answer_key(shared_pcaps, "sv-community-id-ipv6.pcap") if m.get("event_type") == "tls"]
    results = {r.initiator_port: r for r in inspect(shared_pcaps / "sv-community-id-ipv6.pcap", "tls")}
    assert len(key) == 2
    for match in key:
        result = results[match["src_port"]]
        assert result.fields["sni"] == match["tls.sni"]
        assert result.fields["version"] == match["tls.version"]
        assert result.responder_port == match["dest_port"]


def test_tls_sni_matches_tshark(shared_pcaps):
    path = shared_pcaps / "sv-community-id-ipv6.pcap"
    rows = tshark_fields(path, ["tls.handshake.extensions_server_name"], "tls.handshake.type == 1")
    assert sorted(r.fields["sni"] for r in inspect(path, "tls")) == sorted(row[0] for row in rows)


def test_tls_glupteba_sslv2_hello(shared_pcaps):
    key = [m for m in answer_key(shared_pcaps, "sv-tls-glupteba.pcap") if m.get("event_type") == "tls"]
    (result,) = inspect(shared_pcaps / "sv-tls-glupteba.pcap", "tls")
    assert (result.initiator_ip, result.initiator_port) == (key[0]["src_ip"], key[0]["src_port"])
    assert result.responder_port == key[0]["dest_port"]
    assert result.fields["client_hello_format"] == "sslv2"
    assert result.fields["version"] == "TLS 1.0"
    rows = tshark_fields(shared_pcaps / "sv-tls-glupteba.pcap", ["tls.handshake.ciphersuite"], "tls.handshake.type == 2")
    assert result.fields["cipher_suite"] == int(rows[0][0], 16)


def test_dns_names_match_tshark(shared_pcaps):
    path = shared_pcaps / "ndpi-dns-exfiltration.pcap"
    (result,) = inspect(path, "dns")
    rows = tshark_fields(path, ["dns.qry.name"], "dns.flags.response == 0")
    tshark_names = list(dict.fromkeys(row[0] for row in rows))
    assert result.fields["names"] == tshark_names[: len(result.fields["names"])]
    assert len(result.fields["names"]) == 16
    assert all(q["qtype"] in ("MX", "CNAME", "TXT", "A") for q in result.fields["queries"])


# --- DICOM: a written capture checked against tshark ----------------------------------------

def write_tcp_session(path, exchanges, client_port=40001, server_port=104):
    """Write one TCP connection carrying (direction, bytes) exchanges as a pcap."""
    client, server = b"\x0a\x00\x00\x05", b"\x0a\x00\x00\x09"
    seq = {0: 1000, 1: 5000}
    packets = []

    def segment(direction, flags, payload=b""):
        src, dst = (client, server) if direction == 0 else (server, client)
        sport, dport = (client_port, server_port) if direction == 0 else (server_port, client_port)
        tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq[direction], ack=seq[1 - direction],
                           flags=flags, win=65535, data=payload)
        ip = dpkt.ip.IP(src=src, dst=dst, p=6, ttl=64, data=tcp)
        ip.len = 20 + len(bytes(tcp))
        eth = dpkt.ethernet.Ethernet(src=b"\x00\x01\x02\x03\x04\x05", dst=b"\x00\x01\x02\x03\x04\x06",
                                     type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
        packets.append(bytes(eth))
        seq[direction] += len(payload) + (1 if flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN) else 0)

    segment(0, dpkt.tcp.TH_SYN)
    segment(1, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)
    segment(0, dpkt.tcp.TH_ACK)
    for direction, payload in exchanges:
        for start in range(0, len(payload), 1000):
            segment(direction, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, payload[start:start + 1000])
    segment(0, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
    segment(1, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
    with open(path, "wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        for index, frame in enumerate(packets):
            writer.writepkt(frame, ts=1_700_000_000 + index * 0.001)


def test_dicom_capture_matches_tshark(tmp_path):
    path = tmp_path / "dicom.pcap"
    write_tcp_session(path, [(0, DICOM_INITIATOR), (1, DICOM_RESPONDER)])
    (result,) = inspect(path, "dicom")
    rows = tshark_fields(path, ["dicom.assoc.ae.called", "dicom.assoc.ae.calling", "dicom.pctx.abss.syntax"],
                         "dicom.pdu.type == 1", ["-d", "tcp.port==104,dicom"])
    called, calling, syntaxes = rows[0]
    # tshark names known UIDs as "CT Image Storage (1.2.840...)".
    tshark_uids = [re.sub(r"^.*\((.*)\)$", r"\1", syntax) for syntax in syntaxes.split("\x1f")]
    assert result.fields["called_ae"] == called.strip()
    assert result.fields["calling_ae"] == calling.strip()
    assert [c["abstract_syntax"] for c in result.fields["presentation_contexts"]] == tshark_uids
    assert [c["abstract_syntax"] for c in result.fields["presentation_contexts"]] == [CT_STORAGE, STUDY_MOVE]
    assert [c["command"] for c in result.fields["commands"]] == ["C-MOVE-RQ", "C-MOVE-RSP"]


def test_hl7_capture_on_odd_port(tmp_path):
    path = tmp_path / "hl7.pcap"
    write_tcp_session(path, [(0, HL7_ADT), (1, HL7_ACK)], server_port=7777)
    (result,) = inspect(path, "hl7")
    assert result.fields["messages"][0]["sending_application"] == "ADT1"
    assert result.fields["messages"][1]["ack_code"] == "AE"


def test_simulator_dicom_and_hl7_round_trip(tmp_path):
    dicom = pytest.importorskip("engine.simulate.protocols.dicom")
    hl7 = pytest.importorskip("engine.simulate.protocols.hl7")
    request = dicom.associate_rq("ARCHIVE", "US_ROOM2", [CT_STORAGE, STUDY_MOVE])
    accept = dicom.associate_ac("ARCHIVE", "US_ROOM2", 2)
    message = hl7.frame([hl7.msh("EPIC", "PACS_ROUTER", 1_700_000_000, "ORM^O01", "CTRL42")])
    write_tcp_session(tmp_path / "dicom.pcap", [(0, request), (1, accept)], server_port=11112)
    write_tcp_session(tmp_path / "hl7.pcap", [(0, message)], server_port=2575)
    (association,) = inspect(tmp_path / "dicom.pcap", "dicom")
    assert association.fields["called_ae"] == "ARCHIVE"
    assert association.fields["calling_ae"] == "US_ROOM2"
    assert [c["abstract_syntax"] for c in association.fields["presentation_contexts"]] == [CT_STORAGE, STUDY_MOVE]
    assert association.fields["association"] == "accepted"
    (hl7_flow,) = inspect(tmp_path / "hl7.pcap", "hl7")
    written = hl7_flow.fields["messages"][0]
    assert (written["sending_application"], written["receiving_application"]) == ("EPIC", "PACS_ROUTER")
    assert (written["sending_facility"], written["receiving_facility"]) == ("RAFIDAIN", "RAFIDAIN")
    assert (written["message_type"], written["control_id"], written["version"]) == ("ORM^O01", "CTRL42", "2.5")


@pytest.mark.parametrize("name", ["sv-rdp-003.pcap", "zeek-ldap-simpleauth.pcap", "sv-telnet.pcap",
                                  "ndpi-dns-exfiltration.pcap", "sv-mqtt311-pub-userpass.pcap"])
def test_engine_pipeline_matches_dpkt_feeder(shared_pcaps, name):
    # The dpkt feeder builds packet records independently of the compiled
    # reader, decoder and flow table; both must give the same streams.
    from engine.inspect.pipeline import iter_inspections_dpkt

    def by_endpoints(results):
        return {(r.initiator_ip, r.initiator_port, r.responder_ip, r.responder_port): r
                for r in results if r.protocol}

    engine_results = by_endpoints(iter_inspections(str(shared_pcaps / name)))
    dpkt_results = by_endpoints(iter_inspections_dpkt(str(shared_pcaps / name)))
    assert engine_results.keys() == dpkt_results.keys()
    for key, result in engine_results.items():
        assert result.protocol == dpkt_results[key].protocol
        assert result.fields == dpkt_results[key].fields


def test_kerberos_capture_matches_tshark(tmp_path):
    # No shared capture carries Kerberos, so the simulator's builders make one.
    kerberos = pytest.importorskip("engine.simulate.protocols.kerberos")
    numpy = pytest.importorskip("numpy")
    rng = numpy.random.default_rng(3)
    request = kerberos.as_req(rng, "HOSP.ORG", "jsmith", 1_700_000_000.0, True)
    error = kerberos.krb_error("HOSP.ORG", 24, 1_700_000_000.0, "jsmith")
    path = tmp_path / "kerberos.pcap"
    # RFC 4120 7.2.2: over TCP each message is preceded by its 4-byte length.
    write_tcp_session(path, [(0, len(request).to_bytes(4, "big") + request),
                             (1, len(error).to_bytes(4, "big") + error)], server_port=88)
    (result,) = inspect(path, "kerberos")
    rows = tshark_fields(path, ["kerberos.CNameString", "kerberos.realm", "kerberos.error_code"], "kerberos")
    request_row = next(row for row in rows if row[0])
    error_row = next(row for row in rows if row[2])
    assert result.fields["requests"][0]["client"] == request_row[0] == "jsmith"
    assert result.fields["requests"][0]["realm"] == request_row[1].split("\x1f")[0]
    assert result.fields["errors"][0]["error_code"] == int(error_row[2]) == 24
    assert result.fields["errors"][0]["error"] == "KDC_ERR_PREAUTH_FAILED"
    (login,) = result.logins
    assert (login.user, login.domain, login.outcome) == ("jsmith", "HOSP.ORG", "failure")


def test_bare_hl7_on_syn_packets(shared_pcaps):
    # Each packet of this crafted capture is a SYN carrying one unframed HL7 message.
    results = inspect(shared_pcaps / "mpa-synthetic-hl7-alerts.pcap")
    rows = tshark_fields(shared_pcaps / "mpa-synthetic-hl7-alerts.pcap",
                         ["ip.src", "tcp.srcport", "ip.dst", "tcp.dstport"], "tcp.len > 0")
    assert len(results) == len({tuple(row) for row in rows}) == 55  # two packets share one connection
    for result in results:
        assert result.protocol == "hl7"
        assert result.fields["framing"] == "none"
        assert result.fields["messages"][0]["message_type"]

"""EVE/ECS JSON lines and CEF over syslog, checked field by field on loopback listeners."""

import json
import re
import socket
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from engine import __version__
from engine.alerts.config import AlertConfig
from engine.alerts.outputs import cef_message, eve_record, syslog_frame
from engine.alerts.schema import Alert, Contribution, Endpoint
from engine.alerts.sink import AlertSink


def sample_alert():
    return Alert(
        category="bruteforce", severity="high", summary="SSH password guessing | 40 tries",
        technique="T1110.001", first_seen=1700000000.25, last_seen=1700000060.5,
        src=Endpoint("10.0.0.5", 40000, "00:11:22:33:44:55"), dst=Endpoint("10.0.0.20", 22),
        protocol="tcp", community_id="1:LQU9qZlK+B5F3KDmev6m5PMibrg=", flow_ids=[77, 78],
        count=40, model_class="ssh_bruteforce", model_score=0.97,
        top_features=[Contribution("syn_rate_per_s", 12.0, 0.8)],
        recommended_action="Block 10.0.0.5=attacker", seq=12, revision=3, sensor_id="ward-3",
    )


def test_eve_suricata_fields():
    record = eve_record(sample_alert())
    assert record["event_type"] == "alert"
    assert record["timestamp"] == "2023-11-14T22:14:20.500000+0000"
    assert record["src_ip"] == "10.0.0.5"
    assert record["src_port"] == 40000
    assert record["dest_ip"] == "10.0.0.20"
    assert record["dest_port"] == 22
    assert record["proto"] == "TCP"
    assert record["community_id"] == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    assert record["flow_id"] == 77
    assert record["alert"]["signature"] == "SSH password guessing | 40 tries"
    assert record["alert"]["category"] == "bruteforce"
    assert record["alert"]["severity"] == 1
    assert record["alert"]["rev"] == 3


def test_eve_ecs_fields():
    record = eve_record(sample_alert())
    assert record["ecs"] == {"version": "8.11.0"}
    assert record["@timestamp"] == "2023-11-14T22:14:20.500000Z"
    assert record["event"]["kind"] == "alert"
    assert record["event"]["category"] == ["network", "intrusion_detection"]
    assert record["event"]["severity"] == 3
    assert record["event"]["start"] == "2023-11-14T22:13:20.250000Z"
    assert record["event"]["count"] == 40
    assert record["source"] == {"ip": "10.0.0.5", "port": 40000, "mac": "00:11:22:33:44:55"}
    assert record["destination"] == {"ip": "10.0.0.20", "port": 22}
    assert record["network"] == {"transport": "tcp", "community_id": "1:LQU9qZlK+B5F3KDmev6m5PMibrg="}
    assert record["threat"]["framework"] == "MITRE ATT&CK"
    assert record["threat"]["technique"]["id"] == ["T1110.001"]
    assert record["threat"]["technique"]["name"] == ["Brute Force: Password Guessing"]
    assert record["threat"]["tactic"]["name"] == ["credential-access"]
    assert record["observer"]["name"] == "ward-3"
    assert record["wardwatch"]["seq"] == 12
    assert record["wardwatch"]["top_features"] == [{"name": "syn_rate_per_s", "value": 12.0, "contribution": 0.8}]


def test_eve_file_one_line_each(tmp_path):
    path = tmp_path / "eve.json"
    config = AlertConfig(sensor_id="ward-3", bus_endpoint=None, replay_endpoint=None, eve_path=str(path))
    with AlertSink(tmp_path / "s.db", config) as sink:
        sink.publish(sample_alert())
        sink.publish(sample_alert())
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert [json.loads(line)["wardwatch"]["seq"] for line in lines] == [1, 2]


def parse_cef(text):
    """Split CEF into its 7 header fields and the extension map (slow reference parser)."""
    header, index = [], 0
    field = ""
    while len(header) < 7:
        character = text[index]
        if character == "\\" and text[index + 1] in "\\|":
            field += text[index + 1]
            index += 2
            continue
        if character == "|":
            header.append(field)
            field = ""
        else:
            field += character
        index += 1
    extensions = {}
    for match in re.finditer(r"(\w+)=((?:\\.|[^\\=])*?)(?= \w+=|$)", text[index:]):
        value = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), match.group(2))
        extensions[match.group(1)] = value
    return header, extensions


def test_cef_fields():
    header, extensions = parse_cef(cef_message(sample_alert()))
    assert header == ["CEF:0", "WardWatch", "WardWatch", __version__, "bruteforce",
                      "SSH password guessing | 40 tries", "8"]
    assert extensions["src"] == "10.0.0.5"
    assert extensions["spt"] == "40000"
    assert extensions["dst"] == "10.0.0.20"
    assert extensions["dpt"] == "22"
    assert extensions["smac"] == "00:11:22:33:44:55"
    assert extensions["proto"] == "TCP"
    assert extensions["cnt"] == "40"
    assert extensions["rt"] == "1700000060500"
    assert extensions["start"] == "1700000000250"
    assert extensions["cs1Label"] == "mitreTechniqueId"
    assert extensions["cs1"] == "T1110.001"
    assert extensions["cs3"] == "Block 10.0.0.5=attacker"
    assert extensions["cn1"] == "12"
    assert extensions["dvchost"] == "ward-3"


def test_cef_ipv6_custom_fields():
    alert = sample_alert()
    alert.src.ip = "2001:db8::5"
    _, extensions = parse_cef(cef_message(alert))
    assert "src" not in extensions
    assert extensions["c6a2"] == "2001:db8::5"
    assert extensions["dst"] == "10.0.0.20"


def test_syslog_rfc5424_header():
    frame = syslog_frame("CEF:0|x", "high", 16, "rfc5424", "ward-3", timestamp=1700000000.5).decode()
    # PRI = local0 (16) * 8 + err (3) = 131.
    assert frame == "<131>1 2023-11-14T22:13:20.500Z ward-3 wardwatch - alert - CEF:0|x"


def test_syslog_rfc3164_header():
    frame = syslog_frame("CEF:0|x", "info", 4, "rfc3164", "ward-3", timestamp=1700000000.5).decode()
    # PRI = auth (4) * 8 + info (6) = 38; the day is space-padded.
    assert frame == "<38>Nov 14 22:13:20 ward-3 wardwatch: CEF:0|x"


def test_cef_over_udp():
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]
    config = AlertConfig(sensor_id="ward-3", bus_endpoint=None, replay_endpoint=None,
                         cef_target=f"udp://127.0.0.1:{port}")
    try:
        with AlertSink(":memory:", config) as sink:
            sink.publish(sample_alert())
        datagram = listener.recv(65535).decode()
    finally:
        listener.close()
    assert datagram.startswith("<131>1 ")
    _, _, message = datagram.partition(" alert - ")
    header, extensions = parse_cef(message)
    assert header[4] == "bruteforce"
    assert extensions["cn1"] == "1"


def read_octet_counted(connection, count):
    """Read `count` RFC 6587 octet-counted frames."""
    buffer, frames = b"", []
    while len(frames) < count:
        chunk = connection.recv(65535)
        if not chunk:
            break
        buffer += chunk
        while b" " in buffer:
            length_text, _, rest = buffer.partition(b" ")
            length = int(length_text)
            if len(rest) < length:
                break
            frames.append(rest[:length])
            buffer = rest[length:]
    return frames


def test_cef_over_tcp_octet_counting():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(5)
    port = listener.getsockname()[1]
    frames = []

    def accept():
        connection, _ = listener.accept()
        connection.settimeout(5)
        frames.extend(read_octet_counted(connection, 3))
        connection.close()

    thread = threading.Thread(target=accept)
    thread.start()
    config = AlertConfig(sensor_id="ward-3", bus_endpoint=None, replay_endpoint=None,
                         cef_target=f"tcp://127.0.0.1:{port}", cef_format="rfc3164")
    with AlertSink(":memory:", config) as sink:
        for _ in range(3):
            sink.publish(sample_alert())
        sent = sink.stats()["cef_sent"]
    thread.join(10)
    listener.close()
    assert sent == 3
    assert len(frames) == 3
    for seq, frame in enumerate(frames, start=1):
        text = frame.decode()
        assert text.startswith("<131>")
        _, extensions = parse_cef(text[text.index("CEF:0"):])
        assert extensions["cn1"] == str(seq)


def test_cef_unreachable_counts_drop():
    # Nothing listens on this port, so the TCP connect is refused.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    config = AlertConfig(sensor_id="ward-3", bus_endpoint=None, replay_endpoint=None,
                         cef_target=f"tcp://127.0.0.1:{port}")
    with AlertSink(":memory:", config) as sink:
        sink.publish(sample_alert())
        stats = sink.stats()
    assert stats["published"] == 1
    assert stats["cef_dropped"] == 1
    assert stats["cef_connect_failed"] == 1


def test_syslog_hostname_sanitized():
    frame = syslog_frame("m", "low", 16, "rfc5424", "ward 3 é", timestamp=0.0).decode()
    assert frame == "<133>1 1970-01-01T00:00:00.000Z ward3 wardwatch - alert - m"


CEF_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x85\u2028\u2029")
                   | st.sampled_from(["|", "\\", "=", "\n", "\r", " "]), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(summary=CEF_TEXT, action=CEF_TEXT)
def test_cef_escaping_round_trip(summary, action):
    alert = sample_alert()
    alert.summary = summary
    alert.recommended_action = action
    header, extensions = parse_cef(cef_message(alert))
    # Header fields turn line breaks into spaces; extension values keep them.
    assert header[5] == summary.replace("\r", " ").replace("\n", " ")
    assert extensions["msg"] == summary
    assert extensions["cs3"] == action
    assert extensions["cn1"] == "12"

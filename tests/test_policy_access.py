"""Policy file, zones, access baseline alerts and passive vulnerability findings."""

import pytest

from engine.inspect.pipeline import analyse, iter_inspections
from engine.inspect.records import FlowInspection
from engine.policy.access import AccessMonitor
from engine.policy.config import Policy, PolicyError, load_policy, parse_policy
from engine.policy.findings import findings_for, match_banner, version_tuple
from engine.policy.zones import ZoneMap
from engine.store import open_store

POLICY_TOML = """
learning_period_s = 0

[zones]
clinical = ["10.10.0.0/16"]
it = ["10.20.0.0/16"]

[[assets]]
ip = "10.10.1.5"
role = "pacs"
allowed_peers = ["10.10.2.0/24"]
allowed_calling_ae = ["CT01"]
allowed_move_destinations = ["WS01"]

[hl7]
registered_senders = ["10.10.4.2"]
"""


def flow(protocol, initiator_ip, responder_ip, fields, ts=1000.0, port=104):
    return FlowInspection(
        flow_id=7, protocol=protocol, transport="tcp", initiator_ip=initiator_ip, responder_ip=responder_ip,
        initiator_port=50000, responder_port=port, initiator_mac="", responder_mac="",
        first_seen=ts, last_seen=ts + 1, initiator_packets=3, responder_packets=3,
        initiator_bytes=100, responder_bytes=100, fields=fields,
    )


def rules(alerts):
    # A flow gets one policy alert that lists every rule it broke.
    assert len(alerts) <= 1
    return sorted(rule for alert in alerts for rule in alert.evidence.get("rules", [alert.category]))


@pytest.fixture
def policy(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(POLICY_TOML)
    return load_policy(str(path))


def test_policy_file_parsed(policy):
    assert policy.learning_period_s == 0
    assert str(policy.zones["clinical"][0]) == "10.10.0.0/16"
    assert policy.assets["10.10.1.5"].allowed_calling_ae == ["CT01"]
    assert str(policy.registered_hl7_senders[0]) == "10.10.4.2/32"


@pytest.mark.parametrize("data, message", [
    ({"zones": {"a": ["10.0.0.0/33"]}}, "invalid address or network"),
    ({"assets": [{"role": "pacs"}]}, "has no ip"),
    ({"assets": [{"ip": "10.0.0.1", "role": "toaster"}]}, "invalid assets[0].role"),
    ({"learning_period_s": -1}, "learning_period_s"),
    ({"zone": {}}, "unknown policy keys"),
])
def test_policy_errors_name_value(data, message):
    with pytest.raises(PolicyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_policy(data)


def test_missing_policy_file(tmp_path):
    with pytest.raises(PolicyError, match="not found"):
        load_policy(str(tmp_path / "absent.toml"))


def test_zone_map_defaults_and_named_zones(policy):
    zones = ZoneMap(policy.zones)
    assert zones.zone_of("10.10.3.3") == "clinical"
    assert zones.zone_of("10.20.0.1") == "it"
    assert zones.zone_of("192.168.1.1") == "internal"
    assert zones.zone_of("8.8.8.8") == "internet"
    assert zones.crosses("10.10.3.3", "10.20.0.1")
    assert zones.leaves_site("10.10.3.3", "8.8.8.8")


def test_policy_file_rules(policy):
    monitor = AccessMonitor(policy)
    allowed = flow("dicom", "10.10.2.9", "10.10.1.5", {"calling_ae": "CT01", "called_ae": "PACS1"})
    assert monitor.observe(allowed) == []
    stranger = flow("dicom", "10.20.0.8", "10.10.1.5", {
        "calling_ae": "ROGUE", "called_ae": "PACS1",
        "commands": [{"command": "C-MOVE-RQ", "move_destination": "EXFIL", "direction": 0}],
    })
    alerts = monitor.observe(stranger)
    assert rules(alerts) == ["new_peer", "unknown_calling_ae", "unknown_move_destination"]
    assert all(a.kind == "policy" and a.category == "policy_violation" for a in alerts)


def test_hl7_unregistered_sender(policy):
    monitor = AccessMonitor(policy)
    message = {"direction": 0, "sending_application": "X", "sending_facility": "Y", "message_type": "ORU^R01"}
    registered = flow("hl7", "10.10.4.2", "10.10.9.9", {"messages": [message]}, port=2575)
    other = flow("hl7", "10.10.4.3", "10.10.9.9", {"messages": [message]}, port=2575)
    assert "unregistered_hl7_sender" not in rules(monitor.observe(registered))
    alerts = monitor.observe(other)
    assert "unregistered_hl7_sender" in rules(alerts)
    assert alerts[0].evidence["rule"] == "unregistered_hl7_sender"
    assert alerts[0].technique == "T1565.002"


def test_clinical_protocol_to_internet(policy):
    alerts = AccessMonitor(policy).observe(flow("dicom", "10.10.2.9", "203.0.113.50", {}))
    assert "clinical_to_internet" in rules(alerts)


def test_baseline_learns_then_alerts(tmp_path):
    conn = open_store(tmp_path / "store.db")
    monitor = AccessMonitor(Policy(learning_period_s=3600), conn=conn)
    learnt = flow("dicom", "10.0.0.20", "10.0.0.5", {"calling_ae": "CT01"}, ts=1000.0)
    assert monitor.observe(learnt) == []  # inside the learning period
    assert monitor.observe(flow("dicom", "10.0.0.20", "10.0.0.5", {"calling_ae": "CT01"}, ts=9000.0)) == []
    new = flow("dicom", "10.0.0.66", "10.0.0.5", {"calling_ae": "MR07"}, ts=9000.0)
    assert rules(monitor.observe(new)) == ["new_peer", "unknown_calling_ae"]
    # A restarted sensor reads the baseline and the learning start from the store.
    restarted = AccessMonitor(Policy(learning_period_s=3600), conn=conn)
    assert restarted.learning_started_at == 1000.0
    assert rules(restarted.observe(new)) == ["new_peer", "unknown_calling_ae"]


# --- findings ---------------------------------------------------------------------

def test_version_tuple_orders_letters():
    assert version_tuple("1.0.1f") < version_tuple("1.0.1g")
    assert version_tuple("7.4p1") == (7, 4, 1)


@pytest.mark.parametrize("banner, cves", [
    ("SSH-2.0-OpenSSH_7.4", ["CVE-2018-15473"]),
    ("SSH-2.0-OpenSSH_9.8p1", []),
    ("SSH-2.0-OpenSSH_8.9p1 Ubuntu-3", ["CVE-2024-6387"]),
    ("vsFTPd 2.3.4", ["CVE-2011-2523"]),
    ("Apache/2.4.51 (Unix) OpenSSL/1.0.1g", []),
    ("Apache/2.4.49 (Unix)", ["CVE-2021-41773"]),
])
def test_banner_table_matches(banner, cves):
    assert [entry.cve for entry in match_banner(banner)] == cves


def test_weak_tls_finding_from_capture(shared_pcaps):
    output = analyse(iter_inspections(str(shared_pcaps / "sv-tls-glupteba.pcap")))
    (finding,) = [a for a in output.alerts if a.category == "weak_tls"]
    assert finding.kind == "finding"
    assert "TLS 1.0" in finding.summary


def test_cleartext_credential_findings_from_captures(shared_pcaps):
    for name in ("sv-telnet.pcap", "zeek-ldap-simpleauth.pcap", "sv-mqtt311-pub-userpass.pcap"):
        output = analyse(iter_inspections(str(shared_pcaps / name)))
        assert "cleartext_credentials" in {a.category for a in output.alerts}, name


def test_mqtt_without_auth_finding(shared_pcaps):
    output = analyse(iter_inspections(str(shared_pcaps / "zeek-mqtt.pcap")))
    assert [a.category for a in output.alerts].count("mqtt_no_auth") == 2  # two anonymous CONNECTs


def test_vulnerable_ssh_banner_finding(shared_pcaps):
    output = analyse(iter_inspections(str(shared_pcaps / "sv-vxlan-ssh-aws-mirror.pcap")))
    cves = {a.evidence["cve"] for a in output.alerts if a.category == "vulnerable_software"}
    assert cves == {"CVE-2018-15473"}  # the server announces OpenSSH_7.4


def test_patient_data_severity_by_zone():
    zones = ZoneMap({"clinical": [__import__("ipaddress").ip_network("10.10.0.0/16")]})
    fields = {"patient_data": True, "messages": [{"message_type": "ADT^A01"}]}
    same_zone = findings_for(flow("hl7", "10.10.0.1", "10.10.0.2", fields), zones)
    crossing = findings_for(flow("hl7", "10.10.0.1", "192.168.0.2", fields), zones)
    leaving = findings_for(flow("hl7", "10.10.0.1", "198.51.100.7", fields), zones)
    assert [a.severity for a in same_zone] == ["medium"]
    assert [a.severity for a in crossing] == ["high"]
    assert [a.severity for a in leaving] == ["critical"]


def test_smb1_finding():
    alerts = findings_for(flow("smb", "10.0.0.1", "10.0.0.2", {"smb1": True, "smb1_dialects": ["NT LM 0.12"]}, port=445), ZoneMap())
    assert [a.category for a in alerts] == ["smbv1"]


def test_baseline_bounded_per_asset(monkeypatch):
    from engine.policy import access

    monkeypatch.setattr(access, "MAX_BASELINE_VALUES", 2)
    monitor = AccessMonitor(Policy(learning_period_s=3600))
    for peer in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        monitor.observe(flow("dicom", peer, "10.0.0.5", {}, ts=1000.0))
    assert monitor.baseline[("10.0.0.5", "peer")] == {"10.0.0.1", "10.0.0.2"}
    assert monitor.baseline_full == 1
    assert rules(monitor.observe(flow("dicom", "10.0.0.3", "10.0.0.5", {}, ts=9000.0))) == ["new_peer"]

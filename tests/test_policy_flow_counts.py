"""Access-policy alerts count each flow once, whichever rules it breaks and whatever came before it."""

import subprocess
from collections import Counter

import pytest
from click.testing import CliRunner

from conftest import require_tool
from engine.alerts.store import AlertStore
from engine.cli import main
from engine.inspect.records import FlowInspection
from engine.policy.access import AccessMonitor
from engine.policy.config import parse_policy

HL7_CAPTURE = "mpa-synthetic-hl7-alerts.pcap"  # synthetic HL7 flows, one to 8.8.8.8
EARLIER_CAPTURE = "sv-telnet.pcap"  # stamped years before the HL7 one, so its learning period is over then


def hl7_flow(initiator_ip, responder_ip):
    message = {"direction": 0, "sending_application": "LAB", "sending_facility": "WEST", "message_type": "ORU^R01"}
    return FlowInspection(
        flow_id=11, protocol="hl7", transport="tcp", initiator_ip=initiator_ip, responder_ip=responder_ip,
        initiator_port=50000, responder_port=2575, initiator_mac="", responder_mac="",
        first_seen=1000.0, last_seen=1001.0, initiator_packets=1, responder_packets=0,
        initiator_bytes=120, responder_bytes=0, fields={"messages": [message]},
    )


def test_three_rules_give_one_alert():
    # No learning period and no registered senders: an HL7 flow from a site
    # address to the internet breaks clinical_to_internet (high), new_peer
    # (medium) and unregistered_hl7_sender (high).
    monitor = AccessMonitor(parse_policy({"learning_period_s": 0}))
    alerts = monitor.observe(hl7_flow("192.168.1.40", "8.8.8.8"))
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.evidence["rules"] == ["clinical_to_internet", "new_peer", "unregistered_hl7_sender"]
    assert alert.evidence["rule"] == "clinical_to_internet"
    assert alert.severity == "high"
    assert alert.technique == "T1048"
    assert alert.flow_ids == [11]
    assert alert.evidence["internet_address"] == "8.8.8.8"
    assert alert.evidence["peer"] == "192.168.1.40"
    assert "new_peer, unregistered_hl7_sender" in alert.summary


def test_one_rule_alert_lists_it():
    monitor = AccessMonitor(parse_policy({"learning_period_s": 0, "hl7": {"registered_senders": ["192.168.1.20"]}}))
    alerts = monitor.observe(hl7_flow("192.168.1.20", "192.168.1.10"))
    assert len(alerts) == 1
    assert alerts[0].evidence["rules"] == ["new_peer"]
    assert alerts[0].severity == "medium"


def tshark_tcp_conversations(path):
    """Count TCP conversations per (initiator, responder) address pair, in either order, with tshark."""
    tshark = require_tool("tshark")
    output = subprocess.run(
        [tshark, "-r", str(path), "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "tcp.stream"],
        capture_output=True, text=True, check=True,
    ).stdout
    pairs_by_stream = {}
    for line in output.splitlines():
        src, dst, stream = line.split("\t")
        pairs_by_stream.setdefault(stream, frozenset((src, dst)))
    return Counter(pairs_by_stream.values())


def policy_counts(store_path):
    """Return {address pair: (count, flow ids)} of the policy alerts in a store."""
    store = AlertStore(store_path, read_only=True)
    try:
        alerts = [alert for alert in store.list_alerts() if alert.kind == "policy"]
    finally:
        store.close()
    return {frozenset((alert.src.ip, alert.dst.ip)): (alert.count, alert.flow_ids) for alert in alerts}


def analyze(store_path, *arguments):
    result = CliRunner().invoke(main, ["analyze", "--no-bus", "-q", "--store", str(store_path),
                                       *map(str, arguments)])
    assert result.exit_code == 0, result.output
    return policy_counts(store_path)


@pytest.fixture(scope="module")
def after_earlier_capture(shared_pcaps, tmp_path_factory):
    store = tmp_path_factory.mktemp("policy") / "two.db"
    return analyze(store, shared_pcaps / EARLIER_CAPTURE, shared_pcaps / HL7_CAPTURE)


def test_policy_counts_match_tshark(after_earlier_capture, shared_pcaps):
    conversations = tshark_tcp_conversations(shared_pcaps / HL7_CAPTURE)
    assert after_earlier_capture, "expected policy alerts after the learning period"
    for pair, (count, flow_ids) in after_earlier_capture.items():
        assert count == conversations[pair], sorted(pair)
        assert len(flow_ids) == len(set(flow_ids)), sorted(pair)
    assert after_earlier_capture[frozenset(("192.168.1.40", "8.8.8.8"))][0] == 1
    assert after_earlier_capture[frozenset(("192.168.1.20", "192.168.1.10"))][0] == 52


def test_policy_counts_same_alone(after_earlier_capture, shared_pcaps, tmp_path):
    # Alone, the HL7 capture would still be in its learning period, so a
    # policy without one makes the same rules fire.
    policy = tmp_path / "policy.toml"
    policy.write_text("learning_period_s = 0\n")
    alone = analyze(tmp_path / "one.db", "--policy", policy, shared_pcaps / HL7_CAPTURE)
    assert {pair: count for pair, (count, _) in alone.items()} == \
        {pair: count for pair, (count, _) in after_earlier_capture.items()}

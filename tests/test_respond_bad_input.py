"""Playbook and policy files of the wrong shape or encoding."""

import pytest

from engine.respond.guards import load_policy
from engine.respond.playbook import PlaybookError, load_playbook, parse_playbook

ONE_RULE = [{"name": "r", "categories": ["scan"], "actions": [{"type": "block"}]}]


@pytest.mark.parametrize("settings", [[], "dry_run", 5])
def test_settings_not_table_rejected(settings):
    with pytest.raises(PlaybookError, match=r"\[settings\]: expected a table"):
        parse_playbook({"settings": settings, "rules": ONE_RULE}, "p.toml")


def test_action_not_table_rejected():
    rules = [{"name": "r", "categories": ["scan"], "actions": ["block"]}]
    with pytest.raises(PlaybookError, match="expected a table"):
        parse_playbook({"rules": rules}, "p.toml")


def test_playbook_not_utf8_rejected(tmp_path):
    path = tmp_path / "playbook.toml"
    path.write_bytes(b"\xff\xfe[settings]\n")
    with pytest.raises(PlaybookError, match="invalid TOML"):
        load_playbook(path)


def test_policy_not_utf8_rejected(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_bytes(b"[[asset]]\nip = \"10.0.0.\xff\"\n")
    with pytest.raises(PlaybookError, match="invalid TOML"):
        load_policy(path, ())

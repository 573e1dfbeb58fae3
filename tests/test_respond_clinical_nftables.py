"""The clinical-host guard against real nftables inside a private network namespace.

Each test creates its own namespace and deletes it afterwards. Every nft
command runs inside it, so the host's ruleset is never read or changed.
The alerts mirror the two exfiltration alerts of the shipped sample: the
C-MOVE request from the reading workstation to the PACS, and the PACS
sending the studies to an external archive.
"""

import json
import os
import subprocess
import sys
import time
import tomllib
from contextlib import closing

import pytest

from engine.alerts.config import AlertConfig
from engine.alerts.schema import Alert, Endpoint
from engine.alerts.sink import AlertSink
from engine.assets import inventory
from engine.respond import records
from engine.respond.playbook import parse_playbook
from engine.respond.responder import Responder
from engine.store import open_store
from tests.conftest import REPO_ROOT

EXAMPLE_PLAYBOOK = REPO_ROOT / "engine" / "data" / "playbook.example.toml"
PACS = "10.10.0.17"
READING_WORKSTATION = "10.20.0.13"
EXFIL_SINK = "198.51.100.104"


def blocked_addresses(namespace):
    """Return the elements of inet wardwatch blocked_v4 in the namespace, or None if the set is absent."""
    listed = subprocess.run(["ip", "netns", "exec", namespace, "nft", "-j", "list", "set", "inet", "wardwatch",
                             "blocked_v4"], capture_output=True, text=True, check=False)
    if listed.returncode != 0:
        return None
    elements = []
    for item in json.loads(listed.stdout)["nftables"]:
        for element in item.get("set", {}).get("elem", []):
            elements.append(element["elem"]["val"] if isinstance(element, dict) else element)
    return elements


def move_request():
    return Alert(category="exfiltration", severity="high", summary="C-MOVE of studies to EXT_ARCHIVE",
                 technique="T1048", model_class="dicom_exfil",
                 src=Endpoint(ip=READING_WORKSTATION, port=40000, mac="98:e7:43:4f:00:00"),
                 dst=Endpoint(ip=PACS, port=104, mac="00:1d:4a:47:00:00"))


def store_to_sink():
    return Alert(category="exfiltration", severity="high", summary="C-STORE of studies to an external address",
                 technique="T1048", model_class="dicom_exfil",
                 src=Endpoint(ip=PACS, port=52276, mac="00:1d:4a:47:00:00"),
                 dst=Endpoint(ip=EXFIL_SINK, port=104, mac="ac:71:2e:7f:00:01"))


def dst_rule_playbook(namespace, **rule_settings):
    """Return a playbook whose one rule blocks the destination of every exfiltration alert for a day."""
    return parse_playbook({
        "settings": {"dry_run": False, "max_actions_per_minute": 10},
        "nftables": {"command": ["ip", "netns", "exec", namespace, "nft"]},
        "rules": [{"name": "block-exfiltration-destination", "categories": ["exfiltration"],
                   "actions": [{"type": "block", "subject": "dst", "timeout_s": 86400}], **rule_settings}],
    }, "test-playbook")


@pytest.fixture
def conn(tmp_path):
    with closing(open_store(tmp_path / "responder.db")) as connection:
        # The roles `wardwatch assets` lists for the sample's PACS.
        inventory.ensure_schema(connection)
        connection.execute("INSERT INTO assets (ip, first_seen, last_seen, updated_at) VALUES (?, 0, 0, 0)", (PACS,))
        for role in ("iomt_device", "modality", "pacs"):
            connection.execute("INSERT INTO asset_attributes VALUES (?, 'role', ?, 0, 0)", (PACS, role))
        yield connection


def test_pacs_escalated_not_blocked(netns, conn):
    responder = Responder(dst_rule_playbook(netns), conn, dry_run=False, actor="pytest")
    [escalation] = responder.handle(move_request())
    [block] = responder.handle(store_to_sink())

    assert blocked_addresses(netns) == [EXFIL_SINK]
    assert escalation.status == "escalated"
    assert escalation.subject == PACS
    assert escalation.detail["refused_action"] == "block"
    assert "iomt_device, modality, pacs" in escalation.detail["why"]
    assert block.status == "applied"
    assert block.subject == EXFIL_SINK
    stored = {record.id: record.status for record in records.list_actions(conn)}
    assert stored == {escalation.id: "escalated", block.id: "applied"}


def test_opted_in_rule_blocks_pacs(netns, conn):
    playbook = dst_rule_playbook(netns, allow_clinical_subjects=True)
    responder = Responder(playbook, conn, dry_run=False, actor="pytest")
    [record] = responder.handle(move_request())

    assert record.status == "applied"
    assert record.action == "block"
    assert record.subject == PACS
    assert blocked_addresses(netns) == [PACS]


def test_example_playbook_cli_in_namespace(netns, tmp_path):
    """`wardwatch respond --apply` with the shipped example playbook, on a store without an inventory."""
    example = tomllib.loads(EXAMPLE_PLAYBOOK.read_text())
    # The example's nft command is plain "nft", so running the responder
    # under `ip netns exec` keeps every change inside the namespace.
    assert example["nftables"]["command"] == ["nft"]
    bus = f"ipc://{tmp_path}/bus"
    replay = f"ipc://{tmp_path}/replay"
    store = tmp_path / "responder.db"
    config = AlertConfig(sensor_id="test-sensor", bus_endpoint=bus, replay_endpoint=replay)
    with AlertSink(tmp_path / "sensor.db", config) as sink:
        process = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", "from engine.cli import main; main()",
             "respond", "--playbook", str(EXAMPLE_PLAYBOOK), "--connect", bus, "--replay", replay,
             "--store", str(store), "--apply", "--command-bind", f"ipc://{tmp_path}/commands",
             "--idle-exit-s", "3", "--actor", "pytest-cli"],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            # PUB drops messages sent before the subscriber joins, so repeat
            # until the block is in the set. The responder drops the repeats
            # as duplicates.
            move, store_alert = move_request(), store_to_sink()
            blocked = False
            for _ in range(40):
                sink.publish(move)
                sink.publish(store_alert)
                if EXFIL_SINK in (blocked_addresses(netns) or []):
                    blocked = True
                    break
                time.sleep(0.25)
        finally:
            output, errors = process.communicate(timeout=30)
    assert blocked, errors
    assert process.returncode == 0, errors
    assert "ENFORCING" in errors
    assert blocked_addresses(netns) == [EXFIL_SINK]

    with closing(open_store(store)) as connection:
        by_status = {}
        for record in records.list_actions(connection):
            by_status.setdefault(record.status, []).append(record)
    [block] = by_status["applied"]
    assert block.subject == EXFIL_SINK
    assert block.rule == "block-exfiltration-receiver"
    # The C-MOVE request has no external end (both are internal).
    [escalation] = by_status["escalated"]
    assert escalation.subject is None
    assert "no external receiver" in escalation.detail["why"]
    assert set(by_status) == {"applied", "escalated"}

    listed = subprocess.run([sys.executable, "-c", "from engine.cli import main; main()", "respond", "list",
                             "--store", str(store), "--status", "escalated"],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "block not applied: both ends (10.20.0.13 and 10.10.0.17)" in listed.stdout

"""The responder against a live alert bus and real nftables inside a private network namespace.

Each test creates its own namespace (deleted in teardown) and runs every
nft command inside it, so the host's ruleset is never read or changed.
"""

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import closing

import pytest

from engine.alerts.bus import GapFillingSubscriber
from engine.alerts.config import AlertConfig
from engine.alerts.schema import Alert, Endpoint
from engine.alerts.sink import AlertSink
from engine.respond import records
from engine.respond.guards import load_policy
from engine.respond.playbook import parse_playbook
from engine.respond.responder import Responder, undo_action
from engine.respond.service import run_responder
from engine.store import open_store
from tests.conftest import REPO_ROOT

ATTACKER = "198.51.100.23"
PUMP = "10.30.0.41"  # listed as life-critical in the policy file below
SERVER = "10.10.0.16"


def nft_in(namespace, *arguments):
    return subprocess.run(["ip", "netns", "exec", namespace, "nft", *arguments],
                          capture_output=True, text=True, check=False)


def set_elements(namespace, family, table, name):
    listed = nft_in(namespace, "-j", "list", "set", family, table, name)
    if listed.returncode != 0:
        return None  # the set (or its table) does not exist
    values = []
    for item in json.loads(listed.stdout)["nftables"]:
        for element in item.get("set", {}).get("elem", []):
            values.append(element["elem"]["val"] if isinstance(element, dict) else element)
    return values


def wait_for(predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def make_playbook(namespace, dry_run=False, timeout_s=2):
    return parse_playbook({
        "settings": {"dry_run": dry_run, "max_actions_per_minute": 10, "default_timeout_s": 600},
        "nftables": {"command": ["ip", "netns", "exec", namespace, "nft"]},
        "rules": [{"name": "block-bruteforce", "categories": ["bruteforce"], "min_severity": "high",
                   "actions": [{"type": "block", "timeout_s": timeout_s}]}],
    }, "test-playbook")


def bruteforce_alert(source_ip):
    return Alert(category="bruteforce", severity="high", summary="SSH password guessing",
                 technique="T1110.001", first_seen=100.0, last_seen=101.0,
                 src=Endpoint(ip=source_ip, port=50000), dst=Endpoint(ip=SERVER, port=22))


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(f'[[asset]]\nname = "icu-bed4-pump"\nrole = "infusion_pump"\nip = "{PUMP}"\n')
    return path


class LiveResponder:
    """A sensor-side AlertSink on loopback and a Responder thread subscribed to it."""

    def __init__(self, tmp_path, playbook, policy_path, dry_run):
        config = AlertConfig(sensor_id="test-sensor", bus_endpoint="tcp://127.0.0.1:*",
                             replay_endpoint="tcp://127.0.0.1:*")
        self.sink = AlertSink(tmp_path / "sensor.db", config).open()
        self.store_path = tmp_path / "responder.db"
        self.playbook = playbook
        self.policy = load_policy(policy_path, playbook.life_critical_roles)
        self.dry_run = dry_run
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.errors = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self):
        # SQLite and ZeroMQ objects stay in the thread that uses them.
        conn = open_store(self.store_path)
        # since=0 replays whatever was published before the subscription joined.
        subscriber = GapFillingSubscriber([self.sink.bus_endpoint], replay=[self.sink.replay_endpoint],
                                          since=0, idle_check_s=0.2)
        try:
            responder = Responder(self.playbook, conn, self.policy, dry_run=self.dry_run, actor="pytest")
            self.ready.set()
            run_responder(responder, subscriber, self.stop)
        except Exception as error:  # reported by the fixture's teardown
            self.errors.append(error)
            self.ready.set()
        finally:
            subscriber.close()
            conn.close()

    def actions(self):
        with closing(open_store(self.store_path)) as conn:
            records.ensure_schema(conn)
            return records.list_actions(conn, limit=1000)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)
        self.sink.close(flush=False)


@pytest.fixture
def live(tmp_path, policy_file):
    started = []

    def start(playbook, dry_run):
        runner = LiveResponder(tmp_path, playbook, policy_file, dry_run)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.close()
        assert not runner.errors, runner.errors


def test_block_appears_and_expires(netns, live):
    runner = live(make_playbook(netns, timeout_s=2), dry_run=False)
    runner.sink.publish(bruteforce_alert(ATTACKER))

    assert wait_for(lambda: ATTACKER in (set_elements(netns, "inet", "wardwatch", "blocked_v4") or []), 5)
    applied = [r for r in runner.actions() if r.action == "block"]
    assert len(applied) == 1
    assert applied[0].subject == ATTACKER
    assert applied[0].actor == "pytest"
    assert applied[0].detail["set"] == "blocked_v4"
    assert applied[0].expires_at - applied[0].created_at == pytest.approx(2.0)

    # The kernel drops the element at its timeout; the responder marks the record expired.
    assert wait_for(lambda: ATTACKER not in (set_elements(netns, "inet", "wardwatch", "blocked_v4") or []), 5)
    assert wait_for(lambda: runner.actions()[0].status == "expired", 5)
    assert runner.actions()[0].ended_by == "expiry"


def test_life_critical_source_is_escalated(netns, live):
    runner = live(make_playbook(netns), dry_run=False)
    runner.sink.publish(bruteforce_alert(PUMP))
    runner.sink.publish(bruteforce_alert(ATTACKER))

    # The second alert is handled after the first, so once it is blocked the
    # pump's alert has been decided too.
    assert wait_for(lambda: ATTACKER in (set_elements(netns, "inet", "wardwatch", "blocked_v4") or []), 5)
    assert PUMP not in set_elements(netns, "inet", "wardwatch", "blocked_v4")
    by_subject = {r.subject: r for r in runner.actions()}
    assert by_subject[PUMP].status == "escalated"
    assert by_subject[PUMP].action == "escalate"
    assert by_subject[PUMP].detail["refused_action"] == "block"
    assert "icu-bed4-pump" in by_subject[PUMP].detail["why"]
    assert by_subject[ATTACKER].status == "applied"


def test_dry_run_changes_nothing(netns, live):
    runner = live(make_playbook(netns, dry_run=True), dry_run=True)
    runner.sink.publish(bruteforce_alert(ATTACKER))

    assert wait_for(lambda: len(runner.actions()) == 1, 5)
    record = runner.actions()[0]
    assert record.status == "dry_run"
    assert record.dry_run is True
    assert record.detail["would"] == f"add {ATTACKER} to inet wardwatch blocked_v4"
    listed = nft_in(netns, "-j", "list", "ruleset")
    assert listed.returncode == 0
    objects = [key for item in json.loads(listed.stdout)["nftables"] for key in item if key != "metainfo"]
    assert objects == []


def test_undo_removes_element(netns, tmp_path):
    conn = open_store(tmp_path / "responder.db")
    responder = Responder(make_playbook(netns, timeout_s=600), conn, dry_run=False, actor="pytest")
    [record] = responder.handle(bruteforce_alert(ATTACKER))
    assert record.status == "applied"
    assert set_elements(netns, "inet", "wardwatch", "blocked_v4") == [ATTACKER]

    undone = undo_action(conn, record.id, "pytest-operator")
    assert undone.status == "undone"
    assert set_elements(netns, "inet", "wardwatch", "blocked_v4") == []
    stored = records.get_action(conn, record.id)
    assert stored.status == "undone"
    assert stored.ended_by == "pytest-operator"
    with pytest.raises(ValueError, match="not applied"):
        undo_action(conn, record.id, "pytest-operator")
    conn.close()


def test_isolate_by_mac_in_bridge_set(netns, tmp_path):
    playbook = parse_playbook({
        "nftables": {"command": ["ip", "netns", "exec", netns, "nft"]},
        "rules": [{"name": "isolate-ransomware", "categories": ["ransomware"],
                   "actions": [{"type": "isolate", "timeout_s": 60}, {"type": "rate_limit", "timeout_s": 60}]}],
    })
    conn = open_store(tmp_path / "responder.db")
    responder = Responder(playbook, conn, dry_run=False, actor="pytest")
    alert = Alert(category="ransomware", severity="critical", summary="mass file rename", technique="T1486",
                  src=Endpoint(ip="10.40.0.13", mac="00:1A:2B:3C:4D:5E"), dst=Endpoint(ip="10.10.0.12"))
    stored = responder.handle(alert)
    assert [r.status for r in stored] == ["applied", "applied"]
    assert set_elements(netns, "bridge", "wardwatch_l2", "isolated_mac") == ["00:1a:2b:3c:4d:5e"]
    assert set_elements(netns, "inet", "wardwatch", "ratelimited_v4") == ["10.40.0.13"]
    conn.close()


def test_cli_blocks_inside_namespace(netns, tmp_path):
    """`wardwatch respond` as a subprocess in the namespace, fed over an ipc:// bus."""
    playbook = tmp_path / "playbook.toml"
    playbook.write_text(
        '[settings]\ndry_run = false\n\n'
        '[[rules]]\nname = "block-bruteforce"\ncategories = ["bruteforce"]\n'
        'actions = [{ type = "block", timeout_s = 300 }]\n'
    )
    bus = f"ipc://{tmp_path}/bus"
    replay = f"ipc://{tmp_path}/replay"
    config = AlertConfig(sensor_id="test-sensor", bus_endpoint=bus, replay_endpoint=replay)
    store = tmp_path / "responder.db"
    with AlertSink(tmp_path / "sensor.db", config) as sink:
        process = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", "from engine.cli import main; main()",
             "respond", "--playbook", str(playbook), "--connect", bus, "--replay", replay,
             "--store", str(store), "--apply", "--idle-exit-s", "4", "--actor", "pytest-cli"],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            # Publish repeatedly until the subscriber has joined (PUB drops
            # messages sent before a subscriber connects); repeats are
            # dropped by the responder as duplicates.
            blocked = False
            for _ in range(40):
                sink.publish(bruteforce_alert(ATTACKER))
                if ATTACKER in (set_elements(netns, "inet", "wardwatch", "blocked_v4") or []):
                    blocked = True
                    break
                time.sleep(0.25)
            assert blocked
        finally:
            output, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    assert "ENFORCING" in errors

    with closing(open_store(store)) as conn:
        [record] = records.list_actions(conn)
    assert record.status == "applied"
    assert record.actor == "pytest-cli"
    # The recorded nft command is plain "nft", so undo must run in the namespace too.
    undo = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", "from engine.cli import main; main()",
         "respond", "undo", "--store", str(store), record.id],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )
    assert undo.returncode == 0, undo.stderr
    assert "element removed" in undo.stdout
    assert set_elements(netns, "inet", "wardwatch", "blocked_v4") == []

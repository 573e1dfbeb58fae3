"""Playbook parsing, safety guards, notifications and action records, without nftables.

Disruptive actions run in dry-run here, so no nft command is executed; the
namespace tests in test_respond_nftables.py cover the real changes.
"""

import http.server
import json
import threading
import time
from contextlib import closing
from pathlib import Path

import msgpack
import pytest
import zmq

from engine.alerts.schema import Alert, Endpoint
from engine.assets import inventory
from engine.respond import records
from engine.respond.actions import CommandPublisher
from engine.respond.guards import ActionRateCap, load_policy
from engine.respond.playbook import PlaybookError, load_playbook, parse_playbook
from engine.respond.responder import Responder, undo_action
from engine.store import open_store
from tests.conftest import REPO_ROOT

EXAMPLE_PLAYBOOK = REPO_ROOT / "engine" / "data" / "playbook.example.toml"
EXAMPLE_POLICY = REPO_ROOT / "engine" / "data" / "life_critical.example.toml"


def alert(source_ip="198.51.100.23", category="bruteforce", severity="high", source_mac=None, target_ip="10.10.0.16"):
    return Alert(category=category, severity=severity, summary=f"{category} test alert",
                 src=Endpoint(ip=source_ip, mac=source_mac), dst=Endpoint(ip=target_ip))


def block_playbook(**settings):
    return parse_playbook({
        "settings": {"max_actions_per_minute": 100, **settings},
        "rules": [{"name": "block", "categories": ["bruteforce"], "actions": [{"type": "block", "timeout_s": 60}]}],
    })


class FakeClock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def conn(tmp_path):
    with closing(open_store(tmp_path / "respond.db")) as connection:
        yield connection


def test_example_playbook_loads():
    playbook = load_playbook(EXAMPLE_PLAYBOOK)
    assert playbook.dry_run is True
    assert [rule.name for rule in playbook.rules][0] == "block-bruteforce-and-scans"
    assert playbook.rules[0].actions[0].timeout_s == 3600


@pytest.mark.parametrize("data, message", [
    ({"rules": []}, "no rules"),
    ({"rules": [{"name": "r", "actions": [{"type": "shutdown"}]}]}, "invalid action type 'shutdown'"),
    ({"rules": [{"name": "r", "min_severity": "urgent", "actions": [{"type": "block"}]}]}, "invalid min_severity"),
    ({"rules": [{"name": "r", "actions": [{"type": "webhook"}]}]}, "invalid url None"),
    ({"rules": [{"name": "r", "actions": [{"type": "block", "timeout_s": 0}]}]}, "invalid timeout_s 0"),
    ({"rules": [{"name": "r", "categorys": ["scan"], "actions": [{"type": "block"}]}]}, "unknown key 'categorys'"),
    ({"settings": {"allowlist": ["10.0.0.300"]}, "rules": [{"actions": [{"type": "block"}]}]},
     "invalid allowlist entry"),
    ({"nftables": {"table": "x; flush ruleset"}, "rules": [{"actions": [{"type": "block"}]}]}, "invalid table"),
    ({"settings": {"dry_run": "no"}, "rules": [{"actions": [{"type": "block"}]}]}, "invalid dry_run"),
    ({"rules": [{"name": "r", "actions": [{"type": "block"}]}, {"name": "r", "actions": [{"type": "escalate"}]}]},
     r"duplicate rule name 'r' \(rules\[0\] and rules\[1\]\)"),
    # An unnamed rule is called rule<index>, which a named one may not take.
    ({"rules": [{"name": "rule1", "actions": [{"type": "block"}]}, {"actions": [{"type": "escalate"}]}]},
     "duplicate rule name 'rule1'"),
])
def test_playbook_rejects_invalid(data, message):
    with pytest.raises(PlaybookError, match=message):
        parse_playbook(data)


def test_policy_file_matches_ip_mac_network():
    policy = load_policy(EXAMPLE_POLICY, ("infusion_pump",))
    assert "icu-bed4-pump" in policy.match("10.30.0.41", None, set())
    assert "or2-monitor" in policy.match(None, "00-09-FB-12-34-56", set())
    assert "icu-ventilators" in policy.match("10.30.1.5", None, set())
    assert policy.match("10.30.1.64", None, set()) is None  # just outside the /26
    assert "dialysis_machine" in policy.match("10.30.2.9", None, {"dialysis_machine"})


def test_policy_rejects_bad_entry(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('[[asset]]\nname = "pump"\n')
    with pytest.raises(PlaybookError, match="set at least one of ip, mac, network"):
        load_policy(path, ())


def test_dry_run_records_plan(conn):
    responder = Responder(block_playbook(), conn, actor="tester")
    [record] = responder.handle(alert())
    assert record.status == "dry_run"
    assert record.detail == {"would": "add 198.51.100.23 to inet wardwatch blocked_v4"}
    stored = records.get_action(conn, record.id)
    assert stored.actor == "tester"
    assert stored.rule == "block"
    assert "bruteforce" in stored.reason
    assert stored.expires_at == pytest.approx(stored.created_at + 60)
    assert responder.nft.commands_run == 0


def test_duplicate_block_is_dropped(conn):
    responder = Responder(block_playbook(), conn)
    first = alert()
    assert len(responder.handle(first)) == 1
    assert responder.handle(first) == []
    assert responder.counters["duplicates"] == 1
    assert len(records.list_actions(conn)) == 1


def test_allowlisted_source_is_skipped(conn):
    responder = Responder(block_playbook(allowlist=["198.51.100.0/24"]), conn)
    [record] = responder.handle(alert())
    assert record.status == "skipped_allowlist"


def test_rate_cap_per_minute(conn):
    clock = FakeClock()
    responder = Responder(block_playbook(max_actions_per_minute=2), conn, clock=clock)
    statuses = [responder.handle(alert(f"198.51.100.{i}"))[0].status for i in range(1, 4)]
    assert statuses == ["dry_run", "dry_run", "skipped_rate_cap"]
    clock.now += 60
    assert responder.handle(alert("198.51.100.9"))[0].status == "dry_run"


def test_rate_cap_window_boundary():
    cap = ActionRateCap(1)
    assert cap.allow(0.0)
    assert not cap.allow(59.999)
    assert cap.allow(60.0)
    assert cap.refused == 1


def test_inventory_role_escalates(conn):
    inventory.ensure_schema(conn)
    conn.execute("INSERT INTO assets (ip, first_seen, last_seen, updated_at) VALUES ('10.30.0.7', 0, 0, 0)")
    conn.execute("INSERT INTO asset_attributes VALUES ('10.30.0.7', 'role', 'patient_monitor', 0, 0)")
    responder = Responder(block_playbook(), conn)
    [record] = responder.handle(alert("10.30.0.7"))
    assert record.status == "escalated"
    assert record.action == "escalate"
    assert "patient_monitor" in record.detail["why"]
    # A second alert within ESCALATION_REPEAT_S does not escalate again.
    assert responder.handle(alert("10.30.0.7")) == []


def test_pseudonymised_address_fails(conn):
    responder = Responder(block_playbook(), conn)
    [record] = responder.handle(alert("2001:db8::1:2"))
    assert record.status == "failed"
    assert "pseudonym" in record.detail["error"]


def test_isolate_without_mac_fails(conn):
    playbook = parse_playbook({"rules": [{"categories": ["ransomware"], "actions": [{"type": "isolate"}]}]})
    responder = Responder(playbook, conn)
    [record] = responder.handle(alert(category="ransomware"))
    assert record.status == "failed"
    assert record.detail["error"] == "alert has no src.mac to act on"


def test_rule_filters_kind_and_severity(conn):
    responder = Responder(block_playbook(), conn)
    forecast = alert()
    forecast.kind = "forecast"
    assert responder.handle(forecast) == []
    assert responder.handle(alert(severity="medium")) == []
    assert responder.handle(alert(category="scan")) == []


def test_undo_rejects_unknown_and_dry_run(conn):
    responder = Responder(block_playbook(), conn)
    [record] = responder.handle(alert())
    with pytest.raises(LookupError, match="no response action"):
        undo_action(conn, "0000000000000000", "tester")
    with pytest.raises(ValueError, match="is dry_run, not applied"):
        undo_action(conn, record.id, "tester")


class WebhookHandler(http.server.BaseHTTPRequestHandler):
    received = []
    status = 200

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        WebhookHandler.received.append((self.path, self.headers["Content-Type"], self.rfile.read(length)))
        self.send_response(WebhookHandler.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_server():
    WebhookHandler.received = []
    WebhookHandler.status = 200
    server = http.server.HTTPServer(("127.0.0.1", 0), WebhookHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_webhook_posts_alert(conn, webhook_server):
    url = f"http://127.0.0.1:{webhook_server.server_port}/hook"
    playbook = parse_playbook({"rules": [{"categories": ["bruteforce"], "actions": [{"type": "webhook", "url": url}]}]})
    responder = Responder(playbook, conn, dry_run=False)
    sent = alert()
    [record] = responder.handle(sent)
    assert record.status == "applied"
    assert record.detail["http_status"] == 200
    [(path, content_type, body)] = WebhookHandler.received
    assert path == "/hook"
    assert content_type == "application/json"
    payload = json.loads(body)
    assert payload["alert"]["id"] == sent.id
    assert payload["action"]["id"] == record.id
    # A later revision of the same alert is not posted again.
    assert responder.handle(sent) == []


def test_webhook_error_status_fails(conn, webhook_server):
    WebhookHandler.status = 500
    url = f"http://127.0.0.1:{webhook_server.server_port}/hook"
    playbook = parse_playbook({"rules": [{"categories": ["bruteforce"], "actions": [{"type": "webhook", "url": url}]}]})
    [record] = Responder(playbook, conn, dry_run=False).handle(alert())
    assert record.status == "failed"
    assert record.detail["error"] == "webhook answered HTTP 500"


def test_bus_command_and_release(conn):
    clock = FakeClock()
    context = zmq.Context()
    publisher = CommandPublisher("tcp://127.0.0.1:*", context)
    subscriber = context.socket(zmq.SUB)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"command.")
    subscriber.connect(publisher.endpoint)
    try:
        # Wait until the subscription has reached the publisher (PUB drops
        # messages for subscribers that have not joined yet).
        for _ in range(100):
            publisher.send("notify", {"probe": True})
            if subscriber.poll(50):
                subscriber.recv_multipart()
                break
        while subscriber.poll(100):
            subscriber.recv_multipart()

        playbook = parse_playbook({"rules": [{"categories": ["bruteforce"], "actions": [
            {"type": "bus_command", "command": "block", "timeout_s": 30}]}]})
        responder = Responder(playbook, conn, dry_run=False, commands=publisher, actor="tester", clock=clock)
        [record] = responder.handle(alert())
        assert record.status == "applied"
        assert subscriber.poll(2000)
        topic, body = subscriber.recv_multipart()
        command = msgpack.unpackb(body)
        assert topic == b"command.block"
        assert command["id"] == record.id
        assert command["subject"] == "198.51.100.23"
        assert command["subject_type"] == "ip"
        assert command["timeout_s"] == 30

        clock.now += 31
        [expired] = responder.expire_due()
        assert expired.id == record.id
        assert records.get_action(conn, record.id).status == "expired"
        assert subscriber.poll(2000)
        topic, body = subscriber.recv_multipart()
        assert topic == b"command.release"
        assert msgpack.unpackb(body)["id"] == record.id
    finally:
        subscriber.close()
        publisher.close()
        context.term()


@pytest.mark.parametrize("action", [
    {"type": "bus_command", "command": "block", "timeout_s": 30},
    {"type": "escalate"},
])
def test_command_stored_before_publish(tmp_path, action):
    # An enforcer that looks a command up in the store on receipt must find
    # it. The publisher below is the real one; its send first reads the
    # store through a second connection, as an enforcer process would.
    store_path = tmp_path / "store.db"
    context = zmq.Context()
    publisher = CommandPublisher("tcp://127.0.0.1:*", context)
    found_at_send = []
    publish = publisher.send

    def send_after_lookup(command, body):
        with closing(open_store(store_path, read_only=True)) as other:
            found_at_send.append(records.get_action(other, body["id"]))
        return publish(command, body)

    publisher.send = send_after_lookup
    try:
        with closing(open_store(store_path)) as conn:
            playbook = parse_playbook({"rules": [{"categories": ["bruteforce"], "actions": [action]}]})
            responder = Responder(playbook, conn, dry_run=False, commands=publisher, actor="tester",
                                  clock=FakeClock())
            [record] = responder.handle(alert())
            stored = records.get_action(conn, record.id)
    finally:
        publisher.close()
        context.term()
    [seen] = found_at_send
    assert seen is not None
    assert seen.id == record.id
    assert seen.action == record.action
    # The outcome (delivery) is stored afterwards, on the same row.
    assert stored.status == record.status
    assert stored.detail == record.detail


def test_restarted_responder_does_not_act_again(tmp_path):
    # A responder restarted on its store gets the closing revision of an
    # alert it already acted on (through replay): no second action.
    store_path = tmp_path / "respond.db"
    playbook = block_playbook()
    first_alert = alert()
    with closing(open_store(store_path)) as conn:
        [record] = Responder(playbook, conn, clock=FakeClock()).handle(first_alert)
        assert record.status == "dry_run"
    closing_revision = alert()
    closing_revision.id = first_alert.id
    closing_revision.revision = 2
    with closing(open_store(store_path)) as conn:
        restarted = Responder(playbook, conn, clock=FakeClock())
        assert restarted.handle(closing_revision) == []
        assert restarted.counters["acted_before_restart"] == 1
        # Another alert from the same source is a new decision.
        [other] = restarted.handle(alert())
        assert other.status == "dry_run"
        assert len(records.list_actions(conn)) == 2

"""Undo of a bus command: the responder publishes command.release to the enforcer.

The enforcer is a real ZeroMQ SUB socket in the test, the responder
receives alerts from a real AlertSink on loopback, and `respond undo` runs
through Click against the same SQLite store file from the test's thread.
"""

import threading
import time
from contextlib import closing

import msgpack
import pytest
import zmq
from click.testing import CliRunner

from engine.alerts.bus import GapFillingSubscriber
from engine.alerts.schema import Alert, Endpoint
from engine.alerts.sink import AlertConfig, AlertSink
from engine.respond import records
from engine.respond.actions import CommandPublisher
from engine.respond.cli import EXIT_RELEASE_PENDING, respond
from engine.respond.playbook import parse_playbook
from engine.respond.responder import Responder, undo_action
from engine.respond.service import run_responder
from engine.store import open_store
from tests.waiting import wait_until

SOURCE_IP = "198.51.100.23"


def bus_playbook(command="block", timeout_s=600):
    return parse_playbook({
        "settings": {"max_actions_per_minute": 100},
        "rules": [{"name": "enforce", "categories": ["bruteforce"], "actions": [
            {"type": "bus_command", "command": command, "timeout_s": timeout_s}]}],
    })


def bruteforce_alert():
    return Alert(category="bruteforce", severity="high", summary="bruteforce test alert",
                 src=Endpoint(ip=SOURCE_IP), dst=Endpoint(ip="10.10.0.16"))


class FakeClock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now



def receive_command(socket, timeout_ms=5000):
    assert socket.poll(timeout_ms), "the enforcer received no command"
    topic, body = socket.recv_multipart()
    return topic.decode("ascii"), msgpack.unpackb(body)


def run_undo(store_path, action_id, wait_s):
    arguments = ["undo", action_id, "--store", str(store_path), "--actor", "operator@test", "--wait-s", str(wait_s)]
    return CliRunner().invoke(respond, arguments, catch_exceptions=False)


@pytest.fixture
def context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def enforcer(context):
    """A SUB socket that plays the external enforcer; connect it with .connect(endpoint)."""
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.SUBSCRIBE, b"command.")
    socket.setsockopt(zmq.LINGER, 0)
    yield socket
    socket.close()


class RunningResponder:
    """`wardwatch respond` in a thread: an AlertSink on loopback, run_responder and a command bus."""

    def __init__(self, tmp_path, commands, playbook):
        config = AlertConfig(sensor_id="test-sensor", bus_endpoint="tcp://127.0.0.1:*",
                             replay_endpoint="tcp://127.0.0.1:*")
        self.sink = AlertSink(tmp_path / "sensor.db", config).open()
        self.store_path = tmp_path / "responder.db"
        # The thread owns the command bus from here on.
        self.commands = commands
        self.playbook = playbook
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.errors = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self):
        # The store connection, the subscriber and the command bus stay in this thread.
        conn = open_store(self.store_path)
        subscriber = GapFillingSubscriber([self.sink.bus_endpoint], replay=[self.sink.replay_endpoint],
                                          since=0, idle_check_s=0.2)
        try:
            responder = Responder(self.playbook, conn, dry_run=False, commands=self.commands, actor="responder@test")
            self.ready.set()
            run_responder(responder, subscriber, self.stop)
        except Exception as error:  # reported by close()
            self.errors.append(error)
            self.ready.set()
        finally:
            subscriber.close()
            conn.close()

    def applied(self):
        with closing(open_store(self.store_path)) as conn:
            records.ensure_schema(conn)
            return records.list_actions(conn, status="applied")

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)
        self.sink.close(flush=False)
        assert not self.errors, self.errors


def test_undo_releases_enforcer_measure(tmp_path, context, enforcer):
    commands = CommandPublisher("tcp://127.0.0.1:*", context)
    enforcer.connect(commands.endpoint)
    # A subscriber that has not joined yet misses messages, so the
    # responder starts only once the subscription has reached the bus.
    assert wait_until(lambda: commands.has_subscriber("block"))
    runner = RunningResponder(tmp_path, commands, bus_playbook())
    try:
        runner.sink.publish(bruteforce_alert())

        topic, command = receive_command(enforcer)
        assert topic == "command.block"
        assert command["subject"] == SOURCE_IP
        assert command["timeout_s"] == 600
        # The responder stores the action before it publishes the command,
        # so an enforcer can look it up as soon as the command arrives.
        [applied] = runner.applied()
        assert command["id"] == applied.id
        assert applied.detail["command"] == "block"

        result = run_undo(runner.store_path, applied.id, wait_s=10)
        assert result.exit_code == 0, result.output
        assert "command.release published on the command bus by responder@test" in result.output

        topic, release = receive_command(enforcer)
        assert topic == "command.release"
        assert release["id"] == applied.id
        assert release["command"] == "release"
        assert release["released_command"] == "block"
        assert release["subject"] == SOURCE_IP
        assert release["subject_type"] == "ip"
        assert release["ended_by"] == "operator@test"
    finally:
        runner.close()
        commands.close()

    with closing(open_store(runner.store_path)) as conn:
        record = records.get_action(conn, applied.id)
    assert record.status == "undone"
    assert record.ended_by == "operator@test"
    assert record.detail["release"]["state"] == "sent"
    assert record.detail["release"]["sent_by"] == "responder@test"
    assert record.detail["release"]["requested_by"] == "operator@test"


def test_undo_without_responder_stays_pending(tmp_path, context, enforcer):
    store_path = tmp_path / "responder.db"
    clock = FakeClock(time.time())
    commands = CommandPublisher("tcp://127.0.0.1:*", context)
    try:
        with closing(open_store(store_path)) as conn:
            enforcer.connect(commands.endpoint)
            assert wait_until(lambda: commands.has_subscriber("block"))
            responder = Responder(bus_playbook(), conn, dry_run=False, commands=commands, actor="responder@test",
                                  clock=clock)
            [applied] = responder.handle(bruteforce_alert())
            assert receive_command(enforcer)[0] == "command.block"

        # No responder sweeps the store now, so the release is not published.
        started = time.monotonic()
        result = run_undo(store_path, applied.id, wait_s=0.3)
        assert time.monotonic() - started < 5
        assert result.exit_code == EXIT_RELEASE_PENDING
        assert "no responder acknowledged the release within 0.3 s" in result.output
        assert "stays pending" in result.output
        assert not enforcer.poll(200)

        with closing(open_store(store_path)) as conn:
            record = records.get_action(conn, applied.id)
            assert record.status == "undone"
            assert record.detail["release"]["state"] == "pending"

            # A responder started later on the same store publishes it.
            restarted = Responder(bus_playbook(), conn, dry_run=False, commands=commands, actor="restarted@test",
                                  clock=clock)
            [sent] = restarted.send_pending_releases()
            assert sent.id == applied.id
            topic, release = receive_command(enforcer)
            assert topic == "command.release"
            assert release["id"] == applied.id
            assert records.get_action(conn, applied.id).detail["release"]["sent_by"] == "restarted@test"
            # Sent once: a second sweep finds nothing pending.
            assert restarted.send_pending_releases() == []
            assert not enforcer.poll(200)
    finally:
        commands.close()


def test_release_waits_for_enforcer(tmp_path, context, enforcer):
    clock = FakeClock(time.time())
    commands = CommandPublisher("tcp://127.0.0.1:*", context)
    try:
        with closing(open_store(tmp_path / "responder.db")) as conn:
            responder = Responder(bus_playbook(), conn, dry_run=False, commands=commands, actor="responder@test",
                                  clock=clock)
            [applied] = responder.handle(bruteforce_alert())
            undo_action(conn, applied.id, "operator@test", clock())

            assert responder.send_pending_releases() == []
            release = records.get_action(conn, applied.id).detail["release"]
            assert release["state"] == "pending"
            assert release["waiting"] == f"no enforcer subscribed to command.release on {commands.endpoint}"
            assert release["waiting_in"] == "responder@test"
            assert responder.counters["releases_waiting"] == 1

            enforcer.connect(commands.endpoint)
            assert wait_until(lambda: bool(responder.send_pending_releases()))
            topic, body = receive_command(enforcer)
            assert topic == "command.release"
            assert body["id"] == applied.id
            release = records.get_action(conn, applied.id).detail["release"]
            assert release["state"] == "sent"
            assert "waiting" not in release
    finally:
        commands.close()


def test_undo_twice_rejected(tmp_path, context):
    store_path = tmp_path / "responder.db"
    commands = CommandPublisher("tcp://127.0.0.1:*", context)
    try:
        with closing(open_store(store_path)) as conn:
            responder = Responder(bus_playbook(), conn, dry_run=False, commands=commands, actor="responder@test")
            [applied] = responder.handle(bruteforce_alert())
            undo_action(conn, applied.id, "operator@test")
        result = run_undo(store_path, applied.id, wait_s=0)
        assert result.exit_code == 1
        assert "is undone, not applied" in result.output
    finally:
        commands.close()


def test_undo_cli_names_missing_enforcer(tmp_path, context):
    store_path = tmp_path / "responder.db"
    commands = CommandPublisher("tcp://127.0.0.1:*", context)
    with closing(open_store(store_path)) as conn:
        [applied] = Responder(bus_playbook(), conn, dry_run=False, commands=commands).handle(bruteforce_alert())

    stop = threading.Event()
    errors = []

    def sweep():
        # The responder's tick, in the thread that owns the store connection and the command bus.
        try:
            with closing(open_store(store_path)) as own_conn:
                responder = Responder(bus_playbook(), own_conn, dry_run=False, commands=commands,
                                      actor="responder@test")
                while not stop.is_set():
                    responder.send_pending_releases()
                    time.sleep(0.05)
        except Exception as error:  # reported below
            errors.append(error)

    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    try:
        result = run_undo(store_path, applied.id, wait_s=1)
    finally:
        stop.set()
        thread.join(timeout=10)
        commands.close()
    assert not errors, errors
    assert result.exit_code == EXIT_RELEASE_PENDING
    assert f"no enforcer subscribed to command.release on {commands.endpoint}" in result.output
    assert "The responder responder@test sends it when an enforcer subscribes" in result.output


def test_release_lapses_after_timeout(tmp_path, context, enforcer):
    clock = FakeClock(time.time())
    commands = CommandPublisher("tcp://127.0.0.1:*", context)
    try:
        with closing(open_store(tmp_path / "responder.db")) as conn:
            responder = Responder(bus_playbook(timeout_s=30), conn, dry_run=False, commands=commands,
                                  actor="responder@test", clock=clock)
            [applied] = responder.handle(bruteforce_alert())
            undo_action(conn, applied.id, "operator@test", clock())
            clock.now += 31

            enforcer.connect(commands.endpoint)
            assert wait_until(lambda: commands.has_subscriber("release"))
            assert responder.send_pending_releases() == []
            release = records.get_action(conn, applied.id).detail["release"]
            assert release["state"] == "lapsed"
            assert release["lapsed_at"] == clock.now
            assert not enforcer.poll(200)
    finally:
        commands.close()


def test_undo_notify_has_no_release(tmp_path, context):
    commands = CommandPublisher("tcp://127.0.0.1:*", context)
    try:
        with closing(open_store(tmp_path / "responder.db")) as conn:
            responder = Responder(bus_playbook(command="notify"), conn, dry_run=False, commands=commands)
            [applied] = responder.handle(bruteforce_alert())
            undone = responder.undo(applied.id, "operator@test")
            assert undone.status == "undone"
            assert "release" not in undone.detail
            assert undone.detail["undo"] == "recorded only; a notification has no measure to release"
            assert records.pending_releases(conn) == []
    finally:
        commands.close()


def test_responder_undo_then_acts_again(tmp_path, context, enforcer):
    commands = CommandPublisher("tcp://127.0.0.1:*", context)
    try:
        with closing(open_store(tmp_path / "responder.db")) as conn:
            enforcer.connect(commands.endpoint)
            assert wait_until(lambda: commands.has_subscriber("block"))
            responder = Responder(bus_playbook(), conn, dry_run=False, commands=commands, actor="responder@test")
            [first] = responder.handle(bruteforce_alert())
            assert receive_command(enforcer)[1]["id"] == first.id
            # While the block is in force a repeat is dropped as a duplicate.
            assert responder.handle(bruteforce_alert()) == []

            undone = responder.undo(first.id, "operator@test")
            assert undone.detail["release"]["state"] == "sent"
            topic, release = receive_command(enforcer)
            assert topic == "command.release"
            assert release["id"] == first.id

            # After the undo a new alert on the same subject acts again, with a new id.
            [second] = responder.handle(bruteforce_alert())
            assert second.id != first.id
            topic, command = receive_command(enforcer)
            assert topic == "command.block"
            assert command["id"] == second.id
    finally:
        commands.close()

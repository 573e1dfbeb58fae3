"""The responder: match each alert against the playbook, pass the guards, act and record.

For every action of every matching rule, in this order:
  1. resolve the subject (the alert's src or dst address, or its MAC for isolate);
  2. a disruptive action (block, rate_limit, isolate, or a bus command
     other than notify) on a life-critical subject, or on a clinical one
     unless the rule sets allow_clinical_subjects, becomes an escalation
     (guards.SubjectGuard);
  3. an allowlisted subject is skipped;
  4. a repeat of an action still in force, or of a notification already
     sent for the same alert, is dropped (counted, not recorded);
  5. the actions-per-minute cap is checked;
  6. in dry-run the record states what would happen, otherwise the change is made.
Every outcome of steps 2, 3, 5 and 6 is one row in response_actions.
"""

from __future__ import annotations

import collections
import getpass
import ipaddress
import logging
import socket
import sqlite3
import time
from typing import Callable

import zmq

from engine.alerts.schema import Alert, Endpoint
from engine.privacy import DOCUMENTATION_PREFIX
from engine.respond import records
from engine.respond.actions import CommandPublisher, post_webhook
from engine.respond.guards import (ActionRateCap, Allowlist, InventoryRoles, LifeCriticalPolicy, SubjectGuard,
                                   normalise_mac)
from engine.respond.nft import NftBackend, NftError
from engine.respond.playbook import DISRUPTIVE_ACTIONS, Action, Playbook, Rule
from engine.respond.records import ActionRecord

log = logging.getLogger(__name__)

# Enforcement keys (action, subject) remembered while in force. When full, the
# entry that expires first is dropped (counter: active_table_full). The
# kernel set still contains it, so the only effect is one repeated add.
MAX_ACTIVE = 100_000
# (alert id, rule, action index) of notifications already sent, oldest
# dropped first when full; a dropped key can cause one repeated notification.
MAX_NOTIFIED = 100_000
# An escalation for the same subject is repeated at most once per this many seconds.
ESCALATION_REPEAT_S = 300.0


def default_actor() -> str:
    """Return who acts, as wardwatch-respond/USER@HOST."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"wardwatch-respond/{user}@{socket.gethostname()}"


def _reason(rule: Rule, alert: Alert) -> str:
    return (f"rule {rule.name!r}: {alert.severity} {alert.category} alert {alert.id}"
            f" ({alert.summary})")


def _active_key(record: ActionRecord) -> tuple[str, str | None]:
    """Return the key under which an enforcement record is remembered while in force."""
    if record.action == "bus_command":
        return f"bus_{record.detail.get('command', 'block')}", record.subject
    return record.action, record.subject


def _is_pseudonym(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in DOCUMENTATION_PREFIX
    except ValueError:
        return False


class Responder:
    """Act on alerts according to a playbook; used from one thread."""

    def __init__(
        self,
        playbook: Playbook,
        conn: sqlite3.Connection,
        policy: LifeCriticalPolicy | None = None,
        dry_run: bool | None = None,
        nft: NftBackend | None = None,
        commands: CommandPublisher | None = None,
        actor: str | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.playbook = playbook
        self.conn = conn
        records.ensure_schema(conn)
        self.policy = policy or LifeCriticalPolicy(roles=playbook.life_critical_roles)
        self.guard = SubjectGuard(self.policy, playbook)
        self.dry_run = playbook.dry_run if dry_run is None else dry_run
        self.nft = nft if nft is not None else NftBackend(playbook.nftables)
        self.commands = commands
        self.actor = actor or default_actor()
        self.clock = clock
        self.inventory = InventoryRoles(conn)
        self.allowlist = Allowlist(playbook.allowlist)
        self.rate_cap = ActionRateCap(playbook.max_actions_per_minute)
        self.counters: collections.Counter = collections.Counter()
        self._active: dict[tuple[str, str], float] = {}
        self._notified: collections.OrderedDict[tuple, None] = collections.OrderedDict()
        self._escalated: dict[str, float] = {}
        # Ids of records stored before their command was published; handle()
        # updates them instead of inserting. At most one id is in it between
        # an action and its storing.
        self._stored_first: set[str] = set()
        # Ids of pending releases whose `waiting` reason is already stored,
        # so it is written once, not on every sweep. Pruned to the pending
        # releases on each sweep, which MAX_RELEASES_PER_QUERY bounds.
        self._waiting_noted: set[str] = set()
        # ended_at of the newest undo already removed from _active.
        self._undo_seen_at = self.clock()
        self._ruleset_ready = False
        for record in records.active_actions(conn, self.clock()):
            if record.subject is not None:
                self._active[_active_key(record)] = record.expires_at or float("inf")
        # (alert id, rule) pairs a previous run of this store acted on. A
        # restarted responder replays alerts it missed, and the closing
        # revision of an alert it had already acted on must not act again.
        self._acted_before = records.acted_alert_rules(conn, MAX_NOTIFIED)

    def prepare(self) -> None:
        """Create the nftables ruleset if a rule needs it (never in dry-run, where nothing is touched)."""
        uses_nft = any(action.type in DISRUPTIVE_ACTIONS for rule in self.playbook.rules for action in rule.actions)
        if uses_nft and not self.dry_run and not self._ruleset_ready:
            self.nft.ensure_ruleset()
            self._ruleset_ready = True

    # -- per alert -------------------------------------------------------

    def handle(self, alert: Alert) -> list[ActionRecord]:
        """Run every matching rule's actions for one alert; return the records stored."""
        self.counters["alerts"] += 1
        now = self.clock()
        source_roles = self._roles(alert.src, now)
        target_roles = self._roles(alert.dst, now)
        stored = []
        for rule in self.playbook.matching_rules(alert, source_roles, target_roles):
            self.counters["rule_matches"] += 1
            if (alert.id, rule.name) in self._acted_before:
                self.counters["acted_before_restart"] += 1
                continue
            for index, action in enumerate(rule.actions):
                record = self._run_action(alert, rule, index, action, now)
                if record is not None:
                    if record.id in self._stored_first:
                        self._stored_first.discard(record.id)
                        records.update_outcome(self.conn, record)
                    else:
                        records.insert_action(self.conn, record)
                    stored.append(record)
                    self.counters[f"status_{record.status}"] += 1
                    self._log(record)
        return stored

    def _roles(self, endpoint: Endpoint, now: float) -> set[str]:
        roles = set(self.inventory.roles(endpoint.ip, now))
        if endpoint.asset:
            roles.add(endpoint.asset)
        return roles

    def _log(self, record: ActionRecord) -> None:
        level = logging.WARNING if record.status in ("escalated", "failed") else logging.INFO
        log.log(level, "%s %s %s: %s (id %s, %s)", record.status, record.action, record.subject or "-",
                record.reason, record.id, record.detail.get("error") or record.detail.get("why") or "")

    def _record(self, alert: Alert, rule: Rule, action: str, subject: str | None, status: str, now: float,
                expires_at: float | None = None, **detail) -> ActionRecord:
        return ActionRecord(
            actor=self.actor, rule=rule.name, action=action, subject=subject, status=status,
            dry_run=self.dry_run, reason=_reason(rule, alert), alert_id=alert.id, alert_seq=alert.seq,
            sensor_id=alert.sensor_id, expires_at=expires_at, detail=detail, created_at=now,
        )

    def _subject(self, alert: Alert, action: Action) -> tuple[str | None, Endpoint]:
        endpoint = self.guard.endpoint_for(alert, action.subject)
        if endpoint is None:
            return None, Endpoint()
        if action.type == "isolate" or (action.type == "bus_command" and action.command == "isolate"):
            return normalise_mac(endpoint.mac), endpoint
        return endpoint.ip, endpoint

    def _run_action(self, alert: Alert, rule: Rule, index: int, action: Action, now: float) -> ActionRecord | None:
        subject, endpoint = self._subject(alert, action)
        disruptive = action.type in DISRUPTIVE_ACTIONS or (
            action.type == "bus_command" and action.command != "notify")
        timeout_s = action.timeout_s or self.playbook.default_timeout_s

        if action.type == "escalate":
            return self._escalate(alert, rule, subject, endpoint, now, "the rule asks for escalation")
        if disruptive:
            if subject is None and action.subject == "external" and endpoint.ip is None:
                return self._escalate(alert, rule, None, endpoint, now,
                                      f"{action.type} not applied: {self.guard.external_missing_reason(alert)}",
                                      refused_action=action.type)
            if subject is None:
                field = "mac" if action.type == "isolate" or action.command == "isolate" else "ip"
                return self._record(alert, rule, action.type, None, "failed", now,
                                    error=f"alert has no {action.subject}.{field} to act on")
            escalation = self.guard.escalation_reason(rule, action.type, endpoint, self._roles(endpoint, now))
            if escalation is not None:
                return self._escalate(alert, rule, subject, endpoint, now, escalation, refused_action=action.type)
            if self.allowlist.contains(subject):
                return self._record(alert, rule, action.type, subject, "skipped_allowlist", now,
                                    why=f"{subject} is on the allowlist")
            if normalise_mac(subject) is None and _is_pseudonym(subject):
                return self._record(alert, rule, action.type, subject, "failed", now,
                                    error="the address is a pseudonym (2001:db8::/32); the sensor must not "
                                          "pseudonymise alerts that the responder acts on")
            key = (action.type if action.type != "bus_command" else f"bus_{action.command}", subject)
            if self._active.get(key, 0.0) > now:
                self.counters["duplicates"] += 1
                return None
        else:
            key = (alert.id, rule.name, index)
            if key in self._notified:
                self.counters["duplicates"] += 1
                return None

        if not self.rate_cap.allow(now):
            return self._record(alert, rule, action.type, subject, "skipped_rate_cap", now,
                                why=f"more than {self.playbook.max_actions_per_minute} actions in the last minute")

        expires_at = now + timeout_s if disruptive else None
        if self.dry_run:
            record = self._record(alert, rule, action.type, subject, "dry_run", now, expires_at,
                                  **self._plan(action, subject))
        else:
            record = self._execute(alert, rule, action, subject, now, expires_at, timeout_s)
        if record.status in ("applied", "dry_run"):
            self._remember(key, disruptive, expires_at)
        return record

    def _remember(self, key: tuple, disruptive: bool, expires_at: float | None) -> None:
        if disruptive:
            if len(self._active) >= MAX_ACTIVE and key not in self._active:
                self.counters["active_table_full"] += 1
                del self._active[min(self._active, key=self._active.get)]
            self._active[key] = expires_at if expires_at is not None else float("inf")
        else:
            self._notified[key] = None
            if len(self._notified) > MAX_NOTIFIED:
                self._notified.popitem(last=False)

    def _plan(self, action: Action, subject: str | None) -> dict:
        if action.type in DISRUPTIVE_ACTIONS:
            try:
                family, table, name = self.nft.set_for(action.type, subject)
            except ValueError as error:
                return {"error": str(error)}
            return {"would": f"add {subject} to {family} {table} {name}"}
        if action.type == "webhook":
            return {"would": f"POST the alert to {action.url}"}
        return {"would": f"publish command.{action.command} for {subject}"}

    def _execute(self, alert: Alert, rule: Rule, action: Action, subject: str | None, now: float,
                 expires_at: float | None, timeout_s: int) -> ActionRecord:
        record = self._record(alert, rule, action.type, subject, "applied", now, expires_at)
        try:
            if action.type in DISRUPTIVE_ACTIONS:
                self.prepare()
                record.detail.update(self.nft.add_element(action.type, subject, timeout_s))
                record.detail["nft_command"] = list(self.nft.settings.command)
            elif action.type == "webhook":
                status = post_webhook(action.url, self._payload(record, alert), action.timeout_request_s)
                record.detail.update(url=action.url, http_status=status)
                if not 200 <= status < 300:
                    record.status = "failed"
                    record.detail["error"] = f"webhook answered HTTP {status}"
            else:
                if self.commands is None:
                    raise OSError("no command bus; start the responder with --command-bind ENDPOINT")
                body = self._command_body(record, action.command,
                                          timeout_s if action.command != "notify" else None)
                record.detail["command"] = action.command
                self._store_before_publish(record)
                self.commands.send(action.command, body)
        except (NftError, OSError, ValueError, zmq.ZMQError) as error:
            record.status = "failed"
            record.expires_at = None
            record.detail["error"] = str(error)
        return record

    def _store_before_publish(self, record: ActionRecord) -> None:
        # An enforcer or dashboard that receives a command may look it up in
        # the store at once, so the record exists before the command is sent.
        # handle() stores the outcome (failure, delivery) afterwards.
        records.insert_action(self.conn, record)
        self._stored_first.add(record.id)

    def _escalate(self, alert: Alert, rule: Rule, subject: str | None, endpoint: Endpoint, now: float,
                  reason_text: str, refused_action: str | None = None) -> ActionRecord | None:
        key = subject or endpoint.ip or alert.id
        if self._escalated.get(key, 0.0) > now:
            self.counters["duplicates"] += 1
            return None
        self._escalated[key] = now + ESCALATION_REPEAT_S
        if len(self._escalated) > MAX_ACTIVE:
            self._escalated = {k: v for k, v in self._escalated.items() if v > now}
        record = self._record(alert, rule, "escalate", subject, "escalated", now, why=reason_text)
        if refused_action is not None:
            record.detail["refused_action"] = refused_action
        if self.dry_run:
            return record
        delivered = []
        if self.commands is not None:
            body = self._command_body(record, "escalate", None)
            self._store_before_publish(record)
            self.commands.send("escalate", body)
            delivered.append("bus")
        if self.playbook.escalation_webhook:
            try:
                status = post_webhook(self.playbook.escalation_webhook, self._payload(record, alert), 3.0)
                delivered.append(f"webhook HTTP {status}")
            except OSError as error:
                record.detail["error"] = str(error)
        record.detail["delivered"] = delivered
        return record

    def _payload(self, record: ActionRecord, alert: Alert) -> dict:
        return {"action": record.to_dict(), "alert": alert.to_dict()}

    def _command_body(self, record: ActionRecord, command: str, timeout_s: int | None) -> dict:
        subject_type = None
        if record.subject is not None:
            subject_type = "mac" if normalise_mac(record.subject) else "ip"
        return {
            "id": record.id, "command": command, "subject": record.subject, "subject_type": subject_type,
            "timeout_s": timeout_s, "alert_id": record.alert_id, "alert_seq": record.alert_seq,
            "sensor_id": record.sensor_id, "rule": record.rule, "reason": record.reason, "actor": record.actor,
            "issued_at": record.created_at, "dry_run": False,
        }

    # -- expiry ----------------------------------------------------------

    def expire_due(self) -> list[ActionRecord]:
        """Mark applied actions past their expiry as expired; release bus commands.

        nftables removes its own elements at the timeout, so this only
        brings the store up to date and sends command.release to external
        enforcers.
        """
        now = self.clock()
        ended = []
        for record in records.due_for_expiry(self.conn, now):
            if records.end_action(self.conn, record.id, "expired", "expiry", now):
                if record.action == "bus_command" and self.commands is not None:
                    self.commands.send("release", self._release_body(record, "expiry", now))
                self._active.pop(_active_key(record), None)
                self.counters["expired"] += 1
                log.info("expired %s %s (id %s)", record.action, record.subject, record.id)
                ended.append(record)
        for key in [key for key, expires in self._active.items() if expires <= now]:
            del self._active[key]
        return ended

    def _release_body(self, record: ActionRecord, ended_by: str, now: float) -> dict:
        body = self._command_body(record, "release", None)
        body.update(released_command=record.detail.get("command", "block"), ended_by=ended_by,
                    actor=self.actor, issued_at=now)
        return body

    # -- undo ------------------------------------------------------------

    def undo(self, action_id: str, by: str) -> ActionRecord:
        """Undo an action as undo_action() does, then publish its release at once if it has one."""
        record = undo_action(self.conn, action_id, by, self.clock())
        self._active.pop(_active_key(record), None)
        self.send_pending_releases()
        return records.get_action(self.conn, action_id) or record

    def send_pending_releases(self) -> list[ActionRecord]:
        """Publish command.release for bus commands undone since they were applied; return those sent.

        `respond undo` runs in another process, so it stores the release as
        pending and the responder that owns the command bus publishes it
        here, on every tick. A release stays pending while no enforcer is
        subscribed to command.release, because PUB would drop it, and it
        lapses once the measure's own timeout has passed.
        """
        self._forget_undone()
        pending = records.pending_releases(self.conn)
        self._waiting_noted &= {record.id for record in pending}
        if self.commands is None or not pending:
            return []
        now = self.clock()
        sent = []
        for record in pending:
            release = dict(record.detail["release"])
            if record.expires_at is not None and record.expires_at <= now:
                release.update(state="lapsed", lapsed_at=now)
                if records.update_release(self.conn, record.id, release):
                    log.info("release of %s %s (id %s) lapsed: its timeout passed before it was published",
                             record.action, record.subject, record.id)
                continue
            if not self.commands.has_subscriber("release"):
                self._note_waiting(record, release, now)
                continue
            self.commands.send("release", self._release_body(record, release.get("requested_by") or "undo", now))
            release.pop("waiting", None)
            release.update(state="sent", sent_at=now, sent_by=self.actor)
            if records.update_release(self.conn, record.id, release):
                self.counters["releases_sent"] += 1
                log.info("released %s %s (id %s) on the command bus, undone by %s", record.action,
                         record.subject, record.id, release.get("requested_by"))
                sent.append(record)
        return sent

    def _note_waiting(self, record: ActionRecord, release: dict, now: float) -> None:
        if record.id in self._waiting_noted:
            return
        self._waiting_noted.add(record.id)
        self.counters["releases_waiting"] += 1
        release.update(waiting=f"no enforcer subscribed to command.release on {self.commands.endpoint}",
                       waiting_since=now, waiting_in=self.actor)
        records.update_release(self.conn, record.id, release)
        log.warning("release of %s %s (id %s) is waiting: no enforcer is subscribed to command.release on %s",
                    record.action, record.subject, record.id, self.commands.endpoint)

    def _forget_undone(self) -> None:
        """Drop undone actions from the in-force table so a new alert can act on the subject again."""
        for record in records.undone_since(self.conn, self._undo_seen_at):
            self._active.pop(_active_key(record), None)
            self._undo_seen_at = max(self._undo_seen_at, record.ended_at or 0.0)


def undo_action(conn: sqlite3.Connection, action_id: str, by: str, now: float | None = None,
                nft_command: tuple[str, ...] | None = None) -> ActionRecord:
    """Revert an applied action: delete its set element and mark it undone.

    Raises LookupError for an unknown id and ValueError for an action that
    is not in force (dry-run, failed, already undone or expired).
    """
    records.ensure_schema(conn)
    now = time.time() if now is None else now
    record = records.get_action(conn, action_id)
    if record is None:
        raise LookupError(f"no response action with id {action_id!r}; list them with `wardwatch respond list`")
    if record.status != "applied":
        raise ValueError(f"action {action_id} is {record.status}, not applied; only applied actions can be undone")
    detail = dict(record.detail)
    if record.action in DISRUPTIVE_ACTIONS:
        from engine.respond.playbook import NftablesSettings

        command = tuple(nft_command or detail.get("nft_command") or ("nft",))
        backend = NftBackend(NftablesSettings(command=command))
        removed = backend.delete_element(detail["family"], detail["table"], detail["set"], record.subject)
        detail["undo"] = "element removed" if removed else "element not found (it expired, or the table was removed)"
    elif record.action == "bus_command" and detail.get("command") == "notify":
        detail["undo"] = "recorded only; a notification has no measure to release"
    elif record.action == "bus_command":
        # The command bus belongs to the running responder, so the release
        # is stored as pending here and published by that responder
        # (Responder.send_pending_releases). Storing it first means a
        # release survives a responder restart and is never lost silently.
        detail["release"] = {"state": "pending", "requested_at": now, "requested_by": by}
        detail["undo"] = "recorded; release pending until the responder publishes it"
    if not records.end_action(conn, action_id, "undone", by, now, detail):
        raise ValueError(f"action {action_id} changed while it was being undone; check `wardwatch respond list`")
    record.status, record.ended_at, record.ended_by, record.detail = "undone", now, by, detail
    return record

"""The response_actions table: one row per action the responder took or would take.

Every decision that reaches a playbook action is recorded, including the
ones a safety guard stopped, so an operator can see what happened, who
(actor) did it, why (the rule and the alert) and until when (expires_at).
Rows are never deleted; undo and expiry update status, ended_at and
ended_by.

An undone bus command also carries detail.release, the state of the
command.release that tells the external enforcer to end the measure:
  state   one of RELEASE_STATES
  requested_at, requested_by   when and by whom the undo was recorded
  sent_at, sent_by             when and by which responder it was published
  lapsed_at                    when the responder found the timeout already passed
  waiting, waiting_since, waiting_in   why, since when and in which responder
                               a running responder keeps it pending
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS response_actions (
    id TEXT PRIMARY KEY,              -- 16 hex digits, the ID for `wardwatch respond undo`
    created_at REAL NOT NULL,         -- wall-clock seconds since the epoch
    actor TEXT NOT NULL,              -- who acted: the responder's name, e.g. wardwatch-respond@fw1
    rule TEXT NOT NULL,               -- playbook rule that matched
    action TEXT NOT NULL,             -- block, rate_limit, isolate, webhook, bus_command, escalate
    subject TEXT,                     -- IP address or MAC acted on; NULL for notifications
    status TEXT NOT NULL,             -- see STATUSES in engine/respond/records.py
    dry_run INTEGER NOT NULL,         -- 1 when nothing was changed on purpose
    reason TEXT NOT NULL,             -- why: rule, alert category, severity and summary
    alert_id TEXT,
    alert_seq INTEGER,
    sensor_id TEXT,
    expires_at REAL,                  -- wall clock; NULL for actions that do not expire
    ended_at REAL,                    -- when undone or expired
    ended_by TEXT,                    -- who undid it, or "expiry"
    detail TEXT NOT NULL DEFAULT '{}' -- JSON: nft set, command, HTTP status, error text
);
CREATE INDEX IF NOT EXISTS response_actions_subject ON response_actions (subject, action);
CREATE INDEX IF NOT EXISTS response_actions_status ON response_actions (status, expires_at);
"""

STATUSES = (
    "applied",  # the change was made (set element added, webhook returned 2xx, command published)
    "dry_run",  # the change would have been made; nothing was touched
    "escalated",  # a disruptive action on a life-critical or clinical host, or with no external end, was escalated
    "skipped_allowlist",  # the subject is on the allowlist
    "skipped_rate_cap",  # the actions-per-minute cap was reached
    "failed",  # the change was attempted and failed (detail.error contains the reason)
    "undone",  # reverted by `wardwatch respond undo`
    "expired",  # its timeout passed
)
# Statuses whose subject may still be enforced and so can be undone or expire.
ACTIVE_STATUSES = ("applied",)

# Pending releases read per query; the rest wait for the next sweep.
MAX_RELEASES_PER_QUERY = 1000
RELEASE_STATES = (
    "pending",  # recorded by undo; a responder with a command bus publishes it
    "sent",  # published while at least one enforcer was subscribed to command.release
    "lapsed",  # the measure's timeout passed first, so the enforcer has ended it itself
)


@dataclass
class ActionRecord:
    actor: str
    rule: str
    action: str
    subject: str | None
    status: str
    dry_run: bool
    reason: str
    alert_id: str | None = None
    alert_seq: int | None = None
    sensor_id: str | None = None
    expires_at: float | None = None
    ended_at: float | None = None
    ended_by: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    created_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the response_actions table if it does not exist yet."""
    conn.executescript(SCHEMA)


def insert_action(conn: sqlite3.Connection, record: ActionRecord) -> None:
    """Store one action record and commit it."""
    if record.status not in STATUSES:
        raise ValueError(f"invalid action status {record.status!r}; expected one of {', '.join(STATUSES)}")
    conn.execute(
        "INSERT INTO response_actions (id, created_at, actor, rule, action, subject, status, dry_run,"
        " reason, alert_id, alert_seq, sensor_id, expires_at, ended_at, ended_by, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.id, record.created_at, record.actor, record.rule, record.action, record.subject,
            record.status, int(record.dry_run), record.reason, record.alert_id, record.alert_seq,
            record.sensor_id, record.expires_at, record.ended_at, record.ended_by,
            json.dumps(record.detail, sort_keys=True),
        ),
    )


def update_outcome(conn: sqlite3.Connection, record: ActionRecord) -> None:
    """Store the status, expiry and detail of a record inserted before its action ran."""
    if record.status not in STATUSES:
        raise ValueError(f"invalid action status {record.status!r}; expected one of {', '.join(STATUSES)}")
    conn.execute(
        "UPDATE response_actions SET status = ?, expires_at = ?, detail = ? WHERE id = ?",
        (record.status, record.expires_at, json.dumps(record.detail, sort_keys=True), record.id),
    )


def _from_row(row: sqlite3.Row) -> ActionRecord:
    values = dict(row)
    values["dry_run"] = bool(values["dry_run"])
    values["detail"] = json.loads(values["detail"])
    return ActionRecord(**values)


def get_action(conn: sqlite3.Connection, action_id: str) -> ActionRecord | None:
    """Return the record with this id, or None."""
    row = conn.execute("SELECT * FROM response_actions WHERE id = ?", (action_id,)).fetchone()
    return _from_row(row) if row is not None else None


def list_actions(conn: sqlite3.Connection, status: str | None = None, limit: int = 100) -> list[ActionRecord]:
    """Return the newest records first, optionally only those with `status`."""
    query = "SELECT * FROM response_actions"
    parameters: list[Any] = []
    if status is not None:
        query += " WHERE status = ?"
        parameters.append(status)
    query += " ORDER BY created_at DESC LIMIT ?"
    # SQLite integers are signed 64-bit; a larger limit means no limit.
    parameters.append(min(limit, 2**63 - 1))
    return [_from_row(row) for row in conn.execute(query, parameters)]


def active_actions(conn: sqlite3.Connection, now: float) -> list[ActionRecord]:
    """Return applied actions that have not expired at wall-clock time `now`."""
    rows = conn.execute(
        "SELECT * FROM response_actions WHERE status = 'applied'"
        " AND (expires_at IS NULL OR expires_at > ?) ORDER BY created_at",
        (now,),
    )
    return [_from_row(row) for row in rows]


def acted_alert_rules(conn: sqlite3.Connection, limit: int) -> set[tuple[str, str]]:
    """Return (alert id, rule) of the newest `limit` actions taken or planned, escalations and undone ones included.

    Failed and skipped actions are left out, so a restarted responder tries
    them again.
    """
    rows = conn.execute(
        "SELECT alert_id, rule FROM response_actions WHERE alert_id IS NOT NULL"
        " AND status IN ('applied', 'dry_run', 'escalated', 'expired', 'undone')"
        " ORDER BY created_at DESC LIMIT ?",
        (limit,),
    )
    return {(row[0], row[1]) for row in rows}


def due_for_expiry(conn: sqlite3.Connection, now: float) -> list[ActionRecord]:
    """Return applied actions whose expires_at has passed at `now`."""
    rows = conn.execute(
        "SELECT * FROM response_actions WHERE status = 'applied' AND expires_at IS NOT NULL"
        " AND expires_at <= ? ORDER BY expires_at",
        (now,),
    )
    return [_from_row(row) for row in rows]


def end_action(conn: sqlite3.Connection, action_id: str, status: str, ended_by: str, now: float,
               detail: dict[str, Any] | None = None) -> bool:
    """Mark an applied action undone or expired; return False if it was not applied any more."""
    if status not in ("undone", "expired"):
        raise ValueError(f"invalid end status {status!r}; expected undone or expired")
    query = "UPDATE response_actions SET status = ?, ended_at = ?, ended_by = ?"
    parameters: list[Any] = [status, now, ended_by]
    if detail is not None:
        query += ", detail = ?"
        parameters.append(json.dumps(detail, sort_keys=True))
    query += " WHERE id = ? AND status = 'applied'"
    parameters.append(action_id)
    return conn.execute(query, parameters).rowcount == 1


def pending_releases(conn: sqlite3.Connection) -> list[ActionRecord]:
    """Return up to MAX_RELEASES_PER_QUERY undone bus commands whose release is pending, oldest first."""
    rows = conn.execute(
        "SELECT * FROM response_actions WHERE status = 'undone' AND action = 'bus_command'"
        " AND json_extract(detail, '$.release.state') = 'pending' ORDER BY ended_at LIMIT ?",
        (MAX_RELEASES_PER_QUERY,),
    )
    return [_from_row(row) for row in rows]


def update_release(conn: sqlite3.Connection, action_id: str, release: dict[str, Any]) -> bool:
    """Replace detail.release of an undone action whose release is still pending.

    Returns False when another process changed it first, so two responders
    on one store record a release once (both may still publish it).
    """
    if release.get("state") not in RELEASE_STATES:
        raise ValueError(f"invalid release state {release.get('state')!r}; expected one of {', '.join(RELEASE_STATES)}")
    cursor = conn.execute(
        "UPDATE response_actions SET detail = json_set(detail, '$.release', json(?))"
        " WHERE id = ? AND status = 'undone' AND json_extract(detail, '$.release.state') = 'pending'",
        (json.dumps(release, sort_keys=True), action_id),
    )
    return cursor.rowcount == 1


def undone_since(conn: sqlite3.Connection, since: float) -> list[ActionRecord]:
    """Return actions undone at or after wall-clock time `since`."""
    rows = conn.execute(
        "SELECT * FROM response_actions WHERE status = 'undone' AND ended_at >= ? ORDER BY ended_at", (since,))
    return [_from_row(row) for row in rows]

"""Per-user and per-source baselines: the habits the behaviour rules compare against.

A user baseline (entity_kind "user", keyed by user name) holds:
  logons             successful interactive logons learnt
  hours              logons by local hour of day, 24 counts
  weekday_hours      logons by local weekday (Monday first) and hour, 7 x 24 counts
  sources            client address or host name -> logons, at most MAX_SOURCES
  first_seen, last_seen   times of the first and last learnt logon or record access
  departments        EHR department -> records, at most MAX_DEPARTMENTS
  ehr_days           days with EHR record access
  ehr_patients_mean, ehr_patients_std, ehr_patients_max
                     distinct patients touched per such day
A source baseline (entity_kind "source", keyed by address or host name) contains
logons, hours, users (user -> logons, at most MAX_SOURCE_USERS), first_seen
and last_seen.

When a bounded map is full, a new key replaces the key with the fewest
logons (ties: the one inserted first), and the baseline's "evicted" counter
grows.

`rebuild_baselines` learns everything from the records of a period (the
learning period). `learn_records` adds new logons after detection has run on
them, so a new source or a dormant account is reported once; it leaves the
EHR day statistics alone, because a run may hold part of a day.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone

from engine.logins.records import SUCCESS, LoginRecord
from engine.logins.storage import load_records

MAX_SOURCES = 64
MAX_DEPARTMENTS = 16
MAX_SOURCE_USERS = 256

# Actions that are a person starting a session; Kerberos tickets, NTLM
# validations and privilege use accompany such a logon and would count it twice.
LOGON_ACTIONS = frozenset({"logon", "session_open"})
# Windows logon types of a person at a keyboard: 2 interactive, 10 remote
# interactive (RDP), 11 cached interactive. Type 3 (network) is a share or
# service access, which happens from many machines at once.
INTERACTIVE_LOGON_TYPES = frozenset({2, 10, 11})


def is_interactive_logon(record: LoginRecord) -> bool:
    """Return True for a successful logon of a person (not a service or network access)."""
    if record.outcome != SUCCESS or record.action not in LOGON_ACTIONS or record.user is None:
        return False
    return record.logon_type is None or record.logon_type in INTERACTIVE_LOGON_TYPES


def is_record_access(record: LoginRecord) -> bool:
    """Return True for an EHR patient-record access."""
    return record.outcome == SUCCESS and record.patient_ref is not None and record.action.startswith("record_")


def local_time(ts: float, utc_offset_s: int) -> datetime:
    """Return the site's local time of `ts`."""
    return datetime.fromtimestamp(ts, tz=timezone(timedelta(seconds=utc_offset_s)))


def new_user_baseline() -> dict:
    return {
        "logons": 0,
        "hours": [0] * 24,
        "weekday_hours": [[0] * 24 for _ in range(7)],
        "sources": {},
        "first_seen": None,
        "last_seen": None,
        "departments": {},
        "ehr_days": 0,
        "ehr_patients_mean": 0.0,
        "ehr_patients_std": 0.0,
        "ehr_patients_max": 0,
        "evicted": 0,
    }


def new_source_baseline() -> dict:
    return {"logons": 0, "hours": [0] * 24, "users": {}, "first_seen": None, "last_seen": None, "evicted": 0}


def _bump(table: dict, key: str, limit: int, baseline: dict, amount: int = 1) -> None:
    if key not in table and len(table) >= limit:
        # Python dicts keep insertion order, so min() picks the oldest of the rarest.
        rarest = min(table, key=table.get)
        del table[rarest]
        baseline["evicted"] += 1
    table[key] = table.get(key, 0) + amount


def _seen(baseline: dict, ts: float) -> None:
    if baseline["first_seen"] is None or ts < baseline["first_seen"]:
        baseline["first_seen"] = ts
    if baseline["last_seen"] is None or ts > baseline["last_seen"]:
        baseline["last_seen"] = ts


def _learn_one(users: dict, sources: dict, record: LoginRecord, utc_offset_s: int) -> None:
    if is_interactive_logon(record):
        user = users.setdefault(record.user, new_user_baseline())
        when = local_time(record.ts, utc_offset_s)
        user["logons"] += 1
        user["hours"][when.hour] += 1
        user["weekday_hours"][when.weekday()][when.hour] += 1
        _seen(user, record.ts)
        if record.src is not None:
            _bump(user["sources"], record.src, MAX_SOURCES, user)
            source = sources.setdefault(record.src, new_source_baseline())
            source["logons"] += 1
            source["hours"][when.hour] += 1
            _bump(source["users"], record.user, MAX_SOURCE_USERS, source)
            _seen(source, record.ts)
    elif is_record_access(record) and record.user is not None:
        user = users.setdefault(record.user, new_user_baseline())
        _seen(user, record.ts)
        if record.department:
            _bump(user["departments"], record.department, MAX_DEPARTMENTS, user)
        if record.src_host:
            _bump(user["sources"], record.src_host, MAX_SOURCES, user)


def load_baselines(conn: sqlite3.Connection) -> tuple[dict, dict]:
    """Return (user baselines, source baselines) from login_baselines."""
    users: dict = {}
    sources: dict = {}
    for kind, entity, data in conn.execute("SELECT entity_kind, entity, data FROM login_baselines"):
        (users if kind == "user" else sources)[entity] = json.loads(data)
    return users, sources


def save_baselines(conn: sqlite3.Connection, users: dict, sources: dict) -> None:
    """Replace the stored baselines of the given entities, in one transaction."""
    now = time.time()
    rows = [("user", name, json.dumps(data), now) for name, data in users.items()]
    rows += [("source", name, json.dumps(data), now) for name, data in sources.items()]
    with conn:
        conn.executemany(
            "INSERT OR REPLACE INTO login_baselines (entity_kind, entity, data, updated_at) VALUES (?, ?, ?, ?)",
            rows,
        )


def rebuild_baselines(
    conn: sqlite3.Connection, since_ts: float | None, until_ts: float | None, utc_offset_s: int = 0
) -> tuple[dict, dict]:
    """Learn baselines from the stored records of [since_ts, until_ts], replace the stored ones, and return them."""
    users: dict = {}
    sources: dict = {}
    patients_by_day: dict[str, dict] = defaultdict(lambda: defaultdict(set))
    for record in load_records(conn, since_ts, until_ts):
        _learn_one(users, sources, record, utc_offset_s)
        if is_record_access(record) and record.user is not None:
            day = local_time(record.ts, utc_offset_s).date().isoformat()
            patients_by_day[record.user][day].add(record.patient_ref)
    for name, days in patients_by_day.items():
        counts = [len(patients) for patients in days.values()]
        mean = sum(counts) / len(counts)
        variance = sum((c - mean) ** 2 for c in counts) / len(counts)
        user = users[name]
        user["ehr_days"] = len(counts)
        user["ehr_patients_mean"] = mean
        user["ehr_patients_std"] = math.sqrt(variance)
        user["ehr_patients_max"] = max(counts)
    with conn:
        conn.execute("DELETE FROM login_baselines")
    save_baselines(conn, users, sources)
    return users, sources


def learn_records(users: dict, sources: dict, records: list[LoginRecord], utc_offset_s: int = 0) -> tuple[set, set]:
    """Add new logons to the baselines in place; return the (user, source) names changed."""
    changed_users: set = set()
    changed_sources: set = set()
    for record in records:
        if is_interactive_logon(record) or is_record_access(record):
            _learn_one(users, sources, record, utc_offset_s)
            changed_users.add(record.user)
            if record.src is not None and is_interactive_logon(record):
                changed_sources.add(record.src)
    return changed_users, changed_sources


def user_department(baseline: dict | None) -> str | None:
    """Return the department a user's EHR records most often carry, or None."""
    if not baseline or not baseline["departments"]:
        return None
    return max(baseline["departments"], key=baseline["departments"].get)

"""Tables of the logins subsystem in the shared SQLite store.

login_records      one row per LoginRecord; UNIQUE (origin, line_no), so a
                   line stored twice is ignored the second time
login_checkpoints  per input path: the file's identity (device, inode and a
                   SHA-256 of its first line) and how far it has been read
login_baselines    per user and per source: a JSON document of learnt habits

User names from log files are stored as logged, so that baselines survive a
change of the pseudonymisation key. Alerts pseudonymise them on the way out.
User names seen in traffic arrive as keyed pseudonyms from `analyze` and
`run`. Patient references and surnames arrive hashed from the EHR reader.
"""

from __future__ import annotations

import json
import operator
import sqlite3
import time
from dataclasses import dataclass

from engine.logins.records import RECORD_FIELDS, LoginRecord
from engine.store import path_text

SCHEMA = """
CREATE TABLE IF NOT EXISTS login_records (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    outcome TEXT NOT NULL,
    source TEXT NOT NULL,
    user TEXT,
    domain TEXT,
    action TEXT NOT NULL,
    service TEXT,
    method TEXT,
    src_ip TEXT,
    src_port INTEGER,
    src_host TEXT,
    dst_ip TEXT,
    dst_port INTEGER,
    dst_host TEXT,
    logon_type INTEGER,
    event_id INTEGER,
    privileged INTEGER NOT NULL,
    invalid_user INTEGER NOT NULL,
    count INTEGER NOT NULL,
    role TEXT,
    department TEXT,
    patient_ref TEXT,
    patient_department TEXT,
    user_surname_key TEXT,
    patient_surname_key TEXT,
    origin TEXT,
    line_no INTEGER,
    flow_id INTEGER,
    protocol TEXT,
    UNIQUE (origin, line_no)
);
CREATE INDEX IF NOT EXISTS login_records_ts ON login_records (ts);
CREATE INDEX IF NOT EXISTS login_records_user_ts ON login_records (user, ts);

CREATE TABLE IF NOT EXISTS login_checkpoints (
    path TEXT PRIMARY KEY,
    device INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    first_line_sha256 TEXT NOT NULL,
    offset INTEGER NOT NULL,         -- bytes read, always at a line or entry boundary
    line_no INTEGER NOT NULL,        -- lines (or entries) read
    year INTEGER,                    -- BSD syslog timestamp state: year of the last line
    previous_month INTEGER,          -- and its month, for the December to January rollover
    header TEXT,                     -- CSV header of an EHR audit log, as a JSON list
    updated_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS login_baselines (
    entity_kind TEXT NOT NULL,       -- "user" or "source"
    entity TEXT NOT NULL,
    data TEXT NOT NULL,              -- JSON, see engine.logins.baseline
    updated_at REAL NOT NULL,
    PRIMARY KEY (entity_kind, entity)
);
"""

_COLUMNS = tuple(name for name in RECORD_FIELDS if name != "id")
_record_values = operator.attrgetter("id", *_COLUMNS)
_INSERT = (
    f"INSERT OR IGNORE INTO login_records (id, {', '.join(_COLUMNS)})"
    f" VALUES (?, {', '.join('?' for _ in _COLUMNS)})"
)


# Columns that `logins detect` reads, per table; every record column, since
# load_records builds whole LoginRecord objects.
READ_COLUMNS = {
    "login_records": ("id", *_COLUMNS),
    "login_baselines": ("entity_kind", "entity", "data"),
}


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the logins tables if they do not exist yet."""
    conn.executescript(SCHEMA)


def insert_records(conn: sqlite3.Connection, records: list[LoginRecord]) -> list[LoginRecord]:
    """Insert records inside the caller's transaction; return those newly stored, with ids set.

    A record whose (origin, line_no) is already stored is skipped and
    left with id None.
    """
    if not records:
        return []
    first_id = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM login_records").fetchone()[0]
    rows = []
    for offset, record in enumerate(records):
        record.id = first_id + offset
        rows.append(_record_values(record))
    before = conn.total_changes
    conn.executemany(_INSERT, rows)
    if conn.total_changes - before == len(records):
        return records
    stored = {
        row[0]
        for row in conn.execute(
            "SELECT id FROM login_records WHERE id BETWEEN ? AND ?", (first_id, first_id + len(records) - 1)
        )
    }
    kept = []
    for record in records:
        if record.id in stored:
            kept.append(record)
        else:
            record.id = None
    return kept


def _row_to_record(row: sqlite3.Row) -> LoginRecord:
    values = dict(row)
    values["privileged"] = bool(values["privileged"])
    values["invalid_user"] = bool(values["invalid_user"])
    return LoginRecord(**values)


def load_records(
    conn: sqlite3.Connection, since_ts: float | None = None, until_ts: float | None = None
) -> list[LoginRecord]:
    """Return stored records with since_ts <= ts <= until_ts, in time order."""
    query = f"SELECT id, {', '.join(_COLUMNS)} FROM login_records WHERE 1=1"
    parameters: list = []
    if since_ts is not None:
        query += " AND ts >= ?"
        parameters.append(since_ts)
    if until_ts is not None:
        query += " AND ts <= ?"
        parameters.append(until_ts)
    query += " ORDER BY ts, id"
    cursor = conn.execute(query, parameters)
    cursor.row_factory = sqlite3.Row
    return [_row_to_record(row) for row in cursor]


@dataclass
class Checkpoint:
    path: str
    device: int
    inode: int
    first_line_sha256: str
    offset: int = 0
    line_no: int = 0
    year: int | None = None
    previous_month: int | None = None
    header: list[str] | None = None

    @property
    def origin(self) -> str:
        """Return the file identity stored in LoginRecord.origin: device:inode:first-line hash."""
        return f"{self.device}:{self.inode}:{self.first_line_sha256[:16]}"


def load_checkpoint(conn: sqlite3.Connection, path: str) -> Checkpoint | None:
    row = conn.execute(
        "SELECT path, device, inode, first_line_sha256, offset, line_no, year, previous_month, header"
        " FROM login_checkpoints WHERE path = ?",
        (path_text(path),),
    ).fetchone()
    if row is None:
        return None
    header = json.loads(row[8]) if row[8] else None
    return Checkpoint(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], header)


def save_checkpoint(conn: sqlite3.Connection, checkpoint: Checkpoint) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO login_checkpoints (path, device, inode, first_line_sha256, offset,"
        " line_no, year, previous_month, header, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            path_text(checkpoint.path),
            checkpoint.device,
            checkpoint.inode,
            checkpoint.first_line_sha256,
            checkpoint.offset,
            checkpoint.line_no,
            checkpoint.year,
            checkpoint.previous_month,
            json.dumps(checkpoint.header) if checkpoint.header is not None else None,
            time.time(),
        ),
    )

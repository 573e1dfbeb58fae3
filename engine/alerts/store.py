"""Alert tables in the SQLite store: current alerts, the publication log and run statistics.

alert_events is append-only: one row per publication, with `seq` an INTEGER
PRIMARY KEY. append() assigns max(seq)+1 and rows are never deleted, so seq
has no gaps. A rolled-back publication leaves no row and uses no number. The bus and the replay socket both serve bodies from this table,
which is why a publication is committed here before it is sent.

Each store is one alert stream: alert_stream contains a random stream id,
created with the store, that every publication carries next to its seq.
Two stores never share a stream id, so a consumer that tracks seqs per
(sensor_id, stream_id) keeps apart two sensors with the same sensor id, and
a sensor whose store was replaced (seqs starting again at 1).

In a collector's merged store, alert_events.seq is the collector's own
sequence, and sensor_id, sensor_stream_id and sensor_seq keep each sensor's
sequence, unique per sensor stream so a message received twice is stored
once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

from engine.alerts.schema import Alert, pack_alert, unpack_alert
from engine.store import open_store, path_text
from engine.taxonomy import SEVERITIES, severity_rank

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,             -- seq of the latest publication
    revision INTEGER NOT NULL,
    sensor_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    category TEXT NOT NULL,
    severity TEXT NOT NULL,
    technique TEXT,
    state TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    src_ip TEXT,
    dst_ip TEXT,
    count INTEGER NOT NULL,
    summary TEXT NOT NULL,
    body BLOB NOT NULL                -- msgpack of the latest revision
);
CREATE INDEX IF NOT EXISTS alerts_last_seen ON alerts (last_seen);
CREATE INDEX IF NOT EXISTS alerts_category ON alerts (category, severity);

CREATE TABLE IF NOT EXISTS alert_events (
    seq INTEGER PRIMARY KEY,          -- gap-free publication sequence of this store
    alert_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    topic TEXT NOT NULL,
    published_at REAL NOT NULL,       -- wall-clock seconds since the epoch
    sensor_id TEXT NOT NULL,
    sensor_seq INTEGER,               -- the sensor's seq; set in a collector's store only
    body BLOB NOT NULL,               -- msgpack body exactly as sent on the bus
    sensor_stream_id TEXT NOT NULL DEFAULT ''  -- the sensor's stream id; set in a collector's store only
);

CREATE TABLE IF NOT EXISTS alert_stream (
    id INTEGER PRIMARY KEY CHECK (id = 1),  -- one row: the store is one stream
    stream_id TEXT NOT NULL,          -- 32 hex digits, random, created with the store
    created_at REAL NOT NULL          -- wall-clock seconds since the epoch
);

CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    sensor_id TEXT NOT NULL,
    source TEXT NOT NULL,             -- capture file paths or interface name
    started_at REAL NOT NULL,         -- wall-clock seconds since the epoch
    ended_at REAL,                    -- NULL while the run is in progress
    packets INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    flows INTEGER NOT NULL DEFAULT 0,
    alerts INTEGER NOT NULL DEFAULT 0,
    first_packet_time REAL,           -- capture time of the first packet
    last_packet_time REAL,            -- capture time of the last packet
    anomaly_counters TEXT NOT NULL DEFAULT '{}'  -- JSON object: counter name -> count
);
"""

# Columns that the read commands (alerts list and show) query, per table.
READ_COLUMNS = {
    "alerts": ("id", "seq", "severity", "category", "last_seen", "body"),
    "alert_events": ("seq", "body"),
}

# Maximum rows per replay page; a request with a larger limit gets this many.
MAX_PAGE_SIZE = 1_000
# Largest value of an SQLite INTEGER (signed 64-bit).
MAX_SQLITE_INTEGER = 2**63 - 1


# Created after the migration in ensure_schema(), because a store written
# before stream ids has no sensor_stream_id column to index yet.
INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS alert_events_sensor_stream_seq
    ON alert_events (sensor_id, sensor_stream_id, sensor_seq) WHERE sensor_seq IS NOT NULL;
"""


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the alert tables if they do not exist yet, and migrate a store written before stream ids.

    The migration adds alert_events.sensor_stream_id ('' for the rows
    already stored) and replaces the (sensor_id, sensor_seq) unique index,
    which would reject a second stream of the same sensor, with one that
    includes the stream. A store without a stream id gets a new one.
    """
    conn.executescript(SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(alert_events)")}
    if "sensor_stream_id" not in columns:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated between the check and the lock.
            columns = {row[1] for row in conn.execute("PRAGMA table_info(alert_events)")}
            if "sensor_stream_id" not in columns:
                conn.execute("ALTER TABLE alert_events ADD COLUMN sensor_stream_id TEXT NOT NULL DEFAULT ''")
            conn.execute("DROP INDEX IF EXISTS alert_events_sensor_seq")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    conn.executescript(INDEXES)
    # The fixed row id makes a second process's insert a no-op, so two
    # processes opening a new store at once agree on one stream id.
    conn.execute(
        "INSERT INTO alert_stream (id, stream_id, created_at) VALUES (1, ?, ?) ON CONFLICT (id) DO NOTHING",
        (uuid.uuid4().hex, time.time()),
    )


def read_stream_id(conn: sqlite3.Connection) -> str:
    """Return the stream id of the store, or '' for a store written before stream ids (read-only there)."""
    try:
        row = conn.execute("SELECT stream_id FROM alert_stream WHERE id = 1").fetchone()
    except sqlite3.OperationalError:
        # A read-only store written before stream ids has no such table.
        return ""
    return row[0] if row is not None else ""


@dataclass
class Publication:
    seq: int
    topic: str
    body: bytes  # msgpack, with seq and sensor_id inside


class AlertStore:
    """The alert tables of one store file, used from one thread."""

    def __init__(self, path: str | os.PathLike | None = None, read_only: bool = False):
        # A read-only store is opened by read commands, which must not add
        # tables to a file; the caller checks its tables with
        # engine.store.check_store_tables.
        self.conn = open_store(path, read_only=read_only)
        if not read_only:
            ensure_schema(self.conn)
        self.stream_id = read_stream_id(self.conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def append(self, alert: Alert) -> Publication:
        """Assign the next seq to `alert`, store it and commit; return what to publish.

        Sets alert.seq and alert.stream_id. The alerts row is replaced by this revision unless
        the stored one has a higher revision.
        """
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM alert_events").fetchone()
            alert.seq = row[0]
            alert.stream_id = self.stream_id
            body = pack_alert(alert)
            topic = alert.topic
            conn.execute(
                "INSERT INTO alert_events (seq, alert_id, revision, topic, published_at, sensor_id, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (alert.seq, alert.id, alert.revision, topic, time.time(), alert.sensor_id, body),
            )
            self._upsert_alert(alert, body)
            conn.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back after some errors (a full disk),
            # and a second ROLLBACK would hide the first error.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            alert.seq = None
            raise
        return Publication(alert.seq, topic, body)

    def append_received(self, topic: str, body: bytes, stream_id: str | None = None) -> int | None:
        """Store a publication received from a sensor's bus under a new collector seq.

        `stream_id` is the sensor stream the publication came from; None
        takes it from the body (replay replies name it for bodies stored
        before stream ids). Returns the collector seq, or None when this
        (sensor_id, stream_id, seq) is already stored. Raises ValueError
        for a body that is not an alert record.
        """
        alert = unpack_alert(body)
        if alert.seq is None:
            raise ValueError(f"received alert {alert.id} has no seq; the sender must set it")
        if stream_id is None:
            stream_id = alert.stream_id
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            seen = conn.execute(
                "SELECT 1 FROM alert_events WHERE sensor_id = ? AND sensor_stream_id = ? AND sensor_seq = ?",
                (alert.sensor_id, stream_id, alert.seq),
            ).fetchone()
            if seen is not None:
                conn.execute("ROLLBACK")
                return None
            cursor = conn.execute(
                "INSERT INTO alert_events (alert_id, revision, topic, published_at, sensor_id, sensor_seq,"
                " sensor_stream_id, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (alert.id, alert.revision, topic, time.time(), alert.sensor_id, alert.seq, stream_id, body),
            )
            collector_seq = cursor.lastrowid
            # The alerts row keeps the sensor's seq inside the body; its seq
            # column points at the collector's event row.
            alert.seq = collector_seq
            self._upsert_alert(alert, body)
            conn.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back after some errors (a full disk),
            # and a second ROLLBACK would hide the first error.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return collector_seq

    def _upsert_alert(self, alert: Alert, body: bytes) -> None:
        self.conn.execute(
            "INSERT INTO alerts (id, seq, revision, sensor_id, kind, category, severity, technique,"
            " state, first_seen, last_seen, src_ip, dst_ip, count, summary, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, revision = excluded.revision,"
            " severity = excluded.severity, state = excluded.state, first_seen = excluded.first_seen,"
            " last_seen = excluded.last_seen, count = excluded.count, summary = excluded.summary,"
            " dst_ip = excluded.dst_ip, body = excluded.body"
            " WHERE excluded.revision >= alerts.revision",
            (
                alert.id, alert.seq, alert.revision, alert.sensor_id, alert.kind, alert.category,
                alert.severity, alert.technique, alert.state, alert.first_seen, alert.last_seen,
                alert.src.ip, alert.dst.ip, alert.count, alert.summary, body,
            ),
        )

    def last_seq(self) -> int:
        """Return the highest seq in alert_events, 0 for an empty store."""
        return self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM alert_events").fetchone()[0]

    def events_since(
        self,
        since: int,
        until: int | None = None,
        limit: int = MAX_PAGE_SIZE,
        topic_prefixes: tuple[str, ...] = (),
    ) -> list[Publication]:
        """Return publications with since < seq <= until, oldest first, at most `limit`."""
        limit = max(1, min(int(limit), MAX_PAGE_SIZE))
        query = "SELECT seq, topic, body FROM alert_events WHERE seq > ?"
        parameters: list[Any] = [since]
        if until is not None:
            query += " AND seq <= ?"
            parameters.append(until)
        if topic_prefixes:
            # substr() rather than LIKE, whose '_' wildcard would match any
            # character in categories such as lateral_movement.
            query += " AND (" + " OR ".join("substr(topic, 1, ?) = ?" for _ in topic_prefixes) + ")"
            for prefix in topic_prefixes:
                parameters += [len(prefix), prefix]
        query += " ORDER BY seq LIMIT ?"
        parameters.append(limit)
        return [Publication(seq, topic, body) for seq, topic, body in self.conn.execute(query, parameters)]

    def list_alerts(
        self,
        since: float | None = None,
        severity: str | None = None,
        category: str | None = None,
        limit: int | None = None,
    ) -> list[Alert]:
        """Return current alerts, newest last_seen first, filtered by capture time, minimum severity and category."""
        query = "SELECT body FROM alerts WHERE 1 = 1"
        parameters: list[Any] = []
        if since is not None:
            query += " AND last_seen >= ?"
            parameters.append(since)
        if severity is not None:
            allowed = SEVERITIES[severity_rank(severity):]
            query += f" AND severity IN ({', '.join('?' for _ in allowed)})"
            parameters += allowed
        if category is not None:
            query += " AND category = ?"
            parameters.append(category)
        query += " ORDER BY last_seen DESC, seq DESC"
        if limit is not None:
            query += " LIMIT ?"
            parameters.append(min(limit, MAX_SQLITE_INTEGER))
        return [unpack_alert(row[0]) for row in self.conn.execute(query, parameters)]

    def get_alert(self, alert_id_or_seq: str) -> Alert | None:
        """Return an alert by id (its latest revision) or by the seq of one publication."""
        row = self.conn.execute("SELECT body FROM alerts WHERE id = ?", (alert_id_or_seq,)).fetchone()
        # str.isdigit() also accepts digits such as "²" that int() rejects,
        # and a seq above SQLite's INTEGER range cannot be stored.
        if row is None and alert_id_or_seq.isascii() and alert_id_or_seq.isdigit():
            seq = int(alert_id_or_seq)
            if seq <= MAX_SQLITE_INTEGER:
                row = self.conn.execute("SELECT body FROM alert_events WHERE seq = ?", (seq,)).fetchone()
        return unpack_alert(row[0]) if row is not None else None

    def iter_events(self) -> Iterator[tuple[int, str | None, int | None, bytes]]:
        """Yield (seq, sensor_id, sensor_seq, body) for every publication, oldest first."""
        yield from self.conn.execute(
            "SELECT seq, sensor_id, sensor_seq, body FROM alert_events ORDER BY seq"
        )

    def last_sensor_seqs(self) -> dict[tuple[str, str], int]:
        """Return the highest sensor seq stored per (sensor_id, sensor stream id), in a collector's store."""
        rows = self.conn.execute(
            "SELECT sensor_id, sensor_stream_id, MAX(sensor_seq) FROM alert_events"
            " WHERE sensor_seq IS NOT NULL GROUP BY sensor_id, sensor_stream_id"
        )
        return {(sensor_id, stream_id): last for sensor_id, stream_id, last in rows}


@dataclass
class RunStats:
    """Capture statistics of one analysis run, written to the runs table."""

    sensor_id: str
    source: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    packets: int = 0
    bytes: int = 0
    flows: int = 0
    alerts: int = 0
    first_packet_time: float | None = None
    last_packet_time: float | None = None
    anomaly_counters: dict[str, int] = field(default_factory=dict)


def write_run_stats(conn: sqlite3.Connection, stats: RunStats) -> None:
    """Insert or update the runs row of `stats` (call it at start, per progress step and at end)."""
    ensure_schema(conn)
    conn.execute(
        "INSERT INTO runs (run_id, sensor_id, source, started_at, ended_at, packets, bytes, flows,"
        " alerts, first_packet_time, last_packet_time, anomaly_counters)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (run_id) DO UPDATE SET ended_at = excluded.ended_at, packets = excluded.packets,"
        " bytes = excluded.bytes, flows = excluded.flows, alerts = excluded.alerts,"
        " first_packet_time = excluded.first_packet_time, last_packet_time = excluded.last_packet_time,"
        " anomaly_counters = excluded.anomaly_counters",
        (
            stats.run_id, stats.sensor_id, path_text(stats.source), stats.started_at, stats.ended_at,
            stats.packets, stats.bytes, stats.flows, stats.alerts, stats.first_packet_time,
            stats.last_packet_time, json.dumps(stats.anomaly_counters, sort_keys=True),
        ),
    )


def read_run_stats(conn: sqlite3.Connection, run_id: str) -> RunStats | None:
    """Return the runs row `run_id`, or None if there is none."""
    ensure_schema(conn)
    row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        return None
    values = dict(row)
    values["anomaly_counters"] = json.loads(values["anomaly_counters"])
    return RunStats(**values)

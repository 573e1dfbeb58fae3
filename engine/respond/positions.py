"""The responder's position in each alert stream, so that a restarted responder resumes where it stopped.

One row per (sensor_id, stream_id) in the responder's own store: the
highest seq it handled in that stream. At start the responder passes these
positions to GapFillingSubscriber, which fetches everything after them
through replay, so alerts published while the responder was down are
handled once it runs again.
"""

from __future__ import annotations

import sqlite3
import time

from engine.alerts.bus import MAX_TRACKED_STREAMS, StreamKey

SCHEMA = """
CREATE TABLE IF NOT EXISTS respond_positions (
    sensor_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,          -- '' for a sensor that publishes no stream id
    last_seq INTEGER NOT NULL,        -- highest seq handled in this stream
    updated_at REAL NOT NULL,         -- wall-clock seconds since the epoch
    PRIMARY KEY (sensor_id, stream_id)
);
"""


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the respond_positions table if it does not exist yet."""
    conn.executescript(SCHEMA)


def load_positions(conn: sqlite3.Connection, limit: int = MAX_TRACKED_STREAMS) -> dict[StreamKey, int]:
    """Return the last handled seq per stream, for the `limit` streams updated most recently."""
    ensure_schema(conn)
    rows = conn.execute(
        "SELECT sensor_id, stream_id, last_seq FROM respond_positions ORDER BY updated_at DESC LIMIT ?", (limit,)
    ).fetchall()
    # Oldest first, so the subscriber's eviction order matches the store's.
    return {(sensor_id, stream_id): last_seq for sensor_id, stream_id, last_seq in reversed(rows)}


def save_position(conn: sqlite3.Connection, key: StreamKey, seq: int, now: float | None = None) -> None:
    """Record `seq` as handled in stream `key`; a lower seq than the stored one leaves it unchanged."""
    sensor_id, stream_id = key
    conn.execute(
        "INSERT INTO respond_positions (sensor_id, stream_id, last_seq, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (sensor_id, stream_id) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq),"
        " updated_at = excluded.updated_at",
        (sensor_id, stream_id, seq, time.time() if now is None else now),
    )

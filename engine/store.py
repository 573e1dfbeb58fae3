"""The SQLite store shared by every subsystem.

One database file holds alerts, assets, findings, login records, response
actions and capture statistics. Each subsystem owns its tables and creates
them with CREATE TABLE IF NOT EXISTS in its own ensure_schema(conn), so a
store written by an older version gains new tables on first open.

WAL mode lets readers (`wardwatch alerts list`, reports, the responder) run
while a sensor writes; synchronous=NORMAL in WAL mode keeps every committed
transaction across a process crash, and loses at most the last ones on power
loss.
"""

import os
import sqlite3

DEFAULT_STORE_PATH = "wardwatch.db"
STORE_ENV_VARIABLE = "WARDWATCH_STORE"
BUSY_TIMEOUT_MS = 10_000


def default_store_path() -> str:
    """Return the store path from $WARDWATCH_STORE, else wardwatch.db in the working directory."""
    return os.environ.get(STORE_ENV_VARIABLE) or DEFAULT_STORE_PATH


def open_store(path: str | os.PathLike | None = None) -> sqlite3.Connection:
    """Open (creating if needed) the store at `path` in WAL mode."""
    if path is None:
        path = default_store_path()
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"store directory {parent} does not exist")
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn

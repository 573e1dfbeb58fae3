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


class StoreError(OSError):
    """A store that cannot be opened: its directory is missing, or the file is not an SQLite database.

    `wardwatch` turns it into an error message and exit code 1 for every
    command, so the message names the path and what to do.
    """


def path_text(path: str | os.PathLike) -> str:
    """Return `path` as valid UTF-8 text for a TEXT column.

    A file name with bytes that are not UTF-8 reaches Python as a str with
    lone surrogates, which sqlite3 rejects. Those bytes become \\xNN escapes,
    so one path always maps to the same text.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def default_store_path() -> str:
    """Return the store path from $WARDWATCH_STORE, else wardwatch.db in the working directory."""
    return os.environ.get(STORE_ENV_VARIABLE) or DEFAULT_STORE_PATH


def open_store(path: str | os.PathLike | None = None) -> sqlite3.Connection:
    """Open (creating if needed) the store at `path` in WAL mode.

    Raises StoreError when the directory is missing or the file cannot be
    opened as an SQLite database.
    """
    if path is None:
        path = default_store_path()
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise StoreError(f"store directory {parent} does not exist; create it or pass another store path")
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as error:
        raise StoreError(f"cannot open store {path}: {error}") from error
    try:
        conn.row_factory = sqlite3.Row
        # The first statement reads the file header, so a file that is not
        # SQLite fails here rather than at the first query.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except sqlite3.DatabaseError as error:
        conn.close()
        raise StoreError(
            f"cannot open store {path}: {error}; check that it is a WardWatch store this user can write,"
            " or pass the path of a file that does not exist yet"
        ) from error
    return conn

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

import logging
import os
import sqlite3
import urllib.parse
from collections.abc import Iterable, Mapping

DEFAULT_STORE_PATH = "wardwatch.db"
STORE_ENV_VARIABLE = "WARDWATCH_STORE"
BUSY_TIMEOUT_MS = 10_000

# Every table a WardWatch subsystem creates, with a column it always has.
# A file that has none of these tables, or has one without its column,
# belongs to another application, and read commands reject it.
STORE_TABLES = {
    "alerts": "body",
    "alert_events": "alert_id",
    "runs": "run_id",
    "assets": "ip",
    "asset_attributes": "kind",
    "access_baseline": "asset_ip",
    "access_baseline_meta": "key",
    "login_records": "outcome",
    "login_checkpoints": "first_line_sha256",
    "login_baselines": "entity_kind",
    "response_actions": "actor",
    "analysed_captures": "sha256",
}

logger = logging.getLogger(__name__)


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


def open_store(path: str | os.PathLike | None = None, read_only: bool = False) -> sqlite3.Connection:
    """Open (creating if needed) the store at `path` in WAL mode.

    With read_only=True the file must exist and is opened read-only
    instead: nothing is created or written, so read commands can run on a
    file this user cannot write. Raises StoreError when the directory is
    missing or the file cannot be opened as an SQLite database.
    """
    if path is None:
        path = default_store_path()
    path = os.fspath(path)
    if read_only:
        return _open_read_only(path)
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


def _read_only_uri(path: str, immutable: bool) -> str:
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    if immutable:
        uri += "&immutable=1"
    return uri


def _connect_read_only(path: str, immutable: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(
        _read_only_uri(path, immutable), uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only=ON")
        # The first read of the schema fails on a file that is not SQLite.
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _open_read_only(path: str) -> sqlite3.Connection:
    if not os.path.isfile(path):
        raise StoreError(f"store {path} not found; pass --store PATH or run `wardwatch analyze` first")
    try:
        return _connect_read_only(path, immutable=False)
    except sqlite3.DatabaseError as error:
        first_error = error
    # A WAL store needs its -shm file, which a reader cannot create on
    # read-only media. immutable=1 reads the main file without it.
    directory = os.path.dirname(os.path.abspath(path))
    if isinstance(first_error, sqlite3.OperationalError) and not os.access(directory, os.W_OK):
        wal_path = path + "-wal"
        if os.path.isfile(wal_path) and os.path.getsize(wal_path) > 0:
            # NOTE: immutable mode ignores the write-ahead log, so commits
            # that were never checkpointed into the main file are not seen.
            logger.warning(
                "store %s is on read-only media and its write-ahead log %s cannot be read;"
                " the newest alerts may be missing, so copy both files to writable media to see them",
                path, wal_path,
            )
        try:
            return _connect_read_only(path, immutable=True)
        except sqlite3.DatabaseError as error:
            first_error = error
    raise StoreError(
        f"cannot open store {path}: {first_error}; check that it is a WardWatch store this user can read"
    ) from first_error


def _table_columns(conn: sqlite3.Connection, table: str) -> set[str]:
    # PRAGMA table_info takes no bound parameter, so the name is quoted.
    quoted = table.replace('"', '""')
    return {row[1] for row in conn.execute(f'PRAGMA table_info("{quoted}")')}


def check_store_tables(
    conn: sqlite3.Connection, path: str | os.PathLike, expected: Mapping[str, Iterable[str]]
) -> set[str]:
    """Check that the tables a command reads have WardWatch's columns; return the expected tables that are missing.

    `expected` maps a table name to the columns the command reads. A missing
    table means nothing of that kind was stored yet. Raises StoreError when a
    table of STORE_TABLES or of `expected` lacks a column, or when the file
    has tables but none of STORE_TABLES, because then it belongs to another
    application.
    """
    present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if present and not present & STORE_TABLES.keys():
        listed = ", ".join(sorted(present)[:5])
        raise StoreError(
            f"{os.fspath(path)} is an SQLite database but not a WardWatch store (its tables: {listed});"
            " pass --store with a store written by `wardwatch analyze`"
        )
    required = {table: [column] for table, column in STORE_TABLES.items()}
    for table, columns in expected.items():
        required.setdefault(table, [])
        required[table] += [column for column in columns if column not in required[table]]
    for table, columns in required.items():
        if table not in present:
            continue
        lacking = [column for column in columns if column not in _table_columns(conn, table)]
        if lacking:
            noun = "column" if len(lacking) == 1 else "columns"
            raise StoreError(
                f"{os.fspath(path)} is not a WardWatch store: its table {table} lacks the {noun}"
                f" {', '.join(lacking)}; pass --store with a store written by `wardwatch analyze`"
            )
    return {table for table in expected if table not in present}

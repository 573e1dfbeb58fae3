"""The analysed_captures table: which capture files a store has already analysed.

Analysing one capture twice into one store would store every alert twice
and double the report's counts. `wardwatch analyze` therefore records the
SHA-256 of each capture file it finished and rejects the same content later
unless the operator passes --force.

The digest covers the capture's bytes after decompression, so a gzip or
zstd copy of an analysed capture is recognised too. Standard input is not
recorded: it cannot be read twice.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import os
import sqlite3
import time
import zlib
from dataclasses import dataclass

from engine.capture.files import GZIP_MAGIC, ZSTD_MAGIC, ZstdStream
from engine.store import path_text

SCHEMA = """
CREATE TABLE IF NOT EXISTS analysed_captures (
    sha256 TEXT NOT NULL,             -- SHA-256 of the capture's decompressed bytes, 64 hex digits
    run_id TEXT NOT NULL,             -- the runs row of the analysis
    source TEXT NOT NULL,             -- absolute path the capture was read from
    size_bytes INTEGER NOT NULL,      -- decompressed size when it was hashed
    analysed_at REAL NOT NULL,        -- wall-clock seconds since the epoch
    PRIMARY KEY (sha256, run_id)
);
"""

# Bytes hashed per read; large enough that the hash runs at disk speed.
READ_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class AnalysedCapture:
    """One earlier analysis of a capture with the same content."""

    sha256: str
    run_id: str
    source: str
    analysed_at: float

    def describe(self) -> str:
        """Return when and from which path the capture was analysed, for an error message."""
        moment = datetime.datetime.fromtimestamp(self.analysed_at, tz=datetime.timezone.utc)
        return f"{moment:%Y-%m-%d %H:%M} UTC as {self.source} (run {self.run_id})"


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the analysed_captures table if it does not exist yet."""
    conn.executescript(SCHEMA)


def file_sha256(path: str | os.PathLike) -> tuple[str, int]:
    """Return the SHA-256 hex digest and the size in bytes of a capture's decompressed content.

    A gzip or zstd file that fails to decompress is hashed as stored, and
    reading it for the analysis reports the error.
    """
    try:
        return _stream_sha256(path, decompress=True)
    except _decompress_errors():
        return _stream_sha256(path, decompress=False)


def _decompress_errors() -> tuple[type[BaseException], ...]:
    # gzip raises zlib.error on a damaged deflate stream, zstandard its own
    # ZstdError; neither is an OSError.
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, zlib.error)
    try:
        import zstandard
    except ImportError:
        return errors
    return errors + (zstandard.ZstdError,)


def _stream_sha256(path, decompress: bool) -> tuple[str, int]:
    digest = hashlib.sha256()
    size_bytes = 0
    with open(path, "rb") as raw:
        head = raw.read(4)
        raw.seek(0)
        stream = raw
        if decompress and head.startswith(GZIP_MAGIC):
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif decompress and head == ZSTD_MAGIC:
            stream = ZstdStream(raw)
        while chunk := stream.read(READ_CHUNK_BYTES):
            digest.update(chunk)
            size_bytes += len(chunk)
    return digest.hexdigest(), size_bytes


def find_analysed(conn: sqlite3.Connection, sha256: str) -> AnalysedCapture | None:
    """Return the latest earlier analysis of a capture with this digest, or None."""
    row = conn.execute(
        "SELECT sha256, run_id, source, analysed_at FROM analysed_captures WHERE sha256 = ?"
        " ORDER BY analysed_at DESC LIMIT 1",
        (sha256,),
    ).fetchone()
    if row is None:
        return None
    return AnalysedCapture(row[0], row[1], row[2], row[3])


def record_analysed(conn: sqlite3.Connection, sha256: str, size_bytes: int, run_id: str, source: str) -> None:
    """Record that the run `run_id` analysed the capture with this digest."""
    conn.execute(
        "INSERT OR REPLACE INTO analysed_captures (sha256, run_id, source, size_bytes, analysed_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (sha256, run_id, path_text(source), size_bytes, time.time()),
    )

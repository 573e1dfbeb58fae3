"""Incremental, checkpointed reading of log files into login_records.

Each input path has a checkpoint: the identity of the file last read there
(device, inode and a SHA-256 of its first line) and the byte offset reached,
always at a line or entry boundary. Records and the checkpoint are committed
in one transaction, so a crash between them cannot count a line twice.

Rotation: the path may name a different file than the checkpoint does,
because logrotate renamed the old one and created a new one. Then the old
file is looked for in the same directory by device and inode and read to
its end from the saved offset, and the new file is read from its start.
When the path names the same inode but its first line changed, or the file
is shorter than the offset (copytruncate), it is read again from the start.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from stat import S_ISREG

from engine.logins import authlog, storage
from engine.logins.ehr import ColumnMapping, parse_ehr_audit
from engine.logins.records import SOURCE_JOURNALD, SOURCE_SYSLOG, LoginRecord
from engine.logins.windows import parse_windows_events
from engine.store import path_text

log = logging.getLogger(__name__)

FORMATS = ("auto", "syslog", "journald", "journald-json", "windows", "ehr")
CHUNK_BYTES = 8 << 20  # read size; a longer line is skipped and counted as one malformed line
FIRST_LINE_BYTES = 4096  # bytes of the first line hashed for the file identity
MAX_MALFORMED_LISTED = 1000  # malformed line numbers kept per run; the counter counts all
MAX_ROTATED_CANDIDATES = 10_000  # directory entries examined when looking for a rotated file


@dataclass
class IngestOptions:
    format: str = "auto"
    year: int | None = None  # year of BSD syslog timestamps; default from the file's mtime
    utc_offset_s: int = 0  # offset of BSD syslog local time from UTC
    final: bool = True  # read a last line that has no newline yet
    mapping: ColumnMapping | None = None  # required for format "ehr"
    pseudonymizer: object | None = None  # required for format "ehr" (patient references)
    ignored_services: frozenset[str] = authlog.DEFAULT_IGNORED_SERVICES

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"invalid log format {self.format!r}; expected one of {', '.join(FORMATS)}")
        if self.format == "ehr" and (self.mapping is None or self.pseudonymizer is None):
            raise ValueError("format 'ehr' needs a column mapping file and a pseudonymization key")


@dataclass
class IngestResult:
    path: str
    format: str = ""
    records: list[LoginRecord] = field(default_factory=list)  # newly stored, with ids
    lines: int = 0
    malformed: int = 0
    malformed_lines: list[tuple[str, int]] = field(default_factory=list)  # (file, line number)
    ignored: int = 0  # well-formed lines that are not login events
    rotated_from: str | None = None  # the rotated file finished before the new one was read
    bytes_read: int = 0


def file_identity(path: str, unterminated_ok: bool = False) -> tuple[os.stat_result, str] | None:
    """Return (stat, SHA-256 hex of the first line), or None while the file has no whole first line.

    With unterminated_ok, a non-empty file without a newline counts as one
    whole line. A one-line file written in one go has none, for example a
    JSON array from `ConvertTo-Json -Compress`.
    NOTE: if that first line grows later, its hash changes and the file is
    read again from the start, storing its records twice. Files still being
    written need --wait-for-newline (unterminated_ok False).
    """
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        head = handle.read(FIRST_LINE_BYTES)
    newline = head.find(b"\n")
    if newline < 0:
        if len(head) < FIRST_LINE_BYTES and not (unterminated_ok and head):
            return None
        newline = len(head)
    return stat, hashlib.sha256(head[:newline]).hexdigest()


def detect_format(head: bytes) -> str:
    """Guess a log format from the first bytes of a file."""
    text = head.lstrip()
    if text.startswith(b"["):
        return "windows"
    if text.startswith(b"{"):
        if b"__REALTIME_TIMESTAMP" in text[:4096] and b"winlog" not in text[:4096]:
            return "journald-json"
        return "windows"
    if text.startswith(b"__CURSOR=") or text.startswith(b"__REALTIME_TIMESTAMP="):
        return "journald"
    return "syslog"


# How far a first line may lie after the file's modification time and still
# be in the modification year: the line is in local time and the
# modification time in UTC, and local clocks run at most 14 h ahead.
_YEAR_GUESS_SLACK = timedelta(days=1)
_BSD_MONTHS = [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"]


def _guess_year(head: bytes, mtime: float) -> int:
    # BSD timestamps carry no year. The first line was written before the
    # file was last modified. So it is in the modification year, unless that
    # year puts it after the modification time: a log begun on 10 December
    # and last written on 5 January started the year before.
    modified = datetime.fromtimestamp(mtime, tz=timezone.utc)
    text = head.lstrip()
    if text.startswith(b"<"):
        text = text[text.find(b">") + 1 :]
    if text[:3] not in _BSD_MONTHS:
        return modified.year
    month = _BSD_MONTHS.index(text[:3]) + 1
    fields = text[3:].split(None, 2)
    try:
        day = int(fields[0])
        hour, minute, second = (int(part) for part in fields[1].split(b":")[:3])
        first = datetime(modified.year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except (IndexError, ValueError):
        # No usable day and time (or 29 February outside a leap year): the
        # month alone decides.
        return modified.year - 1 if month > modified.month else modified.year
    if first > modified + _YEAR_GUESS_SLACK:
        return modified.year - 1
    return modified.year


def _find_rotated(path: str, device: int, inode: int) -> str | None:
    # logrotate renames within the directory (app.log -> app.log.1), which
    # keeps the inode; a compressed copy has a new inode and is not followed.
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    candidates = [e for e in os.scandir(directory)][:MAX_ROTATED_CANDIDATES]
    candidates.sort(key=lambda e: (not e.name.startswith(base), e.name))
    for entry in candidates:
        try:
            stat = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.st_dev == device and stat.st_ino == inode:
            return entry.path
    return None


def ingest_file(conn: sqlite3.Connection, path: str, options: IngestOptions) -> IngestResult:
    """Read what is new in `path` (and in its rotated predecessor) into login_records."""
    path = os.path.abspath(path)
    # Checkpoints are byte offsets into a file that is opened twice, so a
    # pipe would lose the bytes of the first read and then block forever.
    if not S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path} is not a regular file; save the log to a file and ingest that")
    result = IngestResult(path=path)
    identity = file_identity(path, unterminated_ok=options.final)
    checkpoint = storage.load_checkpoint(conn, path)

    if checkpoint is not None and (identity is None or
                                   (identity[0].st_dev, identity[0].st_ino) != (checkpoint.device, checkpoint.inode)):
        old_path = _find_rotated(path, checkpoint.device, checkpoint.inode)
        if old_path is None:
            log.warning(
                "log %s was rotated and the old file (device %d, inode %d) is gone;"
                " lines written to it after offset %d are not read",
                path, checkpoint.device, checkpoint.inode, checkpoint.offset,
            )
        else:
            result.rotated_from = old_path
            log.info("log %s was rotated; finishing %s from offset %d", path, old_path, checkpoint.offset)
            _read_file(conn, old_path, checkpoint, options, result, final=True, save_as=path)
        checkpoint = None
        if identity is not None:
            with conn:
                conn.execute("DELETE FROM login_checkpoints WHERE path = ?", (path_text(path),))

    if identity is None:
        return result
    stat, first_line_hash = identity
    if checkpoint is not None and (checkpoint.first_line_sha256 != first_line_hash or stat.st_size < checkpoint.offset):
        log.info("log %s was truncated or replaced in place; reading it from the start", path)
        checkpoint = None
    if checkpoint is None:
        checkpoint = storage.Checkpoint(path, stat.st_dev, stat.st_ino, first_line_hash)
    _read_file(conn, path, checkpoint, options, result, final=options.final, save_as=path)
    return result


def _read_file(conn, path, checkpoint, options, result, final, save_as):
    with open(path, "rb") as handle:
        head = handle.read(FIRST_LINE_BYTES)
        stat = os.fstat(handle.fileno())
        fmt = options.format if options.format != "auto" else detect_format(head)
        result.format = fmt
        if fmt == "syslog" and checkpoint.year is None:
            checkpoint.year = options.year or _guess_year(head, stat.st_mtime)
            checkpoint.previous_month = 0
        if fmt == "windows" and head.lstrip().startswith(b"["):
            # A JSON array is read whole, once; it is not appended to.
            if checkpoint.offset > 0:
                return
            handle.seek(0)
            data = handle.read()
            _commit_chunk(conn, checkpoint, save_as, result, *_parse_chunk(data, fmt, checkpoint, options, path, True, result))
            return
        handle.seek(checkpoint.offset)
        while True:
            data = handle.read(CHUNK_BYTES)
            if not data:
                break
            at_end = len(data) < CHUNK_BYTES
            parsed = _parse_chunk(data, fmt, checkpoint, options, path, final and at_end, result)
            consumed = parsed[1]
            if consumed == 0:
                if len(data) == CHUNK_BYTES:
                    # One line longer than a chunk: skip to its end and
                    # count it as one malformed line.
                    consumed = _skip_line(handle, checkpoint.offset)
                    _count_malformed(result, path, [checkpoint.line_no + 1])
                    parsed = ([], consumed, 1)
                else:
                    break
            _commit_chunk(conn, checkpoint, save_as, result, *parsed)
            handle.seek(checkpoint.offset)


def _skip_line(handle, offset: int) -> int:
    # Bytes from offset to just past the next newline (or to the end of the file).
    handle.seek(offset)
    skipped = 0
    while True:
        data = handle.read(CHUNK_BYTES)
        if not data:
            return skipped
        newline = data.find(b"\n")
        if newline >= 0:
            return skipped + newline + 1
        skipped += len(data)


def _count_malformed(result: IngestResult, path: str, line_numbers) -> None:
    result.malformed += len(line_numbers)
    room = MAX_MALFORMED_LISTED - len(result.malformed_lines)
    result.malformed_lines.extend((path, int(n)) for n in list(line_numbers)[: max(room, 0)])


def _parse_chunk(data, fmt, checkpoint, options, path, final, result):
    # Returns (records, bytes consumed, lines or entries consumed).
    first = checkpoint.line_no + 1
    origin = checkpoint.origin
    if fmt in ("syslog", "journald", "journald-json"):
        source = SOURCE_SYSLOG
        if fmt == "syslog":
            lines = data
            malformed_entries = []
        else:
            source = SOURCE_JOURNALD
            if fmt == "journald":
                lines, consumed, entries, malformed_entries = authlog.journald_export_to_lines(data, final)
            else:
                cut = len(data) if final else data.rfind(b"\n") + 1
                lines, entries, malformed_entries = authlog.journald_json_to_lines(data[:cut])
                consumed = cut
            _count_malformed(result, path, [first - 1 + n for n in malformed_entries])
        scan = authlog.scan_auth_log(
            lines, first, checkpoint.year or 1970, checkpoint.previous_month or 0,
            options.utc_offset_s, final=True if fmt != "syslog" else final,
            max_malformed=MAX_MALFORMED_LISTED, ignored_services=options.ignored_services,
        )
        checkpoint.year, checkpoint.previous_month = scan.year, scan.previous_month
        malformed_lines = scan.malformed_lines.tolist()
        if fmt != "syslog":
            # Journald line numbers count entries, and the malformed ones were
            # dropped from `lines`: renumber so line_no is the entry number.
            skipped = set(malformed_entries)
            valid_entries = [n for n in range(1, entries + 1) if n not in skipped]
            malformed_lines = [first - 1 + valid_entries[n - first] for n in malformed_lines]
        _count_malformed(result, path, malformed_lines)
        result.malformed += scan.counters["malformed"] - len(scan.malformed_lines)
        result.ignored += scan.counters["ignored"] + scan.counters["ignored_services"]
        records = scan.records(origin=origin, source=source)
        if fmt == "syslog":
            return records, scan.consumed, scan.counters["lines"]
        for record in records:
            record.line_no = first - 1 + valid_entries[record.line_no - first]
        return records, consumed, entries

    cut = len(data) if final else data.rfind(b"\n") + 1
    body = data[:cut]
    if fmt == "windows":
        parsed = parse_windows_events(body, first, origin, MAX_MALFORMED_LISTED)
        result.ignored += parsed.ignored
    else:
        parsed = parse_ehr_audit(body, options.mapping, options.pseudonymizer, first, checkpoint.header, origin)
        checkpoint.header = parsed.header
    _count_malformed(result, path, parsed.malformed_lines)
    result.malformed += parsed.malformed - len(parsed.malformed_lines)
    lines = body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)
    return parsed.records, cut, lines


def _commit_chunk(conn, checkpoint, save_as, result, records, consumed, lines):
    conn.execute("BEGIN IMMEDIATE")
    try:
        stored = storage.insert_records(conn, records)
        checkpoint.offset += consumed
        checkpoint.line_no += lines
        saved = storage.Checkpoint(**{**checkpoint.__dict__, "path": save_as})
        storage.save_checkpoint(conn, saved)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    result.records.extend(stored)
    result.lines += lines
    result.bytes_read += consumed


def ingest_records(conn: sqlite3.Connection, records: list[LoginRecord]) -> list[LoginRecord]:
    """Store records emitted elsewhere (for example from traffic); return those newly stored."""
    storage.ensure_schema(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        stored = storage.insert_records(conn, records)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return stored

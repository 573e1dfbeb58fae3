"""Linux authentication logs: OpenSSH, PAM and sudo lines in syslog or journald form.

The compiled scanner (ext/authlog.pyx) reads a buffer of syslog lines and
returns one fixed-width event per authentication line. This module turns
those events into LoginRecords or straight into a LoginFrame, and converts
journald export and JSON output into syslog lines the scanner reads.

Which lines become which records:
  sshd "Failed <method> for [invalid user] U from A port P"   failure
  sshd "Accepted <method> for U from A port P"                 success (logon)
  sshd "message repeated N times: [ <one of the above> ]"      same, count N
  sshd "Invalid user U from A"                                 info (invalid_user)
  pam_unix "authentication failure; ... rhost=A user=U"        failure, unless the
      same process (host and pid) also wrote an sshd "Failed" line in the same
      read, which already counts that attempt
  pam_unix "session opened for user U" / "session closed"      success (session_open) / logoff
  sudo "U : ... USER=T ; COMMAND=..."                          success (privilege_use)
  sudo "U : N incorrect password attempts ; ..."               failure (privilege_use), count N
PAM sessions of the services in DEFAULT_IGNORED_SERVICES (cron jobs, systemd
user managers) are skipped, because they open a root session every few
minutes and are not people logging in.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass

import numpy as np

from engine._native import authlog as _scanner
from engine.logins.frame import (
    NO_VALUE,
    OUTCOME_FAILURE,
    OUTCOME_INFO,
    OUTCOME_LOGOFF,
    OUTCOME_SUCCESS,
    LoginFrame,
)
from engine.logins.records import FAILURE, INFO, LOGOFF, SOURCE_SYSLOG, SUCCESS, LoginRecord

log = logging.getLogger(__name__)

EVENT_DTYPE = _scanner.event_dtype()
_KIND = _scanner.AuthKind
COUNTER_NAMES = _scanner.COUNTER_NAMES
DEFAULT_IGNORED_SERVICES = frozenset({"cron", "CRON", "crond", "systemd-user", "atd"})

# kind -> (outcome, action, outcome code)
_KIND_MEANING = {
    _KIND.AUTH_FAILURE: (FAILURE, "logon", OUTCOME_FAILURE),
    _KIND.AUTH_SUCCESS: (SUCCESS, "logon", OUTCOME_SUCCESS),
    _KIND.AUTH_INVALID_USER: (INFO, "invalid_user", OUTCOME_INFO),
    _KIND.AUTH_PAM_FAILURE: (FAILURE, "logon", OUTCOME_FAILURE),
    _KIND.AUTH_SESSION_OPEN: (SUCCESS, "session_open", OUTCOME_SUCCESS),
    _KIND.AUTH_SESSION_CLOSE: (LOGOFF, "logoff", OUTCOME_LOGOFF),
    _KIND.AUTH_SUDO: (SUCCESS, "privilege_use", OUTCOME_SUCCESS),
}


@dataclass
class AuthScan:
    """Events found in one buffer of syslog lines, with the buffer they point into."""

    data: bytes
    events: np.ndarray  # EVENT_DTYPE rows, already filtered (see _filter_events)
    consumed: int  # bytes of data read, up to the end of the last whole line
    counters: dict[str, int]  # COUNTER_NAMES, plus "duplicate_pam_failures" and "ignored_services"
    malformed_lines: np.ndarray  # int64 line numbers, the first max_malformed only
    year: int  # BSD timestamp state for the next buffer
    previous_month: int

    def _decode_column(self, start: str, length: str, hashes: str) -> tuple[np.ndarray, list[str]]:
        # Decode each distinct string once: index per row plus the table.
        events = self.events
        keys = events[hashes]
        present = keys != 0
        index = np.full(len(events), NO_VALUE, dtype=np.int32)
        if not present.any():
            return index, []
        unique_keys, first, inverse = np.unique(keys[present], return_index=True, return_inverse=True)
        rows = np.flatnonzero(present)[first]
        starts = events[start][rows]
        lengths = events[length][rows]
        data = self.data
        table = [data[s : s + n].decode("utf-8", "replace") for s, n in zip(starts.tolist(), lengths.tolist())]
        index[present] = inverse.astype(np.int32)
        return index, table

    def frame(self) -> LoginFrame:
        """Return the events as a LoginFrame; record ids are line numbers."""
        events = self.events
        outcome = np.zeros(256, dtype=np.uint8)
        for kind, (_, _, code) in _KIND_MEANING.items():
            outcome[kind] = code
        user, users = self._decode_column("user_start", "user_len", "user_hash")
        src, sources = self._decode_column("src_start", "src_len", "src_hash")
        return LoginFrame(
            ts=events["ts_us"] / 1e6,
            outcome=outcome[events["kind"]],
            user=user,
            src=src,
            count=events["count"].astype(np.uint32),
            record_id=events["line_no"].astype(np.int64),
            is_new=np.ones(len(events), dtype=bool),
            users=users,
            sources=sources,
        )

    def _slice_column(self, start: str, length: str) -> list[str | None]:
        # Per-row text of a field without a hash (service, method): equal
        # byte strings are decoded once.
        data = self.data
        decoded: dict[bytes, str] = {}
        values: list[str | None] = []
        for offset, size in zip(self.events[start].tolist(), self.events[length].tolist()):
            if size == 0:
                values.append(None)
                continue
            raw = data[offset : offset + size]
            text = decoded.get(raw)
            if text is None:
                text = decoded[raw] = raw.decode("utf-8", "replace")
            values.append(text)
        return values

    def records(self, origin: str | None = None, source: str = SOURCE_SYSLOG) -> list[LoginRecord]:
        """Return one LoginRecord per event."""
        events = self.events
        user_index, users = self._decode_column("user_start", "user_len", "user_hash")
        src_index, sources = self._decode_column("src_start", "src_len", "src_hash")
        host_index, hosts = self._decode_column("host_start", "host_len", "host_hash")
        # Address or host name, decided once per distinct source.
        source_split = [(text, None) if _looks_like_address(text) else (None, text) for text in sources]
        services = self._slice_column("service_start", "service_len")
        methods = self._slice_column("method_start", "method_len")
        records = []
        columns = zip(
            events["ts_us"].tolist(), events["kind"].tolist(), events["flags"].tolist(),
            events["count"].tolist(), events["src_port"].tolist(), events["line_no"].tolist(),
            user_index.tolist(), src_index.tolist(), host_index.tolist(), services, methods,
        )
        for ts_us, kind, flags, count, port, line_no, user, src, host, service, method in columns:
            outcome, action, _ = _KIND_MEANING[kind]
            if service == "sudo":
                action = "privilege_use"
            src_ip, src_host = source_split[src] if src != NO_VALUE else (None, None)
            records.append(
                LoginRecord(
                    ts=ts_us / 1e6,
                    outcome=outcome,
                    source=source,
                    user=users[user] if user != NO_VALUE else None,
                    action=action,
                    service=service,
                    method=method,
                    src_ip=src_ip,
                    src_port=port or None,
                    src_host=src_host,
                    dst_host=hosts[host] if host != NO_VALUE else None,
                    privileged=bool(flags & _scanner.FLAG_PRIVILEGED),
                    invalid_user=bool(flags & _scanner.FLAG_INVALID_USER),
                    count=count,
                    origin=origin,
                    line_no=line_no,
                )
            )
        return records


def _looks_like_address(text: str) -> bool:
    # An IPv4 dotted quad or an IPv6 address; host names have letters
    # beyond a-f or no colon. A cheap test, because the scanner only
    # separates tokens.
    if ":" in text:
        return all(c in "0123456789abcdefABCDEF:." for c in text)
    parts = text.split(".")
    return len(parts) == 4 and all(p.isdigit() and len(p) <= 3 for p in parts)


def scan_auth_log(
    data: bytes,
    first_line_no: int = 1,
    year: int = 1970,
    previous_month: int = 0,
    utc_offset_s: int = 0,
    final: bool = True,
    max_malformed: int = 1000,
    ignored_services: frozenset[str] = DEFAULT_IGNORED_SERVICES,
) -> AuthScan:
    """Scan syslog lines in `data` for authentication events.

    `year` is the year of the first BSD-style timestamp (that format has
    none); the scanner adds one when the month goes from December to
    January. `utc_offset_s` is the offset of those local times from UTC.
    With final=False a last line without a newline is left unread.
    """
    events, consumed, counts, malformed, year, previous_month = _scanner.scan_lines(
        data, first_line_no, year, previous_month, utc_offset_s, final, max_malformed
    )
    counters = dict(zip(COUNTER_NAMES, counts))
    events, duplicates, ignored = _filter_events(data, events, ignored_services)
    counters["duplicate_pam_failures"] = duplicates
    counters["ignored_services"] = ignored
    return AuthScan(data, events, consumed, counters, malformed, year, previous_month)


def _filter_events(data: bytes, events: np.ndarray, ignored_services: frozenset[str]):
    keep = np.ones(len(events), dtype=bool)

    # A PAM failure from a process that also wrote an sshd "Failed" line is
    # the same attempt logged twice.
    kind = events["kind"]
    process = events["host_hash"] ^ (events["pid"].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    pam = kind == _KIND.AUTH_PAM_FAILURE
    duplicates = 0
    if pam.any():
        failed = process[kind == _KIND.AUTH_FAILURE]
        duplicate = pam & np.isin(process, failed) & (events["pid"] >= 0)
        duplicates = int(duplicate.sum())
        keep &= ~duplicate

    ignored = 0
    sessions = np.flatnonzero((kind == _KIND.AUTH_SESSION_OPEN) | (kind == _KIND.AUTH_SESSION_CLOSE))
    if len(sessions) and ignored_services:
        names = {}
        for i in sessions.tolist():
            start = int(events["service_start"][i])
            name_bytes = data[start : start + int(events["service_len"][i])]
            if name_bytes not in names:
                names[name_bytes] = name_bytes.decode("utf-8", "replace") in ignored_services
            if names[name_bytes]:
                keep[i] = False
                ignored += 1
    return events[keep], duplicates, ignored


def journald_export_to_lines(data: bytes, final: bool = True) -> tuple[bytes, int, int, list[int]]:
    """Convert `journalctl -o export` entries to "@epoch host ident[pid]: message" lines.

    Returns (lines, consumed, entries, malformed_entry_numbers), where entry
    numbers count from 1 within `data`. Entries end with an empty line; with
    final=False an unterminated last entry is left unread. An entry without
    __REALTIME_TIMESTAMP or MESSAGE is malformed.
    """
    out = []
    malformed = []
    pos = 0
    consumed = 0
    entries = 0
    fields: dict[bytes, bytes] = {}
    n = len(data)
    while pos < n:
        newline = data.find(b"\n", pos)
        if newline < 0:
            if not final:
                break
            newline = n
        line = data[pos:newline]
        if line == b"":
            pos = newline + 1
            if fields:
                entries += 1
                text = _journal_fields_to_line(fields)
                if text is None:
                    malformed.append(entries)
                else:
                    out.append(text)
                fields = {}
            consumed = pos
            continue
        equals = line.find(b"=")
        if equals < 0:
            # Binary field: name, newline, 64-bit little-endian length, data, newline.
            if newline + 9 > n:
                break
            (length,) = struct.unpack_from("<Q", data, newline + 1)
            value_start = newline + 9
            if value_start + length + 1 > n:
                break
            fields[line] = data[value_start : value_start + length]
            pos = value_start + length + 1
        else:
            fields[line[:equals]] = line[equals + 1 :]
            pos = newline + 1
    if final and fields:
        entries += 1
        text = _journal_fields_to_line(fields)
        if text is None:
            malformed.append(entries)
        else:
            out.append(text)
        consumed = n
    return b"".join(out), consumed, entries, malformed


def journald_json_to_lines(data: bytes) -> tuple[bytes, int, list[int]]:
    """Convert `journalctl -o json` lines; returns (lines, entries, malformed_entry_numbers)."""
    out = []
    malformed = []
    entries = 0
    for raw in data.splitlines():
        if not raw.strip():
            continue
        entries += 1
        try:
            entry = json.loads(raw)
        except ValueError:
            malformed.append(entries)
            continue
        if not isinstance(entry, dict):
            malformed.append(entries)
            continue
        fields = {}
        for key, value in entry.items():
            if isinstance(value, list):  # journald writes non-UTF-8 values as byte arrays
                try:
                    value = bytes(value)
                except (TypeError, ValueError):
                    continue
            elif isinstance(value, str):
                value = value.encode("utf-8")
            else:
                continue
            fields[key.encode("ascii", "replace")] = value
        text = _journal_fields_to_line(fields)
        if text is None:
            malformed.append(entries)
        else:
            out.append(text)
    return b"".join(out), entries, malformed


def _journal_fields_to_line(fields: dict[bytes, bytes]) -> bytes | None:
    realtime = fields.get(b"__REALTIME_TIMESTAMP")
    message = fields.get(b"MESSAGE")
    if realtime is None or message is None or not realtime.isdigit():
        return None
    micros = int(realtime)
    host = fields.get(b"_HOSTNAME") or b"-"
    ident = fields.get(b"SYSLOG_IDENTIFIER") or fields.get(b"_COMM") or b"-"
    pid = fields.get(b"SYSLOG_PID") or fields.get(b"_PID")
    tag = ident + b"[" + pid + b"]" if pid and pid.isdigit() else ident
    message = message.replace(b"\n", b" ").replace(b"\r", b" ")
    host = host.replace(b" ", b"_")
    return b"@%d.%06d %s %s: %s\n" % (micros // 1_000_000, micros % 1_000_000, host, tag, message)

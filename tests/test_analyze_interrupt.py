"""Ctrl-C or SIGTERM on `wardwatch analyze -` finishes what was read instead of dropping it."""

import fcntl
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import dpkt
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE = REPO_ROOT / "engine" / "data" / "sample.pcap"
PREFIX_RECORDS = 5000


def capture_prefix(records):
    """Return the sample's file header and its first `records` records, cut at a record boundary."""
    data = SAMPLE.read_bytes()
    offset = 24  # classic pcap file header
    for _ in range(records):
        # Record header: ts_sec, ts_usec, incl_len, orig_len (little-endian here).
        included = struct.unpack_from("<I", data, offset + 8)[0]
        offset += 16 + included
    return data[:offset]


def stored_alert_ids(store):
    with sqlite3.connect(store) as conn:
        return {row[0] for row in conn.execute("SELECT DISTINCT alert_id FROM alert_events")}


def stored_categories(store):
    with sqlite3.connect(store) as conn:
        rows = conn.execute("SELECT category, COUNT(*) FROM alerts GROUP BY category ORDER BY category")
        return dict(rows.fetchall())


def analyze(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "analyze", "--no-bus", *map(str, args)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )


def unread_bytes(pipe):
    buffer = fcntl.ioctl(pipe.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return struct.unpack("i", buffer)[0]


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_pipe_keeps_alerts(tmp_path, signal_number):
    prefix = capture_prefix(PREFIX_RECORDS)
    packets = sum(1 for _ in dpkt.pcap.Reader(open(SAMPLE, "rb")))
    assert packets > PREFIX_RECORDS  # the writer below keeps the rest back

    # The same packets as a finished file: the reference result.
    file_capture = tmp_path / "prefix.pcap"
    file_capture.write_bytes(prefix)
    reference = analyze("--store", tmp_path / "file.db", file_capture)
    _, errors = reference.communicate(timeout=300)
    assert reference.returncode == 0, errors

    live = analyze("--store", tmp_path / "pipe.db", "-", stdin=subprocess.PIPE)
    live.stdin.buffer.write(prefix)
    live.stdin.flush()
    # The writer keeps the pipe open, as a capture tool would. Wait until the
    # analysis has taken every byte and is blocked on the next read.
    deadline = time.monotonic() + 120
    while unread_bytes(live.stdin) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert unread_bytes(live.stdin) == 0
    time.sleep(2.0)
    live.send_signal(signal_number)
    output, errors = live.communicate(timeout=120)

    assert live.returncode == 130, errors
    assert "Traceback" not in errors
    assert f"finishing the {PREFIX_RECORDS:,} packets read from -" in errors
    assert f"packets {PREFIX_RECORDS:,} " in output
    assert stored_categories(tmp_path / "pipe.db") == stored_categories(tmp_path / "file.db")
    assert len(stored_alert_ids(tmp_path / "pipe.db")) == len(stored_alert_ids(tmp_path / "file.db"))

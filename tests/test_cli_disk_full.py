"""A full disk ends a command with one error line, not a traceback.

Each case runs the real command in a private mount namespace (unshare -m)
on a 300 KiB tmpfs, so the mount stays invisible outside the test.
"""

import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, require_root, require_tool

SAMPLE = REPO_ROOT / "engine" / "data" / "sample.pcap"


def run_on_full_disk(mount_point, command, leave_free_kib):
    """Mount a 300 KiB tmpfs at mount_point, fill it to leave_free_kib free, run command there."""
    require_root()
    require_tool("unshare")
    mount_point.mkdir()
    fill_kib = 300 - leave_free_kib
    script = (
        f"mount -t tmpfs -o size=300k tmpfs {shlex.quote(str(mount_point))} && "
        f"head -c {fill_kib * 1024} /dev/zero > {shlex.quote(str(mount_point / 'filler'))} && "
        f"exec {shlex.join(command)}"
    )
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300)


def wardwatch(*args):
    return [sys.executable, "-m", "engine", *map(str, args)]


def test_full_disk_store(tmp_path):
    full = tmp_path / "full"
    # Room for the empty store, not for the sample's alerts: the disk fills mid-run.
    result = run_on_full_disk(full, wardwatch("analyze", "--no-bus", "-q", "--store", full / "s.db", SAMPLE), 280)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "Error: the SQLite store failed: database or disk is full" in result.stderr
    # The first error is reported, not a failed rollback after it.
    assert "cannot rollback" not in result.stderr


def test_full_disk_while_store_tables_are_made(tmp_path):
    # Room for the alert tables but not for the inspection tables created
    # after them: the error must not hide behind a half-started analysis.
    full = tmp_path / "full"
    result = run_on_full_disk(full, wardwatch("analyze", "--no-bus", "-q", "--store", full / "s.db", SAMPLE), 150)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "database or disk is full" in result.stderr


def test_full_disk_eve_output(tmp_path):
    full = tmp_path / "full"
    eve = full / "eve.jsonl"
    result = run_on_full_disk(
        full, wardwatch("analyze", "--no-bus", "-q", "--store", tmp_path / "s.db", "--eve", eve, SAMPLE), 20,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"Error: cannot write {eve}: No space left on device" in result.stderr


def test_full_disk_flow_records(tmp_path):
    full = tmp_path / "full"
    output = full / "flows.jsonl"
    result = run_on_full_disk(full, wardwatch("flows", SAMPLE, "-o", output), 20)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"Error: cannot write {output}: No space left on device" in result.stderr

"""The capture reader when standard input is closed."""

import os
import subprocess
import sys

import pytest

from engine.capture import CaptureError, open_capture
from tests.conftest import REPO_ROOT


def test_stdin_none_is_capture_error(monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(CaptureError, match="standard input is closed"):
        open_capture("-")


def test_cli_with_stdin_closed():
    # Python sets sys.stdin to None when it starts with descriptor 0 closed.
    command = [sys.executable, "-c", "from engine.cli import main; main()", "capture-info", "-"]
    result = subprocess.run(
        command, cwd=REPO_ROOT, stdin=None, capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: os.close(0),
    )
    assert result.returncode == 1, result.stderr
    assert "standard input is closed" in result.stderr
    assert "Traceback" not in result.stderr

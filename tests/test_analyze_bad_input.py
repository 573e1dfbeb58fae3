"""`wardwatch analyze` rejects unusable settings before it reads a capture."""

import resource
import struct
import subprocess
import sys

import pytest
from click.testing import CliRunner

from engine.cli import main
from tests.conftest import REPO_ROOT


@pytest.fixture
def empty_capture(tmp_path):
    # Classic pcap file header, little-endian: magic, version 2.4, thiszone 0,
    # sigfigs 0, snaplen 65535, LINKTYPE_ETHERNET (1). No records follow.
    path = tmp_path / "empty.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    return path


def run_analyze(tmp_path, capture, *options):
    store = tmp_path / "s.db"
    return CliRunner().invoke(main, ["analyze", "--no-bus", "--store", str(store), *options, str(capture)])


@pytest.mark.parametrize("toml, message", [
    (b'[analyze]\nidle_timeout_s = "x"\n', "invalid idle_timeout_s 'x'"),
    (b"[analyze]\nactive_timeout_s = inf\n", "invalid active_timeout_s inf"),
    (b"[analyze]\nflow_capacity = 0\n", "invalid flow_capacity 0"),
    (b"analyze = 5\n", "analyze = 5 is not a table"),
    (b"\xff\xfe[analyze]\n", "invalid TOML in configuration"),
])
def test_bad_config_rejected(toml, message, tmp_path, empty_capture):
    config = tmp_path / "analyze.toml"
    config.write_bytes(toml)
    result = run_analyze(tmp_path, empty_capture, "--config", str(config))
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("value", ["inf", "1e300"])
def test_timeout_flag_out_of_range(value, tmp_path, empty_capture):
    result = run_analyze(tmp_path, empty_capture, "--idle-timeout", value)
    assert result.exit_code == 2, result.output
    assert "--idle-timeout" in result.output


def test_timeout_flag_nan_rejected(tmp_path, empty_capture):
    # Click's FloatRange lets nan through, so the option check catches it.
    result = run_analyze(tmp_path, empty_capture, "--active-timeout", "nan")
    assert result.exit_code == 1, result.output
    assert "invalid active_timeout_s nan" in result.output


def gzip_with_damaged_stream(path):
    # gzip member header (magic, deflate, no flags, mtime 0, XFL 0, OS 255),
    # then bytes that are not a valid deflate block: 0xff sets BTYPE 3.
    path.write_bytes(bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 255]) + b"\xff" * 64)
    return path


def zstd_with_damaged_frame(path):
    # zstd frame magic, then a frame header descriptor and block bytes that
    # no decoder accepts.
    path.write_bytes(bytes([0x28, 0xB5, 0x2F, 0xFD]) + b"\xff" * 64)
    return path


@pytest.mark.parametrize("make, kind", [(gzip_with_damaged_stream, "gzip"), (zstd_with_damaged_frame, "zstd")])
def test_damaged_compressed_capture(tmp_path, make, kind):
    capture = make(tmp_path / f"damaged.pcap.{kind}")
    result = run_analyze(tmp_path, capture)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"cannot decompress {capture} ({kind})" in result.output


def test_flow_capacity_beyond_memory(tmp_path, empty_capture):
    # 2^31 - 1 flows need far more memory than the 6 GiB address space the
    # child process gets, so the allocation fails the same way everywhere.
    config = tmp_path / "analyze.toml"
    config.write_text("[analyze]\nflow_capacity = 2147483647\n")
    limit = 6 << 30
    result = subprocess.run(
        [sys.executable, "-m", "engine", "analyze", "--no-bus", "--store", str(tmp_path / "s.db"),
         "--config", str(config), str(empty_capture)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "cannot allocate the flow and window tables (flow_capacity 2,147,483,647" in result.stderr


def test_rate_leaves_out_linger(tmp_path, empty_capture):
    # The closing line reports the analysis, not the seconds the bus is kept
    # open after it for late subscribers.
    result = CliRunner().invoke(main, [
        "analyze", "--store", str(tmp_path / "s.db"), "--bus", "tcp://127.0.0.1:*",
        "--replay-bind", "tcp://127.0.0.1:*", "--linger", "3", str(empty_capture),
    ])
    assert result.exit_code == 0, result.output
    [line] = [text for text in result.output.splitlines() if text.startswith("0 packets in ")]
    seconds = float(line.split()[3])
    assert seconds < 3.0, line

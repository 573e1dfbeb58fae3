"""`wardwatch analyze` rejects unusable settings before it reads a capture."""

import struct

import pytest
from click.testing import CliRunner

from engine.cli import main


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

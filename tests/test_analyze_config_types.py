"""`wardwatch analyze` checks every [analyze] and [rules] key and value before reading a capture."""

import struct

import pytest
from click.testing import CliRunner

from engine.cli import main


@pytest.fixture
def empty_capture(tmp_path):
    # Classic pcap header, little-endian: magic, version 2.4, thiszone 0,
    # sigfigs 0, snaplen 65535, LINKTYPE_ETHERNET (1), and no records.
    path = tmp_path / "empty.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    return path


def run_with_config(tmp_path, capture, toml: bytes):
    config = tmp_path / "analyze.toml"
    config.write_bytes(toml)
    store = tmp_path / "s.db"
    return CliRunner().invoke(
        main, ["analyze", "--no-bus", "--store", str(store), "--config", str(config), str(capture)]
    )


@pytest.mark.parametrize("toml, message", [
    # Keys that no option has: the message lists the keys that exist.
    (b"[analyze]\nbatch_size = 10\n", "invalid configuration key [analyze] batch_size"),
    (b"[rules]\nscan_ports = 3\n", "invalid configuration key [rules] scan_ports"),
    # Values of the wrong type used to pass and fail mid-run or never match.
    (b'[analyze]\ninterim_interval_s = "soon"\n', "invalid [analyze] interim_interval_s 'soon'"),
    (b'[analyze]\nanomaly_min_packets = "3"\n', "invalid [analyze] anomaly_min_packets '3'"),
    (b'[rules]\nscan_window_s = "x"\n', "invalid [rules] scan_window_s 'x'"),
    (b"[rules]\nscan_ports_per_host = -5\n", "invalid [rules] scan_ports_per_host -5"),
    (b"[rules]\nmax_keys = 0\n", "invalid [rules] max_keys 0"),
    (b"[rules]\nbruteforce_sessions = 2.5\n", "invalid [rules] bruteforce_sessions 2.5"),
    (b"[rules]\nsynflood_attempts = true\n", "invalid [rules] synflood_attempts True"),
    (b"[rules]\ndns_window_s = inf\n", "invalid [rules] dns_window_s inf"),
    (b"[analyze]\nwindow_capacity = -1\n", "invalid window_capacity -1"),
    (b"[analyze]\nwindow_capacity = 1000\n", "invalid window_capacity 1000"),
])
def test_bad_config_value_rejected(toml, message, tmp_path, empty_capture):
    result = run_with_config(tmp_path, empty_capture, toml)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "s.db").exists()


def test_unknown_key_lists_known_keys(tmp_path, empty_capture):
    result = run_with_config(tmp_path, empty_capture, b"[analyze]\nbogus = 1\n")
    assert result.exit_code == 1, result.output
    assert "interim_interval_s" in result.output
    assert "__init__" not in result.output


def test_integer_for_float_option_accepted(tmp_path, empty_capture):
    # TOML reads 300 as an integer, and a seconds option must accept it.
    toml = b"[rules]\nscan_window_s = 300\n[analyze]\nwindow_capacity = 1024\nanomaly_min_packets = 2\n"
    result = run_with_config(tmp_path, empty_capture, toml)
    assert result.exit_code == 0, result.output

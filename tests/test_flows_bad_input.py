"""Flow table limits and the flows command on options and outputs it cannot use."""

import math
import struct

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.flows import FlowTable
from engine.flows.table import MAX_TIMEOUT_S


def write_empty_pcap(path):
    # Classic pcap file header, little-endian: magic, version 2.4, thiszone 0,
    # sigfigs 0, snaplen 65535, LINKTYPE_ETHERNET (1). No records follow.
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    return path


@pytest.mark.parametrize("timeout_s", [math.inf, math.nan, MAX_TIMEOUT_S * 2, 0.0, -1.0])
def test_table_rejects_bad_idle_timeout(timeout_s):
    with pytest.raises(ValueError, match="invalid idle_timeout_s"):
        FlowTable(capacity=16, idle_timeout_s=timeout_s)


@pytest.mark.parametrize("timeout_s", [math.inf, math.nan, MAX_TIMEOUT_S * 2])
def test_table_rejects_bad_active_timeout(timeout_s):
    with pytest.raises(ValueError, match="invalid active_timeout_s"):
        FlowTable(capacity=16, active_timeout_s=timeout_s)


def test_table_accepts_max_timeout():
    table = FlowTable(capacity=16, idle_timeout_s=MAX_TIMEOUT_S, active_timeout_s=MAX_TIMEOUT_S)
    assert table.idle_timeout_s == MAX_TIMEOUT_S
    assert table.flush().size == 0


@pytest.mark.parametrize("value", ["inf", "1e300", "nan"])
def test_cli_bad_timeout_is_usage_error(value, tmp_path):
    capture = write_empty_pcap(tmp_path / "empty.pcap")
    result = CliRunner().invoke(main, ["flows", "--idle-timeout", value, str(capture)])
    assert result.exit_code == 2, result.output
    assert "idle" in result.output


def test_cli_output_directory_missing(tmp_path):
    capture = write_empty_pcap(tmp_path / "empty.pcap")
    output = tmp_path / "missing" / "flows.jsonl"
    result = CliRunner().invoke(main, ["flows", "-o", str(output), str(capture)])
    assert result.exit_code == 1, result.output
    assert f"Could not open file '{output}'" in result.output
    assert "No such file or directory" in result.output


def test_flush_slices_lose_no_flow(shared_pcaps, tmp_path, monkeypatch):
    # The flows still live at the end are written in slices, so a slice of
    # 3 flows must give the same records as one slice.
    capture = shared_pcaps / "zeek-ftp-bruteforce.pcap"
    if not capture.is_file():
        pytest.skip(f"{capture} is not present")
    runner = CliRunner()
    whole = tmp_path / "whole.jsonl"
    assert runner.invoke(main, ["flows", "-o", str(whole), str(capture)]).exit_code == 0
    monkeypatch.setattr("engine.flows.cli.WRITE_SLICE_FLOWS", 3)
    sliced = tmp_path / "sliced.jsonl"
    assert runner.invoke(main, ["flows", "-o", str(sliced), str(capture)]).exit_code == 0
    whole_lines = whole.read_text().splitlines()
    # tshark -z conv,tcp lists 30 conversations. The FTP sessions from ports
    # 54019 and 54020 send 3 packets after their close, which join them
    # within the close delay, so 30 flows as well.
    assert len(whole_lines) == 30
    assert sliced.read_text().splitlines() == whole_lines

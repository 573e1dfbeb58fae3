"""The simulate command, attack specifications, profiles, topology and the shipped sample."""

import calendar
import io
from pathlib import Path

import dpkt
import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.simulate.benign import rhythm
from engine.simulate.generator import PROFILES, Profile, parse_attack, parse_duration, simulate, start_epoch
from engine.simulate.labels import read_labels
from engine.simulate.topology import load_topology

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_PCAP = REPO_ROOT / "engine" / "data" / "sample.pcap"
SAMPLE_LABELS = REPO_ROOT / "engine" / "data" / "sample.labels.jsonl"
OUI_FILE = Path("/usr/share/ieee-data/oui.txt")


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), ("90s", 90), ("5m", 300), ("2h", 7200), ("1d", 86400), ("2d17h30m", 2 * 86400 + 17 * 3600 + 1800),
    ("1.5h", 5400),
])
def test_parse_duration_values(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "h", "-3s"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_parse_attack_options():
    spec = parse_attack("ssh_bruteforce@2h:intensity=2,every=1d,count=3,target=pacs")
    assert spec.name == "ssh_bruteforce"
    assert spec.offset_s == 7200
    assert spec.intensity == 2
    assert spec.every_s == 86400
    assert spec.count == 3
    assert spec.params == {"target": "pacs"}


@pytest.mark.parametrize("text, message", [
    ("teleport@5s", "unknown attack"),
    ("port_scan@5s:intensity=0", "invalid intensity"),
    ("port_scan@5s:count=3", "without every="),
    ("port_scan@5s:intensity", "expected key=value"),
    ("port_scan@5s:speed=9", "unknown option 'speed'"),
    ("dns_tunnel@5s:mode=udp", "unknown option 'mode'"),
])
def test_parse_attack_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        parse_attack(text)


def test_cli_writes_capture_and_labels(tmp_path):
    output = tmp_path / "out.pcap"
    result = CliRunner().invoke(main, ["simulate", "--duration", "30s", "--seed", "4", "-o", str(output),
                                       "--no-default-attacks", "--attack", "port_scan@5s"])
    assert result.exit_code == 0, result.output
    labels = read_labels(tmp_path / "out.labels.jsonl")
    assert [label["attack_class"] for label in labels] == ["port_scan"]
    frames = sum(1 for _ in dpkt.pcap.Reader(open(output, "rb")))
    assert f"wrote {frames} packets" in result.output


def test_cli_rejects_unknown_attack(tmp_path):
    result = CliRunner().invoke(main, ["simulate", "-o", str(tmp_path / "x.pcap"), "--attack", "teleport"])
    assert result.exit_code == 2
    assert "unknown attack 'teleport'" in result.output
    assert not (tmp_path / "x.pcap").exists()


def test_cli_rejects_unknown_source(tmp_path):
    result = CliRunner().invoke(main, ["simulate", "--duration", "20s", "-o", str(tmp_path / "x.pcap"),
                                       "--no-default-attacks", "--attack", "port_scan@5s:src=10.255.0.1"])
    assert result.exit_code == 1
    assert "unknown attack source '10.255.0.1'" in result.output


def test_cli_lists_attacks():
    result = CliRunner().invoke(main, ["simulate", "--list-attacks"])
    assert result.exit_code == 0
    assert "dicom_exfil" in result.output
    assert "T1048" in result.output


def test_hospital_topology_size():
    topology = load_topology(PROFILES["hospital"].scale)
    internal = [d for d in topology.devices if d.role not in ("external", "attacker")]
    assert 290 <= len(internal) <= 310
    assert len({d.ip for d in topology.devices}) == len(topology.devices)
    assert len({d.mac for d in internal}) == len(internal)
    for role in ("pacs", "ct", "mri", "ultrasound", "hl7_engine", "lis", "bedside_monitor", "infusion_pump",
                 "domain_controller", "file_server", "dns_ntp", "printer", "vpn_gateway"):
        assert topology.role(role), role


def test_topology_macs_have_registered_vendors():
    if not OUI_FILE.is_file():
        pytest.skip(f"{OUI_FILE} not found (Debian package ieee-data)")
    registered = set()
    for line in OUI_FILE.read_text(encoding="utf-8", errors="replace").splitlines():
        if "(hex)" in line:
            registered.add(line.split()[0].replace("-", ":").upper())
    for device in load_topology(0.05).devices:
        prefix = ":".join(f"{b:02X}" for b in device.mac[:3])
        assert prefix in registered, f"{device.name}: OUI {prefix} is not in {OUI_FILE}"


def test_start_is_monday_morning_baghdad():
    start = start_epoch(0)
    assert start == calendar.timegm((2026, 3, 2, 4, 0, 0))  # 07:00 at UTC+3
    assert start_epoch(1) - start == 7 * 86400


def test_rhythm_day_above_night():
    monday_0900_local = calendar.timegm((2026, 3, 2, 6, 0, 0))
    monday_0300_local = calendar.timegm((2026, 3, 2, 0, 0, 0))
    friday_0900_local = calendar.timegm((2026, 3, 6, 6, 0, 0))
    assert rhythm(monday_0900_local, 3) == 1.0
    assert rhythm(monday_0300_local, 3) < 0.5
    assert rhythm(friday_0900_local, 3) < rhythm(monday_0900_local, 3)


def test_recurring_attack_same_source_each_day():
    # A sparse three-day profile: a handful of sessions per hour.
    profile = Profile("test", "sparse", 0.05, 0.002, 3 * 86400, 3600, 3600, 1024, (1, 1))
    out = io.BytesIO()
    result = simulate(out, profile, 3 * 86400, 2, [parse_attack("password_spray@20h:every=1d,count=3,intensity=0.2")])
    runs = sorted(result.labels, key=lambda label: label.start)
    assert [label.occurrence for label in runs] == [0, 1, 2]
    assert len({label.src for label in runs}) == 1
    for previous, current in zip(runs, runs[1:]):
        gap_h = (current.start - previous.start) / 3600
        assert 23.5 <= gap_h <= 24.5


def test_sample_files_present():
    assert SAMPLE_PCAP.is_file()
    labels = read_labels(SAMPLE_LABELS)
    assert len({label["attack_class"] for label in labels}) >= 5
    assert SAMPLE_PCAP.stat().st_size < 10_000_000


def test_sample_regenerates_identically(tmp_path, monkeypatch):
    import tools.make_sample as make_sample

    monkeypatch.setattr(make_sample, "PCAP_PATH", tmp_path / "sample.pcap")
    monkeypatch.setattr(make_sample, "LABELS_PATH", tmp_path / "sample.labels.jsonl")
    monkeypatch.setattr(make_sample, "REPO_ROOT", tmp_path)
    assert make_sample.main() == 0
    assert (tmp_path / "sample.pcap").read_bytes() == SAMPLE_PCAP.read_bytes(), \
        "engine/data/sample.pcap is stale: run python tools/make_sample.py"
    assert (tmp_path / "sample.labels.jsonl").read_bytes() == SAMPLE_LABELS.read_bytes()

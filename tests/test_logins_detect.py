"""Detection rules: thresholds on both sides, and the synthetic hospital with planted attacks."""

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.logins import storage
from engine.logins.baseline import rebuild_baselines
from engine.logins.detect import (
    AlertBuilder,
    ChangeWindow,
    DetectionConfig,
    detect_bruteforce,
    detect_success_after_failures,
    load_config,
)
from engine.logins.ehr import ColumnMapping
from engine.logins.frame import LoginFrame
from engine.logins.ingest import IngestOptions, ingest_file
from engine.logins.pipeline import Privacy, analyse
from engine.logins.records import LoginRecord
from engine.privacy import Pseudonymizer
from engine.store import open_store

REPO = Path(__file__).resolve().parent.parent
KEY = bytes(range(32))
T0 = 1_760_000_000.0


def plain_builder():
    return AlertBuilder(lambda name: name)


def failures(count, user="root", source="192.0.2.1", step_s=10.0, start=T0):
    return [LoginRecord(ts=start + i * step_s, outcome="failure", source="syslog", user=user, src_ip=source,
                        line_no=i + 1) for i in range(count)]


def rules(alerts):
    return sorted(a.evidence["rule"] for a in alerts)


def test_bruteforce_threshold_both_sides():
    config = DetectionConfig(bruteforce_source_failures=10, bruteforce_window_s=300)
    below = LoginFrame.from_records(failures(9, step_s=30))
    assert detect_bruteforce(below, config, plain_builder()) == []
    at = LoginFrame.from_records(failures(10, step_s=30))
    alerts = detect_bruteforce(at, config, plain_builder())
    assert rules(alerts) == ["brute_force_source"]
    assert alerts[0].evidence["failures"] == 10
    assert alerts[0].evidence["record_ids"] == list(range(1, 11))
    # Ten failures spread over more than the window never fill it.
    spread = LoginFrame.from_records(failures(10, step_s=34))
    assert detect_bruteforce(spread, config, plain_builder()) == []


def test_repeated_message_counts_toward_threshold():
    records = failures(2, step_s=1)
    records[1].count = 9  # "message repeated 9 times"
    alerts = detect_bruteforce(LoginFrame.from_records(records), DetectionConfig(), plain_builder())
    assert rules(alerts) == ["brute_force_source"]
    assert alerts[0].count == 10


def test_history_rows_do_not_alert_again():
    frame = LoginFrame.from_records(failures(12))
    frame.is_new[:] = False
    frame.is_new[-1] = True  # the burst crossed 10 before this row
    assert detect_bruteforce(frame, DetectionConfig(), plain_builder()) == []


def test_spray_and_account_rules():
    config = DetectionConfig()
    spray = [r for i in range(6) for r in failures(1, user=f"user{i}", start=T0 + 60 * i)]
    assert rules(detect_bruteforce(LoginFrame.from_records(spray), config, plain_builder())) == ["password_spray"]
    four_accounts = spray[:4]
    assert detect_bruteforce(LoginFrame.from_records(four_accounts), config, plain_builder()) == []
    distributed = failures(5, source="192.0.2.1") + failures(5, source="192.0.2.2", start=T0 + 1)
    alerts = detect_bruteforce(LoginFrame.from_records(distributed), config, plain_builder())
    assert rules(alerts) == ["brute_force_account"]
    assert alerts[0].evidence["sources"] == 2


def test_success_after_failures_threshold():
    config = DetectionConfig(success_after_failures_min=5, success_after_failures_window_s=900)
    success = LoginRecord(ts=T0 + 100, outcome="success", source="syslog", user="root", src_ip="192.0.2.1", line_no=99)
    alerts = detect_success_after_failures(LoginFrame.from_records(failures(5) + [success]), config, plain_builder())
    assert rules(alerts) == ["success_after_failures"]
    assert alerts[0].evidence["failures"] == 5
    assert alerts[0].evidence["record_ids"][-1] == 99
    assert detect_success_after_failures(LoginFrame.from_records(failures(4) + [success]), config, plain_builder()) == []
    late = LoginRecord(ts=T0 + 2000, outcome="success", source="syslog", user="root", line_no=99)
    assert detect_success_after_failures(LoginFrame.from_records(failures(5) + [late]), config, plain_builder()) == []


def test_change_window_across_midnight():
    window = ChangeWindow.parse("Sat 22:00-06:00")
    assert window.contains(5, 23 * 60)  # Saturday 23:00
    assert window.contains(6, 5 * 60)  # Sunday 05:00
    assert not window.contains(6, 23 * 60)  # Sunday 23:00
    assert not window.contains(5, 21 * 60)
    assert ChangeWindow.parse("* 02:00-04:00").contains(2, 150)
    with pytest.raises(ValueError, match="invalid change window"):
        ChangeWindow.parse("Someday 1-2")


def test_config_rejects_unknown_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[logins]\nbruteforce_window = 5\n")
    with pytest.raises(ValueError, match="unknown \\[logins\\] keys"):
        load_config(path)
    path.write_text('[logins]\nbruteforce_window_s = 60\nchange_windows = ["Tue 18:00-22:00"]\n')
    config = load_config(path)
    assert config.bruteforce_window_s == 60
    assert config.change_windows == [ChangeWindow(frozenset({1}), 18 * 60, 22 * 60)]


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_auth_logs", REPO / "tools" / "gen_auth_logs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    """The synthetic hospital: learn a month, check a normal month, then the attack day."""
    out = tmp_path_factory.mktemp("hospital")
    planted = _load_generator().generate(out)
    conn = open_store(out / "store.db")
    storage.ensure_schema(conn)
    config = load_config(out / "config.toml")
    pseudonymizer = Pseudonymizer(KEY)
    privacy = Privacy(pseudonymizer, show_usernames=True)
    mapping = ColumnMapping.load(out / "mapping.toml")
    ehr_options = IngestOptions(format="ehr", mapping=mapping, pseudonymizer=pseudonymizer)

    def read(phase):
        records = []
        for name in ("auth.log", "windows.jsonl"):
            records += ingest_file(conn, str(out / phase / name), IngestOptions()).records
        records += ingest_file(conn, str(out / phase / "ehr.csv"), ehr_options).records
        return records

    train_records = read("train")
    rebuild_baselines(conn, None, None)
    test_records = read("test")
    test_alerts = analyse(conn, test_records, config, privacy.builder())
    attack_alerts = analyse(conn, read("attack"), config, privacy.builder())
    summary = json.loads((out / "planted.json").read_text())
    yield {"planted": planted, "train": train_records, "test": test_records, "test_alerts": test_alerts,
           "attack_alerts": attack_alerts, "summary": summary, "out": out}
    conn.close()


def test_normal_month_gives_no_alert(hospital):
    assert len(hospital["test"]) > 10_000
    assert [a.summary for a in hospital["test_alerts"]] == []


@pytest.mark.parametrize("rule", [
    "brute_force_source", "brute_force_account", "password_spray", "success_after_failures",
    "unusual_hour", "new_source", "concurrent_sessions", "dormant_account",
    "privileged_outside_window", "ehr_volume", "ehr_out_of_department", "ehr_same_surname",
])
def test_planted_attack_detected(hospital, rule):
    planted = [p for p in hospital["planted"] if p["rule"] == rule]
    assert len(planted) == 1
    expected = planted[0]
    matching = [
        a for a in hospital["attack_alerts"]
        if a.evidence["rule"] == rule
        and a.dst.user == expected.get("user", a.dst.user)
        and a.src.ip == expected.get("source", a.src.ip)
    ]
    assert len(matching) == 1, [a.summary for a in hospital["attack_alerts"]]
    alert = matching[0]
    assert alert.kind == "login"
    assert alert.evidence["record_ids"]


def test_attack_day_has_no_stray_alert(hospital):
    # Each alert names a planted user or source, or is the new-source side
    # effect of a planted attack coming from an unknown address.
    users = {p.get("user") for p in hospital["planted"]}
    sources = {p.get("source") for p in hospital["planted"]}
    for alert in hospital["attack_alerts"]:
        assert alert.dst.user in users or alert.src.ip in sources, alert.summary


def test_ehr_volume_evidence(hospital):
    alert = next(a for a in hospital["attack_alerts"] if a.evidence["rule"] == "ehr_volume")
    assert alert.evidence["patients"] == 120
    assert alert.evidence["baseline_days"] >= 15
    assert alert.evidence["threshold"] < 60


def test_cli_hides_usernames(tmp_path):
    log = tmp_path / "auth.log"
    lines = "".join(
        f"2026-03-01T10:00:{i:02d}Z srv sshd[{i}]: Failed password for drsecret from 192.0.2.1 port {i} ssh2\n"
        for i in range(12)
    )
    log.write_text(lines)
    key = tmp_path / "key"
    key.write_text(KEY.hex() + "\n")
    store = tmp_path / "store.db"
    runner = CliRunner()
    result = runner.invoke(main, ["logins", "ingest", "--store", str(store), "--pseudonymize", str(key), "--json",
                                  str(log)])
    assert result.exit_code == 0, result.output
    alerts = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [a["evidence"]["rule"] for a in alerts] == ["brute_force_source"]
    assert "drsecret" not in result.stdout
    assert alerts[0]["evidence"]["account_names"] == [Pseudonymizer(KEY).text("drsecret", "user")]
    shown = runner.invoke(main, ["logins", "detect", "--store", str(store), "--show-usernames", "--json"])
    assert shown.exit_code == 0, shown.output
    assert "drsecret" in shown.stdout
    stored = open_store(store).execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
    assert stored == 2


def test_cli_ehr_needs_key(tmp_path):
    log = tmp_path / "a.csv"
    log.write_text("t,u,a,p\n")
    mapping = tmp_path / "m.toml"
    mapping.write_text('[columns]\nuser="u"\naction="a"\npatient="p"\ntime="t"\n')
    result = CliRunner().invoke(main, ["logins", "ingest", "--store", str(tmp_path / "s.db"), "--format", "ehr",
                                       "--mapping", str(mapping), str(log)])
    assert result.exit_code == 2
    assert "--pseudonymize" in result.output

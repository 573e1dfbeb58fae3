"""Report data gathered from a store seeded through the alert, inventory and responder APIs.

seed_report_store() writes a small hospital day whose numbers are known
by hand. The tests compare the report with those numbers, and with SQL
queries written independently of engine.report.gather. The other report
tests import the seed from here.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner

from engine.alerts import Alert, AlertConfig, AlertSink, Endpoint
from engine.alerts.store import RunStats
from engine.assets.inventory import ensure_schema as ensure_inventory_schema
from engine.cli import main
from engine.report.gather import gather_report, parse_duration, resolve_period
from engine.respond.records import ActionRecord, ensure_schema as ensure_actions_schema, insert_action
from engine.store import open_store
from engine.taxonomy import SEVERITIES

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
LAST_PACKET = T0 + 20_000  # newest capture time in the seeded store, so the period's end
DAY_S = 86_400.0

# (ip, vendor, roles) of the inventory; 10.6.0.x never appear in alerts.
ASSETS = [
    ("10.1.0.50", "Dell Inc.", ["workstation"]),
    ("10.2.0.10", "Siemens Healthcare", ["pacs"]),
    ("10.2.0.11", "Siemens Healthcare", ["pacs"]),
    ("10.2.0.20", "", ["hl7_engine"]),
    ("10.3.0.5", "", ["server"]),
    ("10.4.0.2", "", ["domain_controller"]),
    ("10.6.0.1", "Baxter Healthcare", ["infusion_pump", "iomt_device"]),
    ("10.6.0.2", "Mindray", ["patient_monitor", "iomt_device"]),
]


def _alert(key, category, severity, src, dst, first, last, count=1, kind="detection", summary=None, **extra):
    summary = summary or f"{category} from {src}"
    return key, Alert(category=category, severity=severity, kind=kind, summary=summary,
                      first_seen=first, last_seen=last, count=count,
                      src=Endpoint(ip=src), dst=Endpoint(ip=dst), **extra)


def seeded_alerts():
    """Return (key, Alert) pairs: seven in the period, one in the previous period, one older, findings, forecasts."""
    return [
        # In the period [LAST_PACKET - 1 day, LAST_PACKET].
        _alert("scan", "scan", "medium", "10.1.0.50", "10.2.0.10", T0 + 600, T0 + 900, count=40, technique="T1046"),
        _alert("brute", "bruteforce", "high", "10.1.0.50", "10.2.0.20", T0 + 1200, T0 + 1500, count=120),
        _alert("ransom", "ransomware", "critical", "10.1.0.77", "10.3.0.5", T0 + 3600, T0 + 3700, count=3),
        _alert("exfil", "exfiltration", "high", "10.2.0.10", "203.0.113.9", T0 + 7200, T0 + 7800),
        _alert("policy", "policy_violation", "medium", "10.1.0.90", "10.2.0.20", T0 + 8000, T0 + 8000,
               kind="policy"),
        _alert("login", "bruteforce", "critical", "10.1.0.50", "10.4.0.2", T0 + 9000, T0 + 9100, count=7,
               kind="login"),
        _alert("anomaly", "anomaly", "low", "10.5.0.3", "10.5.0.4", T0 + 10_000, T0 + 10_000, state="closed"),
        # Previous period of the same length.
        _alert("previous", "scan", "medium", "10.1.0.50", "10.2.0.10", T0 - 100_000, T0 - 99_000),
        # Older than both periods.
        _alert("old", "dos", "high", "10.9.0.1", "10.2.0.10", T0 - 10 * DAY_S, T0 - 10 * DAY_S + 60),
        # Findings: two weak-TLS servers with one description, SMBv1, a vulnerable SSH server.
        _alert("tls1", "weak_tls", "medium", "10.1.0.60", "10.2.0.10", T0 + 100, T0 + 200, kind="finding",
               summary="Weak TLS: negotiated TLS 1.0"),
        _alert("tls2", "weak_tls", "medium", "10.1.0.61", "10.2.0.11", T0 + 300, T0 + 400, kind="finding",
               summary="Weak TLS: negotiated TLS 1.0"),
        _alert("smb1", "smbv1", "high", "10.1.0.50", "10.3.0.5", T0 + 500, T0 + 600, kind="finding"),
        _alert("ssh", "vulnerable_software", "critical", "10.1.0.50", "10.4.0.2", T0 + 700, T0 + 800,
               kind="finding", technique="T1190", evidence={"cve": "CVE-2024-6387"}),
        # Forecasts: windows after the period's end still belong in the report.
        _alert("stage", "lateral_movement", "medium", "10.1.0.50", None, LAST_PACKET, LAST_PACKET + DAY_S,
               kind="forecast", evidence={"forecast": "next_stage", "confidence": 0.8,
                                          "current_stage": "credential_access", "next_stage": "lateral_movement"}),
        _alert("campaign", "scan", "medium", "10.1.0.50", "10.2.0.10", LAST_PACKET + 3600, LAST_PACKET + 7200,
               kind="forecast", evidence={"forecast": "recurring_campaign", "confidence": 0.7}),
    ]


def seed_report_store(path) -> dict[str, str]:
    """Write the seeded hospital day to a new store at `path`; return alert ids by key."""
    config = AlertConfig(sensor_id="icu-1", bus_endpoint=None, replay_endpoint=None)
    ids = {}
    with AlertSink(str(path), config) as sink:
        for key, alert in seeded_alerts():
            # publish() stores each alert as it is: no aggregation, so counts stay as written.
            ids[key] = sink.publish(alert).id
        sink.publish_stats(RunStats(
            sensor_id="icu-1", source="/captures/ward-a.pcap", started_at=T0 + 30_000, ended_at=T0 + 30_100,
            packets=50_000, bytes=40_000_000, flows=1_200, alerts=9, first_packet_time=T0,
            last_packet_time=LAST_PACKET,
            anomaly_counters={"truncated_ipv4": 3, "bad_tcp_header_length": 2, "interface_drops": 5}))
        sink.publish_stats(RunStats(
            sensor_id="icu-1", source="/captures/old.pcap", started_at=T0 - 9 * DAY_S, packets=10,
            first_packet_time=T0 - 10 * DAY_S, last_packet_time=T0 - 10 * DAY_S + 60))

    conn = open_store(path)
    ensure_inventory_schema(conn)
    for ip, vendor, roles in ASSETS:
        conn.execute("INSERT INTO assets (ip, mac, vendor, first_seen, last_seen, updated_at) VALUES (?, '', ?, ?, ?, ?)",
                     (ip, vendor, T0, LAST_PACKET, T0))
        for role in roles:
            conn.execute("INSERT INTO asset_attributes (ip, kind, value, first_seen, last_seen)"
                         " VALUES (?, 'role', ?, ?, ?)", (ip, role, T0, LAST_PACKET))
    ensure_actions_schema(conn)
    # Wall-clock created_at values lie outside the capture-time period, so
    # these count through their alerts.
    for action, status, alert_key in (("block", "applied", "brute"), ("isolate", "escalated", "ransom"),
                                      ("webhook", "failed", "login"), ("block", "applied", "old")):
        insert_action(conn, ActionRecord(actor="wardwatch-respond@fw1", rule=f"{alert_key}-rule", action=action,
                                         subject="10.1.0.50", status=status, dry_run=False, reason="test",
                                         alert_id=ids[alert_key]))
    conn.close()
    return ids


@pytest.fixture
def report_store(tmp_path):
    path = tmp_path / "wardwatch.db"
    seed_report_store(path)
    return path


@pytest.fixture
def report(report_store):
    conn = open_store(report_store)
    try:
        yield gather_report(conn, DAY_S)
    finally:
        conn.close()


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800),
                                           ("2w", 1209600), ("1.5h", 5400)])
def test_parse_duration_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "7y", "-1d", "0d", "7 days"])
def test_parse_duration_invalid(text):
    with pytest.raises(ValueError, match="invalid period"):
        parse_duration(text)


def test_period_ends_at_latest_capture(report_store):
    conn = open_store(report_store)
    period = resolve_period(conn, DAY_S)
    conn.close()
    assert period.end == LAST_PACKET
    assert period.start == LAST_PACKET - DAY_S
    assert period.previous().start == LAST_PACKET - 2 * DAY_S


def test_summary_counts_match_store(report, report_store):
    start, end = report["period"]["start"], report["period"]["end"]
    conn = sqlite3.connect(report_store)
    expected_alerts, expected_detections = conn.execute(
        "SELECT COUNT(*), SUM(count) FROM alerts WHERE kind IN ('detection', 'policy', 'login')"
        " AND last_seen >= ? AND first_seen <= ?", (start, end)).fetchone()
    by_severity = dict(conn.execute(
        "SELECT severity, COUNT(*) FROM alerts WHERE kind IN ('detection', 'policy', 'login')"
        " AND last_seen >= ? AND first_seen <= ? GROUP BY severity", (start, end)).fetchall())
    conn.close()
    summary = report["summary"]
    assert summary["alerts"] == expected_alerts == 7
    assert summary["detections"] == expected_detections == 40 + 120 + 3 + 1 + 1 + 7 + 1
    assert summary["by_severity"] == {s: by_severity.get(s, 0) for s in SEVERITIES}
    assert summary["open_alerts"] == 6
    assert summary["by_kind"] == {"detection": 5, "policy": 1, "login": 1}


def test_summary_risk_and_trend(report):
    summary = report["summary"]
    assert summary["overall_risk"] == "critical"
    assert summary["overall_risk_alerts"] == 2
    assert summary["overall_risk_findings"] == 1  # the regreSSHion finding
    assert summary["previous_alerts"] == 1
    assert summary["change_percent"] == 600.0


def test_summary_clinical_services(report):
    services = {entry["device_class"]: entry for entry in report["summary"]["clinical_services"]}
    # Workstations, servers and domain controllers are not clinical; pumps and monitors had no alerts.
    assert sorted(services) == ["hl7_engine", "pacs"]
    assert services["pacs"]["alerts"] == 2  # scan and exfiltration name 10.2.0.10
    assert services["pacs"]["assets"] == 2
    assert services["pacs"]["assets_with_alerts"] == 1
    assert services["hl7_engine"]["alerts"] == 2  # bruteforce and policy violation
    assert services["hl7_engine"]["max_severity"] == "high"


def test_decisions(report):
    decisions = report["summary"]["decisions"]
    # Ransomware (escalated only), exfiltration (no action) and the login
    # bruteforce (failed webhook) lack an applied response; the network
    # bruteforce was blocked.
    assert decisions["unanswered_alerts"] == 3
    assert decisions["escalated_actions"] == 1
    assert decisions["failed_actions"] == 1
    assert decisions["serious_findings"] == 2
    assert decisions["total"] == 7
    first = decisions["items"][0]
    assert first["type"] == "unanswered_alert"
    assert first["severity"] == "critical"


def test_top_endpoints(report):
    top_source = report["top_sources"][0]
    assert top_source["ip"] == "10.1.0.50"
    assert top_source["alerts"] == 3
    assert top_source["detections"] == 40 + 120 + 7
    assert top_source["max_severity"] == "critical"
    targets = {entry["ip"]: entry["alerts"] for entry in report["top_targets"]}
    assert targets["10.2.0.20"] == 2
    assert targets["10.2.0.10"] == 1


def test_stages(report):
    stages = {entry["stage"]: entry for entry in report["stages"]}
    assert stages["recon"]["alerts"] == 1
    assert stages["credential_access"]["alerts"] == 2
    assert stages["impact"]["alerts"] == 2  # ransomware and the policy violation
    assert stages["exfiltration"]["alerts"] == 1
    assert stages["unstaged"]["alerts"] == 1  # the anomaly
    assert stages["lateral_movement"]["alerts"] == 0
    assert stages["credential_access"]["sources"] == 1
    assert sum(entry["alerts"] for entry in report["stages"]) == report["summary"]["alerts"]


def test_assets_by_device_class(report):
    assets = report["assets"]
    assert assets["total"] == len(ASSETS)
    classes = {entry["device_class"]: entry for entry in assets["by_class"]}
    assert classes["workstation"]["alerts"] == 3
    assert classes["server"]["max_severity"] == "critical"
    assert classes["domain_controller"]["alerts"] == 1
    assert classes["infusion_pump"]["alerts"] == 0
    assert classes["infusion_pump"]["max_severity"] is None
    assert classes["patient_monitor"]["assets"] == 1
    # 10.2.0.11 is only in a finding, and the pump and monitor in nothing.
    assert assets["devices_with_alerts"] == 5


def test_findings_grouped(report):
    findings = report["findings"]
    assert findings["total"] == 4
    assert findings["group_count"] == 3
    assert findings["affected_devices"] == 4
    first = findings["groups"][0]
    assert first["category"] == "vulnerable_software"
    assert first["cve"] == "CVE-2024-6387"
    tls = next(g for g in findings["groups"] if g["category"] == "weak_tls")
    assert tls["affected"] == ["10.2.0.10", "10.2.0.11"]


def test_actions_follow_their_alerts(report):
    actions = report["actions"]
    assert actions["total"] == 3  # the action on the old alert is outside the period
    assert actions["by_status"] == {"applied": 1, "escalated": 1, "failed": 1}
    assert actions["by_action"] == {"block": 1, "isolate": 1, "webhook": 1}


def test_forecasts(report):
    forecasts = report["forecasts"]
    assert forecasts["total"] == 2
    assert forecasts["items"][0]["confidence"] == 0.8
    assert forecasts["items"][0]["next_stage"] == "lateral_movement"


def test_capture_health(report, report_store):
    health = report["capture_health"]
    assert health["runs"] == 1
    assert health["packets"] == 50_000
    assert health["bytes"] == 40_000_000
    assert health["flows"] == 1_200
    assert health["drops"] == 5
    assert health["anomalies"] == {"bad_tcp_header_length": 2, "truncated_ipv4": 3}
    assert health["anomalies_total"] == 5


def test_timeline_sums_to_alerts(report):
    timeline = report["timeline"]
    total = report["summary"]["alerts"]
    assert sum(sum(counts) for counts in timeline["by_category"].values()) == total
    assert sum(sum(counts) for counts in timeline["by_severity"].values()) == total
    assert len(timeline["bucket_starts"]) <= 48
    # The alerts span T0+600 .. T0+10000 s: 9400 s is 157 one-minute buckets
    # but 32 five-minute ones.
    assert timeline["bucket_s"] == 300
    assert len(timeline["bucket_starts"]) == 32


def test_empty_store_sections(tmp_path):
    conn = open_store(tmp_path / "empty.db")
    report = gather_report(conn, DAY_S)
    conn.close()
    assert report["summary"]["alerts"] == 0
    assert report["summary"]["overall_risk"] == "none"
    assert report["assets"]["total"] == 0
    assert report["actions"]["total"] == 0
    assert report["capture_health"]["runs"] == 0


def test_cli_json_matches_gather(report_store, report, tmp_path):
    output = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["report", "--store", str(report_store), "--since", "1d",
                                       "--format", "json", "-o", str(output)])
    assert result.exit_code == 0, result.output
    data = json.loads(output.read_text(encoding="utf-8"))
    data.pop("generated_at")
    expected = json.loads(json.dumps(report))
    expected.pop("generated_at")
    assert data == expected


def test_cli_missing_store(tmp_path):
    result = CliRunner().invoke(main, ["report", "--store", str(tmp_path / "none.db"), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 1
    assert "not found" in result.output


@pytest.mark.parametrize("arguments", [["--since", "7y"], ["--until", "yesterday"], ["--lang", "fr"]])
def test_cli_invalid_options(report_store, arguments):
    result = CliRunner().invoke(main, ["report", "--store", str(report_store), *arguments])
    assert result.exit_code == 2


def test_sample_capture_numbers(tmp_path):
    from pathlib import Path

    import dpkt

    data = Path(__file__).resolve().parent.parent / "engine"
    sample, model = data / "data" / "sample.pcap", data / "models" / "default.ww"
    if not (sample.is_file() and model.is_file()):
        pytest.skip("the shipped sample capture or model (engine/models/default.ww) is not built yet")
    store = tmp_path / "wardwatch.db"
    result = CliRunner().invoke(main, ["analyze", str(sample), "--store", str(store), "--no-bus", "-q"])
    assert result.exit_code == 0, result.output
    with open(sample, "rb") as handle:
        packets = sum(1 for _ in dpkt.pcap.UniversalReader(handle))

    conn = open_store(store)
    report = gather_report(conn, 7 * DAY_S)
    start, end = report["period"]["start"], report["period"]["end"]
    counts = dict(conn.execute(
        "SELECT kind, COUNT(*) FROM alerts WHERE last_seen >= ? AND first_seen <= ? GROUP BY kind",
        (start, end)).fetchall())
    run_alerts = conn.execute("SELECT SUM(alerts) FROM runs").fetchone()[0]
    conn.close()

    assert report["capture_health"]["packets"] == packets
    assert report["capture_health"]["runs"] == 1
    assert report["capture_health"]["alerts"] == run_alerts
    assert report["summary"]["alerts"] == sum(counts.get(kind, 0) for kind in ("detection", "policy", "login"))
    assert report["findings"]["total"] == counts.get("finding", 0)
    assert report["summary"]["stored_alerts"] == sum(counts.values())
    stored_severities = [row[0] for row in alert_severities(store)]
    assert report["summary"]["overall_risk"] == max(stored_severities, key=SEVERITIES.index)


def alert_severities(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT severity FROM alerts WHERE kind != 'forecast'").fetchall()
    finally:
        conn.close()


def test_invalid_alert_body_skipped(report_store):
    conn = open_store(report_store)
    conn.execute("UPDATE alerts SET body = ? WHERE kind = 'forecast' AND category = 'scan'", (b"\xc1not msgpack",))
    report = gather_report(conn, DAY_S)
    conn.close()
    assert report["invalid_alert_bodies"] == 1
    assert report["forecasts"]["total"] == 1
    assert report["findings"]["total"] == 4


def test_cli_store_not_sqlite(tmp_path):
    store = tmp_path / "garbage.db"
    store.write_bytes(b"this is not an SQLite database" * 100)
    result = CliRunner().invoke(main, ["report", "--store", str(store), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 1
    assert f"cannot open store {store}" in result.output
    assert "file is not a database" in result.output

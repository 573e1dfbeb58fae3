"""The report headline against its most severe item, and its alert counts against `wardwatch alerts list`."""

from __future__ import annotations

import sqlite3

import pytest
from click.testing import CliRunner

from engine.alerts import AlertConfig, AlertSink
from engine.cli import main
from engine.report.gather import gather_report
from engine.report.locale import LANGUAGES, Locale
from engine.report.render import render_html
from engine.store import open_store
from engine.taxonomy import SEVERITIES
from test_report_gather import DAY_S, T0, _alert, seed_report_store
from test_report_render import parse


def write_store(path, alerts) -> None:
    config = AlertConfig(sensor_id="icu-1", bus_endpoint=None, replay_endpoint=None)
    with AlertSink(str(path), config) as sink:
        for _, alert in alerts:
            sink.publish(alert)


def summary_of(path) -> dict:
    conn = open_store(path)
    try:
        return gather_report(conn, DAY_S)
    finally:
        conn.close()


def single_period_alerts():
    """Return a day like the sample capture's: high incidents, a critical finding, one forecast."""
    return [
        _alert("c2", "c2", "high", "10.40.0.11", "198.51.100.66", T0 + 10, T0 + 240, count=16),
        _alert("scan", "scan", "medium", "10.40.0.11", "10.10.0.17", T0 + 20, T0 + 30, count=15),
        _alert("ssh", "bruteforce", "high", "10.40.0.11", "10.10.0.15", T0 + 40, T0 + 50, count=10, kind="login"),
        _alert("dicom", "cleartext_patient_data", "critical", "10.10.0.17", "198.51.100.104", T0 + 60, T0 + 70,
               kind="finding", summary="DICOM patient data without TLS, leaving the site"),
        _alert("hl7", "cleartext_patient_data", "medium", "10.10.0.13", "10.10.0.15", T0 + 80, T0 + 90,
               kind="finding", summary="HL7 patient data without TLS, inside one zone"),
        _alert("next", "exfiltration", "high", "10.40.0.11", None, T0 + 300, T0 + 3900, kind="forecast",
               evidence={"forecast": "next_stage", "confidence": 0.6}),
    ]


def test_critical_finding_raises_headline(tmp_path):
    path = tmp_path / "wardwatch.db"
    write_store(path, single_period_alerts())
    summary = summary_of(path)["summary"]
    assert summary["overall_risk"] == "critical"
    assert summary["overall_risk_alerts"] == 0
    assert summary["overall_risk_findings"] == 1
    assert summary["by_severity"]["critical"] == 0  # incident alerts alone reach only high


@pytest.mark.parametrize("incident, finding", [
    (incident, finding) for incident in SEVERITIES for finding in SEVERITIES
])
def test_headline_is_highest_of_both(tmp_path, incident, finding):
    path = tmp_path / "wardwatch.db"
    write_store(path, [
        _alert("detection", "scan", incident, "10.1.0.1", "10.1.0.2", T0, T0 + 10),
        _alert("finding", "weak_tls", finding, "10.1.0.3", "10.1.0.4", T0 + 20, T0 + 30, kind="finding"),
    ])
    summary = summary_of(path)["summary"]
    expected = max(incident, finding, key=SEVERITIES.index)
    assert summary["overall_risk"] == expected
    assert summary["overall_risk_alerts"] == (1 if incident == expected else 0)
    assert summary["overall_risk_findings"] == (1 if finding == expected else 0)


def test_forecast_does_not_raise_headline(tmp_path):
    path = tmp_path / "wardwatch.db"
    write_store(path, [
        _alert("detection", "scan", "low", "10.1.0.1", "10.1.0.2", T0, T0 + 10),
        _alert("forecast", "ransomware", "critical", "10.1.0.1", None, T0 + 20, T0 + 3600, kind="forecast",
               evidence={"forecast": "next_stage", "confidence": 0.9}),
    ])
    summary = summary_of(path)["summary"]
    assert summary["overall_risk"] == "low"
    assert summary["forecasts"] == 1


def test_stored_alerts_match_alerts_list(tmp_path):
    path = tmp_path / "wardwatch.db"
    write_store(path, single_period_alerts())
    result = CliRunner().invoke(main, ["alerts", "list", "--store", str(path)])
    assert result.exit_code == 0, result.output
    listed = result.output.splitlines()
    summary = summary_of(path)["summary"]
    assert len(listed) == 6
    assert summary["stored_alerts"] == len(listed)
    assert summary["alerts"] == 3
    assert summary["findings"] == 2
    assert summary["forecasts"] == 1


def test_stored_alerts_match_sql(tmp_path):
    path = tmp_path / "wardwatch.db"
    seed_report_store(path)
    report = summary_of(path)
    start, end = report["period"]["start"], report["period"]["end"]
    conn = sqlite3.connect(path)
    overlapping = conn.execute(
        "SELECT COUNT(*) FROM alerts WHERE kind != 'forecast' AND last_seen >= ? AND first_seen <= ?",
        (start, end)).fetchone()[0]
    # A forecast counts while its predicted window has not ended before the period.
    forecasts = conn.execute("SELECT COUNT(*) FROM alerts WHERE kind = 'forecast' AND last_seen >= ?",
                             (start,)).fetchone()[0]
    conn.close()
    summary = report["summary"]
    assert summary["stored_alerts"] == overlapping + forecasts == 13
    assert summary["stored_alerts"] == summary["alerts"] + summary["findings"] + summary["forecasts"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_page_states_both_counts(tmp_path, language):
    path = tmp_path / "wardwatch.db"
    write_store(path, single_period_alerts())
    locale = Locale(language)
    text = parse(render_html(summary_of(path), language)).text("summary")
    assert locale.text("count.alerts", count=6) in text
    assert locale.text("count.incident_alerts", count=3) in text
    assert locale.text("count.findings", count=2) in text
    assert locale.text("count.forecasts", count=1) in text
    assert "wardwatch alerts list" in text
    assert locale.label("severity", "critical") in text


def test_english_headline_names_the_finding(tmp_path):
    path = tmp_path / "wardwatch.db"
    write_store(path, single_period_alerts())
    text = parse(render_html(summary_of(path), "en")).text("summary")
    assert "The highest severity seen was Critical, reached by 1 vulnerability finding." in text
    assert ("the alert store holds 6 alerts for this period: 3 incident alerts, 2 vulnerability findings"
            " and 1 forecast.") in text


def test_arabic_headline_names_the_finding(tmp_path):
    path = tmp_path / "wardwatch.db"
    write_store(path, single_period_alerts())
    text = parse(render_html(summary_of(path), "ar")).text("summary")
    assert "أعلى خطورة رُصدت هي «حرجة»، والبنود التي بلغتها: ثغرة واحدة." in text
    # 6 and 3 are "few" (plural noun), 2 is the dual, 1 the singular with واحد.
    assert "يضم مخزن التنبيهات في هذه الفترة ٦ تنبيهات: ٣ تنبيهات عن حوادث، ثغرتان وتوقع واحد." in text


def test_join_and_forms():
    english, arabic = Locale("en"), Locale("ar")
    assert english.join_and([]) == ""
    assert english.join_and(["a"]) == "a"
    assert english.join_and(["a", "b"]) == "a and b"
    assert english.join_and(["a", "b", "c"]) == "a, b and c"
    assert arabic.join_and(["أ", "ب", "ج"]) == "أ، ب وج"

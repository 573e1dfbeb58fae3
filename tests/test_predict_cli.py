"""`wardwatch predict` on a real SQLite store and on a label file."""

import calendar
import json
from contextlib import closing

import pytest
from click.testing import CliRunner

from engine.alerts.schema import Alert, Endpoint
from engine.alerts.store import AlertStore
from engine.cli import main
from engine.store import open_store

DAY = 86400.0
MIDNIGHT = float(calendar.timegm((2026, 3, 2, 0, 0, 0)))
SCANNER = "198.51.100.7"
PACS = "10.10.0.18"


@pytest.fixture
def store_path(tmp_path):
    """A store with a nightly scan of the PACS at about 02:00 on five nights."""
    path = tmp_path / "alerts.db"
    with AlertStore(path) as store:
        for night, jitter_s in enumerate((0, 240, -300, 60, 180)):
            start = MIDNIGHT + night * DAY + 2 * 3600 + jitter_s
            store.append(Alert(category="scan", severity="high", summary="SYN scan", technique="T1046",
                               sensor_id="s1", first_seen=start, last_seen=start + 90,
                               src=Endpoint(ip=SCANNER), dst=Endpoint(ip=PACS)))
    return path


def test_predict_json_from_store(store_path):
    result = CliRunner().invoke(main, ["predict", "--store", str(store_path), "--json",
                                       "--now", str(MIDNIGHT + 5 * DAY)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["events"] == 5
    [campaign] = document["campaigns"]
    assert campaign["key"] == SCANNER
    assert campaign["target"] == PACS
    assert campaign["next_start"] <= MIDNIGHT + 5 * DAY + 2 * 3600 <= campaign["next_end"]
    assert document["risk"][0]["address"] in (SCANNER, PACS)
    [forecast] = document["forecast_alerts"]
    assert forecast["kind"] == "forecast"
    assert forecast["category"] == "scan"


def test_publish_writes_forecast_once(store_path):
    arguments = ["predict", "--store", str(store_path), "--now", str(MIDNIGHT + 5 * DAY), "--publish",
                 "--no-bus", "--sensor-id", "predictor"]
    for _ in range(2):
        result = CliRunner().invoke(main, arguments)
        assert result.exit_code == 0, result.output
    with closing(open_store(store_path)) as conn:
        rows = conn.execute("SELECT kind, category, src_ip, dst_ip FROM alerts WHERE kind = 'forecast'").fetchall()
    assert [tuple(row) for row in rows] == [("forecast", "scan", SCANNER, PACS)]
    # A forecast never counts as history, so the next run still reads five detections.
    again = CliRunner().invoke(main, ["predict", "--store", str(store_path), "--json"])
    assert json.loads(again.output)["events"] == 5


def test_evaluate_from_labels(tmp_path):
    labels = tmp_path / "run.labels.jsonl"
    with open(labels, "w") as handle:
        for night in range(4):
            start = MIDNIGHT + night * DAY + 2 * 3600 + 120 * night
            handle.write(json.dumps({"attack_class": "port_scan", "scenario": "port_scan", "occurrence": night,
                                     "src": SCANNER, "dst": PACS, "start": start, "end": start + 60}) + "\n")
    result = CliRunner().invoke(main, ["predict", "evaluate", "--labels", str(labels), "--train-days", "3"])
    assert result.exit_code == 0, result.output
    assert "1 of 1 predicted in window with the right target" in result.output


def test_missing_store_fails(tmp_path):
    result = CliRunner().invoke(main, ["predict", "--store", str(tmp_path / "absent.db")])
    assert result.exit_code == 1
    assert "not found" in result.output

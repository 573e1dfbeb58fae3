"""Passive findings are reported once per day of capture time, not per reconnect."""

from engine.alerts.config import AlertConfig
from engine.alerts.schema import Alert, Endpoint
from engine.analyze.cli import FINDING_REPEAT_S, InspectionStage


def finding(at_s: float) -> Alert:
    return Alert(
        category="mqtt_no_auth", severity="medium", summary="MQTT broker accepted a client without credentials",
        kind="finding", first_seen=at_s, last_seen=at_s,
        src=Endpoint(ip="10.30.0.11"), dst=Endpoint(ip="10.10.0.19", port=1883),
        aggregation_key="finding:mqtt_no_auth:10.10.0.19:1883",
    )


def test_finding_repeats_only_after_a_day(tmp_path):
    stage = InspectionStage(tmp_path / "s.db", None, AlertConfig(sensor_id="test"))
    try:
        assert stage._repeated_finding(finding(1000.0)) is False
        # A reconnect an hour later is the same standing fact.
        assert stage._repeated_finding(finding(1000.0 + 3600)) is True
        assert stage.counters["findings_repeated"] == 1
        # A day after the first report it is reported again.
        assert stage._repeated_finding(finding(1000.0 + FINDING_REPEAT_S)) is False
    finally:
        stage.close()


def test_detections_are_never_held_back(tmp_path):
    stage = InspectionStage(tmp_path / "s.db", None, AlertConfig(sensor_id="test"))
    try:
        policy = finding(1000.0)
        policy.kind = "policy"
        assert stage._repeated_finding(policy) is False
        assert stage._repeated_finding(policy) is False
    finally:
        stage.close()


def test_anomaly_alerts_fold_by_source():
    assert AlertConfig().aggregation.key_mode("anomaly") == "source"

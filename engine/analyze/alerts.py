"""Turn detections into alerts of the schema in engine.alerts.schema."""

from __future__ import annotations

from engine.alerts.schema import Alert, Contribution, Endpoint
from engine.analyze.actions import BASE_SEVERITY, RECOMMENDED_ACTIONS
from engine.analyze.pipeline import Detection
from engine.taxonomy import SEVERITIES, severity_rank


def severity_for(detection: Detection) -> str:
    """Return the alert severity: the category's base, one step lower for a weak model score."""
    base = BASE_SEVERITY.get(detection.category, "medium")
    rank = severity_rank(base)
    if detection.origin == "model" and detection.model_score is not None and detection.model_score < 0.8:
        rank = max(rank - 1, 0)
    return SEVERITIES[rank]


def alert_from_detection(detection: Detection, sensor_id: str = "") -> Alert:
    """Build the alert for one detection (before aggregation and privacy)."""
    evidence = dict(detection.evidence)
    evidence["origin"] = detection.origin
    if detection.attack_class:
        evidence["attack_class"] = detection.attack_class
    return Alert(
        category=detection.category,
        severity=severity_for(detection),
        summary=detection.summary,
        kind="detection",
        technique=detection.technique,
        sensor_id=sensor_id,
        first_seen=detection.first_seen,
        last_seen=detection.last_seen,
        src=Endpoint(ip=detection.src_ip, port=detection.src_port, mac=detection.src_mac),
        dst=Endpoint(ip=detection.dst_ip, port=detection.dst_port, mac=detection.dst_mac),
        protocol=detection.protocol,
        community_id=detection.community_id,
        flow_ids=list(detection.flow_ids),
        count=detection.count,
        model_class=detection.attack_class,
        model_score=detection.model_score,
        anomaly_score=detection.anomaly_score,
        top_features=[Contribution(name, value, contribution) for name, value, contribution in detection.top_features],
        recommended_action=RECOMMENDED_ACTIONS.get(detection.category, ""),
        evidence=evidence,
    )

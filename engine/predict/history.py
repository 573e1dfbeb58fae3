"""Alert history as the predictors see it: one event per alert, with its attack stage.

Events come from the alerts table of a store (the latest revision of each
alert) or from a simulator label file, where each label becomes the event
its alert should produce. Forecast alerts are left out, so predictions
never feed on themselves.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from engine.alerts.schema import Alert, unpack_alert
from engine.taxonomy import ATTACK_CLASSES, STAGES

# Alert category -> attack stage, derived from the taxonomy. Every category in
# ATTACK_CLASSES maps to a single stage.
CATEGORY_STAGES: dict[str, str] = {row.category: row.stage for row in ATTACK_CLASSES.values()}
# Events read from a store at most; the newest are kept.
MAX_EVENTS = 200_000


@dataclass(frozen=True)
class Event:
    time: float  # capture time of the first packet, epoch seconds
    end: float  # capture time of the last packet
    src: str  # source address ("" when unknown)
    dst: str  # destination address ("" when unknown)
    category: str
    technique: str
    stage: str  # one of engine.taxonomy.STAGES
    severity: str
    alert_id: str = ""


def stage_of(category: str, model_class: str | None = None) -> str | None:
    """Return the attack stage of an alert, or None when the category has no stage."""
    if model_class in ATTACK_CLASSES:
        return ATTACK_CLASSES[model_class].stage
    return CATEGORY_STAGES.get(category)


def event_from_alert(alert: Alert) -> Event | None:
    """Return the history event of an alert, or None for forecasts and categories without a stage."""
    if alert.kind == "forecast":
        return None
    stage = stage_of(alert.category, alert.model_class)
    if stage is None:
        return None
    return Event(alert.first_seen, alert.last_seen, alert.src.ip or "", alert.dst.ip or "", alert.category,
                 alert.technique or "", stage, alert.severity, alert.id)


def events_from_store(conn, since: float | None = None, limit: int = MAX_EVENTS) -> list[Event]:
    """Read alert history from the alerts table, oldest first; at most `limit` of the newest."""
    query = "SELECT body FROM alerts WHERE kind != 'forecast'"
    parameters: list = []
    if since is not None:
        query += " AND first_seen >= ?"
        parameters.append(since)
    query += " ORDER BY first_seen DESC LIMIT ?"
    parameters.append(limit)
    events = []
    for (body,) in conn.execute(query, parameters):
        event = event_from_alert(unpack_alert(body))
        if event is not None:
            events.append(event)
    events.sort(key=lambda event: event.time)
    return events


def _first_address(value) -> str:
    if isinstance(value, list):
        value = value[0] if value else ""
    if not value:
        return ""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return str(value)  # a CIDR for spoofed sources or a swept subnet


def events_from_labels(records: list[dict]) -> list[Event]:
    """Turn simulator label records into the events their alerts should produce, oldest first.

    A label with several destinations (lateral movement) yields one event
    per destination, as the sensor raises one alert per source and target pair.
    """
    events = []
    for record in records:
        row = ATTACK_CLASSES.get(record.get("attack_class", ""))
        if row is None:
            continue
        destinations = record.get("dst")
        if not isinstance(destinations, list):
            destinations = [destinations]
        for destination in destinations:
            events.append(Event(float(record["start"]), float(record["end"]), _first_address(record.get("src")),
                                _first_address(destination), row.category, row.technique, row.stage, "high",
                                f"label:{record.get('scenario')}:{record.get('occurrence', 0)}"))
    events.sort(key=lambda event: event.time)
    return events


def stage_index(stage: str) -> int:
    return STAGES.index(stage)

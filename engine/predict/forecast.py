"""Predictions as a whole, and the `forecast` alerts made from the confident ones."""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass, field

from engine.alerts.schema import Alert, Endpoint
from engine.predict.campaigns import Campaign, find_campaigns
from engine.predict.history import Event
from engine.predict.risk import DEFAULT_HORIZON_S, AssetRisk, forecast_risk
from engine.predict.stages import NextStageModel, thread_heads
from engine.taxonomy import ATTACK_CLASSES

DEFAULT_MIN_CONFIDENCE = 0.6
# Next-stage forecasts need at least this many transitions out of the current stage.
MIN_STAGE_SUPPORT = 3


@dataclass
class StageForecast:
    source: str  # address whose thread it is
    current_stage: str
    current_category: str
    last_seen: float
    next_stage: str
    probability: float
    support: int  # transitions seen from current_stage in the history


@dataclass
class Predictions:
    now: float
    horizon_s: float
    events: int
    campaigns: list[Campaign] = field(default_factory=list)
    stages: list[StageForecast] = field(default_factory=list)
    risks: list[AssetRisk] = field(default_factory=list)
    model: NextStageModel | None = None


def predict(events: list[Event], now: float | None = None, horizon_s: float = DEFAULT_HORIZON_S) -> Predictions:
    """Find campaigns, fit the next-stage model and rank asset risk for [now, now + horizon_s]."""
    if now is None:
        now = max((event.time for event in events), default=0.0)
    past = [event for event in events if event.time <= now]
    model = NextStageModel().fit(past)
    campaigns = find_campaigns(past, now)
    stages = []
    if model.transitions:
        for head in thread_heads(past, now, horizon_s):
            next_stage, probability, support = model.predict(head.stage)
            stages.append(StageForecast(head.src, head.stage, head.category, head.time, next_stage,
                                        round(probability, 4), support))
    stages.sort(key=lambda item: -item.probability)
    return Predictions(now, horizon_s, len(past), campaigns, stages,
                       forecast_risk(past, campaigns, model, now, horizon_s), model)


def _stage_category(events: list[Event], stage: str) -> tuple[str, str | None]:
    """Return the most common (category, technique) of `stage` in history, else the taxonomy's first."""
    counts = collections.Counter((e.category, e.technique) for e in events if e.stage == stage)
    if counts:
        category, technique = counts.most_common(1)[0][0]
        return category, technique or None
    for row in ATTACK_CLASSES.values():
        if row.stage == stage:
            return row.category, row.technique
    return "forecast", None


def _stable_id(*parts) -> str:
    # The same prediction gets the same id on every run, so re-running
    # `wardwatch predict --publish` updates the alert instead of adding one.
    return hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).hexdigest()[:32]


def forecast_alerts(predictions: Predictions, events: list[Event],
                    min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> list[Alert]:
    """Turn campaigns and next-stage forecasts at or above `min_confidence` into kind="forecast" alerts."""
    alerts = []
    end_of_horizon = predictions.now + predictions.horizon_s
    for campaign in predictions.campaigns:
        if campaign.confidence < min_confidence or campaign.next_start > end_of_horizon:
            continue
        source = None
        if campaign.group == "source":
            source = campaign.key
        elif len(campaign.sources) == 1:
            source = campaign.sources[0]
        alerts.append(Alert(
            category=campaign.category, severity="medium", kind="forecast", technique=campaign.technique or None,
            summary=(f"recurring {campaign.category} expected between {_utc(campaign.next_start)} and "
                     f"{_utc(campaign.next_end)} UTC against {campaign.target or 'unknown target'}"),
            first_seen=campaign.next_start, last_seen=campaign.next_end,
            src=Endpoint(ip=source), dst=Endpoint(ip=campaign.target or None),
            recommended_action="Prepare a block or watch for the source in the predicted window; "
                               "check the target's exposure.",
            evidence={
                "forecast": "recurring_campaign", "confidence": campaign.confidence,
                "period_s": round(campaign.period_s, 1), "period": campaign.period_name,
                "episodes": campaign.episodes, "on_schedule": campaign.on_schedule,
                "target_share": round(campaign.target_share, 3), "group": campaign.group, "key": campaign.key,
                "last_seen": campaign.last_seen,
            },
            id=_stable_id("campaign", campaign.group, campaign.key, campaign.category, round(campaign.expected_at)),
        ))
    for forecast in predictions.stages:
        if forecast.probability < min_confidence or forecast.support < MIN_STAGE_SUPPORT:
            continue
        category, technique = _stage_category(events, forecast.next_stage)
        alerts.append(Alert(
            category=category, severity="medium", kind="forecast", technique=technique,
            summary=(f"{forecast.source} is in {forecast.current_stage}; next stage likely "
                     f"{forecast.next_stage} (p={forecast.probability:.2f})"),
            first_seen=predictions.now, last_seen=end_of_horizon, src=Endpoint(ip=forecast.source),
            recommended_action=f"Check {forecast.source} for signs of {forecast.next_stage.replace('_', ' ')}.",
            evidence={
                "forecast": "next_stage", "confidence": forecast.probability, "current_stage": forecast.current_stage,
                "next_stage": forecast.next_stage, "support": forecast.support,
                "last_seen": forecast.last_seen,
            },
            id=_stable_id("stage", forecast.source, forecast.current_stage, round(forecast.last_seen)),
        ))
    for alert in alerts:
        alert.validate()
    return alerts


def _utc(seconds: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")

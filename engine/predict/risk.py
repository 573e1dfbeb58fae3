"""Per-asset risk for the next 24 hours, combined from three kinds of evidence.

For each address in the history:
  - base rate: the share of the last LOOKBACK_DAYS days (of those the
    history covers) on which the address was in at least one alert;
  - campaigns: a recurring campaign whose next window starts within the
    horizon and that targets the address (confidence x target share) or
    comes from it (confidence);
  - open threads: when the address's latest alert lies within the horizon,
    the next-stage model's probability that the thread moves to a later
    kill-chain stage, which a defender has to stop.
The parts are combined as independent chances, 1 - prod(1 - p). The result
is a ranking score with its evidence, not a calibrated probability.
"""

from __future__ import annotations

import collections
import datetime
from dataclasses import dataclass, field

from engine.predict.campaigns import Campaign
from engine.predict.history import Event
from engine.predict.stages import NextStageModel
from engine.taxonomy import STAGES

DAY_S = 86400.0
LOOKBACK_DAYS = 14
DEFAULT_HORIZON_S = DAY_S


@dataclass
class AssetRisk:
    address: str
    risk: float
    evidence: list[str] = field(default_factory=list)
    parts: dict[str, float] = field(default_factory=dict)


def forecast_risk(events: list[Event], campaigns: list[Campaign], model: NextStageModel, now: float,
                  horizon_s: float = DEFAULT_HORIZON_S) -> list[AssetRisk]:
    """Return the assets with a non-zero risk for [now, now + horizon_s], highest first."""
    parts: dict[str, dict[str, float]] = collections.defaultdict(dict)
    evidence: dict[str, list[str]] = collections.defaultdict(list)

    history = [event for event in events if now - LOOKBACK_DAYS * DAY_S <= event.time <= now]
    if history:
        first_day = int(min(event.time for event in history) // DAY_S)
        last_day = int(now // DAY_S)
        days_observed = max(1, last_day - first_day + 1)
        days_by_address: dict[str, set[int]] = collections.defaultdict(set)
        for event in history:
            for address in (event.src, event.dst):
                if address:
                    days_by_address[address].add(int(event.time // DAY_S))
        for address, days in days_by_address.items():
            parts[address]["base_rate"] = len(days) / days_observed
            evidence[address].append(f"in alerts on {len(days)} of the last {days_observed} days")

    for campaign in campaigns:
        if not now <= campaign.next_start <= now + horizon_s and not now <= campaign.expected_at <= now + horizon_s:
            continue
        expected = datetime.datetime.fromtimestamp(campaign.expected_at, tz=datetime.timezone.utc)
        window = f"expected around {expected:%Y-%m-%d %H:%M} UTC, {campaign.period_name}"
        if campaign.target:
            chance = campaign.confidence * campaign.target_share
            if chance > parts[campaign.target].get("campaign", 0.0):
                parts[campaign.target]["campaign"] = chance
            evidence[campaign.target].append(f"target of recurring {campaign.category} {window}")
        for source in campaign.sources:
            if campaign.confidence > parts[source].get("campaign", 0.0):
                parts[source]["campaign"] = campaign.confidence
            evidence[source].append(f"source of recurring {campaign.category} {window}")

    if model.transitions:
        latest: dict[str, Event] = {}
        for event in history:
            for address in (event.src, event.dst):
                if address and now - event.time <= horizon_s:
                    if address not in latest or event.time > latest[address].time:
                        latest[address] = event
        for address, event in latest.items():
            probabilities = model.probabilities(event.stage)
            later = float(probabilities[STAGES.index(event.stage) + 1:].sum())
            if later > 0:
                parts[address]["next_stage"] = later
                next_stage, probability, _ = model.predict(event.stage)
                evidence[address].append(f"open {event.stage} thread; next stage most likely {next_stage} "
                                         f"(p={probability:.2f})")

    risks = []
    for address, values in parts.items():
        remaining = 1.0
        for value in values.values():
            remaining *= 1.0 - min(1.0, max(0.0, value))
        risk = 1.0 - remaining
        if risk > 0:
            risks.append(AssetRisk(address, round(risk, 4), evidence[address], dict(values)))
    risks.sort(key=lambda item: (-item.risk, item.address))
    return risks

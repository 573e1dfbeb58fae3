"""Train on the first days of a history, predict the last: campaign windows and next stages.

Campaign check: a campaign found in the training days is due when its
predicted window starts within the test day. A due campaign is a hit when
the first episode of its group after the split starts inside the window
and its most frequent target is the predicted target. A campaign not due
is right when the test day has no episode of its group.

Next-stage check: every transition whose new-stage alert falls after the
split is one test case. The model predicts from the stage before the
transition. The baseline always predicts the most common next stage of the
training transitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.predict.campaigns import Campaign, episodes_of, find_campaigns
from engine.predict.history import Event
from engine.predict.stages import NextStageModel, StageScores, extract_transitions, score_predictions

DAY_S = 86400.0


@dataclass
class CampaignCheck:
    campaign: Campaign
    due: bool  # the predicted window starts within the test day
    actual_start: float | None  # first episode after the split, None if it did not come
    actual_target: str | None
    in_window: bool
    target_correct: bool


@dataclass
class Evaluation:
    split: float
    train_events: int
    test_events: int
    campaigns: list[CampaignCheck] = field(default_factory=list)
    model: StageScores | None = None
    baseline: StageScores | None = None
    baseline_stage: str | None = None
    train_transitions: int = 0


def split_time(events: list[Event], train_days: int) -> float:
    """Return the start of day `train_days` counted in whole UTC days from the first event's day."""
    first_day = min(event.time for event in events) // DAY_S
    return (first_day + train_days) * DAY_S


def evaluate(events: list[Event], train_days: int, horizon_s: float = DAY_S) -> Evaluation:
    """Train on events before the split, test on those in [split, split + horizon_s)."""
    if not events:
        raise ValueError("no events to evaluate; the history or label file is empty")
    if train_days < 1:
        raise ValueError(f"invalid train_days {train_days}; expected 1 or more")
    split = split_time(events, train_days)
    train = [event for event in events if event.time < split]
    test = [event for event in events if split <= event.time < split + horizon_s]
    result = Evaluation(split, len(train), len(test))

    for campaign in find_campaigns(train, split):
        due = campaign.next_start < split + horizon_s
        if campaign.group == "source":
            members = [e for e in test if e.src == campaign.key and e.category == campaign.category]
        else:
            members = [e for e in test if e.technique == campaign.key and e.category == campaign.category]
        episodes = episodes_of(sorted(members, key=lambda e: e.time))
        if not episodes:
            result.campaigns.append(CampaignCheck(campaign, due, None, None, False, False))
            continue
        first = episodes[0]
        target = first.targets.most_common(1)[0][0] if first.targets else None
        result.campaigns.append(CampaignCheck(
            campaign, due, first.start, target, campaign.next_start <= first.start <= campaign.next_end,
            target == campaign.target,
        ))

    model = NextStageModel().fit(train)
    result.train_transitions = model.transitions
    result.baseline_stage = model.most_common_next()
    # Threads may start in training and continue in the test day, so
    # transitions are taken from the whole history up to the test's end.
    cases = [t for t in extract_transitions(train + test, model.horizon_s) if t.target.time >= split]
    model_pairs, baseline_pairs = [], []
    for transition in cases:
        predicted = model.predict(transition.source.stage)[0] if model.transitions else None
        model_pairs.append((predicted, transition.target.stage))
        baseline_pairs.append((result.baseline_stage, transition.target.stage))
    result.model = score_predictions(model_pairs)
    result.baseline = score_predictions(baseline_pairs)
    return result

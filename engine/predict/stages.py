"""Next attack stage: a first-order Markov model over engine.taxonomy.STAGES learnt from history.

Alerts are linked into attack threads by host. An alert continues the
thread of the latest earlier alert (within horizon_s) that came from the
same source address or that targeted its source address. A compromised
target is where the attacker moves next. A transition is a
change of stage between consecutive alerts of a thread; repeats of the same
stage are not transitions, so the model answers "which different stage
comes next".

Transition probabilities are add-alpha smoothed counts. The baseline for
evaluation always predicts the next stage that was most common in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.predict.history import Event
from engine.taxonomy import STAGES

DEFAULT_HORIZON_S = 2 * 86400.0
DEFAULT_ALPHA = 0.1


@dataclass(frozen=True)
class Transition:
    source: Event  # last alert of the thread before the change
    target: Event  # first alert of the new stage


def extract_transitions(events: list[Event], horizon_s: float = DEFAULT_HORIZON_S) -> list[Transition]:
    """Return stage changes along attack threads, in time order.

    The lookup tables hold one event per address seen, so their size is
    bounded by the number of distinct addresses in `events`.
    """
    last_from: dict[str, Event] = {}  # address -> latest event it was the source of
    last_to: dict[str, Event] = {}  # address -> latest event that targeted it
    transitions = []
    for event in sorted(events, key=lambda e: e.time):
        previous = None
        if event.src:
            candidates = [c for c in (last_from.get(event.src), last_to.get(event.src))
                          if c is not None and event.time - c.time <= horizon_s]
            if candidates:
                previous = max(candidates, key=lambda c: c.time)
        if previous is not None and previous.stage != event.stage:
            transitions.append(Transition(previous, event))
        if event.src:
            last_from[event.src] = event
        if event.dst:
            last_to[event.dst] = event
    return transitions


def thread_heads(events: list[Event], now: float, horizon_s: float = DEFAULT_HORIZON_S) -> list[Event]:
    """Return the latest event of every thread still open at `now` (one per source address)."""
    latest: dict[str, Event] = {}
    for event in events:
        if event.src and event.time <= now and now - event.time <= horizon_s:
            current = latest.get(event.src)
            if current is None or event.time > current.time:
                latest[event.src] = event
    return sorted(latest.values(), key=lambda e: e.time)


class NextStageModel:
    """Transition counts between stages and the smoothed probabilities derived from them."""

    def __init__(self, alpha: float = DEFAULT_ALPHA, horizon_s: float = DEFAULT_HORIZON_S):
        if alpha < 0:
            raise ValueError(f"invalid alpha {alpha}; expected >= 0")
        self.alpha = alpha
        self.horizon_s = horizon_s
        self.counts = np.zeros((len(STAGES), len(STAGES)), dtype=np.int64)

    def fit(self, events: list[Event]) -> NextStageModel:
        self.counts[:] = 0
        for transition in extract_transitions(events, self.horizon_s):
            self.counts[STAGES.index(transition.source.stage), STAGES.index(transition.target.stage)] += 1
        return self

    @property
    def transitions(self) -> int:
        return int(self.counts.sum())

    def most_common_next(self) -> str | None:
        """Return the baseline's prediction: the most common target stage over all transitions."""
        totals = self.counts.sum(axis=0)
        return STAGES[int(np.argmax(totals))] if totals.any() else None

    def probabilities(self, stage: str) -> np.ndarray:
        """Return P(next stage | stage) over STAGES; a stage never seen falls back to the overall target shares."""
        row = self.counts[STAGES.index(stage)].astype(np.float64)
        if row.sum() == 0:
            row = self.counts.sum(axis=0).astype(np.float64)
        smoothed = row + self.alpha
        smoothed[STAGES.index(stage)] = 0.0  # a transition always changes stage
        total = smoothed.sum()
        return smoothed / total if total > 0 else smoothed

    def predict(self, stage: str) -> tuple[str, float, int]:
        """Return (next stage, its probability, transitions seen from `stage`)."""
        probabilities = self.probabilities(stage)
        best = int(np.argmax(probabilities))
        return STAGES[best], float(probabilities[best]), int(self.counts[STAGES.index(stage)].sum())


@dataclass
class StageScores:
    predicted: int  # transitions with a prediction
    correct: int
    total: int  # transitions in the test period
    precision: float  # correct / predicted
    recall: float  # correct / total
    macro_precision: float  # mean over stages predicted at least once
    macro_recall: float  # mean over stages that occurred at least once


def score_predictions(pairs: list[tuple[str | None, str]]) -> StageScores:
    """Score (predicted stage or None for no prediction, actual stage) pairs."""
    predicted = [p for p, _ in pairs if p is not None]
    correct = sum(1 for p, a in pairs if p is not None and p == a)
    per_precision, per_recall = [], []
    for stage in STAGES:
        said = sum(1 for p, _ in pairs if p == stage)
        true = sum(1 for _, a in pairs if a == stage)
        hit = sum(1 for p, a in pairs if p == stage and a == stage)
        if said:
            per_precision.append(hit / said)
        if true:
            per_recall.append(hit / true)
    return StageScores(
        predicted=len(predicted), correct=correct, total=len(pairs),
        precision=correct / len(predicted) if predicted else 0.0,
        recall=correct / len(pairs) if pairs else 0.0,
        macro_precision=float(np.mean(per_precision)) if per_precision else 0.0,
        macro_recall=float(np.mean(per_recall)) if per_recall else 0.0,
    )

"""Recurring campaigns: the same source, or the same technique, returning at a regular period.

Events of one group (source address and category, or technique across all
sources) are merged into episodes: alerts less than EPISODE_GAP_S apart
belong to one run of the attack. With at least MIN_EPISODES episodes, a
schedule start_i = phase + n_i x period is searched for. Candidate periods
are the median gap between episode starts and the named periods (hour,
day, week); candidate phases are the episode starts. An episode is on the
schedule when it lies within the tolerance of a whole number of periods
from the phase, so a missed night only leaves a number unused and an extra
run in between is an outlier. The candidate with the most episodes on
schedule wins (then the smaller residual), provided they fill at least
MIN_COVERAGE of the period numbers they span, which keeps a short period
from fitting sparse events. A least-squares line through the episodes on
schedule gives the refined period and phase. The next window is the next
period number on that line, widened by the residual standard deviation.

The confidence is a heuristic score in [0, 1], not a calibrated
probability: (k - 1) / n for k of n episodes on schedule (the first
episode of a schedule confirms nothing), halved for every expected
occurrence that did not happen before the reference time.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

from engine.predict.history import Event

# Alerts of one group closer than this belong to one episode.
EPISODE_GAP_S = 1800.0
MIN_EPISODES = 3
# Periods shorter than this are bursts within an attack, not a recurrence.
MIN_PERIOD_S = 3600.0
# An episode is on schedule within this share of the period (and at least MIN_TOLERANCE_S).
TOLERANCE_SHARE = 0.05
MIN_TOLERANCE_S = 300.0
# Episodes on schedule must fill at least this share of the period numbers they span.
MIN_COVERAGE = 0.5
# The predicted window is the fitted time +- max(WINDOW_SPREAD x residual standard deviation,
# MIN_HALF_WINDOW_S), at most half a period. A few episodes give a poor
# estimate of the spread, hence the floor.
WINDOW_SPREAD = 2.5
MIN_HALF_WINDOW_S = 1800.0
# Episodes kept per group (the newest); older ones are dropped before the fit.
MAX_EPISODES_PER_GROUP = 400
NAMED_PERIODS = ((3600.0, "hourly"), (86400.0, "daily"), (7 * 86400.0, "weekly"))


@dataclass
class Episode:
    start: float
    end: float
    targets: collections.Counter = field(default_factory=collections.Counter)
    sources: set = field(default_factory=set)
    alerts: int = 0


@dataclass
class Campaign:
    group: str  # "source" or "technique"
    key: str  # the source address, or the technique id
    category: str
    technique: str
    stage: str
    period_s: float
    period_name: str  # "daily", "weekly", "hourly" or "every N h"
    episodes: int
    on_schedule: int  # episodes that fit the fitted schedule
    next_start: float  # predicted window, epoch seconds
    next_end: float
    expected_at: float  # centre of the window
    target: str  # most frequent destination
    target_share: float  # share of episodes that hit the target
    sources: list[str]
    confidence: float
    last_seen: float
    episode_starts: list[float] = field(default_factory=list)

    def describe(self) -> str:
        who = f"source {self.key}" if self.group == "source" else f"technique {self.key}"
        technique = f" ({self.technique})" if self.technique else ""
        if self.target:
            aim = f"target {self.target} in {self.target_share:.0%} of them"
        else:
            aim = "no destination address in its alerts, so the target is unknown"
        return (f"{self.category}{technique} from {who} recurs {self.period_name} over {self.episodes} "
                f"episodes ({self.on_schedule} on schedule); {aim}")


def episodes_of(events: list[Event]) -> list[Episode]:
    """Merge time-ordered events into episodes separated by more than EPISODE_GAP_S."""
    episodes: list[Episode] = []
    for event in events:
        if not episodes or event.time - episodes[-1].end > EPISODE_GAP_S:
            episodes.append(Episode(event.time, event.end))
        episode = episodes[-1]
        episode.end = max(episode.end, event.end, event.time)
        if event.dst:
            episode.targets[event.dst] += 1
        if event.src:
            episode.sources.add(event.src)
        episode.alerts += 1
    return episodes[-MAX_EPISODES_PER_GROUP:]


def _period_name(period_s: float) -> str:
    for length, name in NAMED_PERIODS:
        if abs(period_s - length) <= 0.05 * length:
            return name
    return f"every {period_s / 3600:.1f} h"


def _schedule_fit(times: np.ndarray, period: float, tolerance: float) -> tuple[int, float, np.ndarray, np.ndarray]:
    """Try every episode start as the phase; return (count, residual, numbers, on_schedule) of the best."""
    offsets = times[None, :] - times[:, None]  # row r: starts relative to episode r
    numbers = np.rint(offsets / period)
    residuals = offsets - numbers * period
    on_schedule = np.abs(residuals) <= tolerance
    counts = on_schedule.sum(axis=1)
    squared = np.where(on_schedule, residuals ** 2, 0.0).sum(axis=1)
    best = int(np.lexsort((squared, -counts))[0])
    return int(counts[best]), float(squared[best]), numbers[best], on_schedule[best]


def fit_period(starts: list[float]) -> tuple[float, float, float, int, np.ndarray] | None:
    """Fit start_i = phase + n_i x period over episode starts.

    Returns (period_s, phase_s, residual_std_s, episodes_on_schedule,
    period numbers relative to the first episode on schedule) or None when
    no period fits at least MIN_EPISODES episodes.
    """
    times = np.asarray(starts, dtype=np.float64)
    if len(times) < MIN_EPISODES:
        return None
    span = times[-1] - times[0]
    candidates = {float(np.median(np.diff(times)))}
    candidates.update(length for length, _ in NAMED_PERIODS)
    best = None
    for period in sorted(candidates):
        if period < MIN_PERIOD_S or period > span:
            continue
        count, squared, numbers, on_schedule = _schedule_fit(times, period, max(MIN_TOLERANCE_S, TOLERANCE_SHARE * period))
        if count < MIN_EPISODES:
            continue
        used = numbers[on_schedule]
        if count / (used.max() - used.min() + 1) < MIN_COVERAGE:
            continue
        if best is None or (count, -squared) > (best[0], -best[1]):
            best = (count, squared, numbers, on_schedule)
    if best is None:
        return None
    count, _, numbers, on_schedule = best
    numbers = numbers - numbers[on_schedule].min()
    slope, intercept = np.polyfit(numbers[on_schedule], times[on_schedule], 1)
    residuals = times[on_schedule] - (intercept + slope * numbers[on_schedule])
    # Two fitted parameters leave count - 2 degrees of freedom.
    spread = float(np.sqrt(np.sum(residuals ** 2) / max(1, count - 2)))
    return float(slope), float(intercept), spread, count, numbers


def find_campaigns(events: list[Event], now: float | None = None) -> list[Campaign]:
    """Return recurring campaigns in `events`, most confident first.

    `now` is the reference time for the next window (default: the last
    event's time); windows that already passed without an episode lower
    the confidence.
    """
    if not events:
        return []
    now = max(event.time for event in events) if now is None else now
    groups: dict[tuple[str, str, str], list[Event]] = collections.defaultdict(list)
    for event in events:
        if event.time > now:
            continue
        if event.src:
            groups[("source", event.src, event.category)].append(event)
        if event.technique:
            groups[("technique", event.technique, event.category)].append(event)

    campaigns = []
    for (group, key, category), members in groups.items():
        campaign = _campaign_from(group, key, category, sorted(members, key=lambda e: e.time), now)
        if campaign is not None:
            campaigns.append(campaign)
    campaigns = _drop_covered(campaigns)
    campaigns.sort(key=lambda c: (-c.confidence, c.next_start))
    return campaigns


def _campaign_from(group: str, key: str, category: str, members: list[Event], now: float) -> Campaign | None:
    episodes = episodes_of(members)
    if len(episodes) < MIN_EPISODES:
        return None
    fit = fit_period([episode.start for episode in episodes])
    if fit is None:
        return None

    period, phase, spread, on_schedule, _ = fit
    # The period number after the latest episode, whether or not that one was on schedule.
    next_number = float(np.rint((episodes[-1].start - phase) / period)) + 1
    half_window = min(period / 2, max(MIN_HALF_WINDOW_S, WINDOW_SPREAD * spread))
    # Occurrences expected between the last episode and `now` that did not happen.
    missed = 0
    while phase + next_number * period + half_window < now:
        next_number += 1
        missed += 1
    expected = phase + next_number * period

    targets: collections.Counter = collections.Counter()
    for episode in episodes:
        if episode.targets:
            targets[episode.targets.most_common(1)[0][0]] += 1
    target, hits = targets.most_common(1)[0] if targets else ("", 0)
    sources = sorted({source for episode in episodes for source in episode.sources})

    confidence = (on_schedule - 1) / len(episodes) * 0.5 ** missed
    return Campaign(
        group=group, key=key, category=category, technique=members[-1].technique, stage=members[-1].stage,
        period_s=period, period_name=_period_name(period), episodes=len(episodes), on_schedule=on_schedule,
        next_start=expected - half_window, next_end=expected + half_window, expected_at=expected,
        target=target, target_share=hits / len(episodes), sources=sources[:16], confidence=round(confidence, 4),
        last_seen=episodes[-1].end, episode_starts=[episode.start for episode in episodes],
    )


def _drop_covered(campaigns: list[Campaign]) -> list[Campaign]:
    """Drop technique campaigns that one source campaign already explains (same single source)."""
    by_source = {(c.key, c.category) for c in campaigns if c.group == "source"}
    kept = []
    for campaign in campaigns:
        if campaign.group == "technique" and len(campaign.sources) == 1 \
                and (campaign.sources[0], campaign.category) in by_source:
            continue
        kept.append(campaign)
    return kept

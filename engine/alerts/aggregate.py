"""Fold repeated detections into aggregated alerts, with suppression and rate limits.

One scan is one alert: detections with the same key (category plus source,
target or both, see AggregationConfig.key_modes) fold into one open
aggregate that counts detections, distinct sources and distinct targets and
keeps the first and last capture time. An aggregate is published when it
opens (revision 1). It is published again with revision+1 when its severity
rises, or when it has changed and update_interval_s of capture time has
passed since its last publication. Its last publication, with state
"closed", follows quiet_period_s of capture time without a new detection.

Each publication rewords the summary from the aggregate's current figures
when the detections' origin has a summary rule (engine/alerts/summary.py);
other aggregates keep the first detection's summary with the counts
appended.

A producer may report one capture-time window several times with its
running totals (evidence "window_start"). A repeat updates the figures,
flow ids and times of the alert that contains the window, but adds nothing to
its count, and it needs no rate-limit token. A window first counted by the
rate-limit overflow alert stays there. A repeat that arrives after its
alert closed opens a new alert that restates the window's totals, so the
two alerts overlap.

All times here are capture time (the detections' last_seen), so replaying a
capture gives the same alerts at any replay speed.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field

from engine.alerts.config import AggregationConfig, RateLimitConfig, SuppressionRule
from engine.alerts.schema import Alert
from engine.alerts.summary import MAX_OPEN_WINDOWS, AggregateFigures, window_identity
from engine.taxonomy import severity_rank

logger = logging.getLogger(__name__)

OVERFLOW_KEY_PART = "*rate-limited*"


class Suppressor:
    """Drop detections that match a configured suppression rule."""

    def __init__(self, rules: list[SuppressionRule]):
        self.rules = list(rules)
        self.suppressed = 0

    def is_suppressed(self, alert: Alert) -> bool:
        for rule in self.rules:
            if rule.matches(alert.category, alert.src.ip, alert.dst.ip):
                self.suppressed += 1
                return True
        return False


class TokenBucket:
    """A rate limit in capture time: `per_minute` tokens, refilled continuously."""

    def __init__(self, per_minute: int):
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.rate_per_s = per_minute / 60.0
        self.updated_at: float | None = None

    def refill(self, now: float) -> None:
        if self.updated_at is not None and now > self.updated_at:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated_at) * self.rate_per_s)
        if self.updated_at is None or now > self.updated_at:
            self.updated_at = now

    def available(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= 1.0

    def take(self) -> None:
        self.tokens -= 1.0


@dataclass
class _Aggregate:
    alert: Alert  # the aggregate's own copy, updated in place
    base_summary: str
    # Figures of the folded detections whose origin has a summary rule;
    # empty for other producers and for the rate-limit overflow alert.
    figures: AggregateFigures = field(default_factory=AggregateFigures)
    overflow: bool = False
    # Windows counted by an overflow aggregate, so their repeats add nothing
    # to its count. Least recently reported first, bounded by
    # MAX_OPEN_WINDOWS; a repeat of a window dropped here counts again.
    overflow_windows: collections.OrderedDict = field(default_factory=collections.OrderedDict)
    sources: set[str] = field(default_factory=set)
    targets: set[str] = field(default_factory=set)
    activity_at: float = 0.0  # capture time of the latest fold
    published_at: float = 0.0  # capture time of the latest publication
    changed: bool = False  # folded since the latest publication


class Aggregator:
    """Open aggregates keyed by category and addresses, bounded by max_open_aggregates."""

    def __init__(self, aggregation: AggregationConfig, rate_limits: RateLimitConfig):
        self.config = aggregation
        self.rate_limits = rate_limits
        # key -> aggregate, in order of latest activity (oldest first), so
        # both expiry and LRU eviction look at the front only. Bound:
        # config.max_open_aggregates; eviction closes the front one early.
        self._open: collections.OrderedDict[tuple, _Aggregate] = collections.OrderedDict()
        # One bucket per category seen, so this grows with the number of
        # categories (a fixed, small set), not with traffic.
        self._category_buckets: dict[str, TokenBucket] = {}
        self._global_bucket = TokenBucket(rate_limits.global_per_minute)
        self.now = float("-inf")
        self.counters = collections.Counter()

    def __len__(self) -> int:
        return len(self._open)

    def submit(self, alert: Alert) -> list[Alert]:
        """Fold one detection in; return the publications it causes (copies), oldest first."""
        self.counters["submitted"] += 1
        publications: list[Alert] = []
        if alert.last_seen > self.now:
            self.now = alert.last_seen
            self._close_expired(publications)

        key = self._key(alert)
        aggregate = self._open.get(key)
        if aggregate is None and self._in_overflow(alert):
            key = (alert.category, OVERFLOW_KEY_PART)
            aggregate = self._open[key]
        if aggregate is None:
            if not self._take_rate_token(alert.category):
                self.counters["rate_limited"] += 1
                key = (alert.category, OVERFLOW_KEY_PART)
                aggregate = self._open.get(key)
                if aggregate is None:
                    self._open_aggregate(key, alert, publications, overflow=True)
                    return publications
            else:
                self._open_aggregate(key, alert, publications, overflow=False)
                return publications

        self._fold(aggregate, alert)
        self._open.move_to_end(key)
        previous_rank = severity_rank(aggregate.alert.severity)
        if severity_rank(alert.severity) > previous_rank:
            aggregate.alert.severity = alert.severity
            publications.append(self._publish(aggregate))
        elif self.now - aggregate.published_at >= self.config.update_interval_s:
            publications.append(self._publish(aggregate))
        return publications

    def expire(self, now: float) -> list[Alert]:
        """Advance capture time to `now` and close aggregates quiet for quiet_period_s."""
        publications: list[Alert] = []
        if now > self.now:
            self.now = now
            self._close_expired(publications)
        return publications

    def flush(self) -> list[Alert]:
        """Close every open aggregate (end of input); return the closing publications."""
        publications = []
        while self._open:
            _, aggregate = self._open.popitem(last=False)
            publications.append(self._close(aggregate))
        return publications

    def _key(self, alert: Alert) -> tuple:
        mode = self.config.key_mode(alert.category)
        if mode == "source":
            return (alert.category, mode, alert.src.ip or "")
        if mode == "target":
            return (alert.category, mode, alert.dst.ip or "")
        return (alert.category, mode, alert.src.ip or "", alert.dst.ip or "")

    def _in_overflow(self, alert: Alert) -> bool:
        """Return True when the category's overflow alert already counted the window `alert` reports."""
        window = window_identity(alert)
        if window is None:
            return False
        overflow = self._open.get((alert.category, OVERFLOW_KEY_PART))
        return overflow is not None and window in overflow.overflow_windows

    def _take_rate_token(self, category: str) -> bool:
        limits = self.rate_limits
        buckets = []
        if limits.per_category_per_minute:
            bucket = self._category_buckets.get(category)
            if bucket is None:
                bucket = self._category_buckets[category] = TokenBucket(limits.per_category_per_minute)
            buckets.append(bucket)
        if limits.global_per_minute:
            buckets.append(self._global_bucket)
        if not all(bucket.available(self.now) for bucket in buckets):
            return False
        for bucket in buckets:
            bucket.take()
        return True

    def _open_aggregate(self, key, alert: Alert, publications: list[Alert], overflow: bool) -> None:
        if len(self._open) >= self.config.max_open_aggregates:
            _, evicted = self._open.popitem(last=False)
            self.counters["aggregates_evicted"] += 1
            publications.append(self._close(evicted))
        own = alert.copy()
        own.aggregation_key = "|".join(key)
        own.flow_ids = own.flow_ids[: self.config.max_flow_ids]
        own.revision = 0
        base_summary = alert.summary
        if overflow:
            # The overflow alert stands for many sources and targets, so it
            # names none of them.
            base_summary = (
                f"Rate limit reached for new {alert.category} alerts;"
                " further detections of this category are counted here"
            )
            own.src = type(own.src)()
            own.dst = type(own.dst)()
            own.community_id = None
        if overflow:
            logger.warning(
                "rate limit reached for new %s alerts; further ones fold into alert %s until it closes",
                alert.category, own.id,
            )
        aggregate = _Aggregate(alert=own, base_summary=base_summary, activity_at=self.now, overflow=overflow)
        if overflow:
            self._remember_overflow_window(aggregate, alert)
        else:
            aggregate.figures.fold(alert)
        self._remember_addresses(aggregate, alert)
        self._open[key] = aggregate
        self.counters["aggregates_opened"] += 1
        publications.append(self._publish(aggregate))

    def _fold(self, aggregate: _Aggregate, alert: Alert) -> None:
        own = aggregate.alert
        if aggregate.overflow:
            new_detection = self._remember_overflow_window(aggregate, alert)
        else:
            new_detection = aggregate.figures.fold(alert)
        if new_detection:
            own.count += alert.count
        else:
            self.counters["window_repeats"] += 1
        own.first_seen = min(own.first_seen, alert.first_seen)
        own.last_seen = max(own.last_seen, alert.last_seen)
        room = self.config.max_flow_ids - len(own.flow_ids)
        if room > 0 and alert.flow_ids:
            # A window's repeat lists the flow ids of its earlier reports again.
            known = set(own.flow_ids)
            own.flow_ids.extend([flow_id for flow_id in alert.flow_ids if flow_id not in known][:room])
        if alert.model_score is not None and (own.model_score is None or alert.model_score > own.model_score):
            # The strongest detection explains the aggregate.
            own.model_score = alert.model_score
            own.model_class = alert.model_class
            own.top_features = list(alert.top_features)
        if alert.anomaly_score is not None and (own.anomaly_score is None or alert.anomaly_score > own.anomaly_score):
            own.anomaly_score = alert.anomaly_score
        self._remember_addresses(aggregate, alert)
        aggregate.activity_at = self.now
        aggregate.changed = True
        self.counters["folded"] += 1

    def _remember_overflow_window(self, aggregate: _Aggregate, alert: Alert) -> bool:
        """Record the window `alert` reports in an overflow aggregate; return False for a repeat."""
        window = window_identity(alert)
        if window is None:
            return True
        windows = aggregate.overflow_windows
        repeat = window in windows
        windows[window] = True
        windows.move_to_end(window)
        if len(windows) > MAX_OPEN_WINDOWS:
            windows.popitem(last=False)
        return not repeat

    def _remember_addresses(self, aggregate: _Aggregate, alert: Alert) -> None:
        limit = self.config.max_distinct_addresses
        for addresses, address in ((aggregate.sources, alert.src.ip), (aggregate.targets, alert.dst.ip)):
            if address is None or address in addresses:
                continue
            if len(addresses) < limit:
                addresses.add(address)
            else:
                self.counters["distinct_set_full"] += 1

    def _publish(self, aggregate: _Aggregate) -> Alert:
        own = aggregate.alert
        own.revision += 1
        own.distinct_sources = max(1, len(aggregate.sources))
        own.distinct_targets = max(1, len(aggregate.targets))
        own.summary = self._summary(aggregate)
        aggregate.published_at = self.now
        aggregate.changed = False
        self.counters["published"] += 1
        return own.copy()

    def _close(self, aggregate: _Aggregate) -> Alert:
        aggregate.alert.state = "closed"
        self.counters["closed"] += 1
        return self._publish(aggregate)

    def _close_expired(self, publications: list[Alert]) -> None:
        quiet_period_s = self.config.quiet_period_s
        while self._open:
            key, aggregate = next(iter(self._open.items()))
            if self.now - aggregate.activity_at < quiet_period_s:
                break
            del self._open[key]
            publications.append(self._close(aggregate))

    @staticmethod
    def _summary(aggregate: _Aggregate) -> str:
        own = aggregate.alert
        # A registered origin words the summary from the current figures,
        # so every revision states the aggregate's counts, not the first
        # detection's.
        sentence = aggregate.figures.sentence(own)
        if sentence is not None:
            aggregate.figures.update_evidence(own)
            return sentence
        if own.count == 1:
            return aggregate.base_summary
        duration_s = own.last_seen - own.first_seen
        return (
            f"{aggregate.base_summary} ({own.count} detections,"
            f" {_plural(own.distinct_sources, 'source')}, {_plural(own.distinct_targets, 'target')}"
            f" over {duration_s:.0f} s)"
        )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"

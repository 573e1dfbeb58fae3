"""Summary sentences rebuilt from an alert's current fields and folded figures.

A producer that registers a SummaryRule for its evidence "origin" lets the
sink write the summary itself. The sink words it from the alert's fields
after pseudonymisation, so the sentence names the same pseudonyms as src
and dst. It also uses the figures of every detection folded into the
aggregate, so a revision states the current counts, not the first
detection's.

Figures fold per origin. Keys in sum_keys add up across detections. A
producer that reports one capture-time window several times, each report
with the window's running totals, sets evidence "window_start", and then
only the latest report of each window counts. Such a repeat is not a new
detection: it adds nothing to the detection count. Keys in max_keys keep
the largest value seen. A producer names in evidence "lower_bound" the
figures that may be below the true value, and the summary then writes
"at least".
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Callable

from engine.alerts.schema import Alert

# Windows whose latest figures are kept apart per origin. Past this the
# least recently reported window's figures are added to the settled totals,
# and a later report of that window would count twice (counter:
# windows_settled).
MAX_OPEN_WINDOWS = 64


def window_identity(alert: Alert) -> tuple | None:
    """Return the identity of the window an alert reports, or None for an alert without "window_start".

    The start time alone could repeat across the keys that fold into one
    aggregate (two targets of one scanner, two addresses claimed by one
    MAC), so the identity adds the endpoints and the claimed address.
    """
    evidence = alert.evidence or {}
    start = evidence.get("window_start")
    if start is None:
        return None
    return (start, alert.src.ip, alert.src.mac, alert.dst.ip, alert.dst.port, evidence.get("claimed_address"))


@dataclass
class OriginFigures:
    """Folded figures of the detections of one origin (and attack class) in one aggregate."""

    origin: str
    attack_class: str | None
    # Detections folded; repeated reports of one window count once.
    detections: int = 0
    count: int = 0  # sum of the detections' count fields (flows or events)
    settled: dict[str, float] = field(default_factory=dict)  # sum_keys totals of closed-out windows
    # window_identity() -> latest sum_keys figures of that window, least
    # recently reported first; bounded by MAX_OPEN_WINDOWS.
    windows: collections.OrderedDict = field(default_factory=collections.OrderedDict)
    peaks: dict[str, float] = field(default_factory=dict)
    # Figures that some folded report named as a lower bound; bounded by
    # the rule's sum_keys and max_keys.
    lower_bounds: set[str] = field(default_factory=set)
    windows_settled: int = 0

    def fold(self, alert: Alert, rule: SummaryRule | None) -> bool:
        """Fold one detection's figures in; return False when it repeats a window already folded."""
        window = window_identity(alert)
        repeat = window is not None and window in self.windows
        if not repeat:
            self.detections += 1
            self.count += alert.count
        if rule is None:
            return not repeat
        evidence = alert.evidence
        values = {key: evidence[key] for key in rule.sum_keys if _is_number(evidence.get(key))}
        bounded = evidence.get("lower_bound")
        if isinstance(bounded, (list, tuple)):
            self.lower_bounds.update(key for key in bounded if key in rule.sum_keys or key in rule.max_keys)
        if window is None:
            for key, value in values.items():
                self.settled[key] = self.settled.get(key, 0) + value
        else:
            self.windows[window] = values
            self.windows.move_to_end(window)
            if len(self.windows) > MAX_OPEN_WINDOWS:
                _, oldest = self.windows.popitem(last=False)
                for key, value in oldest.items():
                    self.settled[key] = self.settled.get(key, 0) + value
                self.windows_settled += 1
        for key in rule.max_keys:
            value = evidence.get(key)
            if _is_number(value) and value > self.peaks.get(key, float("-inf")):
                self.peaks[key] = value
        return not repeat

    def total(self, key: str) -> float:
        """Return the folded sum of evidence figure `key` (0 if never reported)."""
        value = self.settled.get(key, 0)
        for figures in self.windows.values():
            value += figures.get(key, 0)
        return value

    def peak(self, key: str, default: float = 0) -> float:
        """Return the largest value of evidence figure `key` seen."""
        return self.peaks.get(key, default)

    def at_least(self, key: str) -> str:
        """Return "at least " when a folded report named figure `key` a lower bound, else ""."""
        return "at least " if key in self.lower_bounds else ""


@dataclass
class SummaryRule:
    """How to fold and word the detections of one origin."""

    # Full sentence for an alert led by this origin: (alert, figures) -> text.
    sentence: Callable[[Alert, OriginFigures], str]
    # Short clause for this origin's share of an alert led by another one.
    clause: Callable[[OriginFigures], str] | None = None
    sum_keys: tuple[str, ...] = ()
    max_keys: tuple[str, ...] = ()


# origin -> rule; origins are a fixed set named in code ("model",
# "anomaly", "rule:<name>"), so this does not grow with traffic.
_RULES: dict[str, SummaryRule] = {}


def register_summary_rule(origin: str, rule: SummaryRule) -> None:
    """Word alerts whose evidence "origin" is `origin` with `rule`; a later call replaces it."""
    _RULES[origin] = rule


def summary_rule(origin: str | None) -> SummaryRule | None:
    """Return the rule registered for `origin`, or None."""
    return _RULES.get(origin) if origin else None


def origin_key(alert: Alert) -> tuple[str, str | None] | None:
    """Return (origin, attack class) of an alert with a registered origin, else None."""
    origin = alert.evidence.get("origin") if alert.evidence else None
    if summary_rule(origin) is None:
        return None
    attack_class = alert.evidence.get("attack_class")
    return origin, attack_class if isinstance(attack_class, str) else None


class AggregateFigures:
    """Folded figures of one aggregate, per origin, in order of first appearance."""

    def __init__(self):
        # Bounded by the number of registered origins times attack classes.
        self.parts: dict[tuple[str, str | None], OriginFigures] = {}

    def fold(self, alert: Alert) -> bool:
        """Fold one detection in; return False when it repeats a window already folded."""
        key = origin_key(alert)
        if key is None:
            return True
        part = self.parts.get(key)
        if part is None:
            part = self.parts[key] = OriginFigures(*key)
        return part.fold(alert, summary_rule(key[0]))

    def lead(self) -> OriginFigures | None:
        """Return the figures of the origin that opened the aggregate, if it is registered."""
        return next(iter(self.parts.values()), None)

    def update_evidence(self, alert: Alert) -> None:
        """Write the lead origin's folded figures into alert.evidence, so it agrees with the summary."""
        lead = self.lead()
        if lead is None:
            return
        rule = summary_rule(lead.origin)
        for key in rule.sum_keys:
            if key in alert.evidence:
                alert.evidence[key] = lead.total(key)
        for key in rule.max_keys:
            if key in lead.peaks:
                alert.evidence[key] = lead.peak(key)
        if lead.lower_bounds:
            alert.evidence["lower_bound"] = sorted(lead.lower_bounds)

    def sentence(self, alert: Alert) -> str | None:
        """Return the summary for `alert` from its registered origins, or None if none is registered."""
        lead = self.lead()
        if lead is None:
            return None
        text = summary_rule(lead.origin).sentence(alert, lead)
        others = []
        for part in list(self.parts.values())[1:]:
            clause = summary_rule(part.origin).clause
            others.append(clause(part) if clause else f"{part.detections} more detections by {part.origin}")
        if others:
            text += "; also " + "; ".join(others)
        return text + spread_text(alert)


def spread_text(alert: Alert) -> str:
    """Return "; N sources, M targets, seen over D s" for an alert folded from several detections, else ""."""
    if alert.count <= 1 and alert.distinct_sources <= 1 and alert.distinct_targets <= 1:
        return ""
    parts = []
    if alert.distinct_sources > 1:
        parts.append(plural(alert.distinct_sources, "source"))
    if alert.distinct_targets > 1:
        parts.append(plural(alert.distinct_targets, "target"))
    parts.append(f"seen over {alert.last_seen - alert.first_seen:.0f} s")
    return "; " + ", ".join(parts)


def per_window(part: OriginFigures, key: str, noun: str, plural_noun: str | None = None) -> str:
    """Return "4 hosts" from one detection, or "up to 4 hosts per window" from several."""
    text = plural(part.peak(key), noun, plural_noun)
    return text if part.detections == 1 else f"up to {text} per window"


def plural(count: float, noun: str, plural_noun: str | None = None) -> str:
    """Return "1 flow" or "2 flows": the count with thousands separators and the noun."""
    text = f"{count:,.0f}" if float(count).is_integer() else f"{count:,}"
    if count == 1:
        return f"{text} {noun}"
    return f"{text} {plural_noun or noun + 's'}"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

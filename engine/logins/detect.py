"""Detections on login records, each alert carrying the evidence that triggered it.

Counting rules, on a LoginFrame (columns, see frame.py):
  brute_force_source      failures from one source >= threshold within the window
  brute_force_account     failures against one account >= threshold within the
                          window, from two or more sources (one source is the rule above)
  password_spray          one source fails against many accounts with few tries each
  success_after_failures  a success for an account after many failures for it

Behaviour rules, on LoginRecords and the stored baselines (see baseline.py):
  unusual_hour            an interactive logon in an hour (+-1) the user never logged on in
  new_source              an interactive logon from a source the user never used
  concurrent_sessions     interactive logons of one account from two sources within minutes
  dormant_account         a logon after a long silence of the account
  privileged_outside_window  a privileged logon or sudo/su to root outside every change window
  ehr_volume              more distinct patients in a day than the user's baseline allows
  ehr_out_of_department   a record of another department than the user's
  ehr_same_surname        a record of a patient sharing the user's surname (keyed hashes compared)

Only rows marked new trigger an alert; older rows are the window history, so
a burst that straddles two runs is reported once, by the run in which it
first crossed the threshold.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from engine.alerts.schema import Alert, Endpoint
from engine.logins.baseline import (
    is_interactive_logon,
    is_record_access,
    local_time,
    user_department,
)
from engine.logins.frame import NO_VALUE, OUTCOME_FAILURE, OUTCOME_SUCCESS, LoginFrame
from engine.logins.records import SUCCESS, LoginRecord
from engine.taxonomy import ATTACK_CLASSES

# rule -> (alert category, ATT&CK technique, severity)
RULES = {
    "brute_force_source": (ATTACK_CLASSES["ssh_bruteforce"].category, ATTACK_CLASSES["ssh_bruteforce"].technique, "high"),
    "brute_force_account": (ATTACK_CLASSES["ssh_bruteforce"].category, ATTACK_CLASSES["ssh_bruteforce"].technique, "high"),
    "password_spray": (ATTACK_CLASSES["password_spray"].category, ATTACK_CLASSES["password_spray"].technique, "high"),
    "success_after_failures": (ATTACK_CLASSES["ssh_bruteforce"].category, ATTACK_CLASSES["ssh_bruteforce"].technique, "critical"),
    "unusual_hour": ("account_anomaly", "T1078", "medium"),  # Valid Accounts
    "new_source": ("account_anomaly", "T1078", "low"),
    "concurrent_sessions": ("account_anomaly", "T1078", "high"),
    "dormant_account": ("account_anomaly", "T1078", "medium"),
    "privileged_outside_window": ("privileged_access", "T1078.003", "high"),  # Valid Accounts: Local Accounts
    "ehr_volume": ("insider_access", "T1213", "high"),  # Data from Information Repositories
    "ehr_out_of_department": ("insider_access", "T1213", "medium"),
    "ehr_same_surname": ("insider_access", "T1213", "high"),
}
# Windows privileged logons are domain accounts: Valid Accounts: Domain Accounts.
WINDOWS_PRIVILEGED_TECHNIQUE = "T1078.002"

RECOMMENDED_ACTIONS = {
    "bruteforce": "Block the source at the perimeter and check the targeted accounts for a later success.",
    "account_anomaly": "Confirm with the user or their manager that the logon was theirs; reset the password if not.",
    "privileged_access": "Check the change calendar and the commands run in this session.",
    "insider_access": "Review the access with the privacy officer before contacting the user.",
}
MAX_EVIDENCE_IDS = 50  # record ids listed per alert; evidence["record_count"] has the total
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class ChangeWindow:
    """A weekly period in which privileged work is planned, in site local time."""

    weekdays: frozenset[int]  # 0 is Monday
    start_min: int  # minutes after midnight
    end_min: int  # may be less than start_min: the window then ends on the next day

    @classmethod
    def parse(cls, text: str) -> ChangeWindow:
        """Parse "Sat,Sun 22:00-06:00" or "* 02:00-04:00" (every day)."""
        try:
            days_text, span = text.split()
            start_text, end_text = span.split("-")
            if days_text == "*":
                days = frozenset(range(7))
            else:
                days = frozenset(WEEKDAYS.index(d.strip().lower()[:3]) for d in days_text.split(","))
            start = _minutes(start_text)
            end = _minutes(end_text)
        except ValueError:
            raise ValueError(
                f"invalid change window {text!r}; expected 'DAYS HH:MM-HH:MM', e.g. 'Sat,Sun 22:00-06:00' or '* 02:00-04:00'"
            ) from None
        return cls(days, start, end)

    def contains(self, weekday: int, minute: int) -> bool:
        if self.start_min <= self.end_min:
            return weekday in self.weekdays and self.start_min <= minute < self.end_min
        # Past midnight: the evening part belongs to the listed day, the
        # morning part to the day after it.
        if weekday in self.weekdays and minute >= self.start_min:
            return True
        return (weekday - 1) % 7 in self.weekdays and minute < self.end_min


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    value = int(hours) * 60 + int(minutes)
    if not 0 <= value <= 24 * 60:
        raise ValueError(text)
    return value


@dataclass
class DetectionConfig:
    """Thresholds of every rule; load_config() reads them from a [logins] TOML table."""

    bruteforce_window_s: float = 300.0
    bruteforce_source_failures: int = 10
    bruteforce_account_failures: int = 10
    spray_window_s: float = 1800.0
    spray_min_accounts: int = 5
    spray_max_failures_per_account: float = 3.0  # mean over the burst
    success_after_failures_window_s: float = 900.0
    success_after_failures_min: int = 5
    min_baseline_logons: int = 20  # a user's habits are judged only after this many learnt logons
    unusual_hour_max_share: float = 0.0  # share of learnt logons in hours h-1..h+1 at or below which h is unusual
    concurrent_window_s: float = 300.0
    dormant_after_days: float = 30.0
    change_windows: list[ChangeWindow] = field(default_factory=list)  # empty: the privileged rule is off
    ehr_volume_min_patients: int = 30  # never alert below this many patients in a day
    ehr_volume_sigmas: float = 4.0
    ehr_volume_max_factor: float = 1.5  # also above this multiple of the busiest learnt day
    ehr_min_baseline_days: int = 5
    ehr_cross_department_roles: frozenset[str] = frozenset({"emergency", "pharmacist", "it", "privacy_officer"})
    site_utc_offset_s: int = 0  # offset of the site's local time (for hours and change windows)

    def __post_init__(self) -> None:
        for name in ("bruteforce_window_s", "spray_window_s", "success_after_failures_window_s", "concurrent_window_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"invalid {name} {getattr(self, name)}; expected seconds > 0")
        for name in ("bruteforce_source_failures", "bruteforce_account_failures", "spray_min_accounts",
                     "success_after_failures_min"):
            if getattr(self, name) < 1:
                raise ValueError(f"invalid {name} {getattr(self, name)}; expected 1 or more")

    @property
    def lookback_s(self) -> float:
        """Return how far before the new records history must reach for every window."""
        return max(self.bruteforce_window_s, self.spray_window_s, self.success_after_failures_window_s,
                   self.concurrent_window_s, 86400.0)


def load_config(path: str | Path | None) -> DetectionConfig:
    """Read the [logins] table of a TOML file; raise ValueError on an unknown key."""
    if path is None:
        return DetectionConfig()
    with open(path, "rb") as handle:
        try:
            table = tomllib.load(handle).get("logins", {})
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"invalid configuration file {path}: {error}") from None
    known = set(DetectionConfig.__dataclass_fields__)
    unknown = set(table) - known
    if unknown:
        raise ValueError(f"unknown [logins] keys in {path}: {', '.join(sorted(unknown))}; expected some of {', '.join(sorted(known))}")
    values = dict(table)
    if "change_windows" in values:
        values["change_windows"] = [ChangeWindow.parse(text) for text in values["change_windows"]]
    if "ehr_cross_department_roles" in values:
        values["ehr_cross_department_roles"] = frozenset(values["ehr_cross_department_roles"])
    return DetectionConfig(**values)


class AlertBuilder:
    """Build login alerts, showing user names only through `display_user`."""

    def __init__(self, display_user: Callable[[str | None], str | None], sensor_id: str = ""):
        self.display_user = display_user
        self.sensor_id = sensor_id

    def build(self, rule: str, summary: str, first_seen: float, last_seen: float, user: str | None = None,
              src: str | None = None, count: int = 1, record_ids=(), evidence: dict | None = None,
              technique: str | None = None, service: str | None = None, host: str | None = None) -> Alert:
        category, default_technique, severity = RULES[rule]
        ids = [int(i) for i in record_ids]
        shown_user = self.display_user(user)
        evidence = dict(evidence or {})
        evidence["rule"] = rule
        evidence["record_ids"] = ids[:MAX_EVIDENCE_IDS]
        evidence["record_count"] = len(ids)
        src_ip, src_host = (src, None) if src is not None and _is_ip(src) else (None, src)
        return Alert(
            category=category,
            severity=severity,
            summary=summary,
            kind="login",
            technique=technique or default_technique,
            sensor_id=self.sensor_id,
            first_seen=float(first_seen),
            last_seen=float(last_seen),
            src=Endpoint(ip=src_ip, asset=src_host),
            # The raw name: the sink pseudonymises it, or publish_alerts does.
            dst=Endpoint(asset=host, user=user),
            protocol=service,
            count=count,
            recommended_action=RECOMMENDED_ACTIONS[category],
            evidence=evidence,
            aggregation_key=f"login:{rule}:{shown_user or ''}:{src or ''}",
        )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# --- counting rules -------------------------------------------------------


def _sorted_groups(group: np.ndarray, ts: np.ndarray) -> np.ndarray:
    return np.lexsort((ts, group))


def _window_sums(group: np.ndarray, ts: np.ndarray, weight: np.ndarray, window_s: float) -> np.ndarray:
    # For rows sorted by (group, ts): the weight in [ts - window_s, ts] of
    # the same group. Groups are spread apart on one float axis so one
    # searchsorted covers all of them.
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    t0 = ts.min()
    span = float(ts.max() - t0) + window_s + 1.0
    key = group.astype(np.float64) * span + (ts - t0)
    left = np.searchsorted(key, key - window_s, side="left")
    cumulative = np.concatenate(([0], np.cumsum(weight, dtype=np.int64)))
    return cumulative[1:] - cumulative[left]


def _episodes(group: np.ndarray, ts: np.ndarray, gap_s: float) -> np.ndarray:
    # Episode number per row (rows sorted by group, ts): a new episode starts
    # at a new group or after a gap longer than gap_s.
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    start = np.ones(len(ts), dtype=bool)
    start[1:] = (group[1:] != group[:-1]) | (np.diff(ts) > gap_s)
    return np.cumsum(start) - 1


def _episode_bounds(episode: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = np.flatnonzero(np.concatenate(([True], episode[1:] != episode[:-1])))
    ends = np.concatenate((starts[1:], [len(episode)]))
    return starts, ends


def detect_bruteforce(frame: LoginFrame, config: DetectionConfig, builder: AlertBuilder) -> list[Alert]:
    """Run brute_force_source, password_spray and brute_force_account on a frame."""
    alerts: list[Alert] = []
    failures = np.flatnonzero(frame.outcome == OUTCOME_FAILURE)
    alerts += _source_bursts(frame, failures, config, builder)
    alerts += _account_bursts(frame, failures, config, builder)
    return alerts


def _source_bursts(frame, failures, config, builder):
    alerts = []
    rows = failures[frame.src[failures] != NO_VALUE]
    order = rows[_sorted_groups(frame.src[rows], frame.ts[rows])]
    group = frame.src[order]
    ts = frame.ts[order]
    weight = frame.count[order].astype(np.int64)
    is_new = frame.is_new[order]
    users = frame.user[order]

    # Password spraying: bursts with gaps up to spray_window_s.
    sprayed_episodes: list[tuple[int, float, float]] = []
    episode = _episodes(group, ts, config.spray_window_s)
    for start, end in zip(*_episode_bounds(episode)):
        burst_users = users[start:end]
        named = burst_users[burst_users != NO_VALUE]
        distinct = np.unique(named)
        if len(distinct) < config.spray_min_accounts:
            continue
        failures_total = int(weight[start:end].sum())
        if failures_total / len(distinct) > config.spray_max_failures_per_account:
            continue
        # The row at which the distinct account count reached the minimum.
        seen: set = set()
        trigger = None
        for offset, user in enumerate(burst_users.tolist()):
            if user != NO_VALUE:
                seen.add(user)
            if len(seen) >= config.spray_min_accounts:
                trigger = start + offset
                break
        sprayed_episodes.append((int(group[start]), float(ts[start]), float(ts[end - 1])))
        if trigger is None or not is_new[trigger]:
            continue
        source = frame.sources[group[start]]
        accounts = sorted({frame.users[u] for u in distinct.tolist()})
        alerts.append(builder.build(
            "password_spray",
            f"password spraying from {source}: {_plural(failures_total, 'failed logon')} against {_plural(len(distinct), 'account')}",
            ts[start], ts[end - 1], src=source, count=failures_total,
            record_ids=frame.record_id[order[start:end]],
            evidence={"failures": failures_total, "accounts": len(distinct),
                      "account_names": [builder.display_user(a) for a in accounts[:MAX_EVIDENCE_IDS]],
                      "window_s": config.spray_window_s,
                      "threshold_accounts": config.spray_min_accounts,
                      "max_failures_per_account": config.spray_max_failures_per_account},
        ))

    # Brute force: bursts with gaps up to bruteforce_window_s, reported
    # unless the same source's failures were a spray.
    window = _window_sums(group, ts, weight, config.bruteforce_window_s)
    episode = _episodes(group, ts, config.bruteforce_window_s)
    for start, end in zip(*_episode_bounds(episode)):
        over = np.flatnonzero(window[start:end] >= config.bruteforce_source_failures)
        if len(over) == 0:
            continue
        trigger = start + int(over[0])
        if not is_new[trigger]:
            continue
        source_index = int(group[start])
        if any(g == source_index and s <= ts[trigger] <= e for g, s, e in sprayed_episodes):
            continue
        burst_users = users[start:end]
        distinct = np.unique(burst_users[burst_users != NO_VALUE])
        failures_total = int(weight[start:end].sum())
        source = frame.sources[source_index]
        accounts = sorted({frame.users[u] for u in distinct.tolist()})
        # Some logs and protocols leave the account out of a failure (a
        # refused pre-authentication, an anonymous bind), so a burst can
        # name no account at all.
        if len(distinct):
            targets = f"against {_plural(len(distinct), 'account')}"
        else:
            targets = "with no account name logged"
        alerts.append(builder.build(
            "brute_force_source",
            f"brute force from {source}: {_plural(failures_total, 'failed logon')} {targets}",
            ts[start], ts[end - 1], src=source, count=failures_total,
            record_ids=frame.record_id[order[start:end]],
            evidence={"failures": failures_total, "accounts": len(distinct),
                      "account_names": [builder.display_user(a) for a in accounts[:MAX_EVIDENCE_IDS]],
                      "max_failures_in_window": int(window[start:end].max()),
                      "window_s": config.bruteforce_window_s,
                      "threshold": config.bruteforce_source_failures},
        ))
    return alerts


def _account_bursts(frame, failures, config, builder):
    alerts = []
    rows = failures[frame.user[failures] != NO_VALUE]
    order = rows[_sorted_groups(frame.user[rows], frame.ts[rows])]
    group = frame.user[order]
    ts = frame.ts[order]
    weight = frame.count[order].astype(np.int64)
    window = _window_sums(group, ts, weight, config.bruteforce_window_s)
    episode = _episodes(group, ts, config.bruteforce_window_s)
    for start, end in zip(*_episode_bounds(episode)):
        over = np.flatnonzero(window[start:end] >= config.bruteforce_account_failures)
        if len(over) == 0:
            continue
        trigger = start + int(over[0])
        if not frame.is_new[order[trigger]]:
            continue
        burst_sources = frame.src[order[start:end]]
        distinct_sources = np.unique(burst_sources[burst_sources != NO_VALUE])
        if len(distinct_sources) < 2:
            continue
        user = frame.users[group[start]]
        failures_total = int(weight[start:end].sum())
        alerts.append(builder.build(
            "brute_force_account",
            f"brute force against account {builder.display_user(user)}: {failures_total} failed logons"
            f" from {len(distinct_sources)} sources",
            ts[start], ts[end - 1], user=user, count=failures_total,
            record_ids=frame.record_id[order[start:end]],
            evidence={"failures": failures_total, "sources": len(distinct_sources),
                      "source_addresses": [frame.sources[s] for s in distinct_sources.tolist()[:MAX_EVIDENCE_IDS]],
                      "max_failures_in_window": int(window[start:end].max()),
                      "window_s": config.bruteforce_window_s,
                      "threshold": config.bruteforce_account_failures},
        ))
    return alerts


def detect_success_after_failures(frame: LoginFrame, config: DetectionConfig, builder: AlertBuilder) -> list[Alert]:
    """Report a success for an account preceded by many failures for it within the window."""
    alerts = []
    named = frame.user != NO_VALUE
    failure_rows = np.flatnonzero((frame.outcome == OUTCOME_FAILURE) & named)
    success_rows = np.flatnonzero((frame.outcome == OUTCOME_SUCCESS) & named & frame.is_new)
    if len(failure_rows) == 0 or len(success_rows) == 0:
        return alerts

    # Failures sorted by (user, time) on one axis, as in _window_sums, so
    # two searchsorted calls count each success's preceding failures.
    window_s = config.success_after_failures_window_s
    t0 = min(frame.ts[failure_rows].min(), frame.ts[success_rows].min())
    span = float(frame.ts.max() - t0) + window_s + 1.0
    failure_order = failure_rows[np.lexsort((frame.ts[failure_rows], frame.user[failure_rows]))]
    failure_key = frame.user[failure_order].astype(np.float64) * span + (frame.ts[failure_order] - t0)
    cumulative = np.concatenate(([0], np.cumsum(frame.count[failure_order], dtype=np.int64)))
    success_key = frame.user[success_rows].astype(np.float64) * span + (frame.ts[success_rows] - t0)
    right = np.searchsorted(failure_key, success_key, side="right")
    left = np.searchsorted(failure_key, success_key - window_s, side="left")
    failures_before = cumulative[right] - cumulative[left]

    last_alert_ts: dict[int, float] = {}
    for i in np.flatnonzero(failures_before >= config.success_after_failures_min).tolist():
        row = success_rows[i]
        user_index = int(frame.user[row])
        ts = float(frame.ts[row])
        if ts - last_alert_ts.get(user_index, -np.inf) <= window_s:
            continue
        last_alert_ts[user_index] = ts
        user = frame.users[user_index]
        failed = failure_order[left[i]:right[i]]
        source = frame.sources[frame.src[row]] if frame.src[row] != NO_VALUE else None
        alerts.append(builder.build(
            "success_after_failures",
            f"account {builder.display_user(user)} logged on after {int(failures_before[i])} failed attempts"
            f" within {window_s:.0f} s",
            frame.ts[failed].min(), ts, user=user, src=source, count=int(failures_before[i]) + 1,
            record_ids=np.concatenate((frame.record_id[failed], [frame.record_id[row]])),
            evidence={"failures": int(failures_before[i]), "success_record_id": int(frame.record_id[row]),
                      "failure_sources": sorted({frame.sources[s] for s in frame.src[failed].tolist() if s != NO_VALUE})[:MAX_EVIDENCE_IDS],
                      "window_s": window_s, "threshold": config.success_after_failures_min},
        ))
    return alerts


# --- behaviour rules --------------------------------------------------------


def detect_behaviour(records: list[LoginRecord], history: list[LoginRecord], users: dict,
                     config: DetectionConfig, builder: AlertBuilder) -> list[Alert]:
    """Run the baseline and EHR rules on new records; `history` contains the earlier records the windows need."""
    alerts: list[Alert] = []
    logons = [r for r in records if is_interactive_logon(r)]
    alerts += _unusual_hours(logons, users, config, builder)
    alerts += _new_sources(logons, users, config, builder)
    alerts += _dormant(logons, users, config, builder)
    alerts += _concurrent(logons, [r for r in history if is_interactive_logon(r)], config, builder)
    alerts += _privileged(records, config, builder)
    accesses = [r for r in records if is_record_access(r)]
    if accesses:
        earlier = [r for r in history if is_record_access(r)]
        alerts += _ehr_volume(accesses, earlier, users, config, builder)
        alerts += _ehr_department(accesses, users, config, builder)
        alerts += _ehr_surname(accesses, builder)
    return alerts


def _has_habits(baseline: dict | None, config: DetectionConfig) -> bool:
    return baseline is not None and baseline["logons"] >= config.min_baseline_logons


def _unusual_hours(logons, users, config, builder):
    alerts = []
    reported: set = set()
    for record in logons:
        baseline = users.get(record.user)
        if not _has_habits(baseline, config):
            continue
        when = local_time(record.ts, config.site_utc_offset_s)
        hours = baseline["hours"]
        nearby = hours[(when.hour - 1) % 24] + hours[when.hour] + hours[(when.hour + 1) % 24]
        share = nearby / baseline["logons"]
        key = (record.user, when.date(), when.hour)
        if share > config.unusual_hour_max_share or key in reported:
            continue
        reported.add(key)
        alerts.append(builder.build(
            "unusual_hour",
            f"account {builder.display_user(record.user)} logged on at {when:%H:%M} local time, an hour it has not used",
            record.ts, record.ts, user=record.user, src=record.src, record_ids=[record.id or record.line_no or 0],
            service=record.service, host=record.dst_host,
            evidence={"local_hour": when.hour, "weekday": WEEKDAYS[when.weekday()],
                      "logons_in_nearby_hours": nearby, "learnt_logons": baseline["logons"],
                      "max_share": config.unusual_hour_max_share},
        ))
    return alerts


def _new_sources(logons, users, config, builder):
    alerts = []
    reported: set = set()
    for record in logons:
        baseline = users.get(record.user)
        source = record.src
        if source is None or not _has_habits(baseline, config) or source in baseline["sources"]:
            continue
        if (record.user, source) in reported:
            continue
        reported.add((record.user, source))
        alerts.append(builder.build(
            "new_source",
            f"account {builder.display_user(record.user)} logged on from {source}, a source it has not used",
            record.ts, record.ts, user=record.user, src=source, record_ids=[record.id or record.line_no or 0],
            service=record.service, host=record.dst_host,
            evidence={"known_sources": len(baseline["sources"]), "learnt_logons": baseline["logons"]},
        ))
    return alerts


def _dormant(logons, users, config, builder):
    alerts = []
    reported: set = set()
    limit_s = config.dormant_after_days * 86400
    # Each logon moves the account's last activity forward, so a month of
    # records read in one run is judged logon by logon.
    last_seen: dict[str, float] = {}
    for record in sorted(logons, key=lambda r: r.ts):
        baseline = users.get(record.user)
        previous = last_seen.get(record.user, baseline["last_seen"] if baseline else None)
        last_seen[record.user] = max(record.ts, previous or record.ts)
        if previous is None or record.user in reported:
            continue
        idle_s = record.ts - previous
        if idle_s < limit_s:
            continue
        reported.add(record.user)
        alerts.append(builder.build(
            "dormant_account",
            f"account {builder.display_user(record.user)} logged on after {idle_s / 86400:.0f} days without use",
            record.ts, record.ts, user=record.user, src=record.src, record_ids=[record.id or record.line_no or 0],
            service=record.service, host=record.dst_host,
            evidence={"idle_days": round(idle_s / 86400, 1), "last_seen": previous,
                      "dormant_after_days": config.dormant_after_days},
        ))
    return alerts


def _concurrent(logons, earlier_logons, config, builder):
    alerts = []
    by_user: dict[str, list[tuple[float, LoginRecord, bool]]] = defaultdict(list)
    for record in earlier_logons:
        by_user[record.user].append((record.ts, record, False))
    for record in logons:
        by_user[record.user].append((record.ts, record, True))
    for user, items in by_user.items():
        if not any(new for _, _, new in items):
            continue
        items.sort(key=lambda item: item[0])
        for i, (ts, record, new) in enumerate(items):
            if not new or record.src is None:
                continue
            others = [other for t, other, _ in items[:i]
                      if ts - t <= config.concurrent_window_s and other.src is not None and other.src != record.src]
            if not others:
                continue
            other = others[-1]
            alerts.append(builder.build(
                "concurrent_sessions",
                f"account {builder.display_user(user)} logged on from {other.src} and {record.src}"
                f" {ts - other.ts:.0f} s apart",
                other.ts, ts, user=user, src=record.src, count=2,
                record_ids=[other.id or other.line_no or 0, record.id or record.line_no or 0],
                service=record.service, host=record.dst_host,
                evidence={"sources": [other.src, record.src], "gap_s": round(ts - other.ts, 3),
                          "window_s": config.concurrent_window_s},
            ))
            break  # one alert per account and run
    return alerts


def _privileged(records, config, builder):
    if not config.change_windows:
        return []
    outside: dict[tuple, list[LoginRecord]] = defaultdict(list)
    for record in records:
        if record.outcome != SUCCESS or not record.privileged or record.user is None:
            continue
        when = local_time(record.ts, config.site_utc_offset_s)
        minute = when.hour * 60 + when.minute
        if any(window.contains(when.weekday(), minute) for window in config.change_windows):
            continue
        outside[(record.user, when.date())].append(record)
    alerts = []
    for (user, day), items in outside.items():
        technique = WINDOWS_PRIVILEGED_TECHNIQUE if items[0].service == "windows" else None
        alerts.append(builder.build(
            "privileged_outside_window",
            f"privileged logon by {builder.display_user(user)} outside every change window on {day.isoformat()}"
            f" ({_plural(len(items), 'event')})",
            items[0].ts, items[-1].ts, user=user, src=items[0].src, count=len(items),
            record_ids=[r.id or r.line_no or 0 for r in items], technique=technique,
            service=items[0].service, host=items[0].dst_host,
            evidence={"events": len(items), "actions": sorted({r.action for r in items}), "day": day.isoformat()},
        ))
    return alerts


def _ehr_volume(accesses, earlier, users, config, builder):
    day_patients: dict[tuple, set] = defaultdict(set)
    for record in earlier:
        day_patients[(record.user, local_time(record.ts, config.site_utc_offset_s).date())].add(record.patient_ref)
    # The new record at which a user's day first went over the limit, then
    # every later access of that day as evidence.
    crossed: dict[tuple, list[LoginRecord]] = {}
    thresholds: dict[tuple, float] = {}
    for record in accesses:
        key = (record.user, local_time(record.ts, config.site_utc_offset_s).date())
        patients = day_patients[key]
        before = len(patients)
        patients.add(record.patient_ref)
        if key in crossed:
            crossed[key].append(record)
            continue
        if key not in thresholds:
            thresholds[key] = _ehr_threshold(users.get(record.user), config)
        if len(patients) > before and len(patients) > thresholds[key]:
            crossed[key] = [record]
    alerts = []
    for (user, day), items in crossed.items():
        count = len(day_patients[(user, day)])
        threshold = thresholds[(user, day)]
        baseline = users.get(user) or {}
        alerts.append(builder.build(
            "ehr_volume",
            f"user {builder.display_user(user)} opened records of {count} patients on {day.isoformat()},"
            f" above the limit of {threshold:.0f}",
            items[0].ts, items[-1].ts, user=user, src=items[0].src, count=count,
            record_ids=[r.id or r.line_no or 0 for r in items], service=items[0].service,
            evidence={"patients": count, "threshold": round(threshold, 1), "day": day.isoformat(),
                      "crossed_at_record_id": items[0].id or items[0].line_no,
                      "baseline_mean": round(baseline.get("ehr_patients_mean", 0.0), 2),
                      "baseline_std": round(baseline.get("ehr_patients_std", 0.0), 2),
                      "baseline_max": baseline.get("ehr_patients_max", 0),
                      "baseline_days": baseline.get("ehr_days", 0)},
        ))
    return alerts


def _ehr_threshold(baseline: dict | None, config: DetectionConfig) -> float:
    if not baseline or baseline["ehr_days"] < config.ehr_min_baseline_days:
        # Without learnt days only a generous fixed limit applies.
        return config.ehr_volume_min_patients * config.ehr_volume_max_factor * 2
    return max(
        config.ehr_volume_min_patients,
        baseline["ehr_patients_mean"] + config.ehr_volume_sigmas * baseline["ehr_patients_std"],
        baseline["ehr_patients_max"] * config.ehr_volume_max_factor,
    )


def _ehr_department(accesses, users, config, builder):
    outside: dict[tuple, list[LoginRecord]] = defaultdict(list)
    for record in accesses:
        if record.patient_department is None:
            continue
        if record.role and record.role.lower() in config.ehr_cross_department_roles:
            continue
        department = record.department or user_department(users.get(record.user))
        if department is None or department.casefold() == record.patient_department.casefold():
            continue
        day = local_time(record.ts, config.site_utc_offset_s).date()
        outside[(record.user, department, day)].append(record)
    alerts = []
    for (user, department, day), items in outside.items():
        patients = {r.patient_ref for r in items}
        alerts.append(builder.build(
            "ehr_out_of_department",
            f"user {builder.display_user(user)} of {department} opened {len(patients)} patient records"
            f" of other departments on {day.isoformat()}",
            items[0].ts, items[-1].ts, user=user, src=items[0].src, count=len(items),
            record_ids=[r.id or r.line_no or 0 for r in items], service=items[0].service,
            evidence={"user_department": department,
                      "patient_departments": sorted({r.patient_department for r in items}),
                      "patients": len(patients), "accesses": len(items), "day": day.isoformat()},
        ))
    return alerts


def _ehr_surname(accesses, builder):
    alerts = []
    reported: set = set()
    for record in accesses:
        if record.user_surname_key is None or record.user_surname_key != record.patient_surname_key:
            continue
        key = (record.user, record.patient_ref)
        if key in reported:
            continue
        reported.add(key)
        alerts.append(builder.build(
            "ehr_same_surname",
            f"user {builder.display_user(record.user)} opened the record of a patient with the same surname",
            record.ts, record.ts, user=record.user, src=record.src,
            record_ids=[record.id or record.line_no or 0], service=record.service,
            # The patient reference is already a keyed hash.
            evidence={"patient_ref": record.patient_ref, "action": record.action},
        ))
    return alerts

"""Gather the report's numbers from the store, as plain data (the --format json output).

Every count here comes from one SQL query or one pass over the rows of one
query, so the report and the store cannot disagree. Periods are in capture
time: an alert belongs to the period when [first_seen, last_seen] overlaps
[start, end], and a run when its packets do. Response actions carry
wall-clock times, so an action belongs to the period when its alert does or
when it was created inside the period.

The gatherer only reads. Tables that a store lacks (no inventory, no
responder) give empty sections rather than errors.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import re
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from engine.taxonomy import ATTACK_CLASSES, SEVERITIES, STAGES

logger = logging.getLogger(__name__)

# Version 2 counts findings in overall_risk and adds overall_risk_findings,
# findings, forecasts and stored_alerts to the summary.
REPORT_SCHEMA = "wardwatch.report/2"

# Kinds whose alerts describe something that happened; findings and
# forecasts have their own sections.
INCIDENT_KINDS = ("detection", "policy", "login")
UNSTAGED = "unstaged"
UNCLASSIFIED = "unclassified"

# Category -> kill-chain stage; categories outside the taxonomy (anomaly,
# login analytics, findings) are reported as unstaged.
CATEGORY_STAGES = {attack.category: attack.stage for attack in ATTACK_CLASSES.values()}

# An asset's device class is the first of its inventory roles in this order:
# the most safety-relevant role names the class.
DEVICE_CLASS_ORDER = (
    "infusion_pump", "patient_monitor", "modality", "pacs", "hl7_engine", "ehr",
    "dicom_workstation", "hl7_sender", "iomt_device", "mqtt_broker", "domain_controller",
    "server", "workstation",
)
# Roles that deliver a clinical service; the executive summary names those at risk.
CLINICAL_ROLES = (
    "infusion_pump", "patient_monitor", "modality", "pacs", "dicom_workstation",
    "hl7_engine", "ehr", "hl7_sender", "iomt_device", "mqtt_broker",
)

# Lengths of the lists in the report; totals are always given in full.
TOP_ENDPOINTS = 10
MAX_DECISIONS = 20
MAX_FINDING_GROUPS = 50
MAX_ACTION_ROWS = 50
MAX_FORECASTS = 30
MAX_RUN_ROWS = 20
MAX_DEVICES = 25
# The timeline has at most this many buckets; the bucket is the smallest of
# TIMELINE_BUCKETS_S that keeps it so.
MAX_TIMELINE_BUCKETS = 48
TIMELINE_BUCKETS_S = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400)

_DURATION_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Parse a period such as 30m, 24h, 7d or 2w into seconds."""
    match = _DURATION_PATTERN.match(text or "")
    if match is None:
        raise ValueError(
            f"invalid period {text!r}; expected a number and a unit s, m, h, d or w, e.g. 7d or 24h"
        )
    seconds = float(match.group(1)) * _DURATION_UNITS_S[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"invalid period {text!r}; it must be longer than zero")
    return seconds


@dataclass(frozen=True)
class Period:
    start: float  # capture time, seconds since the epoch (UTC), inclusive
    end: float  # inclusive

    @property
    def length_s(self) -> float:
        return self.end - self.start

    def previous(self) -> Period:
        """Return the period of the same length that ends where this one starts."""
        return Period(self.start - self.length_s, self.start)


def table_names(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def latest_capture_time(conn: sqlite3.Connection, tables: set[str]) -> float | None:
    """Return the newest capture time in the store: an alert's last_seen or a run's last packet."""
    candidates = []
    if "alerts" in tables:
        candidates.append(conn.execute(
            "SELECT MAX(last_seen) FROM alerts WHERE kind != 'forecast'").fetchone()[0])
    if "runs" in tables:
        candidates.append(conn.execute("SELECT MAX(last_packet_time) FROM runs").fetchone()[0])
    candidates = [value for value in candidates if value is not None]
    return max(candidates) if candidates else None


def resolve_period(conn: sqlite3.Connection, since_s: float, until: str | float = "latest") -> Period:
    """Return the report period: `since_s` seconds ending at `until`.

    `until` is "now", seconds since the epoch, or "latest": the newest
    capture time in the store, so a report over an old capture covers it.
    An empty store has no capture time, so "latest" is then the current time.
    """
    if until == "latest":
        end = latest_capture_time(conn, table_names(conn))
        if end is None:
            end = time.time()
    elif until == "now":
        end = time.time()
    else:
        end = float(until)
    return Period(end - since_s, end)


def _max_severity(severities) -> str | None:
    ranks = [SEVERITIES.index(s) for s in severities if s in SEVERITIES]
    return SEVERITIES[max(ranks)] if ranks else None


def _placeholders(values) -> str:
    return ", ".join("?" for _ in values)


class ReportGatherer:
    """Reads one store for one period; gather() returns the whole report as data."""

    def __init__(self, conn: sqlite3.Connection, period: Period):
        self.conn = conn
        self.period = period
        self.tables = table_names(conn)
        self.invalid_bodies = 0  # alert bodies that failed to decode
        self._incidents: list[dict] | None = None

    # -- alert rows ----------------------------------------------------------

    def _alert_rows(self, kinds: tuple[str, ...], period: Period) -> list[dict]:
        if "alerts" not in self.tables:
            return []
        rows = self.conn.execute(
            "SELECT id, kind, category, severity, technique, state, first_seen, last_seen,"
            f" src_ip, dst_ip, count, summary FROM alerts WHERE kind IN ({_placeholders(kinds)})"
            " AND last_seen >= ? AND first_seen <= ? ORDER BY first_seen, seq",
            (*kinds, period.start, period.end),
        )
        return [dict(row) for row in rows]

    def incidents(self) -> list[dict]:
        """Return the detection, policy and login alerts of the period (cached)."""
        if self._incidents is None:
            self._incidents = self._alert_rows(INCIDENT_KINDS, self.period)
        return self._incidents

    def _alert_bodies(self, ids: list[str]) -> dict[str, dict]:
        """Return the stored msgpack bodies of these alerts as dicts, keyed by id.

        A body that does not decode is left out and counted in
        self.invalid_bodies, with one warning per report.
        """
        import msgpack

        from engine.alerts.schema import unpack_alert

        bodies = {}
        for offset in range(0, len(ids), 500):
            chunk = ids[offset:offset + 500]
            for row in self.conn.execute(
                f"SELECT id, body FROM alerts WHERE id IN ({_placeholders(chunk)})", chunk
            ):
                try:
                    bodies[row["id"]] = unpack_alert(row["body"]).to_dict()
                except (ValueError, TypeError, msgpack.UnpackException) as error:
                    if not self.invalid_bodies:
                        logger.warning("alert %s has an invalid stored body (%s); the report leaves it out "
                                       "of findings and forecasts", row["id"], error)
                    self.invalid_bodies += 1
        return bodies

    # -- sections ------------------------------------------------------------

    def gather(self) -> dict[str, Any]:
        """Return every section of the report as JSON-serialisable data."""
        assets = self.assets()
        actions = self.actions()
        findings = self.findings()
        forecasts = self.forecasts()
        report = {
            "schema": REPORT_SCHEMA,
            "generated_at": time.time(),
            "period": {
                "start": self.period.start,
                "end": self.period.end,
                "length_s": self.period.length_s,
                "previous_start": self.period.previous().start,
                "previous_end": self.period.previous().end,
            },
            "tables_present": sorted(self.tables & {"alerts", "runs", "assets", "response_actions"}),
            "summary": self.summary(assets, actions, findings, forecasts),
            "timeline": self.timeline(),
            "top_sources": self.top_endpoints("src_ip"),
            "top_targets": self.top_endpoints("dst_ip"),
            "stages": self.stages(),
            "assets": assets,
            "findings": findings,
            "actions": actions,
            "forecasts": forecasts,
            "capture_health": self.capture_health(),
        }
        report["invalid_alert_bodies"] = self.invalid_bodies
        return report

    def summary(self, assets: dict, actions: dict, findings: dict, forecasts: dict) -> dict[str, Any]:
        incidents = self.incidents()
        previous = self._alert_rows(INCIDENT_KINDS, self.period.previous())
        by_severity = collections.Counter(row["severity"] for row in incidents)
        previous_by_severity = collections.Counter(row["severity"] for row in previous)
        by_kind = collections.Counter(row["kind"] for row in incidents)

        categories: dict[str, dict] = {}
        for row in incidents:
            entry = categories.setdefault(row["category"], {
                "category": row["category"], "alerts": 0, "detections": 0, "severities": []})
            entry["alerts"] += 1
            entry["detections"] += row["count"]
            entry["severities"].append(row["severity"])
        by_category = []
        for entry in categories.values():
            severities = entry.pop("severities")
            entry["max_severity"] = _max_severity(severities)
            entry["stage"] = CATEGORY_STAGES.get(entry["category"], UNSTAGED)
            by_category.append(entry)
        by_category.sort(key=lambda e: (-SEVERITIES.index(e["max_severity"]), -e["alerts"], e["category"]))

        # The headline covers everything the report lists as having happened
        # or been found. Forecasts are left out because they predict alerts
        # that have not happened.
        finding_severities = [s for s, count in findings["by_severity"].items() if count]
        overall = _max_severity([*by_severity, *finding_severities]) or "none"
        alerts_now = len(incidents)
        alerts_before = len(previous)
        change_percent = None
        if alerts_before:
            change_percent = round(100.0 * (alerts_now - alerts_before) / alerts_before, 1)

        return {
            "overall_risk": overall,
            "overall_risk_alerts": by_severity.get(overall, 0),
            "overall_risk_findings": findings["by_severity"].get(overall, 0),
            "alerts": alerts_now,
            "findings": findings["total"],
            "forecasts": forecasts["total"],
            # For a store that holds only this period, this total equals the
            # number of lines `wardwatch alerts list` prints.
            "stored_alerts": alerts_now + findings["total"] + forecasts["total"],
            "detections": sum(row["count"] for row in incidents),
            "open_alerts": sum(1 for row in incidents if row["state"] == "open"),
            "by_kind": {kind: by_kind.get(kind, 0) for kind in INCIDENT_KINDS},
            "by_severity": {severity: by_severity.get(severity, 0) for severity in SEVERITIES},
            "by_category": by_category,
            "previous_alerts": alerts_before,
            "previous_by_severity": {s: previous_by_severity.get(s, 0) for s in SEVERITIES},
            "change_percent": change_percent,
            "clinical_services": [c for c in assets["by_class"] if c["device_class"] in CLINICAL_ROLES
                                  and c["alerts"] > 0],
            "automatic_actions": {"total": actions["total"], "by_status": actions["by_status"]},
            "decisions": self.decisions(actions, findings),
        }

    def decisions(self, actions: dict, findings: dict) -> dict[str, Any]:
        """List what a person has to decide: unanswered serious alerts, escalations, failures, serious findings."""
        answered = set()
        escalated = []
        failed = []
        for item in actions["all"]:
            if item["status"] in ("applied", "dry_run") and item["alert_id"]:
                answered.add(item["alert_id"])
            elif item["status"] == "escalated":
                escalated.append(item)
            elif item["status"] == "failed":
                failed.append(item)
        serious = ("high", "critical")
        unanswered = [row for row in self.incidents() if row["severity"] in serious and row["id"] not in answered]
        unanswered.sort(key=lambda r: (-SEVERITIES.index(r["severity"]), -r["last_seen"]))
        serious_findings = [g for g in findings["groups"] if g["severity"] in serious]

        items = []
        for row in unanswered:
            items.append({"type": "unanswered_alert", "severity": row["severity"], "category": row["category"],
                          "alert_id": row["id"], "src_ip": row["src_ip"], "dst_ip": row["dst_ip"],
                          "summary": row["summary"], "last_seen": row["last_seen"]})
        for item in escalated + failed:
            items.append({"type": f"{item['status']}_action", "severity": None, "category": item["action"],
                          "alert_id": item["alert_id"], "src_ip": item["subject"], "dst_ip": None,
                          "summary": item["reason"], "last_seen": item["created_at"]})
        for group in serious_findings:
            items.append({"type": "serious_finding", "severity": group["severity"], "category": group["category"],
                          "alert_id": None, "src_ip": None, "dst_ip": ", ".join(group["affected"][:3]),
                          "summary": group["summary"], "last_seen": group["last_seen"]})
        return {
            "total": len(items),
            "unanswered_alerts": len(unanswered),
            "escalated_actions": len(escalated),
            "failed_actions": len(failed),
            "serious_findings": len(serious_findings),
            "items": items[:MAX_DECISIONS],
        }

    def timeline(self) -> dict[str, Any]:
        incidents = self.incidents()
        if incidents:
            first = max(self.period.start, min(row["first_seen"] for row in incidents))
            last = min(self.period.end, max(row["last_seen"] for row in incidents))
        else:
            first, last = self.period.start, self.period.end
        extent = max(last - first, 1.0)
        bucket_s = next((b for b in TIMELINE_BUCKETS_S if extent / b <= MAX_TIMELINE_BUCKETS),
                        TIMELINE_BUCKETS_S[-1])
        origin = math.floor(first / bucket_s) * bucket_s
        buckets = max(1, math.floor((last - origin) / bucket_s) + 1)
        by_category: dict[str, list[int]] = {}
        by_severity = {severity: [0] * buckets for severity in SEVERITIES}
        for row in incidents:
            # An alert that began before the period is counted in its first bucket.
            index = min(buckets - 1, max(0, math.floor((max(row["first_seen"], first) - origin) / bucket_s)))
            by_category.setdefault(row["category"], [0] * buckets)[index] += 1
            by_severity[row["severity"]][index] += 1
        return {
            "bucket_s": bucket_s,
            "bucket_starts": [origin + i * bucket_s for i in range(buckets)],
            "by_category": dict(sorted(by_category.items())),
            "by_severity": by_severity,
        }

    def top_endpoints(self, column: str) -> list[dict]:
        entries: dict[str, dict] = {}
        for row in self.incidents():
            address = row[column]
            if not address:
                continue
            entry = entries.setdefault(address, {"ip": address, "alerts": 0, "detections": 0,
                                                 "severities": [], "categories": set()})
            entry["alerts"] += 1
            entry["detections"] += row["count"]
            entry["severities"].append(row["severity"])
            entry["categories"].add(row["category"])
        result = []
        for entry in entries.values():
            entry["max_severity"] = _max_severity(entry.pop("severities"))
            entry["categories"] = sorted(entry["categories"])
            result.append(entry)
        result.sort(key=lambda e: (-e["alerts"], -SEVERITIES.index(e["max_severity"]), e["ip"]))
        return result[:TOP_ENDPOINTS]

    def stages(self) -> list[dict]:
        rows = {stage: {"stage": stage, "alerts": 0, "detections": 0, "sources": set(),
                        "first_seen": None, "last_seen": None} for stage in (*STAGES, UNSTAGED)}
        for row in self.incidents():
            entry = rows[CATEGORY_STAGES.get(row["category"], UNSTAGED)]
            entry["alerts"] += 1
            entry["detections"] += row["count"]
            if row["src_ip"]:
                entry["sources"].add(row["src_ip"])
            entry["first_seen"] = row["first_seen"] if entry["first_seen"] is None else min(entry["first_seen"], row["first_seen"])
            entry["last_seen"] = row["last_seen"] if entry["last_seen"] is None else max(entry["last_seen"], row["last_seen"])
        result = []
        for entry in rows.values():
            entry["sources"] = len(entry["sources"])
            result.append(entry)
        return result

    def assets(self) -> dict[str, Any]:
        if "assets" not in self.tables:
            return {"total": 0, "by_class": [], "devices": []}
        roles: dict[str, set[str]] = collections.defaultdict(set)
        if "asset_attributes" in self.tables:
            for row in self.conn.execute("SELECT ip, value FROM asset_attributes WHERE kind = 'role'"):
                roles[row["ip"]].add(row["value"])
        assets = {}
        for row in self.conn.execute("SELECT ip, mac, vendor FROM assets ORDER BY ip"):
            asset_roles = roles.get(row["ip"], set())
            device_class = next((r for r in DEVICE_CLASS_ORDER if r in asset_roles), UNCLASSIFIED)
            assets[row["ip"]] = {"ip": row["ip"], "vendor": row["vendor"], "device_class": device_class,
                                 "roles": sorted(asset_roles), "alerts": 0, "severities": []}

        # An alert counts once for each distinct asset it names as source or target.
        class_alerts: dict[str, set[str]] = collections.defaultdict(set)
        class_severities: dict[str, list[str]] = collections.defaultdict(list)
        for row in self.incidents():
            for address in {row["src_ip"], row["dst_ip"]} - {None}:
                asset = assets.get(address)
                if asset is None:
                    continue
                asset["alerts"] += 1
                asset["severities"].append(row["severity"])
                class_alerts[asset["device_class"]].add(row["id"])
                class_severities[asset["device_class"]].append(row["severity"])

        by_class: dict[str, dict] = {}
        for asset in assets.values():
            entry = by_class.setdefault(asset["device_class"], {
                "device_class": asset["device_class"], "assets": 0, "assets_with_alerts": 0})
            entry["assets"] += 1
            entry["assets_with_alerts"] += 1 if asset["alerts"] else 0
            asset["max_severity"] = _max_severity(asset.pop("severities"))
        for device_class, entry in by_class.items():
            entry["alerts"] = len(class_alerts.get(device_class, ()))
            entry["max_severity"] = _max_severity(class_severities.get(device_class, ()))
        ordered = [by_class[c] for c in (*DEVICE_CLASS_ORDER, UNCLASSIFIED) if c in by_class]

        devices = [a for a in assets.values() if a["alerts"]]
        devices.sort(key=lambda a: (-SEVERITIES.index(a["max_severity"]), -a["alerts"], a["ip"]))
        return {"total": len(assets), "by_class": ordered, "devices": devices[:MAX_DEVICES],
                "devices_with_alerts": len(devices)}

    def findings(self) -> dict[str, Any]:
        rows = self._alert_rows(("finding",), self.period)
        bodies = self._alert_bodies([row["id"] for row in rows])
        # Findings of one category and summary are one problem on several devices.
        groups: dict[tuple[str, str], dict] = {}
        for row in rows:
            body = bodies.get(row["id"], {})
            group = groups.setdefault((row["category"], row["summary"]), {
                "category": row["category"], "summary": row["summary"], "technique": row["technique"],
                "severities": [], "affected": set(), "findings": 0, "detections": 0,
                "remediation": body.get("recommended_action", ""),
                "cve": (body.get("evidence") or {}).get("cve"),
                "first_seen": row["first_seen"], "last_seen": row["last_seen"]})
            group["findings"] += 1
            group["detections"] += row["count"]
            group["severities"].append(row["severity"])
            # The device at fault is the server side (dst) of the flow a finding comes from.
            if row["dst_ip"]:
                group["affected"].add(row["dst_ip"])
            group["first_seen"] = min(group["first_seen"], row["first_seen"])
            group["last_seen"] = max(group["last_seen"], row["last_seen"])
        result = []
        for group in groups.values():
            group["severity"] = _max_severity(group.pop("severities"))
            group["affected"] = sorted(group["affected"])
            group["affected_count"] = len(group["affected"])
            result.append(group)
        result.sort(key=lambda g: (-SEVERITIES.index(g["severity"]), -g["affected_count"], g["category"], g["summary"]))
        affected = set()
        for group in result:
            affected.update(group["affected"])
        return {"total": len(rows), "affected_devices": len(affected),
                "by_severity": {s: sum(1 for r in rows if r["severity"] == s) for s in SEVERITIES},
                "groups": result[:MAX_FINDING_GROUPS], "group_count": len(result)}

    def actions(self) -> dict[str, Any]:
        if "response_actions" not in self.tables:
            return {"total": 0, "by_status": {}, "by_action": {}, "items": [], "all": []}
        period_alerts = [row["id"] for row in self.incidents()]
        period_alerts += [row["id"] for row in self._alert_rows(("finding", "forecast"), self.period)]
        rows = {}
        for row in self.conn.execute(
            "SELECT * FROM response_actions WHERE created_at >= ? AND created_at <= ?",
            (self.period.start, self.period.end),
        ):
            rows[row["id"]] = dict(row)
        for offset in range(0, len(period_alerts), 500):
            chunk = period_alerts[offset:offset + 500]
            for row in self.conn.execute(
                f"SELECT * FROM response_actions WHERE alert_id IN ({_placeholders(chunk)})", chunk
            ):
                rows[row["id"]] = dict(row)
        items = sorted(rows.values(), key=lambda r: (-r["created_at"], r["id"]))
        for item in items:
            item["dry_run"] = bool(item["dry_run"])
            item["detail"] = json.loads(item["detail"] or "{}")
        return {
            "total": len(items),
            "by_status": dict(sorted(collections.Counter(i["status"] for i in items).items())),
            "by_action": dict(sorted(collections.Counter(i["action"] for i in items).items())),
            "items": [{k: item[k] for k in ("id", "created_at", "action", "subject", "status", "dry_run",
                                            "rule", "reason", "alert_id", "expires_at", "ended_at")}
                      for item in items[:MAX_ACTION_ROWS]],
            "all": items,
        }

    def forecasts(self) -> dict[str, Any]:
        if "alerts" not in self.tables:
            return {"total": 0, "items": []}
        # A forecast is shown while its predicted window has not ended before
        # the period starts, including windows after the period's end.
        rows = [dict(row) for row in self.conn.execute(
            "SELECT id FROM alerts WHERE kind = 'forecast' AND last_seen >= ? ORDER BY first_seen, seq",
            (self.period.start,))]
        bodies = self._alert_bodies([row["id"] for row in rows])
        items = []
        for row in rows:
            body = bodies.get(row["id"])
            if body is None:
                continue
            evidence = body.get("evidence") or {}
            items.append({
                "id": body["id"], "category": body["category"], "severity": body["severity"],
                "forecast": evidence.get("forecast"), "confidence": evidence.get("confidence"),
                "window_start": body["first_seen"], "window_end": body["last_seen"],
                "src_ip": body["src"].get("ip"), "dst_ip": body["dst"].get("ip"),
                "current_stage": evidence.get("current_stage"), "next_stage": evidence.get("next_stage"),
                "period": evidence.get("period"), "summary": body["summary"],
            })
        items.sort(key=lambda i: (-(i["confidence"] or 0.0), i["window_start"]))
        return {"total": len(items), "items": items[:MAX_FORECASTS]}

    def capture_health(self) -> dict[str, Any]:
        empty = {"runs": 0, "packets": 0, "bytes": 0, "flows": 0, "alerts": 0, "drops": 0,
                 "anomalies_total": 0, "anomalies": {}, "first_packet_time": None,
                 "last_packet_time": None, "items": []}
        if "runs" not in self.tables:
            return empty
        # A run without packet times (still starting, or empty input) is placed by its wall-clock start.
        rows = [dict(row) for row in self.conn.execute(
            "SELECT * FROM runs WHERE COALESCE(last_packet_time, started_at) >= ?"
            " AND COALESCE(first_packet_time, started_at) <= ? ORDER BY started_at",
            (self.period.start, self.period.end))]
        if not rows:
            return empty

        anomalies: collections.Counter = collections.Counter()
        for row in rows:
            row["anomaly_counters"] = json.loads(row["anomaly_counters"] or "{}")
            anomalies.update(row["anomaly_counters"])
        # NOTE: no producer writes a kernel or interface drop counter yet; any
        # counter whose name contains "drop" is taken as one.
        drops = sum(count for name, count in anomalies.items() if "drop" in name)
        first_times = [r["first_packet_time"] for r in rows if r["first_packet_time"] is not None]
        last_times = [r["last_packet_time"] for r in rows if r["last_packet_time"] is not None]

        return {
            "runs": len(rows),
            "packets": sum(r["packets"] for r in rows),
            "bytes": sum(r["bytes"] for r in rows),
            "flows": sum(r["flows"] for r in rows),
            "alerts": sum(r["alerts"] for r in rows),
            "drops": drops,
            "anomalies_total": sum(count for name, count in anomalies.items() if "drop" not in name),
            "anomalies": {name: anomalies[name] for name in sorted(anomalies) if "drop" not in name},
            "first_packet_time": min(first_times) if first_times else None,
            "last_packet_time": max(last_times) if last_times else None,
            "items": [{k: r[k] for k in ("run_id", "sensor_id", "source", "started_at", "ended_at", "packets",
                                         "bytes", "flows", "alerts", "first_packet_time", "last_packet_time")}
                      for r in rows[-MAX_RUN_ROWS:]],
        }


def gather_report(conn: sqlite3.Connection, since_s: float, until: str | float = "latest") -> dict[str, Any]:
    """Return the report data for the `since_s` seconds ending at `until` (see resolve_period)."""
    period = resolve_period(conn, since_s, until)
    report = ReportGatherer(conn, period).gather()
    # The full action list is only needed while gathering; the items list is what the report shows.
    report["actions"].pop("all", None)
    return report

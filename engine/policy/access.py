"""Access policy for clinical assets: a learnt baseline or a policy file, then alerts.

Rules (Alert kind "policy", category "policy_violation"):
  - new_peer: an address talks to a clinical asset that is not an allowed
    or learnt peer of it;
  - unknown_calling_ae: a DICOM association with a calling AE title the
    called asset has not allowed or seen;
  - unregistered_hl7_sender: HL7 from an address or MSH-3^MSH-4 application
    that is not registered (policy file) or learnt (baseline);
  - unknown_move_destination: a C-MOVE asking for images to be sent to an
    AE title that is not allowed or learnt;
  - clinical_to_internet: HL7, DICOM or MQTT between a site address and the
    internet (always on, no learning needed).

A flow raises at most one policy alert. When several rules fire for it
(an unregistered HL7 sender that is also a new peer and sends to the
internet), the most severe rule leads the alert and evidence["rules"]
lists every rule that fired. The alert pipeline folds policy alerts by
category and address pair, so one alert per rule would count the flow once
per rule, and a high rule would raise the pair's medium new_peer alert.

Where the policy file lists values for an asset (allowed peers, calling AE
titles, move destinations, registered senders), that list decides. Where
it lists none, the baseline decides once the learning period has ended.
The learning period starts with the first result seen by a store and is
kept in the store, so a restarted sensor does not learn again.
"""

from __future__ import annotations

import ipaddress
import sqlite3
from collections.abc import Callable

from engine.alerts.schema import Alert, Endpoint
from engine.inspect.records import FlowInspection
from engine.policy.config import CLINICAL_ROLES, Policy
from engine.policy.zones import INTERNET, ZoneMap
from engine.taxonomy import severity_rank


CLINICAL_PROTOCOLS = ("hl7", "dicom", "mqtt")
# Each (asset, kind) pair keeps at most MAX_BASELINE_VALUES learnt values,
# and the baseline at most MAX_BASELINE_KEYS pairs. Values past either bound
# are not learnt (so they keep alerting) and are counted in baseline_full.
MAX_BASELINE_VALUES = 1024
MAX_BASELINE_KEYS = 16384
TECHNIQUES = {
    "unregistered_hl7_sender": "T1565.002",
    "unknown_move_destination": "T1048",
    "clinical_to_internet": "T1048",
}


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the baseline tables if they do not exist."""
    conn.executescript(
        """
        CREATE TABLE IF NOT EXISTS access_baseline (
            asset_ip TEXT NOT NULL,
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            first_seen REAL NOT NULL,
            PRIMARY KEY (asset_ip, kind, value)
        );
        CREATE TABLE IF NOT EXISTS access_baseline_meta (
            key TEXT PRIMARY KEY,
            value REAL NOT NULL
        );
        """
    )


class AccessMonitor:
    """Learns who talks to each clinical asset and alerts on departures from it."""

    def __init__(self, policy: Policy, zones: ZoneMap | None = None, conn: sqlite3.Connection | None = None,
                 roles_of: Callable[[str], set[str]] | None = None):
        self.policy = policy
        self.zones = zones or ZoneMap(policy.zones)
        self.conn = conn
        self.roles_of = roles_of or (lambda ip: set())
        self.baseline: dict[tuple[str, str], set[str]] = {}
        self.baseline_full = 0
        self.learning_started_at: float | None = None
        if conn is not None:
            ensure_schema(conn)
            self._load()

    def _load(self) -> None:
        for row in self.conn.execute("SELECT asset_ip, kind, value FROM access_baseline"):
            self.baseline.setdefault((row[0], row[1]), set()).add(row[2])
        row = self.conn.execute("SELECT value FROM access_baseline_meta WHERE key = 'learning_started_at'").fetchone()
        if row is not None:
            self.learning_started_at = row[0]

    def learning(self, ts: float) -> bool:
        """Return True while `ts` is inside the learning period."""
        if self.learning_started_at is None:
            self.learning_started_at = ts
            if self.conn is not None:
                self.conn.execute(
                    "INSERT OR IGNORE INTO access_baseline_meta (key, value) VALUES ('learning_started_at', ?)", (ts,)
                )
        return ts < self.learning_started_at + self.policy.learning_period_s

    def _learn(self, asset_ip: str, kind: str, value: str, ts: float) -> None:
        key = (asset_ip, kind)
        if key not in self.baseline and len(self.baseline) >= MAX_BASELINE_KEYS:
            self.baseline_full += 1
            return
        values = self.baseline.setdefault(key, set())
        if value in values:
            return
        if len(values) >= MAX_BASELINE_VALUES:
            self.baseline_full += 1
            return
        values.add(value)
        if self.conn is not None:
            self.conn.execute(
                "INSERT OR IGNORE INTO access_baseline (asset_ip, kind, value, first_seen) VALUES (?, ?, ?, ?)",
                (asset_ip, kind, value, ts),
            )

    def _is_clinical(self, ip: str, protocol: str) -> bool:
        if ip in self.policy.assets:
            return True
        return protocol in ("hl7", "dicom") or bool(self.roles_of(ip) & set(CLINICAL_ROLES))

    def _decide(self, asset_ip: str, kind: str, value: str, allowed: list | None, ts: float,
                learning: bool) -> bool:
        """Return True when `value` violates the policy list or the learnt baseline."""
        if allowed:
            return not any(_matches(value, a) for a in allowed)
        if learning:
            self._learn(asset_ip, kind, value, ts)
            return False
        return value not in self.baseline.get((asset_ip, kind), set())

    def observe(self, result: FlowInspection) -> list[Alert]:
        """Check one flow's inspection result; return its policy alert, or an empty list.

        The list contains at most one alert, led by the most severe rule
        that fired, with every fired rule in evidence["rules"].
        """
        return _merge_rules(self._rule_alerts(result))

    def _rule_alerts(self, result: FlowInspection) -> list[Alert]:
        """Return one alert per rule that `result` breaks, in rule order."""
        if not result.protocol:
            return []
        alerts = []
        learning = self.learning(result.first_seen)
        asset = self.policy.assets.get(result.responder_ip)
        responder = result.responder_ip
        peer = result.initiator_ip
        if result.protocol in CLINICAL_PROTOCOLS and self.zones.leaves_site(peer, responder):
            outside = responder if self.zones.zone_of(responder) == INTERNET else peer
            alerts.append(self._alert(result, "clinical_to_internet", "high",
                                      f"{result.protocol.upper()} traffic to or from internet address {outside}",
                                      {"internet_address": outside}))
        if self._is_clinical(responder, result.protocol):
            allowed = asset.allowed_peers if asset else None
            if self._decide(responder, "peer", peer, allowed, result.first_seen, learning):
                alerts.append(self._alert(result, "new_peer", "medium",
                                          f"new peer {peer} of clinical asset {responder}", {"peer": peer}))
        if result.protocol == "dicom":
            alerts.extend(self._dicom_rules(result, asset, learning))
        elif result.protocol == "hl7":
            alerts.extend(self._hl7_rules(result, learning))
        return alerts

    def _dicom_rules(self, result: FlowInspection, asset, learning: bool) -> list[Alert]:
        alerts = []
        fields = result.fields
        responder = result.responder_ip
        calling = fields.get("calling_ae")
        if calling:
            allowed = asset.allowed_calling_ae if asset else None
            if self._decide(responder, "calling_ae", calling, allowed, result.first_seen, learning):
                alerts.append(self._alert(result, "unknown_calling_ae", "medium",
                                          f"unknown calling AE title {calling!r} to {fields.get('called_ae', '')!r}",
                                          {"calling_ae": calling, "called_ae": fields.get("called_ae", "")}))
        for command in fields.get("commands", []):
            destination = command.get("move_destination")
            if command.get("command") != "C-MOVE-RQ" or not destination:
                continue
            allowed = asset.allowed_move_destinations if asset else None
            if self._decide(responder, "move_destination", destination, allowed, result.first_seen, learning):
                alerts.append(self._alert(result, "unknown_move_destination", "high",
                                          f"C-MOVE to unknown destination AE {destination!r}",
                                          {"move_destination": destination}))
        return alerts

    def _hl7_rules(self, result: FlowInspection, learning: bool) -> list[Alert]:
        alerts = []
        sender_ip = result.initiator_ip
        policy = self.policy
        for message in result.fields.get("messages", []):
            if message["direction"] != 0:
                continue
            application = f"{message['sending_application']}^{message['sending_facility']}"
            if policy.registered_hl7_senders or policy.registered_hl7_applications:
                registered = any(_matches(sender_ip, n) for n in policy.registered_hl7_senders) or (
                    application in policy.registered_hl7_applications
                )
                violation = not registered
            else:
                violation = self._decide(result.responder_ip, "hl7_sender", f"{sender_ip} {application}", None,
                                         result.first_seen, learning)
            if violation:
                alerts.append(self._alert(result, "unregistered_hl7_sender", "high",
                                          f"HL7 {message['message_type']} from unregistered sender {application} at {sender_ip}",
                                          {"sending_application": application, "message_type": message["message_type"]}))
                break
        return alerts

    def _alert(self, result: FlowInspection, rule: str, severity: str, summary: str, evidence: dict) -> Alert:
        evidence = {"rule": rule, **evidence}
        return Alert(
            category="policy_violation",
            severity=severity,
            summary=summary,
            kind="policy",
            technique=TECHNIQUES.get(rule),
            first_seen=result.first_seen,
            last_seen=result.last_seen,
            src=Endpoint(ip=result.initiator_ip, port=result.initiator_port, mac=result.initiator_mac or None),
            dst=Endpoint(ip=result.responder_ip, port=result.responder_port, mac=result.responder_mac or None),
            protocol=result.protocol,
            flow_ids=[result.flow_id],
            evidence=evidence,
            recommended_action="Confirm the peer is authorised; if so add it to the policy file, otherwise isolate it.",
            aggregation_key=f"policy:{rule}:{result.initiator_ip}:{result.responder_ip}",
        )


def _merge_rules(alerts: list[Alert]) -> list[Alert]:
    """Fold the rule alerts of one flow into one alert led by the most severe rule."""
    if len(alerts) <= 1:
        for alert in alerts:
            alert.evidence["rules"] = [alert.evidence["rule"]]
        return alerts
    # max() keeps the first of equally severe rules, so rule order breaks ties.
    lead = max(alerts, key=lambda alert: severity_rank(alert.severity))
    rules = [alert.evidence["rule"] for alert in alerts]
    evidence = {}
    for alert in alerts:
        evidence.update(alert.evidence)
    evidence["rule"] = lead.evidence["rule"]
    evidence["rules"] = rules
    lead.evidence = evidence
    others = ", ".join(rule for rule in rules if rule != evidence["rule"])
    lead.summary = f"{lead.summary} (also {others})"
    return [lead]


def _matches(value: str, allowed) -> bool:
    if isinstance(allowed, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        try:
            return ipaddress.ip_address(value) in allowed
        except ValueError:
            return False
    return value == allowed

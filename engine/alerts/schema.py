"""The alert record: one versioned schema that every output serialises.

Field meanings are documented in docs/alerts.md, field by field. Times are
seconds since the Unix epoch (UTC) as floats: first_seen and last_seen are
capture time (when the traffic happened), created_at and updated_at are the
sensor's wall-clock time.

Every publication of an alert (its first report and each later update of an
aggregated alert) gets its own `seq` from the store, so a consumer sees one
gap-free sequence per store and can fetch what it missed by seq.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1

# What produced the alert.
KINDS = (
    "detection",  # the model, the anomaly score or a rule saw an attack
    "finding",  # passive vulnerability: cleartext patient data, weak TLS, SMBv1, ...
    "policy",  # access-policy violation for a clinical asset
    "login",  # user-behaviour analytics on login records and audit logs
    "forecast",  # predicted recurrence or next stage of an attack
)


@dataclass
class Endpoint:
    ip: str | None = None
    port: int | None = None
    mac: str | None = None
    asset: str | None = None  # asset name or role from the inventory, where known
    user: str | None = None  # user name (pseudonymised unless the operator opts in)


@dataclass
class Contribution:
    name: str  # feature name from the model's feature schema
    value: float  # the feature's value for this alert
    contribution: float  # its share of the class's raw score (path contribution)


@dataclass
class Alert:
    category: str
    severity: str
    summary: str
    kind: str = "detection"
    technique: str | None = None
    sensor_id: str = ""
    first_seen: float = 0.0
    last_seen: float = 0.0
    src: Endpoint = field(default_factory=Endpoint)
    dst: Endpoint = field(default_factory=Endpoint)
    protocol: str | None = None  # "tcp", "udp", "icmp", or an application protocol
    community_id: str | None = None
    flow_ids: list[int] = field(default_factory=list)
    count: int = 1  # detections folded into this alert
    model_class: str | None = None
    model_score: float | None = None
    anomaly_score: float | None = None
    top_features: list[Contribution] = field(default_factory=list)
    recommended_action: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    aggregation_key: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    seq: int | None = None  # assigned by the store on each publication
    revision: int = 1  # 1 for the first report, +1 for each update
    created_at: float = 0.0
    updated_at: float = 0.0
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Return the alert as plain dicts and lists (for msgpack and JSON)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        """Build an alert from to_dict() output; unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["src"] = Endpoint(**(values.get("src") or {}))
        values["dst"] = Endpoint(**(values.get("dst") or {}))
        values["top_features"] = [
            Contribution(**c) for c in values.get("top_features") or []
        ]
        return cls(**values)

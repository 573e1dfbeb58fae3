"""The alert record: one versioned schema that every output serialises.

Field meanings are documented in docs/alerts.md, field by field. Times are
seconds since the Unix epoch (UTC) as floats: first_seen and last_seen are
capture time (when the traffic happened), created_at and updated_at are the
sensor's wall-clock time.

Every publication of an alert (its first report and each later update of an
aggregated alert) gets its own `seq` from the store, so a consumer sees one
gap-free sequence per store and can fetch what it missed by seq. The
store's `stream_id` distinguishes two stores that publish under one sensor_id.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from engine.taxonomy import severity_rank

# 2 added stream_id.
SCHEMA_VERSION = 2

# Alert kinds, by the part of WardWatch that produced the alert.
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
    state: str = "open"  # "open" while an aggregate can still grow, "closed" on its final publication
    distinct_sources: int = 1  # distinct source addresses folded in (capped, see aggregate.py)
    distinct_targets: int = 1  # distinct destination addresses folded in (capped, see aggregate.py)
    stream_id: str = ""  # the store's random stream id, set with seq; "" from a sensor before schema 2

    def to_dict(self) -> dict[str, Any]:
        """Return the alert as plain dicts and lists (for msgpack and JSON)."""
        # Written out rather than dataclasses.asdict(), whose generic
        # recursion took about 40% of AlertSink.publish() time in a cProfile
        # run of bench/alerts.py.
        values = {name: getattr(self, name) for name in _ALERT_FIELD_NAMES}
        values["src"] = dict(vars(self.src))
        values["dst"] = dict(vars(self.dst))
        values["flow_ids"] = list(self.flow_ids)
        values["top_features"] = [dict(vars(c)) for c in self.top_features]
        values["evidence"] = copy.deepcopy(self.evidence) if self.evidence else {}
        return values

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

    def copy(self) -> Alert:
        """Return a copy that shares no mutable field with this alert."""
        # Copies __dict__ directly: dataclasses.replace() re-runs __init__
        # and was the largest cost of AlertSink.submit() in bench/alerts.py.
        duplicate = _shallow_copy(self)
        duplicate.src = _shallow_copy(self.src)
        duplicate.dst = _shallow_copy(self.dst)
        duplicate.flow_ids = list(self.flow_ids)
        duplicate.top_features = [_shallow_copy(c) for c in self.top_features]
        duplicate.evidence = copy.deepcopy(self.evidence) if self.evidence else {}
        return duplicate

    @property
    def topic(self) -> str:
        """Bus topic of this alert: alert.<severity>.<category>."""
        return f"{TOPIC_PREFIX}{self.severity}.{self.category}"

    def validate(self) -> None:
        """Raise ValueError naming the first field that breaks the schema."""
        validate_alert(self)


# Evidence keys that may hold patient data, credentials or payload bytes. The
# sink removes them (and any key starting with "sensitive.", and any bytes
# value) unless the operator sets include_evidence. Producers put such data
# only under these names.
SENSITIVE_EVIDENCE_KEYS = frozenset({
    "payload", "payload_hex", "payload_base64",
    "hl7_pid", "hl7_segment", "patient_id", "patient_name", "patient_birth_date",
    "dicom_patient_id", "dicom_patient_name", "dicom_patient_birth_date",
    "username", "password", "credentials",
})
SENSITIVE_EVIDENCE_PREFIX = "sensitive."

_ALERT_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Alert))


def _shallow_copy(instance):
    duplicate = object.__new__(type(instance))
    duplicate.__dict__.update(instance.__dict__)
    return duplicate

TOPIC_PREFIX = "alert."
STATS_TOPIC = "stats"
STATES = ("open", "closed")
_CATEGORY_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
_TECHNIQUE_PATTERN = re.compile(r"^T\d{4}(\.\d{3})?$")
ATTACK_TABLE_PATH = Path(__file__).with_name("attack_techniques.tsv")


@dataclass(frozen=True)
class AttackTechnique:
    id: str  # technique or sub-technique id, e.g. T1110.001
    name: str  # ATT&CK name; a sub-technique is "Parent: Sub"
    tactics: tuple[str, ...]  # kill-chain phase names, e.g. ("credential-access",)


def is_well_formed_technique_id(technique: str) -> bool:
    """Return True for Tnnnn or Tnnnn.nnn, the ATT&CK Enterprise id forms."""
    return bool(_TECHNIQUE_PATTERN.match(technique))


@functools.lru_cache(maxsize=1)
def attack_techniques() -> dict[str, AttackTechnique]:
    """Load the shipped ATT&CK table (attack_techniques.tsv), keyed by id."""
    table: dict[str, AttackTechnique] = {}
    with open(ATTACK_TABLE_PATH, encoding="utf-8") as handle:
        lines = [line.rstrip("\n") for line in handle if not line.startswith("#")]
    header, rows = lines[0], lines[1:]
    if header.split("\t") != ["id", "name", "tactic"]:
        raise ValueError(f"{ATTACK_TABLE_PATH}: invalid header {header!r}; expected id, name, tactic")
    for line in rows:
        if not line:
            continue
        technique_id, name, tactics = line.split("\t")
        table[technique_id] = AttackTechnique(technique_id, name, tuple(tactics.split(",")))
    return table


def validate_alert(alert: Alert) -> None:
    """Raise ValueError naming the first field of `alert` that breaks the schema."""
    severity_rank(alert.severity)
    if not _CATEGORY_PATTERN.match(alert.category or ""):
        raise ValueError(
            f"invalid category {alert.category!r}; expected lower-case letters, digits and '_'"
        )
    if alert.kind not in KINDS:
        raise ValueError(f"invalid kind {alert.kind!r}; expected one of {', '.join(KINDS)}")
    if alert.state not in STATES:
        raise ValueError(f"invalid state {alert.state!r}; expected one of {', '.join(STATES)}")
    if alert.technique is not None:
        if not is_well_formed_technique_id(alert.technique):
            raise ValueError(
                f"invalid technique id {alert.technique!r}; expected Tnnnn or Tnnnn.nnn"
            )
        if alert.technique not in attack_techniques():
            raise ValueError(
                f"unknown technique id {alert.technique!r}; add it to {ATTACK_TABLE_PATH.name}"
                " from the MITRE ATT&CK Enterprise data"
            )
    if alert.count < 1:
        raise ValueError(f"invalid count {alert.count}; expected at least 1")
    if alert.last_seen < alert.first_seen:
        raise ValueError(
            f"last_seen {alert.last_seen} is before first_seen {alert.first_seen}"
        )
    for endpoint_name, endpoint in (("src", alert.src), ("dst", alert.dst)):
        if endpoint.port is not None and not 0 <= endpoint.port <= 65535:
            raise ValueError(f"invalid {endpoint_name}.port {endpoint.port}; expected 0..65535")


def pack_alert(alert: Alert) -> bytes:
    """Serialise an alert to the msgpack body sent on the bus and stored in alert_events."""
    return msgpack.packb(alert.to_dict(), use_bin_type=True)


def unpack_alert(body: bytes) -> Alert:
    """Parse a msgpack body written by pack_alert."""
    return Alert.from_dict(msgpack.unpackb(body, raw=False, strict_map_key=False))

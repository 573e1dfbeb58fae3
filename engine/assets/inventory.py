"""Asset inventory built from inspection results and kept in the SQLite store.

One asset per IP address. Each asset has a MAC and its vendor, roles
inferred from what it serves and speaks, and attributes (services, AE
titles, HL7 applications, software banners, server names), each with its
own first and last seen time. Updates are upserts, so feeding the same
results twice changes only last_seen.

NOTE: the MAC recorded for an address is the Ethernet source or
destination of its packets. For a host behind a router that is the
router's MAC, so vendor and MAC are only meaningful for hosts on the
captured segment.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.assets.oui import vendor_for_mac
from engine.inspect.records import FlowInspection


# Each asset keeps at most this many values per attribute kind; later values
# are dropped and counted in Inventory.attributes_dropped.
MAX_VALUES_PER_KIND = 64

ROLES = (
    "pacs",  # accepts DICOM associations
    "modality",  # sends DICOM C-STORE (images) to a peer
    "dicom_workstation",  # opens DICOM associations without storing images
    "hl7_engine",  # accepts HL7 over MLLP
    "ehr",  # sends HL7 ADT (admission) messages
    "hl7_sender",  # sends other HL7 messages
    "domain_controller",  # serves Kerberos or LDAP
    "mqtt_broker",
    "iomt_device",  # MQTT client or a medical-device vendor's MAC
    "infusion_pump",  # vendor is a pump maker
    "patient_monitor",  # vendor is a monitor maker
    "workstation",  # RDP, SMB or web client
    "server",  # serves another inspected protocol
)
PUMP_VENDORS = ("baxter", "b.braun", "alaris", "carefusion", "icu medical", "smiths medical",
                "fresenius", "hospira", "terumo", "becton")
MONITOR_VENDORS = ("philips medical", "mindray", "nihon kohden", "spacelabs", "masimo",
                   "welch allyn", "criticare", "nonin", "ge healthcare")
MEDICAL_VENDORS = PUMP_VENDORS + MONITOR_VENDORS + (
    "medtronic", "siemens healthcare", "carestream", "stryker", "sonosite", "zoll",
    "roche diagnostics", "sysmex", "resmed", "maquet", "hill-rom", "edwards", "biotronik",
    "boston scientific", "karl storz", "esaote", "beckman coulter", "getinge", "nipro", "vocera", "ascom",
)
CLIENT_ROLES = {"rdp": "workstation", "smb": "workstation", "http": "workstation", "mqtt": "iomt_device"}
SERVER_ROLES = {"kerberos": "domain_controller", "ldap": "domain_controller", "mqtt": "mqtt_broker",
                "hl7": "hl7_engine", "dicom": "pacs"}


@dataclass
class Observation:
    """Facts that one flow shows about one host."""

    ip: str
    ts_first: float
    ts_last: float
    mac: str = ""
    attributes: set[tuple[str, str]] = field(default_factory=set)  # (kind, value)


def _observe_dicom(result: FlowInspection, initiator: Observation, responder: Observation) -> None:
    fields = result.fields
    if fields.get("calling_ae"):
        initiator.attributes.add(("ae_title", fields["calling_ae"]))
    if fields.get("called_ae"):
        responder.attributes.add(("ae_title", fields["called_ae"]))
    commands = {c["command"] for c in fields.get("commands", []) if c.get("direction") == 0}
    if "C-STORE-RQ" in commands:
        initiator.attributes.add(("role", "modality"))
    elif fields.get("calling_ae"):
        initiator.attributes.add(("role", "dicom_workstation"))
    for context in fields.get("presentation_contexts", []):
        if context.get("sop_class"):
            responder.attributes.add(("sop_class", context["sop_class"]))


def _observe_hl7(result: FlowInspection, initiator: Observation, responder: Observation) -> None:
    for message in result.fields.get("messages", []):
        sender, receiver = (initiator, responder) if message["direction"] == 0 else (responder, initiator)
        if message["sending_application"]:
            sender.attributes.add(("hl7_application", f"{message['sending_application']}^{message['sending_facility']}"))
        if message["receiving_application"]:
            receiver.attributes.add(("hl7_application", f"{message['receiving_application']}^{message['receiving_facility']}"))
        if message["direction"] == 0:
            role = "ehr" if message["message_type"].startswith("ADT") else "hl7_sender"
            initiator.attributes.add(("role", role))


def _observe_banners(result: FlowInspection, initiator: Observation, responder: Observation) -> None:
    fields = result.fields
    for key in ("server_software", "banner", "server"):
        if fields.get(key):
            responder.attributes.add(("banner", f"{result.protocol}: {fields[key]}"))
    if fields.get("client_software"):
        initiator.attributes.add(("banner", f"ssh client: {fields['client_software']}"))
    if fields.get("sni"):
        responder.attributes.add(("server_name", fields["sni"]))
    for request in fields.get("requests", [])[:1]:
        if isinstance(request, dict) and request.get("user_agent"):
            initiator.attributes.add(("user_agent", request["user_agent"]))
    if fields.get("client_name") and result.protocol == "rdp":
        initiator.attributes.add(("hostname", fields["client_name"]))


def observations_from(result: FlowInspection) -> tuple[Observation, Observation]:
    """Return the observations of a flow's initiator and responder."""
    initiator = Observation(result.initiator_ip, result.first_seen, result.last_seen, result.initiator_mac)
    responder = Observation(result.responder_ip, result.first_seen, result.last_seen, result.responder_mac)
    if not result.protocol:
        return initiator, responder
    responder.attributes.add(("service", f"{result.protocol}/{result.transport}/{result.responder_port}"))
    initiator.attributes.add(("client_of", result.protocol))
    if result.protocol in SERVER_ROLES:
        responder.attributes.add(("role", SERVER_ROLES[result.protocol]))
    if result.protocol in CLIENT_ROLES:
        initiator.attributes.add(("role", CLIENT_ROLES[result.protocol]))
    if result.protocol == "dicom":
        _observe_dicom(result, initiator, responder)
    elif result.protocol == "hl7":
        _observe_hl7(result, initiator, responder)
    elif result.protocol == "mqtt" and result.fields.get("client_id"):
        initiator.attributes.add(("mqtt_client_id", result.fields["client_id"]))
    _observe_banners(result, initiator, responder)
    return initiator, responder


def vendor_roles(vendor: str) -> set[str]:
    """Return roles implied by a MAC vendor name (pump, monitor or generic IoMT maker)."""
    name = vendor.lower()
    roles = set()
    if any(v in name for v in PUMP_VENDORS):
        roles.add("infusion_pump")
    if any(v in name for v in MONITOR_VENDORS):
        roles.add("patient_monitor")
    if any(v in name for v in MEDICAL_VENDORS):
        roles.add("iomt_device")
    return roles


# Columns that listing the inventory reads, per table.
READ_COLUMNS = {
    "assets": ("ip", "mac", "vendor", "first_seen", "last_seen"),
    "asset_attributes": ("ip", "kind", "value"),
}


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the inventory tables if they do not exist."""
    conn.executescript(
        """
        CREATE TABLE IF NOT EXISTS assets (
            ip TEXT PRIMARY KEY,
            mac TEXT NOT NULL DEFAULT '',
            vendor TEXT NOT NULL DEFAULT '',
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE IF NOT EXISTS asset_attributes (
            ip TEXT NOT NULL REFERENCES assets(ip) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            PRIMARY KEY (ip, kind, value)
        );
        CREATE INDEX IF NOT EXISTS asset_attributes_kind ON asset_attributes(kind, value);
        """
    )


class Inventory:
    """Incremental writer and reader of the asset tables."""

    def __init__(self, conn: sqlite3.Connection, oui_path: str | None = None, read_only: bool = False):
        # A read-only inventory only lists, so it leaves the file's tables
        # alone; the caller checks them with engine.store.check_store_tables.
        self.conn = conn
        self.oui_path = oui_path
        self.attributes_dropped = 0
        if not read_only:
            ensure_schema(conn)

    def update(self, results: Iterable[FlowInspection]) -> int:
        """Record the observations of each result's two hosts; return how many hosts were touched."""
        touched = set()
        now = time.time()
        with self.conn:
            self.conn.execute("BEGIN")
            for result in results:
                for observation in observations_from(result):
                    self._upsert(observation, now)
                    touched.add(observation.ip)
        return len(touched)

    def _upsert(self, observation: Observation, now: float) -> None:
        vendor = vendor_for_mac(observation.mac, self.oui_path) if observation.mac else ""
        self.conn.execute(
            """
            INSERT INTO assets (ip, mac, vendor, first_seen, last_seen, updated_at)
            VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT(ip) DO UPDATE SET
                mac = CASE WHEN excluded.mac != '' THEN excluded.mac ELSE assets.mac END,
                vendor = CASE WHEN excluded.mac != '' THEN excluded.vendor ELSE assets.vendor END,
                first_seen = MIN(assets.first_seen, excluded.first_seen),
                last_seen = MAX(assets.last_seen, excluded.last_seen),
                updated_at = excluded.updated_at
            """,
            (observation.ip, observation.mac, vendor, observation.ts_first, observation.ts_last, now),
        )
        attributes = set(observation.attributes)
        attributes.update(("role", role) for role in vendor_roles(vendor))
        for kind, value in attributes:
            self._upsert_attribute(observation, kind, value)

    def _upsert_attribute(self, observation: Observation, kind: str, value: str) -> None:
        updated = self.conn.execute(
            "UPDATE asset_attributes SET first_seen = MIN(first_seen, ?), last_seen = MAX(last_seen, ?) "
            "WHERE ip = ? AND kind = ? AND value = ?",
            (observation.ts_first, observation.ts_last, observation.ip, kind, value),
        ).rowcount
        if updated:
            return
        count = self.conn.execute(
            "SELECT COUNT(*) FROM asset_attributes WHERE ip = ? AND kind = ?", (observation.ip, kind)
        ).fetchone()[0]
        if count >= MAX_VALUES_PER_KIND:
            self.attributes_dropped += 1
            return
        self.conn.execute(
            "INSERT INTO asset_attributes (ip, kind, value, first_seen, last_seen) VALUES (?, ?, ?, ?, ?)",
            (observation.ip, kind, value, observation.ts_first, observation.ts_last),
        )

    def assets(self) -> list[dict]:
        """Return every asset with its attributes grouped by kind, ordered by IP."""
        rows = self.conn.execute("SELECT * FROM assets ORDER BY ip").fetchall()
        by_ip = {row["ip"]: {**dict(row), "attributes": {}} for row in rows}
        for row in self.conn.execute("SELECT ip, kind, value FROM asset_attributes ORDER BY ip, kind, value"):
            asset = by_ip.get(row["ip"])
            if asset is not None:
                asset["attributes"].setdefault(row["kind"], []).append(row["value"])
        return list(by_ip.values())

    def roles(self, ip: str) -> set[str]:
        """Return the roles recorded for one address."""
        rows = self.conn.execute(
            "SELECT value FROM asset_attributes WHERE ip = ? AND kind = 'role'", (ip,)
        ).fetchall()
        return {row[0] for row in rows}


def assets_as_json(assets: list[dict]) -> str:
    """Return the assets as one JSON document (for `wardwatch assets --json`)."""
    return json.dumps(assets, indent=2, sort_keys=True)

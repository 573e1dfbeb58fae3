"""Passive vulnerability findings from inspection results (Alert kind "finding").

Findings:
  - patient data in cleartext (HL7 or DICOM outside TLS);
  - TLS 1.1 or older, or a weak negotiated cipher suite;
  - SMBv1;
  - cleartext credentials (Telnet, FTP, HTTP Basic, POP3, IMAP, LDAP simple
    bind, MQTT password);
  - MQTT without authentication;
  - software banners that claim a version listed in
    engine/data/vulnerable_versions.tsv.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from engine.alerts.schema import Alert, Endpoint
from engine.inspect.records import FlowInspection
from engine.policy.zones import INTERNET, ZoneMap

VULNERABLE_VERSIONS_PATH = Path(__file__).resolve().parent.parent / "data" / "vulnerable_versions.tsv"
TLS_1_2 = 0x0303
CLEARTEXT_LOGIN_PROTOCOLS = ("telnet", "ftp", "pop3", "imap")


@dataclass(frozen=True)
class VulnerableVersion:
    product: str
    pattern: re.Pattern
    min_version: tuple[int, ...]
    max_version: tuple[int, ...]
    cve: str
    severity: str
    summary: str


def version_tuple(version: str) -> tuple[int, ...]:
    """Return a comparable tuple of a version: numbers as numbers, letters as a=1, b=2 ...

    The "p" of OpenSSH portable releases (7.4p1) is skipped.
    """
    parts = []
    for token in re.findall(r"\d+|[a-oq-z]", version.lower()):
        parts.append(int(token) if token.isdigit() else ord(token) - ord("a") + 1)
    return tuple(parts)


@lru_cache(maxsize=2)
def load_vulnerable_versions(path: str = str(VULNERABLE_VERSIONS_PATH)) -> tuple[VulnerableVersion, ...]:
    """Read the vulnerable-versions table (comment lines start with #)."""
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip() and not line.startswith("#")]
    entries = []
    for row in csv.DictReader(lines, delimiter="\t"):
        entries.append(VulnerableVersion(
            product=row["product"],
            pattern=re.compile(row["banner_regex"]),
            min_version=version_tuple(row["min_version"]),
            max_version=version_tuple(row["max_version"]),
            cve=row["cve"],
            severity=row["severity"],
            summary=row["summary"],
        ))
    return tuple(entries)


def match_banner(banner: str) -> list[VulnerableVersion]:
    """Return the table entries whose product and version range a banner matches."""
    matches = []
    for entry in load_vulnerable_versions():
        found = entry.pattern.search(banner)
        if found and entry.min_version <= version_tuple(found.group(1)) <= entry.max_version:
            matches.append(entry)
    return matches


def _alert(result: FlowInspection, category: str, severity: str, summary: str, technique: str | None,
           evidence: dict, action: str) -> Alert:
    return Alert(
        category=category,
        severity=severity,
        summary=summary,
        kind="finding",
        technique=technique,
        first_seen=result.first_seen,
        last_seen=result.last_seen,
        src=Endpoint(ip=result.initiator_ip, port=result.initiator_port, mac=result.initiator_mac or None),
        dst=Endpoint(ip=result.responder_ip, port=result.responder_port, mac=result.responder_mac or None),
        protocol=result.protocol,
        flow_ids=[result.flow_id],
        recommended_action=action,
        evidence=evidence,
        aggregation_key=f"finding:{category}:{result.responder_ip}:{result.responder_port}",
    )


def _patient_data_finding(result: FlowInspection, zones: ZoneMap) -> Alert | None:
    fields = result.fields
    if result.protocol == "hl7":
        carries = bool(fields.get("patient_data"))
        detail = sorted({m["message_type"] for m in fields.get("messages", []) if m["message_type"]})
    elif result.protocol == "dicom":
        carries = fields.get("dataset_bytes", 0) > 0 or any(
            c["command"] in ("C-STORE-RQ", "C-FIND-RQ", "C-MOVE-RQ", "C-GET-RQ") for c in fields.get("commands", [])
        )
        detail = sorted({c["command"] for c in fields.get("commands", []) if c["command"]})
    else:
        return None
    if not carries:
        return None
    leaves = zones.leaves_site(result.initiator_ip, result.responder_ip)
    crosses = zones.crosses(result.initiator_ip, result.responder_ip)
    if leaves:
        severity, where = "critical", "leaving the site"
    elif crosses:
        severity, where = "high", "crossing zones"
    else:
        severity, where = "medium", "inside one zone"
    return _alert(
        result, "cleartext_patient_data", severity,
        f"{result.protocol.upper()} patient data without TLS, {where}",
        "T1040",
        {"messages": detail, "initiator_zone": zones.zone_of(result.initiator_ip),
         "responder_zone": zones.zone_of(result.responder_ip)},
        "Carry HL7 and DICOM over TLS (MLLP/TLS, DICOM TLS) or a VPN between zones.",
    )


def _tls_finding(result: FlowInspection) -> Alert | None:
    fields = result.fields
    version = fields.get("version_code")
    weak_suite = fields.get("weak_cipher_suite", False)
    if version is None or (version >= TLS_1_2 and not weak_suite):
        return None
    reasons = []
    if version < TLS_1_2:
        reasons.append(f"negotiated {fields.get('version')}")
    if weak_suite:
        reasons.append(f"weak cipher suite 0x{fields['cipher_suite']:04x}")
    return _alert(
        result, "weak_tls", "medium", "Weak TLS: " + ", ".join(reasons), None,
        {"version": fields.get("version"), "cipher_suite": fields.get("cipher_suite"), "sni": fields.get("sni", "")},
        "Enable TLS 1.2 or later with AEAD suites on the server and disable older versions.",
    )


def _credential_finding(result: FlowInspection) -> Alert | None:
    fields = result.fields
    protocol = result.protocol
    reason = ""
    if protocol in CLEARTEXT_LOGIN_PROTOCOLS and result.logins:
        users = {e.user for e in result.logins}
        if protocol == "ftp" and users <= {"anonymous", "ftp"}:
            return None
        reason = f"{protocol.upper()} login in cleartext"
    elif protocol == "telnet" and fields.get("login_prompt"):
        reason = "Telnet login prompt in cleartext"
    elif protocol == "http" and fields.get("basic_auth"):
        reason = "HTTP Basic credentials in cleartext"
    elif protocol == "ldap" and any(b.get("auth") == "simple" and not b.get("anonymous") for b in fields.get("binds", [])):
        reason = "LDAP simple bind with a cleartext password"
    elif protocol == "mqtt" and fields.get("password_present"):
        reason = "MQTT password in cleartext"
    if not reason:
        return None
    return _alert(
        result, "cleartext_credentials", "high", reason, "T1040",
        {"logins": len(result.logins)},
        "Replace the cleartext protocol with its TLS or SSH form, and change the exposed passwords.",
    )


def _smb1_finding(result: FlowInspection) -> Alert | None:
    if result.protocol != "smb" or not result.fields.get("smb1"):
        return None
    return _alert(
        result, "smbv1", "high", "SMBv1 in use", None,
        {"smb1_dialects": result.fields.get("smb1_dialects", [])},
        "Disable SMBv1 on the server and the client (it is what EternalBlue exploits).",
    )


def _mqtt_finding(result: FlowInspection) -> Alert | None:
    fields = result.fields
    if result.protocol != "mqtt" or "client_id" not in fields:
        return None
    if fields.get("username_present") or fields.get("password_present") or fields.get("connack_code", 0) != 0:
        return None
    return _alert(
        result, "mqtt_no_auth", "medium", "MQTT broker accepted a client without credentials", None,
        {"client_id": fields.get("client_id", ""), "protocol_version": fields.get("protocol_version")},
        "Require user names and passwords or client certificates on the broker.",
    )


def _software_findings(result: FlowInspection, zones: ZoneMap) -> list[Alert]:
    fields = result.fields
    banners = [fields[k] for k in ("server_banner", "banner", "server") if fields.get(k)]
    # A vulnerable server on the internet is not the hospital's to patch:
    # report it for context at low severity.
    outside = zones.zone_of(result.responder_ip) == INTERNET
    alerts = []
    for banner in banners:
        for entry in match_banner(banner):
            where = " on a server outside the site" if outside else ""
            alert = _alert(
                result, "vulnerable_software", "low" if outside else entry.severity,
                f"{entry.product} banner{where} matches {entry.cve}: {entry.summary}", "T1190",
                {"banner": banner, "cve": entry.cve},
                "Check the installed version and patch it; the banner may hide a backported fix.",
            )
            alert.aggregation_key += f":{entry.cve}"
            alerts.append(alert)
    return alerts


def findings_for(result: FlowInspection, zones: ZoneMap) -> list[Alert]:
    """Return the findings that one flow's inspection result supports."""
    alerts = []
    alert = _patient_data_finding(result, zones)
    if alert:
        alerts.append(alert)
    for check in (_tls_finding, _credential_finding, _smb1_finding, _mqtt_finding):
        alert = check(result)
        if alert:
            alerts.append(alert)
    alerts.extend(_software_findings(result, zones))
    return alerts

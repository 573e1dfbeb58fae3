"""Windows Security events as JSON: Winlogbeat documents and Get-WinEvent output.

Two shapes are read, one object per line or one JSON array per file:
  Winlogbeat   {"@timestamp": ..., "winlog": {"event_id": 4625, "computer_name": ...,
               "event_data": {"TargetUserName": ..., "IpAddress": ..., ...}}}
  PowerShell   `Get-WinEvent -LogName Security | ConvertTo-Json` writes
               {"Id": 4625, "TimeCreated": "/Date(1733347200000)/", "MachineName": ...,
               "Properties": [{"Value": ...}, ...]}, where Properties are the
               event's data fields in schema order, without names.

Events read, with the outcome each becomes:
  4624 an account logged on                          success (logon)
  4625 an account failed to log on                   failure (logon)
  4634 an account logged off                         logoff
  4648 a logon with explicit credentials             success (explicit_credentials)
  4672 special privileges assigned to a new logon    success (privileged_logon), privileged
  4768 a Kerberos TGT was requested                  success, or failure when Status is not 0x0
  4771 Kerberos pre-authentication failed            failure (kerberos_preauth)
  4776 the DC validated NTLM credentials             success, or failure when Status is not 0x0
Other event ids are counted as ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from engine.logins.records import FAILURE, INFO, LOGOFF, SOURCE_WINDOWS, SUCCESS, LoginRecord

# Names of the Properties entries of each event, in the order the Security
# event schema (manifest version 0 for 4776, 1 for 4768/4771, 2 for 4624,
# 0 for the others) lists them, as shown in each event's XML "EventData".
# NOTE: a newer schema version that appends fields keeps these positions,
# but one that inserts fields would shift them. Only the Winlogbeat shape,
# which names every field, would then be read correctly.
PROPERTY_NAMES = {
    4624: ("SubjectUserSid", "SubjectUserName", "SubjectDomainName", "SubjectLogonId",
           "TargetUserSid", "TargetUserName", "TargetDomainName", "TargetLogonId",
           "LogonType", "LogonProcessName", "AuthenticationPackageName", "WorkstationName",
           "LogonGuid", "TransmittedServices", "LmPackageName", "KeyLength",
           "ProcessId", "ProcessName", "IpAddress", "IpPort"),
    4625: ("SubjectUserSid", "SubjectUserName", "SubjectDomainName", "SubjectLogonId",
           "TargetUserSid", "TargetUserName", "TargetDomainName", "Status", "FailureReason",
           "SubStatus", "LogonType", "LogonProcessName", "AuthenticationPackageName",
           "WorkstationName", "TransmittedServices", "LmPackageName", "KeyLength",
           "ProcessId", "ProcessName", "IpAddress", "IpPort"),
    4634: ("TargetUserSid", "TargetUserName", "TargetDomainName", "TargetLogonId", "LogonType"),
    4648: ("SubjectUserSid", "SubjectUserName", "SubjectDomainName", "SubjectLogonId",
           "LogonGuid", "TargetUserName", "TargetDomainName", "TargetLogonGuid",
           "TargetServerName", "TargetInfo", "ProcessId", "ProcessName", "IpAddress", "IpPort"),
    4672: ("SubjectUserSid", "SubjectUserName", "SubjectDomainName", "SubjectLogonId", "PrivilegeList"),
    4768: ("TargetUserName", "TargetDomainName", "TargetSid", "ServiceName", "ServiceSid",
           "TicketOptions", "Status", "TicketEncryptionType", "PreAuthType", "IpAddress", "IpPort"),
    4771: ("TargetUserName", "TargetSid", "ServiceName", "TicketOptions", "Status",
           "PreAuthType", "IpAddress", "IpPort"),
    4776: ("PackageName", "TargetUserName", "Workstation", "Status"),
}
EVENT_IDS = tuple(PROPERTY_NAMES)

# Built-in administrator account names (compared case-folded); a logon by
# one of them is privileged even without a 4672 event.
PRIVILEGED_USER_NAMES = frozenset({"administrator", "admin"})

_DOTNET_DATE = re.compile(r"/Date\((-?\d+)([+-]\d{4})?\)/")
_EMPTY = {"", "-", "::1", "-\u200e"}


@dataclass
class WindowsParseResult:
    records: list[LoginRecord] = field(default_factory=list)
    malformed_lines: list[int] = field(default_factory=list)  # the first max_malformed only
    malformed: int = 0
    ignored: int = 0  # well-formed events of ids not in EVENT_IDS


def parse_windows_events(
    data: bytes, first_line_no: int = 1, origin: str | None = None, max_malformed: int = 1000
) -> WindowsParseResult:
    """Parse JSON lines (or one JSON array) of Windows Security events."""
    result = WindowsParseResult()
    stripped = data.lstrip()
    if stripped.startswith(b"["):
        # One array: ConvertTo-Json without -Compress writes this. Its items
        # are numbered from first_line_no in order.
        try:
            items = json.loads(stripped)
        except ValueError as error:
            # The caller names the file: origin is an internal file identity.
            raise ValueError(f"invalid JSON array of Windows events: {error}") from None
        except RecursionError:
            # json raises RecursionError, not ValueError, on deep nesting.
            raise ValueError("invalid JSON array of Windows events: nested too deeply to be an event list") from None
        numbered = list(enumerate(items, start=first_line_no))
    else:
        numbered = []
        for offset, raw in enumerate(data.split(b"\n")):
            if not raw.strip():
                continue
            try:
                numbered.append((first_line_no + offset, json.loads(raw)))
            except (ValueError, RecursionError):
                numbered.append((first_line_no + offset, None))
    for line_no, item in numbered:
        outcome = _event_to_record(item, line_no, origin)
        if outcome is None:
            result.malformed += 1
            if len(result.malformed_lines) < max_malformed:
                result.malformed_lines.append(line_no)
        elif outcome == "ignored":
            result.ignored += 1
        else:
            result.records.append(outcome)
    return result


def _event_to_record(item, line_no: int, origin: str | None):
    # Returns a LoginRecord, "ignored" or None (malformed).
    if not isinstance(item, dict):
        return None
    if "winlog" in item:
        winlog = item["winlog"]
        if not isinstance(winlog, dict):
            return None
        event_id = _to_int(winlog.get("event_id", (item.get("event") or {}).get("code")))
        data = winlog.get("event_data") or {}
        if not isinstance(data, dict):
            return None
        host = winlog.get("computer_name")
        ts = _parse_time(item.get("@timestamp"))
    elif "Id" in item:
        event_id = _to_int(item.get("Id"))
        if event_id not in PROPERTY_NAMES:
            return "ignored" if event_id is not None else None
        properties = item.get("Properties") or []
        if not isinstance(properties, list):
            return None
        values = [p.get("Value") if isinstance(p, dict) else p for p in properties]
        data = dict(zip(PROPERTY_NAMES[event_id], values))
        host = item.get("MachineName")
        ts = _parse_time(item.get("TimeCreated"))
    else:
        return None
    if event_id is None or ts is None:
        return None
    if event_id not in PROPERTY_NAMES:
        return "ignored"
    return _build_record(event_id, data, ts, host, line_no, origin)


def _build_record(event_id: int, data: dict, ts: float, host, line_no: int, origin):
    def get(name):
        value = data.get(name)
        if value is None:
            return None
        value = str(value).strip()
        return None if value in _EMPTY else value

    status = (get("Status") or "0x0").lower()
    status_ok = status in ("0x0", "0", "0x00000000")
    user = get("TargetUserName")
    domain = get("TargetDomainName")
    if event_id == 4624:
        outcome, action = SUCCESS, "logon"
    elif event_id == 4625:
        outcome, action = FAILURE, "logon"
    elif event_id == 4634:
        outcome, action = LOGOFF, "logoff"
    elif event_id == 4648:
        outcome, action = SUCCESS, "explicit_credentials"
    elif event_id == 4672:
        outcome, action = SUCCESS, "privileged_logon"
        user, domain = get("SubjectUserName"), get("SubjectDomainName")
    elif event_id == 4768:
        outcome, action = (SUCCESS if status_ok else FAILURE), "kerberos_tgt"
    elif event_id == 4771:
        outcome, action = FAILURE, "kerberos_preauth"
    else:  # 4776
        outcome, action = (SUCCESS if status_ok else FAILURE), "ntlm_validate"
    if user is None and outcome != LOGOFF:
        outcome = INFO
    if user is not None and "\\" in user:
        domain, user = user.split("\\", 1)

    src_ip = get("IpAddress")
    if src_ip is not None and src_ip.startswith("::ffff:"):
        src_ip = src_ip[7:]
    if src_ip is not None and src_ip.startswith("127."):
        # A console logon: the workstation name is the source.
        src_ip = None
    method = get("AuthenticationPackageName") or get("PackageName")
    if event_id in (4768, 4771):
        method = "kerberos"
    port = _to_int(get("IpPort"))
    privileged = event_id == 4672 or (user is not None and user.lower() in PRIVILEGED_USER_NAMES)
    return LoginRecord(
        ts=ts,
        outcome=outcome,
        source=SOURCE_WINDOWS,
        user=user,
        domain=domain,
        action=action,
        service="windows",
        method=method.lower() if method else None,
        src_ip=src_ip,
        src_port=port or None,
        src_host=get("WorkstationName") or get("Workstation"),
        dst_host=str(host) if host else None,
        logon_type=_to_int(get("LogonType")),
        event_id=event_id,
        privileged=privileged,
        origin=origin,
        line_no=line_no,
    )


def _to_int(value) -> int | None:
    if value is None:
        return None
    try:
        return int(str(value), 0)
    except ValueError:
        return None


def _parse_time(value) -> float | None:
    # ISO 8601 (Winlogbeat, PowerShell 7) or "/Date(ms)/" (Windows PowerShell 5.1).
    if isinstance(value, dict):  # ConvertTo-Json -Depth 1 can nest DateTime as {"value": ...}
        value = value.get("value") or value.get("DateTime")
    if not isinstance(value, str):
        return None
    match = _DOTNET_DATE.search(value)
    if match:
        return int(match.group(1)) / 1000.0
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python 3.11 fromisoformat reads at most 6 fractional digits; .NET writes 7.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()

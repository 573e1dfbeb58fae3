"""EHR application audit logs (CSV or JSON lines) read through a column mapping file.

Every EHR product names its audit columns differently, so a small TOML file
maps them onto LoginRecord fields:

    format = "csv"                  # "csv" or "jsonl"
    service = "epic"                # the LoginRecord.service value; default "ehr"
    [columns]                       # required: user, action, patient, time
    user = "UserID"
    action = "Action"
    patient = "PatientMRN"
    time = "AccessTime"
    role = "Role"                   # optional from here on
    workstation = "Workstation"
    department = "UserDept"
    patient_department = "PatientDept"
    user_surname = "UserLastName"
    patient_surname = "PatientLastName"
    [time]
    format = "iso"                  # "iso", "epoch", "epoch_ms" or a strptime pattern
    utc_offset_min = 0              # offset of zone-less times from UTC
    [actions]                       # optional: action values that are logons or logoffs
    logon = ["LOGIN"]
    logoff = ["LOGOUT"]
    failure = ["LOGIN_FAILED"]

The patient reference and both surnames are replaced by keyed hashes as the
row is read, so no patient identifier reaches the store. Rows whose action is
not a logon, logoff or failure become success records with action
"record_view" (or the action text, lower-cased).
"""

from __future__ import annotations

import csv
import io
import json
import tomllib
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from engine.logins.records import FAILURE, LOGOFF, SOURCE_EHR, SUCCESS, LoginRecord

REQUIRED_COLUMNS = ("user", "action", "patient", "time")
OPTIONAL_COLUMNS = (
    "role", "workstation", "department", "patient_department", "user_surname", "patient_surname",
)
FORMATS = ("csv", "jsonl")


@dataclass
class ColumnMapping:
    columns: dict[str, str]  # LoginRecord-side name -> column name in the log
    format: str = "csv"
    service: str = "ehr"
    time_format: str = "iso"
    utc_offset_min: int = 0
    delimiter: str = ","
    logon_actions: frozenset[str] = frozenset()
    logoff_actions: frozenset[str] = frozenset()
    failure_actions: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        not_text = sorted(name for name, column in self.columns.items() if not isinstance(column, str))
        if not_text:
            raise ValueError(f"column mapping values must be column names (strings): {', '.join(not_text)}")
        missing = [name for name in REQUIRED_COLUMNS if not self.columns.get(name)]
        if missing:
            raise ValueError(
                f"column mapping is missing {', '.join(missing)} under [columns];"
                f" required: {', '.join(REQUIRED_COLUMNS)}"
            )
        unknown = set(self.columns) - set(REQUIRED_COLUMNS) - set(OPTIONAL_COLUMNS)
        if unknown:
            raise ValueError(
                f"unknown column mapping keys {', '.join(sorted(unknown))};"
                f" expected some of {', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}"
            )
        if self.format not in FORMATS:
            raise ValueError(f"invalid audit log format {self.format!r}; expected one of {', '.join(FORMATS)}")

    @classmethod
    def load(cls, path: str | Path) -> ColumnMapping:
        """Read a mapping TOML file; raise ValueError naming what is wrong."""
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"invalid column mapping file {path}: {error}") from None
        for section in ("columns", "time", "actions"):
            if not isinstance(document.get(section, {}), dict):
                raise ValueError(f"invalid column mapping file {path}: {section} must be a [{section}] table")
        time_section = document.get("time", {})
        actions = document.get("actions", {})
        for kind in ("logon", "logoff", "failure"):
            names = actions.get(kind, [])
            if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                raise ValueError(f"invalid column mapping file {path}: actions.{kind} must be a list of strings")
        return cls(
            columns=dict(document.get("columns", {})),
            format=document.get("format", "csv"),
            service=document.get("service", "ehr"),
            time_format=time_section.get("format", "iso"),
            utc_offset_min=int(time_section.get("utc_offset_min", 0)),
            delimiter=document.get("delimiter", ","),
            logon_actions=frozenset(a.upper() for a in actions.get("logon", [])),
            logoff_actions=frozenset(a.upper() for a in actions.get("logoff", [])),
            failure_actions=frozenset(a.upper() for a in actions.get("failure", [])),
        )


@dataclass
class EhrParseResult:
    records: list[LoginRecord] = field(default_factory=list)
    malformed_lines: list[int] = field(default_factory=list)  # the first max_malformed only
    malformed: int = 0
    header: list[str] | None = None  # CSV header, to pass to the next call


def normalise_surname(surname: str) -> str:
    """Return the comparison form of a surname: NFKC, case-folded, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", surname).casefold().split())


def parse_ehr_audit(
    data: bytes,
    mapping: ColumnMapping,
    pseudonymizer,
    first_line_no: int = 1,
    header: list[str] | None = None,
    origin: str | None = None,
    max_malformed: int = 1000,
) -> EhrParseResult:
    """Parse whole lines of an EHR audit log; the first CSV line is the header unless `header` is given.

    `pseudonymizer` has text(value, domain) returning a keyed hash
    (engine.privacy.Pseudonymizer).
    """
    result = EhrParseResult(header=header)
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    line_no = first_line_no - 1
    for raw in lines:
        line_no += 1
        raw = raw.rstrip("\r")
        if not raw.strip():
            continue
        row = _split_row(raw, mapping, result, line_no)
        if row is None:
            continue
        record = _row_to_record(row, mapping, pseudonymizer, line_no, origin)
        if record is None:
            result.malformed += 1
            if len(result.malformed_lines) < max_malformed:
                result.malformed_lines.append(line_no)
        else:
            result.records.append(record)
    return result


def _split_row(raw: str, mapping: ColumnMapping, result: EhrParseResult, line_no: int):
    # Returns a dict of column -> value, or None for the header and bad rows.
    if mapping.format == "jsonl":
        try:
            row = json.loads(raw)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            result.malformed += 1
            if len(result.malformed_lines) < 1000:
                result.malformed_lines.append(line_no)
            return None
        return {k: "" if v is None else str(v) for k, v in row.items()}
    # NOTE: a CSV field with an embedded newline is split into two lines
    # here, and both halves are counted as malformed.
    fields = next(csv.reader(io.StringIO(raw), delimiter=mapping.delimiter))
    if result.header is None:
        result.header = [f.strip() for f in fields]
        missing = [c for c in mapping.columns.values() if c not in result.header]
        if missing:
            raise ValueError(
                f"audit log header lacks mapped columns {', '.join(missing)};"
                f" header has {', '.join(result.header)}"
            )
        return None
    if len(fields) != len(result.header):
        result.malformed += 1
        if len(result.malformed_lines) < 1000:
            result.malformed_lines.append(line_no)
        return None
    return dict(zip(result.header, fields))


def _row_to_record(row: dict, mapping: ColumnMapping, pseudonymizer, line_no: int, origin):
    columns = mapping.columns

    def value(name: str) -> str | None:
        column = columns.get(name)
        if column is None:
            return None
        text = (row.get(column) or "").strip()
        return text or None

    user = value("user")
    action = value("action")
    ts = _parse_time(value("time"), mapping)
    if user is None or action is None or ts is None:
        return None
    patient = value("patient")
    action_key = action.upper()
    if action_key in mapping.logon_actions:
        outcome, action_name = SUCCESS, "logon"
    elif action_key in mapping.logoff_actions:
        outcome, action_name = LOGOFF, "logoff"
    elif action_key in mapping.failure_actions:
        outcome, action_name = FAILURE, "logon"
    else:
        if patient is None:
            return None
        outcome, action_name = SUCCESS, "record_" + action.lower().replace(" ", "_")
    user_surname = value("user_surname")
    patient_surname = value("patient_surname")
    return LoginRecord(
        ts=ts,
        outcome=outcome,
        source=SOURCE_EHR,
        user=user,
        action=action_name,
        service=mapping.service,
        src_host=value("workstation"),
        role=value("role"),
        department=value("department"),
        patient_ref=pseudonymizer.text(patient, "patient") if patient else None,
        patient_department=value("patient_department"),
        user_surname_key=pseudonymizer.text(normalise_surname(user_surname), "surname") if user_surname else None,
        patient_surname_key=(
            pseudonymizer.text(normalise_surname(patient_surname), "surname") if patient_surname else None
        ),
        origin=origin,
        line_no=line_no,
    )


def _parse_time(text: str | None, mapping: ColumnMapping) -> float | None:
    if text is None:
        return None
    local = timezone(timedelta(minutes=mapping.utc_offset_min))
    try:
        if mapping.time_format == "epoch":
            return float(text)
        if mapping.time_format == "epoch_ms":
            return float(text) / 1000.0
        if mapping.time_format == "iso":
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        else:
            parsed = datetime.strptime(text, mapping.time_format)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=local)
    return parsed.timestamp()

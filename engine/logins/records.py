"""The login record: one authentication or access event, whatever its source.

Every reader (syslog and journald auth logs, Windows Security events, EHR
audit logs) and the protocol inspectors (Kerberos, LDAP, SSH, RDP, FTP,
Telnet, HTTP Basic, MQTT CONNECT seen in traffic) emit LoginRecord, and the
baselines and detections read nothing else.

Times are seconds since the Unix epoch (UTC) as floats. Text fields are None
when the source does not carry them, never "" or "-".

Patient data never enters a record in clear: `patient_ref`,
`patient_surname_key` and `user_surname_key` hold keyed hashes (HMAC-SHA256,
see engine.logins.privacy) made by the reader, so records can be stored and
compared without the names they stand for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Outcome of the event.
SUCCESS = "success"  # credentials accepted, session opened, record opened
FAILURE = "failure"  # credentials rejected or account unknown
LOGOFF = "logoff"  # session closed
INFO = "info"  # an event that is neither, such as "invalid user" probes
OUTCOMES = (SUCCESS, FAILURE, LOGOFF, INFO)

# Producers of a record (LoginRecord.source).
SOURCE_SYSLOG = "syslog"
SOURCE_JOURNALD = "journald"
SOURCE_WINDOWS = "windows"
SOURCE_EHR = "ehr"
SOURCE_TRAFFIC = "traffic"
SOURCES = (SOURCE_SYSLOG, SOURCE_JOURNALD, SOURCE_WINDOWS, SOURCE_EHR, SOURCE_TRAFFIC)


@dataclass
class LoginRecord:
    ts: float  # event time, seconds since the Unix epoch (UTC)
    outcome: str  # one of OUTCOMES
    source: str  # one of SOURCES
    user: str | None = None  # account name as logged, without the domain
    domain: str | None = None  # Windows or Kerberos domain / realm
    action: str = "logon"  # logon, logoff, session_open, privilege_use, kerberos_tgt, record_view, ...
    service: str | None = None  # sshd, su, sudo, windows, kerberos, ldap, the EHR's name, ...
    method: str | None = None  # password, publickey, kerberos, ntlm, basic, ...
    src_ip: str | None = None  # client address, textual IPv4 or IPv6
    src_port: int | None = None
    src_host: str | None = None  # client host name or workstation name
    dst_ip: str | None = None  # server address, for records seen in traffic
    dst_port: int | None = None
    dst_host: str | None = None  # host that logged the event or was logged on to
    logon_type: int | None = None  # Windows LogonType (2 interactive, 3 network, 10 remote interactive ...)
    event_id: int | None = None  # Windows event id (4624, 4625, ...)
    privileged: bool = False  # root / Administrator logon, sudo or su to root, event 4672
    invalid_user: bool = False  # the server reported the account as unknown
    count: int = 1  # events folded into this record ("message repeated N times")
    role: str | None = None  # EHR: the user's role
    department: str | None = None  # EHR: the user's department
    patient_ref: str | None = None  # EHR: keyed hash of the patient reference
    patient_department: str | None = None  # EHR: department that owns the patient record
    user_surname_key: str | None = None  # EHR: keyed hash of the user's surname
    patient_surname_key: str | None = None  # EHR: keyed hash of the patient's surname
    origin: str | None = None  # file identity or "flow:<flow_id>" the record came from
    line_no: int | None = None  # line (or record) number in origin, from 1
    flow_id: int | None = None  # flow the record was seen in, for traffic records
    protocol: str | None = None  # application protocol, for traffic records
    id: int | None = None  # row id once stored in login_records

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(
                f"invalid login outcome {self.outcome!r}; expected one of {', '.join(OUTCOMES)}"
            )
        if self.source not in SOURCES:
            raise ValueError(
                f"invalid login source {self.source!r}; expected one of {', '.join(SOURCES)}"
            )
        if self.count < 1:
            raise ValueError(f"invalid login record count {self.count}; expected 1 or more")

    @property
    def src(self) -> str | None:
        """Return the client as one key: the address, else the host name."""
        return self.src_ip or self.src_host

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a plain dict (for JSON and msgpack)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoginRecord:
        """Build a record from to_dict() output; unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(LoginRecord))

"""Run the stream table and the protocol parsers over packet batches.

The compiled StreamTable captures the first bytes of each flow per batch.
This layer parses each flow once: when the table reports it ready (both
directions done), when the flow table ends it, when it goes idle, or at
the end of the capture.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable

import numpy as np

from engine._native.inspect import COUNTER_NAMES, STREAM_FLAG_NAMES, StreamTable
from engine.inspect import asn1, clinical, dns, smb, textproto, tls
from engine.inspect.detect import IP_PROTO_UDP, detect_protocol
from engine.inspect.records import FlowInspection
from engine.inspect.wire import Malformed, Truncated
from engine.logins.records import FAILURE, INFO, SOURCE_TRAFFIC, SUCCESS, LoginRecord

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 4096  # flows tracked at once
DEFAULT_STREAM_CAP = 4096  # bytes per direction
DEFAULT_IDLE_TIMEOUT_S = 120.0
# A full table is logged at most this often (wall clock), with the running count.
WARNING_INTERVAL_S = 60.0
TABLE_FULL_COUNTER = COUNTER_NAMES.index("table_full")


try:
    # Compiled detection and DNS, HTTP, TLS, MQTT, HL7, DICOM and Kerberos
    # parsers. They give the same output as the Python references in
    # engine.inspect, which stay as the fallback when the module is not built.
    from engine._native import inspect_parse as compiled
except ImportError:
    compiled = None


def _parse_kerberos_udp(initiator: bytes, responder: bytes, fields: dict) -> None:
    PARSERS["kerberos"](initiator, responder, fields, is_udp=True)


# The pure-Python parsers: the reference the compiled ones are tested against.
REFERENCE_PARSERS: dict[str, Callable[[bytes, bytes, dict], None]] = {
    "hl7": clinical.parse_hl7,
    "dicom": clinical.parse_dicom,
    "mqtt": clinical.parse_mqtt,
    "tls": tls.parse_tls,
    "dns": dns.parse_dns,
    "http": textproto.parse_http,
    "ssh": textproto.parse_ssh,
    "ftp": textproto.parse_ftp,
    "telnet": textproto.parse_telnet,
    "pop3": textproto.parse_pop3,
    "imap": textproto.parse_imap,
    "smtp": textproto.parse_smtp,
    "ldap": asn1.parse_ldap,
    "kerberos": asn1.parse_kerberos,
    "smb": smb.parse_smb,
    "rdp": smb.parse_rdp,
}
# The parsers and the detection function the inspector runs: compiled
# where a compiled one exists.
PARSERS = dict(REFERENCE_PARSERS)
detect_flow_protocol = detect_protocol
if compiled is not None:
    PARSERS["dns"] = compiled.parse_dns
    PARSERS["http"] = compiled.parse_http
    PARSERS["tls"] = compiled.parse_tls
    PARSERS["mqtt"] = compiled.parse_mqtt
    PARSERS["hl7"] = compiled.parse_hl7
    PARSERS["dicom"] = compiled.parse_dicom
    PARSERS["kerberos"] = compiled.parse_kerberos
    detect_flow_protocol = compiled.detect_protocol


def format_address(raw: bytes, ip_version: int) -> str:
    """Return the text form of a 16-byte ww_packet address."""
    if ip_version == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw[:16])


NO_MAC = bytes(6)


def format_mac(raw: bytes) -> str:
    """Return aa:bb:cc:dd:ee:ff, or "" for the all-zero address (no Ethernet)."""
    if raw == NO_MAC:
        return ""
    return raw.hex(":")


# Flag names of every value of the 6 stream flag bits, built once because
# each result needs two of them.
_FLAG_NAMES_BY_VALUE = [
    tuple(name for bit, name in STREAM_FLAG_NAMES.items() if value & bit) for value in range(64)
]


def _flag_names(bits: int) -> list[str]:
    return list(_FLAG_NAMES_BY_VALUE[bits & 0x3F])


def parse_streams(protocol: str, initiator: bytes, responder: bytes, is_udp: bool = False) -> tuple[dict, str]:
    """Run one protocol's parser; return (fields, outcome) where outcome is ok/truncated/malformed."""
    fields: dict = {}
    parser = PARSERS.get(protocol)
    if parser is None:
        return fields, "ok"
    if protocol == "kerberos" and is_udp:
        parser = _parse_kerberos_udp
    try:
        parser(initiator, responder, fields)
    except Truncated:
        return fields, "truncated"
    except Malformed:
        return fields, "malformed"
    return fields, "ok"


class Inspector:
    """Application-layer inspection of packet batches, one result per flow.

    NOTE: the SMB, LDAP, RDP, SSH and line-protocol parsers and the result
    records are still Python, at 3 to 25 us per flow on a 2-core x86_64
    (bench/inspection.py). A mix of short flows keeps inspection above the
    30% budget.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, stream_cap: int = DEFAULT_STREAM_CAP,
                 idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S):
        if idle_timeout_s <= 0:
            raise ValueError(f"invalid idle_timeout_s {idle_timeout_s}; expected a positive number of seconds")
        self.table = StreamTable(capacity, stream_cap)
        self.idle_timeout_ns = int(idle_timeout_s * 1e9)
        self._table_full_logged = 0
        self._last_warning = float("-inf")
        self.outcomes: Counter[str] = Counter()  # "<protocol>_<outcome>" -> flows

    def process(self, packets: np.ndarray, data: np.ndarray) -> list[FlowInspection]:
        """Capture a batch and return results for flows that became ready or went idle."""
        self.table.update(packets, data)
        if len(packets):
            self.table.expire_idle(self.table.batch_max_ts_ns, self.idle_timeout_ns)
        self._warn_when_full()
        return self._take()

    def _warn_when_full(self) -> None:
        skipped = int(self.table.counters_array[TABLE_FULL_COUNTER])
        now = time.monotonic()
        if skipped == self._table_full_logged or now - self._last_warning < WARNING_INTERVAL_S:
            return
        log.warning(
            "inspection table full (%d flows tracked at most): %d flows not inspected so far; "
            "raise capacity or lower idle_timeout_s",
            self.table.max_tracked,
            skipped,
        )
        self._table_full_logged = skipped
        self._last_warning = now

    def end_flows(self, flow_ids: Iterable[int]) -> list[FlowInspection]:
        """Return results for flows the flow table has ended, and free their slots."""
        ids = np.ascontiguousarray(np.fromiter(flow_ids, dtype=np.uint64))
        self.table.end_flows(ids)
        return self._take()

    def flush(self) -> list[FlowInspection]:
        """Return results for every flow still tracked (end of capture)."""
        self.table.end_all()
        return self._take()

    def counters(self) -> dict[str, int]:
        """Return the stream table counters and the per-protocol parse outcomes."""
        values = self.table.counters_dict()
        values.update(self.outcomes)
        return values

    def _take(self) -> list[FlowInspection]:
        results = []
        for record, initiator, responder in self.table.take_ready():
            results.append(self._inspect(record, initiator, responder))
        return results

    def _inspect(self, record: dict, initiator: bytes, responder: bytes) -> FlowInspection:
        ip_proto = record["ip_proto"]
        ip_version = record["ip_version"]
        initiator_port = record["initiator_port"]
        responder_port = record["responder_port"]
        protocol = detect_flow_protocol(initiator, responder, ip_proto, initiator_port, responder_port)
        fields, outcome = parse_streams(protocol, initiator, responder, ip_proto == IP_PROTO_UDP)
        if protocol:
            self.outcomes[f"{protocol}_{outcome}"] += 1
            if outcome != "ok":
                log.debug("%s parse of flow %d ended %s", protocol, record["flow_id"], outcome)
        result = FlowInspection(
            flow_id=record["flow_id"],
            protocol=protocol,
            transport="udp" if ip_proto == IP_PROTO_UDP else "tcp",
            initiator_ip=format_address(record["initiator_addr"], ip_version),
            responder_ip=format_address(record["responder_addr"], ip_version),
            initiator_port=initiator_port,
            responder_port=responder_port,
            initiator_mac=format_mac(record["initiator_mac"]),
            responder_mac=format_mac(record["responder_mac"]),
            first_seen=record["first_ts_ns"] / 1e9,
            last_seen=record["last_ts_ns"] / 1e9,
            initiator_packets=record["packets"][0],
            responder_packets=record["packets"][1],
            initiator_bytes=record["wire_bytes"][0],
            responder_bytes=record["wire_bytes"][1],
            fields=fields,
            outcome=outcome,
            stream_flags=(_flag_names(record["stream_flags"][0]), _flag_names(record["stream_flags"][1])),
        )
        result.logins = _login_events(result)
        return result


# LoginRecord.method of each protocol whose login uses one method.
LOGIN_METHODS = {
    "ftp": "password", "telnet": "password", "pop3": "password", "imap": "password",
    "http": "basic", "kerberos": "kerberos", "mqtt": "password",
}
OUTCOME_BY_PARSER = {"success": SUCCESS, "failure": FAILURE, "unknown": INFO}


def _split_user(protocol: str, user: str | None, fields: dict) -> tuple[str | None, str | None]:
    """Return (user, domain) from a protocol's user name form."""
    if not user:
        return None, None
    if protocol == "ldap" and "=" in user:
        # A bind DN: the first RDN value names the account, DC= parts the domain.
        parts = [p.strip() for p in user.split(",")]
        account = parts[0].split("=", 1)[1] if "=" in parts[0] else parts[0]
        domain = ".".join(p.split("=", 1)[1] for p in parts if p[:3].upper() == "DC=") or None
        return account, domain
    if "@" in user:
        account, _, domain = user.partition("@")
        return account, domain
    if protocol == "kerberos":
        realms = [r["realm"] for r in fields.get("requests", []) if r.get("realm")]
        return user, realms[0] if realms else None
    return user, None


def _login_events(result: FlowInspection) -> list[LoginRecord]:
    pairs = result.fields.pop("_logins", [])
    username = result.fields.pop("_username", None)
    fields = result.fields
    if not pairs and result.protocol != "mqtt":
        # DNS, TLS, HL7, DICOM and unrecognised flows carry no login.
        return []

    if result.protocol == "mqtt" and fields.get("packets", {}).get("CONNECT"):
        code = fields.get("connack_code")
        if code is None:
            outcome = "unknown"
        elif code == 0:
            outcome = "success"
        else:
            outcome = "failure"
        pairs = [(username, outcome)]
    method = LOGIN_METHODS.get(result.protocol)
    if result.protocol == "ldap":
        methods = {b.get("auth", "") for b in fields.get("binds", [])}
        method = "simple" if methods == {"simple"} else None
    if result.protocol == "mqtt" and not fields.get("password_present"):
        method = None
    unknown_principal = any(e["error_code"] == 6 for e in fields.get("errors", []))
    records = []
    for user, outcome in pairs:
        account, domain = _split_user(result.protocol, user, fields)
        records.append(LoginRecord(
            ts=result.first_seen,
            outcome=OUTCOME_BY_PARSER[outcome],
            source=SOURCE_TRAFFIC,
            user=account,
            domain=domain,
            action="kerberos_tgt" if result.protocol == "kerberos" else "logon",
            service=result.protocol,
            method=method,
            src_ip=result.initiator_ip,
            src_port=result.initiator_port,
            dst_ip=result.responder_ip,
            dst_port=result.responder_port,
            src_host=fields.get("client_name") if result.protocol == "rdp" else None,
            invalid_user=result.protocol == "kerberos" and unknown_principal,
            origin=f"flow:{result.flow_id}",
            flow_id=result.flow_id,
            protocol=result.protocol,
        ))
    return records

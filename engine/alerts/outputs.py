"""SIEM outputs: EVE/ECS JSON lines and CEF over syslog.

EVE: one JSON object per line with the field names of Suricata's EVE alert
records (event_type, src_ip, dest_ip, alert.signature, ...). The same object
also has Elastic Common Schema fields (ecs.version, event.*, source.*,
destination.*, threat.*), so Suricata pipelines and ECS ingest both find
their fields. The mapping is documented in docs/alerts.md.

CEF: ArcSight Common Event Format revision 0 ("CEF:0|vendor|product|version|
signature id|name|severity|extensions"), sent as the MSG part of a syslog
message framed per RFC 5424 or RFC 3164, over UDP (one message per datagram)
or TCP with octet counting (RFC 6587 section 3.4.1: "LENGTH SP MESSAGE").
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import socket
import time
from typing import Any

from engine import __version__
from engine.alerts.config import parse_syslog_target
from engine.alerts.schema import Alert, attack_techniques
from engine.taxonomy import severity_rank

logger = logging.getLogger(__name__)

ECS_VERSION = "8.11.0"
VENDOR = "WardWatch"
PRODUCT = "WardWatch"

# Suricata alert.severity: 1 is the most severe (a rule's priority).
SURICATA_SEVERITY = {"critical": 1, "high": 1, "medium": 2, "low": 3, "info": 4}
# CEF severity is 0..10, 10 most severe.
CEF_SEVERITY = {"info": 1, "low": 3, "medium": 5, "high": 8, "critical": 10}
# Syslog severity (RFC 5424 section 6.2.1): 2 crit, 3 err, 4 warning, 5 notice, 6 info.
SYSLOG_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
# ECS event.severity is numeric and source-defined: the rank in SEVERITIES.

# Alert.protocol is a transport or an application protocol. EVE and CEF
# consumers expect the transport in "proto", so the application protocol
# goes to app_proto (CEF: app) and its transport is filled in where it has
# only one.
TRANSPORT_PROTOCOLS = frozenset({"tcp", "udp", "icmp", "icmpv6", "sctp"})
APPLICATION_TRANSPORTS = {
    "hl7": "tcp", "dicom": "tcp", "mqtt": "tcp", "http": "tcp", "tls": "tcp", "ssl": "tcp",
    "ssh": "tcp", "smb": "tcp", "ftp": "tcp", "telnet": "tcp", "rdp": "tcp", "pop3": "tcp",
    "imap": "tcp", "smtp": "tcp", "modbus": "tcp", "s7comm": "tcp",
}


def split_protocol(protocol: str | None) -> tuple[str | None, str | None]:
    """Return (transport, application protocol) of Alert.protocol, each lower case or None.

    An IP protocol number ("47") is a transport. A transport is None when
    the application protocol runs over more than one (dns, ldap, kerberos)
    or is not an IP protocol (arp).
    """
    if not protocol:
        return None, None
    name = protocol.lower()
    if name in TRANSPORT_PROTOCOLS or name.isdigit():
        return name, None
    if name == "arp":
        return None, None
    return APPLICATION_TRANSPORTS.get(name), name


def _iso_timestamp(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "+0000"


def _ecs_timestamp(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _drop_none(mapping: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if value is not None and value != {}}


def eve_record(alert: Alert) -> dict[str, Any]:
    """Return the EVE/ECS JSON object of one alert publication."""
    technique = attack_techniques().get(alert.technique) if alert.technique else None
    transport, application = split_protocol(alert.protocol)
    record = {
        # Suricata EVE alert fields.
        "timestamp": _iso_timestamp(alert.last_seen),
        "flow_id": alert.flow_ids[0] if alert.flow_ids else None,
        "event_type": "alert",
        "src_ip": alert.src.ip,
        "src_port": alert.src.port,
        "dest_ip": alert.dst.ip,
        "dest_port": alert.dst.port,
        "proto": transport.upper() if transport else None,
        "app_proto": application,
        "community_id": alert.community_id,
        "alert": _drop_none({
            "action": "allowed",  # WardWatch watches a mirror port and blocks nothing itself
            "signature": alert.summary,
            "signature_id": None,
            "rev": alert.revision,
            "category": alert.category,
            "severity": SURICATA_SEVERITY[alert.severity],
            "metadata": {"mitre_technique_id": [alert.technique]} if alert.technique else None,
        }),
        # ECS fields.
        "@timestamp": _ecs_timestamp(alert.last_seen),
        "ecs": {"version": ECS_VERSION},
        "event": _drop_none({
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "type": ["info"],
            "severity": severity_rank(alert.severity),
            "start": _ecs_timestamp(alert.first_seen),
            "end": _ecs_timestamp(alert.last_seen),
            "id": alert.id,
            "sequence": alert.seq,
            "count": alert.count,
            "risk_score": alert.model_score,
            "dataset": "wardwatch.alert",
            "module": "wardwatch",
        }),
        "source": _drop_none({"ip": alert.src.ip, "port": alert.src.port, "mac": alert.src.mac,
                              "user": {"name": alert.src.user} if alert.src.user else None}),
        "destination": _drop_none({"ip": alert.dst.ip, "port": alert.dst.port, "mac": alert.dst.mac,
                                   "user": {"name": alert.dst.user} if alert.dst.user else None}),
        "network": _drop_none({"transport": transport, "protocol": application,
                               "community_id": alert.community_id}),
        "rule": {"name": alert.category, "category": alert.kind},
        "message": alert.summary,
        "observer": {"name": alert.sensor_id, "type": "ids", "vendor": VENDOR, "product": PRODUCT},
        "threat": _drop_none({
            "framework": "MITRE ATT&CK" if alert.technique else None,
            "technique": _drop_none({
                "id": [alert.technique] if alert.technique else None,
                "name": [technique.name] if technique else None,
            }),
            "tactic": {"name": list(technique.tactics)} if technique else None,
        }),
        # Everything else of the WardWatch schema, under its own name.
        "wardwatch": _drop_none({
            "id": alert.id,
            "seq": alert.seq,
            "sensor_id": alert.sensor_id,
            "revision": alert.revision,
            "state": alert.state,
            "kind": alert.kind,
            "count": alert.count,
            "distinct_sources": alert.distinct_sources,
            "distinct_targets": alert.distinct_targets,
            "model_class": alert.model_class,
            "model_score": alert.model_score,
            "anomaly_score": alert.anomaly_score,
            "top_features": [vars(c) for c in alert.top_features] or None,
            "recommended_action": alert.recommended_action or None,
            "src_asset": alert.src.asset,
            "dest_asset": alert.dst.asset,
            "evidence": alert.evidence or None,
            "schema_version": alert.schema_version,
        }),
    }
    return _drop_none(record)


class EveWriter:
    """Append EVE/ECS JSON lines to a file, one per publication, flushed per line."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._file = open(path, "a", encoding="utf-8")
        except OSError as error:
            raise OSError(f"cannot open EVE output {path}: {error.strerror}; check the path") from error

    def write(self, alert: Alert) -> None:
        # Flushed per line so `tail -f` and log shippers see each alert at
        # once; alerts are few after aggregation.
        try:
            self._file.write(json.dumps(eve_record(alert), separators=(",", ":"), sort_keys=False) + "\n")
            self._file.flush()
        except OSError as error:
            # A file object's write error names no file; the message should.
            raise OSError(error.errno, error.strerror, self.path) from error

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as error:
            raise OSError(error.errno, error.strerror, self.path) from error


def _cef_header_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _cef_value_escape(text: str) -> str:
    return (
        text.replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n")
    )


def _is_ipv6(address: str) -> bool:
    return ":" in address


def cef_message(alert: Alert) -> str:
    """Return the CEF:0 text of one alert publication."""
    transport, application = split_protocol(alert.protocol)
    extensions: list[tuple[str, Any]] = [
        ("rt", int(alert.last_seen * 1000)),
        ("start", int(alert.first_seen * 1000)),
        ("end", int(alert.last_seen * 1000)),
        ("cnt", alert.count),
        ("cat", alert.category),
        ("externalId", alert.id),
        ("dvchost", alert.sensor_id),
        ("proto", transport.upper() if transport else None),
        ("app", application),
        ("msg", alert.summary),
        ("cs1Label", "mitreTechniqueId" if alert.technique else None),
        ("cs1", alert.technique),
        ("cs2Label", "communityId" if alert.community_id else None),
        ("cs2", alert.community_id),
        ("cs3Label", "recommendedAction" if alert.recommended_action else None),
        ("cs3", alert.recommended_action or None),
        ("cn1Label", "seq"),
        ("cn1", alert.seq),
        ("cn2Label", "revision"),
        ("cn2", alert.revision),
        ("spt", alert.src.port),
        ("dpt", alert.dst.port),
        ("smac", alert.src.mac),
        ("dmac", alert.dst.mac),
        ("suser", alert.src.user),
        ("duser", alert.dst.user),
    ]
    # CEF keeps src/dst for IPv4; IPv6 addresses go in the c6a2 (source) and
    # c6a3 (destination) custom address fields.
    if alert.src.ip:
        if _is_ipv6(alert.src.ip):
            extensions += [("c6a2", alert.src.ip), ("c6a2Label", "sourceIPv6Address")]
        else:
            extensions.append(("src", alert.src.ip))
    if alert.dst.ip:
        if _is_ipv6(alert.dst.ip):
            extensions += [("c6a3", alert.dst.ip), ("c6a3Label", "destinationIPv6Address")]
        else:
            extensions.append(("dst", alert.dst.ip))
    header = "|".join(
        _cef_header_escape(str(part))
        for part in (VENDOR, PRODUCT, __version__, alert.category, alert.summary, CEF_SEVERITY[alert.severity])
    )
    body = " ".join(f"{key}={_cef_value_escape(str(value))}" for key, value in extensions if value is not None)
    return f"CEF:0|{header}|{body}"


def syslog_frame(message: str, severity: str, facility: int, fmt: str, hostname: str,
                 timestamp: float | None = None) -> bytes:
    """Wrap `message` in an RFC 5424 or RFC 3164 syslog header."""
    priority = facility * 8 + SYSLOG_SEVERITY[severity]
    # HOSTNAME is printable US-ASCII without spaces in both RFCs, and "-"
    # stands for an unknown host in RFC 5424.
    hostname = "".join(c for c in hostname if 33 <= ord(c) <= 126)[:255] or "-"
    seconds = time.time() if timestamp is None else timestamp
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    if fmt == "rfc5424":
        stamp = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        # VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP STRUCTURED-DATA SP MSG
        return f"<{priority}>1 {stamp} {hostname} wardwatch - alert - {message}".encode("utf-8")
    # RFC 3164: "Mmm dd hh:mm:ss" with the day padded by a space, local to the
    # sender; UTC here. The month names are fixed English abbreviations.
    month = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")[moment.month - 1]
    stamp = f"{month} {moment.day:2d} {moment:%H:%M:%S}"
    return f"<{priority}>{stamp} {hostname} wardwatch: {message}".encode("utf-8")


class SyslogSender:
    """Send CEF alerts to a syslog collector over UDP or TCP (octet counting).

    Send failures are counted and logged, never raised, so an unreachable
    collector cannot stop detection. A broken connection is reopened on the
    next message. After a failed connect, the next attempt waits
    `reconnect_interval_s`, and messages in between are dropped. Every
    message not handed to the collector counts in `dropped`. The first
    failed connect is logged as a warning and later ones at debug level,
    until a connect succeeds.

    NOTE: over TCP, a message sent just after the collector closed the
    connection can be lost without an error, because the kernel reports the
    reset only on a later send.
    """

    def __init__(self, target: str, fmt: str = "rfc5424", facility: int = 16,
                 hostname: str | None = None, reconnect_interval_s: float = 5.0):
        self.transport, self.host, self.port = parse_syslog_target(target)
        self.target = target
        self.fmt = fmt
        self.facility = facility
        self.hostname = hostname or socket.gethostname() or "-"
        self.reconnect_interval_s = reconnect_interval_s
        self._socket: socket.socket | None = None
        self._next_connect_at = 0.0
        # True from a failed connect until the next successful one, so
        # the failure is logged once per outage.
        self._failing = False
        self._dropped_before_outage = 0
        self.counters = collections.Counter()

    def _open(self) -> socket.socket | None:
        if self._socket is not None:
            return self._socket
        if time.monotonic() < self._next_connect_at:
            return None
        kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
        try:
            info = socket.getaddrinfo(self.host, self.port, type=kind)[0]
            sock = socket.socket(info[0], kind)
            sock.settimeout(2.0)
            sock.connect(info[4])
        except OSError as error:
            self._next_connect_at = time.monotonic() + self.reconnect_interval_s
            self.counters["connect_failed"] += 1
            if self._failing:
                logger.debug("cannot connect to syslog target %s: %s", self.target, error)
            else:
                logger.warning("cannot connect to syslog target %s: %s; CEF messages are dropped until it"
                               " accepts connections (next try in %.0f s)",
                               self.target, error, self.reconnect_interval_s)
                self._failing = True
                self._dropped_before_outage = self.counters["dropped"]
            return None
        if self._failing:
            logger.warning("connected to syslog target %s; %d CEF messages were dropped while it was unreachable",
                           self.target, self.counters["dropped"] - self._dropped_before_outage)
            self._failing = False
        self._socket = sock
        return sock

    def send(self, alert: Alert) -> bool:
        frame = syslog_frame(cef_message(alert), alert.severity, self.facility, self.fmt, self.hostname)
        if self.transport == "tcp":
            frame = str(len(frame)).encode("ascii") + b" " + frame
        sock = self._open()
        if sock is None:
            self.counters["dropped"] += 1
            return False
        try:
            if self.transport == "udp":
                sock.send(frame)
            else:
                sock.sendall(frame)
        except OSError as error:
            self.counters["send_failed"] += 1
            self.counters["dropped"] += 1
            if self.counters["send_failed"] <= 10 or self.counters["send_failed"] % 1000 == 0:
                logger.warning("syslog send to %s failed: %s (%d failures so far)",
                               self.target, error, self.counters["send_failed"])
            sock.close()
            self._socket = None
            return False
        self.counters["sent"] += 1
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

"""Result record of inspection: one FlowInspection per flow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.logins.records import LoginRecord


@dataclass
class FlowInspection:
    """Inspection result of the first bytes of one flow.

    Field meanings are documented in docs/inspect.md.
    """

    flow_id: int
    protocol: str  # detected application protocol, "" when none matched
    transport: str  # "tcp" or "udp"
    initiator_ip: str
    responder_ip: str
    initiator_port: int
    responder_port: int
    initiator_mac: str  # "" without Ethernet
    responder_mac: str
    first_seen: float  # seconds since the epoch
    last_seen: float
    initiator_packets: int
    responder_packets: int
    initiator_bytes: int  # L4 payload bytes on the wire
    responder_bytes: int
    fields: dict[str, Any] = field(default_factory=dict)
    outcome: str = "ok"  # "ok", "truncated" or "malformed"
    stream_flags: tuple[list[str], list[str]] = field(default_factory=lambda: ([], []))
    logins: list[LoginRecord] = field(default_factory=list)  # source "traffic"

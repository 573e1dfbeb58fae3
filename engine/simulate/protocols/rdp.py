"""RDP connection start: TPKT (RFC 1006) + X.224 with RDP negotiation ([MS-RDPBCGR] 2.2.1.1-2).

The client requests TLS or CredSSP. After the Connection Confirm both sides
switch to TLS, which the builder emits with the TLS module.
"""

from __future__ import annotations

import struct

RDP_PORT = 3389
PROTOCOL_SSL = 0x00000001
PROTOCOL_HYBRID = 0x00000002


def _tpkt(body: bytes) -> bytes:
    return struct.pack(">BBH", 3, 0, len(body) + 4) + body


def connection_request(user: str) -> bytes:
    cookie = f"Cookie: mstshash={user}\r\n".encode("ascii")
    negotiation = struct.pack("<BBHI", 0x01, 0, 8, PROTOCOL_SSL | PROTOCOL_HYBRID)
    # X.224 CR TPDU: length indicator, code 0xE0, dst-ref 0, src-ref 0, class 0.
    variable = cookie + negotiation
    return _tpkt(bytes([6 + len(variable), 0xE0, 0, 0, 0, 0, 0]) + variable)


def connection_confirm(selected: int = PROTOCOL_HYBRID) -> bytes:
    negotiation = struct.pack("<BBHI", 0x02, 0x1F, 8, selected)
    return _tpkt(bytes([6 + len(negotiation), 0xD0, 0, 0, 0x12, 0x34, 0]) + negotiation)

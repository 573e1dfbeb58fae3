"""TLS handshake parser: versions, SNI, cipher suites, ALPN, JA3 and JA3S.

Reads the ClientHello from the initiator stream and the ServerHello from
the responder stream (RFC 8446 section 4.1, RFC 5246 section 7.4.1).
Handshake messages that span several records are joined before parsing.
"""

from __future__ import annotations

import hashlib

from engine.inspect.wire import HOST_WIDTH, MAX_ITEMS, NAME_WIDTH, Malformed, Reader, Truncated, clean_text

CONTENT_CHANGE_CIPHER_SPEC = 20
CONTENT_HANDSHAKE = 22
CONTENT_HEARTBEAT = 24  # RFC 6520
HANDSHAKE_CLIENT_HELLO = 1
HANDSHAKE_SERVER_HELLO = 2
EXT_SERVER_NAME = 0
EXT_SUPPORTED_GROUPS = 10
EXT_EC_POINT_FORMATS = 11
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
MAX_HANDSHAKE_BYTES = 16384
# Record headers read per direction when looking for heartbeat records.
MAX_TLS_RECORDS = 64

TLS_VERSION_NAMES = {
    0x0300: "SSL 3.0",
    0x0301: "TLS 1.0",
    0x0302: "TLS 1.1",
    0x0303: "TLS 1.2",
    0x0304: "TLS 1.3",
}
# Suites with NULL or export-grade encryption, RC4, single DES, 3DES or no
# authentication (anon), by code point from the IANA TLS Cipher Suites registry.
WEAK_CIPHER_SUITES = frozenset({
    0x0000, 0x0001, 0x0002, 0x0003, 0x0004, 0x0005, 0x0006, 0x0008, 0x0009,
    0x000A, 0x000B, 0x000C, 0x000D, 0x000E, 0x000F, 0x0010, 0x0011, 0x0012,
    0x0013, 0x0014, 0x0015, 0x0016, 0x0017, 0x0018, 0x0019, 0x001A, 0x001B,
    0x002C, 0x002D, 0x002E, 0x0034, 0x003A, 0x003B, 0x006C, 0x006D, 0x008A,
    0x008B, 0x008E, 0x008F, 0x0092, 0x0093, 0xC001, 0xC002, 0xC003, 0xC006,
    0xC007, 0xC008, 0xC00B, 0xC00C, 0xC00D, 0xC010, 0xC011, 0xC012, 0xC015,
    0xC016, 0xC017, 0xC018, 0xC019, 0xC01A, 0xC01B, 0xC01C,
})


def is_grease(value: int) -> bool:
    """Return True for a GREASE value (RFC 8701), which fingerprints skip."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def looks_like_tls(stream: bytes) -> bool:
    """Return True when a stream starts with a TLS handshake record or an SSLv2-format ClientHello."""
    if _is_sslv2_client_hello(stream):
        return True
    return (
        len(stream) >= 6
        and stream[0] == CONTENT_HANDSHAKE
        and stream[1] == 3
        and stream[2] <= 4
        and stream[5] in (HANDSHAKE_CLIENT_HELLO, HANDSHAKE_SERVER_HELLO)
    )


def _is_sslv2_client_hello(stream: bytes) -> bool:
    # Two-byte SSLv2 record header with the high bit set, message type 1
    # (CLIENT-HELLO) and a version of SSL 3.0 or later (RFC 5246 appendix E.2).
    return len(stream) >= 5 and stream[0] & 0x80 and stream[2] == 1 and stream[3] == 3


def _parse_sslv2_client_hello(stream: bytes, fields: dict) -> bool:
    """Parse an SSLv2-format ClientHello; return True if the capture cut it."""
    reader = Reader(stream)
    length = reader.u16() & 0x7FFF
    cut = length > reader.remaining
    body = Reader(reader.take(min(length, reader.remaining)))
    body.skip(1)
    version = body.u16()
    cipher_length = body.u16()
    body.skip(4)
    specs = body.take(min(cipher_length, body.remaining))
    # Three-byte cipher specs whose first byte is 0 carry a TLS suite code.
    suites = [int.from_bytes(specs[i + 1 : i + 3], "big") for i in range(0, len(specs) - 2, 3) if specs[i] == 0]
    fields["client_hello_format"] = "sslv2"
    fields["client_hello_version"] = _version_name(version)
    fields["client_versions"] = [_version_name(version)]
    fields["client_cipher_suites"] = suites[: 4 * MAX_ITEMS]
    fields["client_weak_suites"] = sorted({s for s in suites if s in WEAK_CIPHER_SUITES})
    return cut or len(specs) < cipher_length


def _handshake_bytes(stream: bytes) -> tuple[bytes, bool]:
    """Join the handshake record payloads at the start of a stream."""
    reader = Reader(stream)
    joined = bytearray()
    while reader.remaining >= 5 and len(joined) < MAX_HANDSHAKE_BYTES:
        content_type = reader.u8()
        reader.skip(2)
        length = reader.u16()
        if content_type != CONTENT_HANDSHAKE:
            break
        if length > reader.remaining:
            joined += reader.take(reader.remaining)
            return bytes(joined), True
        joined += reader.take(length)
    return bytes(joined), False


def _version_name(version: int) -> str:
    return TLS_VERSION_NAMES.get(version, f"0x{version:04x}")


def _parse_extensions(reader: Reader, is_client: bool, fields: dict) -> list[int]:
    types = []
    if not reader.remaining:
        return types
    extensions = reader.sub(reader.u16())
    while extensions.remaining:
        ext_type = extensions.u16()
        body = extensions.sub(extensions.u16())
        types.append(ext_type)
        if ext_type == EXT_SERVER_NAME and is_client and body.remaining:
            names = body.sub(body.u16())
            while names.remaining:
                name_type = names.u8()
                name = names.take(names.u16())
                if name_type == 0:
                    fields["sni"] = clean_text(name, HOST_WIDTH)
        elif ext_type == EXT_SUPPORTED_GROUPS and is_client:
            groups = body.sub(body.u16())
            fields["_groups"] = [groups.u16() for _ in range(groups.remaining // 2)]
        elif ext_type == EXT_EC_POINT_FORMATS and is_client:
            formats = body.sub(body.u8())
            fields["_point_formats"] = list(formats.take(formats.remaining))
        elif ext_type == EXT_ALPN and body.remaining:
            protocols = body.sub(body.u16())
            names = []
            while protocols.remaining and len(names) < MAX_ITEMS:
                names.append(clean_text(protocols.take(protocols.u8()), NAME_WIDTH))
            fields["client_alpn" if is_client else "server_alpn"] = names
        elif ext_type == EXT_SUPPORTED_VERSIONS:
            if is_client:
                versions = body.sub(body.u8())
                offered = [versions.u16() for _ in range(versions.remaining // 2)]
                fields["client_versions"] = [_version_name(v) for v in offered if not is_grease(v)]
            else:
                fields["_selected_version"] = body.u16()
    return types


def _parse_client_hello(body: Reader, fields: dict) -> None:
    legacy_version = body.u16()
    fields["client_hello_version"] = _version_name(legacy_version)
    body.skip(32)
    body.skip(body.u8())
    suites_reader = body.sub(body.u16())
    suites = [suites_reader.u16() for _ in range(suites_reader.remaining // 2)]
    fields["client_cipher_suites"] = [s for s in suites if not is_grease(s)][: 4 * MAX_ITEMS]
    fields["client_weak_suites"] = sorted({s for s in suites if s in WEAK_CIPHER_SUITES})
    body.skip(body.u8())
    extension_types = _parse_extensions(body, True, fields)
    fields.setdefault("client_versions", [_version_name(legacy_version)])
    ja3_fields = [
        str(legacy_version),
        "-".join(str(s) for s in suites if not is_grease(s)),
        "-".join(str(e) for e in extension_types if not is_grease(e)),
        "-".join(str(g) for g in fields.pop("_groups", []) if not is_grease(g)),
        "-".join(str(p) for p in fields.pop("_point_formats", [])),
    ]
    fields["ja3"] = ",".join(ja3_fields)
    fields["ja3_md5"] = hashlib.md5(fields["ja3"].encode(), usedforsecurity=False).hexdigest()


def _parse_server_hello(body: Reader, fields: dict) -> None:
    legacy_version = body.u16()
    body.skip(32)
    body.skip(body.u8())
    suite = body.u16()
    body.skip(1)
    fields["cipher_suite"] = suite
    fields["weak_cipher_suite"] = suite in WEAK_CIPHER_SUITES
    extension_types = _parse_extensions(body, False, fields)
    chosen = fields.pop("_selected_version", legacy_version)
    fields["version"] = _version_name(chosen)
    fields["version_code"] = chosen
    ja3s = f"{legacy_version},{suite}," + "-".join(str(e) for e in extension_types)
    fields["ja3s_md5"] = hashlib.md5(ja3s.encode(), usedforsecurity=False).hexdigest()


def _first_handshake(stream: bytes, wanted: int) -> tuple[Reader | None, bool]:
    joined, cut = _handshake_bytes(stream)
    reader = Reader(joined)
    if reader.remaining < 4:
        return None, cut or bool(stream)
    handshake_type = reader.u8()
    length = reader.u24()
    if handshake_type != wanted:
        raise Malformed(f"TLS handshake type {handshake_type}, expected {wanted}")
    if length > reader.remaining:
        return Reader(reader.take(reader.remaining)), True
    return reader.sub(length), cut


def heartbeat_records(stream: bytes, direction: int) -> list[dict]:
    """Return the heartbeat records (RFC 6520) among the first records of one direction.

    Only record headers are read, jumping from one record to the next, up
    to MAX_TLS_RECORDS records or the first byte that cannot start a TLS
    record. After a ChangeCipherSpec the records are encrypted, so
    `message_type` and `payload_length` are None. They are also None when
    the capture ends before them.
    """
    records = []
    position = 0
    encrypted = False
    length = len(stream)
    for _ in range(MAX_TLS_RECORDS):
        if position + 5 > length or len(records) >= MAX_ITEMS:
            break
        content_type = stream[position]
        if not CONTENT_CHANGE_CIPHER_SPEC <= content_type <= CONTENT_HEARTBEAT or stream[position + 1] != 3:
            break
        record_length = int.from_bytes(stream[position + 3 : position + 5], "big")
        if content_type == CONTENT_CHANGE_CIPHER_SPEC:
            encrypted = True
        elif content_type == CONTENT_HEARTBEAT:
            readable = not encrypted and position + 8 <= length
            records.append({
                "direction": direction,
                "record_length": record_length,
                "message_type": stream[position + 5] if readable else None,
                "payload_length": int.from_bytes(stream[position + 6 : position + 8], "big") if readable else None,
            })
        position += 5 + record_length
    return records


def parse_tls(initiator: bytes, responder: bytes, fields: dict) -> None:
    """Fill `fields` from the ClientHello and ServerHello of one connection.

    `heartbeats` (only present when one is seen) lists the heartbeat
    records of both directions, from heartbeat_records().
    """
    heartbeats = heartbeat_records(initiator, 0) + heartbeat_records(responder, 1)
    if heartbeats:
        fields["heartbeats"] = heartbeats
    truncated = False
    if _is_sslv2_client_hello(initiator):
        truncated = _parse_sslv2_client_hello(initiator, fields)
        initiator = b""
    for stream, wanted, parse in (
        (initiator, HANDSHAKE_CLIENT_HELLO, _parse_client_hello),
        (responder, HANDSHAKE_SERVER_HELLO, _parse_server_hello),
    ):
        if not stream:
            continue
        body, cut = _first_handshake(stream, wanted)
        truncated = truncated or cut
        if body is None:
            continue
        try:
            parse(body, fields)
        except Truncated:
            truncated = True
    if truncated:
        raise Truncated("TLS hello cut by the capture or the stream cap")

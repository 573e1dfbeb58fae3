"""TLS 1.3 handshake records (RFC 8446) as they appear on the wire to a passive sensor.

Only ClientHello and ServerHello are cleartext in TLS 1.3. Everything after
them is application_data records, so the builder fills those with random
bytes of a realistic size.
"""

from __future__ import annotations

import struct

import numpy as np

TLS_AES_128_GCM_SHA256 = 0x1301
TLS_AES_256_GCM_SHA384 = 0x1302
TLS_CHACHA20_POLY1305_SHA256 = 0x1303
GROUP_X25519 = 0x001D
GROUP_SECP256R1 = 0x0017


def _u16(value: int) -> bytes:
    return struct.pack(">H", value)


def _extension(ext_type: int, body: bytes) -> bytes:
    return _u16(ext_type) + _u16(len(body)) + body


def _handshake(msg_type: int, body: bytes) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def record(content_type: int, body: bytes, version: int = 0x0303) -> bytes:
    return bytes([content_type]) + _u16(version) + _u16(len(body)) + body


def client_hello(rng: np.random.Generator, server_name: str, alpn: list[str] | None = None) -> bytes:
    """ClientHello record with SNI, groups, signature algorithms, versions and an x25519 key share."""
    name = server_name.encode("ascii")
    suites = [TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256, 0xC02B, 0xC02F]
    extensions = _extension(0x0000, _u16(len(name) + 3) + b"\x00" + _u16(len(name)) + name)
    extensions += _extension(0x000A, _u16(4) + _u16(GROUP_X25519) + _u16(GROUP_SECP256R1))
    extensions += _extension(0x000D, _u16(6) + _u16(0x0403) + _u16(0x0804) + _u16(0x0401))
    if alpn:
        names = b"".join(bytes([len(p)]) + p.encode() for p in alpn)
        extensions += _extension(0x0010, _u16(len(names)) + names)
    extensions += _extension(0x002B, b"\x04" + _u16(0x0304) + _u16(0x0303))
    extensions += _extension(0x002D, b"\x01\x01")
    key = rng.bytes(32)
    extensions += _extension(0x0033, _u16(36) + _u16(GROUP_X25519) + _u16(32) + key)
    body = (_u16(0x0303) + rng.bytes(32) + b"\x20" + rng.bytes(32)
            + _u16(2 * len(suites)) + b"".join(_u16(s) for s in suites)
            + b"\x01\x00" + _u16(len(extensions)) + extensions)
    return record(22, _handshake(1, body), version=0x0301)


def server_hello(rng: np.random.Generator, client_hello_record: bytes) -> bytes:
    """ServerHello echoing the client's session id, then a ChangeCipherSpec record."""
    session_id = client_hello_record[5 + 4 + 2 + 32 + 1:5 + 4 + 2 + 32 + 1 + 32]
    extensions = _extension(0x002B, _u16(0x0304))
    extensions += _extension(0x0033, _u16(GROUP_X25519) + _u16(32) + rng.bytes(32))
    body = (_u16(0x0303) + rng.bytes(32) + b"\x20" + session_id + _u16(TLS_AES_128_GCM_SHA256)
            + b"\x00" + _u16(len(extensions)) + extensions)
    return record(22, _handshake(2, body)) + record(20, b"\x01")


def application_data(rng: np.random.Generator, length: int) -> bytes:
    """Encrypted records carrying `length` bytes of ciphertext in total (16 KiB per record at most)."""
    out = []
    while length > 0:
        size = min(length, 16384)
        out.append(record(23, rng.bytes(size)))
        length -= size
    return b"".join(out)


def record_ends(data: bytes) -> list[int]:
    """Return the end offset of every TLS record in `data` (for per-frame counting)."""
    ends, offset = [], 0
    while offset + 5 <= len(data):
        offset += 5 + int.from_bytes(data[offset + 3:offset + 5], "big")
        ends.append(offset)
    return ends

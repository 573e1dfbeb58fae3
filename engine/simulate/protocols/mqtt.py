"""MQTT 3.1.1 control packets (OASIS MQTT 3.1.1, section 3)."""

from __future__ import annotations

import struct

MQTT_PORT = 1883


def _remaining_length(length: int) -> bytes:
    # Variable-length integer: 7 bits per byte, high bit set while more follow.
    out = bytearray()
    while True:
        byte = length % 128
        length //= 128
        if length:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _remaining_length(len(body)) + body


def connect(client_id: str, keepalive_s: int = 60, username: str | None = None,
            password: str | None = None) -> bytes:
    flags = 0x02  # clean session
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    return _packet(0x10, _string("MQTT") + bytes([4, flags]) + struct.pack(">H", keepalive_s) + payload)


def connack(return_code: int = 0) -> bytes:
    return _packet(0x20, bytes([0, return_code]))


def publish(topic: str, payload: bytes) -> bytes:
    """PUBLISH at QoS 0 (no packet identifier)."""
    return _packet(0x30, _string(topic) + payload)


def subscribe(packet_id: int, topic_filter: str, qos: int = 0) -> bytes:
    return _packet(0x82, struct.pack(">H", packet_id) + _string(topic_filter) + bytes([qos]))


def suback(packet_id: int, granted_qos: int = 0) -> bytes:
    return _packet(0x90, struct.pack(">H", packet_id) + bytes([granted_qos]))


def pingreq() -> bytes:
    return b"\xc0\x00"


def pingresp() -> bytes:
    return b"\xd0\x00"


def disconnect() -> bytes:
    return b"\xe0\x00"

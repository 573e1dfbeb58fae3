"""A minimal ASN.1 BER/DER encoder (ITU-T X.690) for Kerberos and LDAP messages."""

from __future__ import annotations


def length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + length(len(value)) + value


def integer(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True)
    return tlv(0x02, raw)


def enumerated(value: int) -> bytes:
    return tlv(0x0A, integer(value)[2:])


def boolean(value: bool) -> bytes:
    return tlv(0x01, b"\xff" if value else b"\x00")


def octets(value: bytes | str) -> bytes:
    return tlv(0x04, value.encode() if isinstance(value, str) else value)


def general_string(value: str) -> bytes:
    return tlv(0x1B, value.encode("ascii"))


def generalized_time(value: str) -> bytes:
    return tlv(0x18, value.encode("ascii"))


def bit_string(value: bytes) -> bytes:
    return tlv(0x03, b"\x00" + value)  # no unused bits


def sequence(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def set_of(*parts: bytes) -> bytes:
    return tlv(0x31, b"".join(parts))


def context(number: int, value: bytes) -> bytes:
    """Encode `value` under an explicit, constructed context tag [number]."""
    return tlv(0xA0 | number, value)


def application(number: int, value: bytes, constructed: bool = True) -> bytes:
    return tlv((0x60 if constructed else 0x40) | number, value)

"""Keyed-hash pseudonymisation of addresses and user names.

A pseudonym is HMAC-SHA256 under a secret key kept in a key file, so the same
value maps to the same pseudonym in every run with the same key. Without the
key a guess cannot be confirmed, whereas an unkeyed hash of an IPv4 address
is reversed by hashing all 2^32 addresses. Each kind of value has its own
domain label inside the HMAC input, so an address and a user name with the
same text get unrelated pseudonyms.

Pseudonyms keep the shape of what they replace, so SIEM fields typed as IP or
MAC still parse:
  - IP addresses (v4 and v6) become IPv6 addresses in 2001:db8::/32, the
    documentation prefix (RFC 3849) that no real network routes, carrying 96
    bits of the HMAC.
  - MAC addresses become locally administered unicast MACs (first octet with
    bit 1 set and bit 0 clear) carrying 46 bits of the HMAC.
  - User names, Community IDs and other strings become "p-" and 20 hex
    digits (80 bits).

The key file contains 32 random bytes as 64 hex digits on one line; create
one with `wardwatch keys generate --out DIR --pseudonymization-key`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from pathlib import Path

KEY_BYTES = 32
KEY_FILE_NAME = "pseudonymization.key"
DOCUMENTATION_PREFIX = ipaddress.IPv6Network("2001:db8::/32")


def generate_key_file(path: str | os.PathLike) -> Path:
    """Write a new random key to `path` with mode 0600; raise FileExistsError if it exists."""
    path = Path(path)
    # O_EXCL so a second `keys generate` never replaces a key whose
    # pseudonyms are already stored in alerts.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(KEY_BYTES) + "\n")
    return path


# Bytes read from a key file at most; a generated file has 2 * KEY_BYTES + 1.
MAX_KEY_FILE_BYTES = 4096


def load_key_file(path: str | os.PathLike) -> bytes:
    """Read a key written by generate_key_file; raise ValueError if it is malformed."""
    # A key file is one line of hex. The read is bounded because the path
    # may name a device such as /dev/zero.
    with open(path, "rb") as handle:
        content = handle.read(MAX_KEY_FILE_BYTES + 1)
    try:
        if len(content) > MAX_KEY_FILE_BYTES:
            raise ValueError("key file too long")
        key = bytes.fromhex(content.decode("ascii").strip())
    except ValueError:
        raise ValueError(
            f"invalid pseudonymization key file {path}: expected {KEY_BYTES * 2} hex digits;"
            " create one with `wardwatch keys generate --pseudonymization-key`"
        ) from None
    if len(key) < 16:
        raise ValueError(
            f"pseudonymization key in {path} has {len(key)} bytes; expected at least 16"
        )
    return key


class Pseudonymizer:
    """Map IP addresses, MAC addresses and user names to keyed pseudonyms."""

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError(f"pseudonymization key has {len(key)} bytes; expected at least 16")
        self._key = key

    @classmethod
    def from_key_file(cls, path: str | os.PathLike) -> Pseudonymizer:
        return cls(load_key_file(path))

    def _digest(self, domain: bytes, value: str) -> bytes:
        return hmac.new(self._key, domain + b"\x00" + value.encode("utf-8"), hashlib.sha256).digest()

    def ip(self, address: str | None) -> str | None:
        """Return the pseudonym of an IPv4 or IPv6 address, or None for None."""
        if address is None:
            return None
        try:
            # The canonical text form, so different spellings of one IPv6
            # address share a pseudonym.
            canonical = str(ipaddress.ip_address(address))
        except ValueError:
            return self.text(address)
        digest = self._digest(b"ip", canonical)
        host_bits = int.from_bytes(digest[:12], "big")
        return str(ipaddress.IPv6Address(int(DOCUMENTATION_PREFIX.network_address) | host_bits))

    def mac(self, address: str | None) -> str | None:
        """Return the pseudonym of a MAC address, or None for None."""
        if address is None:
            return None
        canonical = address.lower().replace("-", ":")
        octets = bytearray(self._digest(b"mac", canonical)[:6])
        octets[0] = (octets[0] | 0x02) & 0xFE  # locally administered, unicast
        return ":".join(f"{octet:02x}" for octet in octets)

    def text(self, value: str | None, domain: str = "user") -> str | None:
        """Return the pseudonym of a user name or other identifier, or None for None."""
        if value is None:
            return None
        return "p-" + self._digest(domain.encode("ascii"), value).hex()[:20]

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

Free text (alert summaries, evidence strings) is handled by scrub_text(),
which replaces every IPv4 address, IPv6 address and MAC address it finds
with the same pseudonym the structured fields get, so a sentence and the
fields beside it still name the same host.

The key file contains 32 random bytes as 64 hex digits on one line; create
one with `wardwatch keys generate --out DIR --pseudonymization-key`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from pathlib import Path
from typing import Any

KEY_BYTES = 32
KEY_FILE_NAME = "pseudonymization.key"
DOCUMENTATION_PREFIX = ipaddress.IPv6Network("2001:db8::/32")

# A run of the characters that IPv4, IPv6 and MAC addresses are written
# with, holding at least one separator, plus an optional IPv6 zone index
# ("%eth0"). scrub_text() looks at
# each run as a whole and then at its parts, so "10.0.0.1:443",
# "[fe80::1%eth0]" and tcpdump's "10.0.0.1.443" all lose their address.
_ADDRESS_RUN = re.compile(r"[0-9A-Fa-f]*[:.\-][0-9A-Fa-f:.\-]*(?:%[0-9A-Za-z_.\-]+)?")
_MAC_FORMS = re.compile(
    r"[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}"
)
_DOTTED_QUAD = re.compile(r"(?<![0-9])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9])")
_EDGE_PUNCTUATION = ".:-"
# Already a pseudonym from text(): "p-" and 20 hex digits.
_TEXT_PSEUDONYM = re.compile(r"p-[0-9a-f]{20}")


def generate_key_file(path: str | os.PathLike) -> Path:
    """Write a new random key to `path` with mode 0600; raise FileExistsError if it exists."""
    path = Path(path)
    # O_EXCL so a second `keys generate` never replaces a key whose
    # pseudonyms are already stored in alerts.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(KEY_BYTES) + "\n")
    return path


# Texts whose pseudonym (or non-address verdict) a Pseudonymizer keeps.
MAX_CACHED_PSEUDONYMS = 65_536

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
        # candidate text -> its pseudonym (None: not an address), so a
        # busy address is hashed once. Bounded by MAX_CACHED_PSEUDONYMS;
        # when full it is emptied (counter: cache_resets).
        self._address_cache: dict[str, str | None] = {}
        self.cache_resets = 0

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

    def hex_id(self, value: str, domain: str = "id") -> str:
        """Return 32 hex digits keyed on `value`: a stable replacement for an id derived from real addresses."""
        return self._digest(domain.encode("ascii"), value).hex()[:32]

    def scrub_text(self, text: str | None) -> str | None:
        """Return `text` with every IPv4, IPv6 and MAC address in it replaced by its pseudonym.

        Call it once on original text: the IPv6 pseudonyms it writes are
        addresses themselves and would be replaced again.
        """
        if not text:
            return text

        def replace(match: re.Match) -> str:
            replaced = self._scrub_run(match.group(0))
            # The host of a URL ("ldap://10.0.0.1/a"): an IPv6 address there
            # goes in brackets (RFC 3986 section 3.2.2), or the URL no longer parses.
            start = match.start()
            if (start >= 3 and text[start - 3:start] == "://" and ":" in replaced
                    and not replaced.startswith("[") and text[start - 1:start] != "["):
                return f"[{replaced}]"
            return replaced

        return _ADDRESS_RUN.sub(replace, text)

    def _scrub_run(self, run: str) -> str:
        replaced = self.address_pseudonym(run)
        if replaced is not None:
            return replaced
        # "10.0.0.1:" at the end of a clause, or "-10.0.0.1" after a word.
        core = run.strip(_EDGE_PUNCTUATION)
        if core and core != run:
            replaced = self.address_pseudonym(core)
            if replaced is not None:
                start = run.index(core)
                return run[:start] + replaced + run[start + len(core):]
        # "10.0.0.1:443" (IPv4 and port): the part before the last colon.
        head, colon, port = run.rpartition(":")
        if colon and port.isdigit() and "." in head and ":" not in head:
            replaced = self.address_pseudonym(head)
            if replaced is not None:
                # Brackets keep the IPv6 pseudonym apart from the port.
                return f"[{replaced}]{colon}{port}"
        # Runs joined by "-", such as "fe80::1-fe80::2" or a MAC next to an
        # address, are taken apart.
        if "-" in run and not _MAC_FORMS.fullmatch(run):
            return "-".join(self._scrub_run(part) if part else part for part in run.split("-"))
        # Last, any dotted quad inside the run ("10.0.0.1.443").
        return _DOTTED_QUAD.sub(lambda match: self.address_pseudonym(match.group(0)) or match.group(0), run)

    def address_pseudonym(self, candidate: str) -> str | None:
        """Return the pseudonym of `candidate` if it is one whole IP or MAC address, else None."""
        try:
            return self._address_cache[candidate]
        except KeyError:
            pass
        if len(self._address_cache) >= MAX_CACHED_PSEUDONYMS:
            self._address_cache.clear()
            self.cache_resets += 1
        pseudonym = self._address_cache[candidate] = self._parse_and_pseudonymize(candidate)
        return pseudonym

    def _parse_and_pseudonymize(self, candidate: str) -> str | None:
        if _MAC_FORMS.fullmatch(candidate):
            return self.mac(_colon_mac(candidate))
        if ":" not in candidate and candidate.count(".") != 3:
            return None
        address = candidate.partition("%")[0]
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return None
        return self.ip(address)

    def value(self, value: Any, domain: str | None = None) -> Any:
        """Return a copy of an evidence value with addresses, MACs and user names pseudonymised.

        A string that is one whole address or MAC gets that pseudonym, other
        strings go through scrub_text(), and lists and maps are handled
        element by element (map keys too). With a `domain`, as for values
        under a user-name key, every string becomes a text() pseudonym.
        Numbers, booleans and None are returned unchanged.
        """
        if isinstance(value, str):
            if domain is not None:
                return value if _TEXT_PSEUDONYM.fullmatch(value) else self.text(value, domain)
            whole = self.address_pseudonym(value.strip())
            return whole if whole is not None else self.scrub_text(value)
        if isinstance(value, (list, tuple)):
            return [self.value(item, domain) for item in value]
        if isinstance(value, dict):
            return {
                (self.scrub_text(key) if isinstance(key, str) else key): self.value(item, domain)
                for key, item in value.items()
            }
        return value


def _colon_mac(text: str) -> str:
    """Return a MAC in any of its three written forms as six colon-separated octets."""
    digits = re.sub(r"[^0-9A-Fa-f]", "", text).lower()
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))

"""Find Log4j 2 JNDI lookups (Log4Shell, CVE-2021-44228) in request text.

Log4j 2 before 2.15.0 replaces `${prefix:...}` lookups in logged text, and a
`${jndi:ldap://host/x}` lookup makes the JVM fetch and run code from that
host. Attackers hide the `jndi` keyword behind nested lookups that Log4j
resolves first, such as `${${lower:j}ndi:`, `${${::-j}${::-n}di:` or
`${${env:UNSET:-j}ndi:`, and behind URL encoding. This module resolves
those nested lookups the way Log4j does for the forms obfuscators use, so
the result shows the `jndi:` keyword that Log4j would act on.

The compiled HTTP parser (ext/inspect_parse.pyx) has the same rules and
limits. This module is its reference.
"""

from __future__ import annotations

import re

# Nesting levels resolved; a `${` deeper than this is kept as plain text.
MAX_LOOKUP_DEPTH = 8
# Bytes kept of one resolved lookup body; later bytes are dropped.
MAX_LOOKUP_BYTES = 512
# Lookups reported per scanned line.
MAX_LOOKUPS = 16
# Rounds of decoding tried when the raw text has no lookup: two rounds
# cover `%2524%257B`, a `${` encoded twice.
MAX_DECODE_ROUNDS = 2
# Longest URL scheme taken after `jndi:` (ldap, ldaps, rmi, dns, iiop, corba,
# nds, nis, http): Log4j's JNDI lookup acts only on a name with a scheme.
MAX_SCHEME_BYTES = 16

JNDI_PREFIX = b"jndi:"
# A percent escape (RFC 3986 section 2.1), or a JSON escape of an ASCII
# character (RFC 8259 section 7): a JSON body's `\u0024{` is a `${` once the
# application has parsed it.
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})|\\u00([0-7][0-9A-Fa-f])")
# An encoded `$`, `{` or `%` (the last for double encoding), or the start
# of a JSON escape.
_ENCODED_MARKERS = (b"%24", b"%25", b"%7B", b"%7b", b"\\u00")


def lookup_value(body: bytes) -> bytes:
    """Return the text Log4j substitutes for a nested lookup with this body.

    Covers the forms obfuscators rely on: a `:-` default (`${env:X:-j}`,
    `${::-j}`), `lower:`, `upper:` and quoted `date:` literals. Any other
    lookup resolves to the empty string, as an unknown key does in Log4j.
    """
    default = body.find(b":-")
    if default >= 0:
        return body[default + 2:]
    prefix = body[:6].lower()
    if prefix == b"lower:":
        return body[6:].lower()
    if prefix == b"upper:":
        return body[6:].upper()
    if prefix[:5] == b"date:":
        return body[5:].replace(b"'", b"")
    return b""


def _resolve(text: bytes, position: int, depth: int) -> tuple[int, bytes, int, bytes | None]:
    """Resolve the lookup whose body starts at `position`.

    Returns (end, body, nested, jndi). `end` is the position after the
    closing brace, or the end of the text when the brace is missing.
    `nested` counts the nested lookups inside. `jndi` is the first resolved
    body in this lookup or its nested ones that starts with `jndi:`, or None.
    """
    body = bytearray()
    nested = 0
    jndi = None
    length = len(text)
    while position < length:
        byte = text[position]
        if byte == 0x24 and depth < MAX_LOOKUP_DEPTH and text[position + 1 : position + 2] == b"{":
            position, inner, inner_nested, inner_jndi = _resolve(text, position + 2, depth + 1)
            nested += 1 + inner_nested
            if jndi is None:
                jndi = inner_jndi
            body += lookup_value(inner)[: MAX_LOOKUP_BYTES - len(body)]
            continue
        position += 1
        if byte == 0x7D:  # '}'
            break
        if len(body) < MAX_LOOKUP_BYTES:
            body.append(byte)
    resolved = bytes(body)
    if jndi is None and resolved[:5].lower() == JNDI_PREFIX and starts_with_scheme(resolved[5:]):
        jndi = resolved
    return position, resolved, nested, jndi


def starts_with_scheme(name: bytes) -> bool:
    """Return True when `name` starts with a URL scheme and its colon (RFC 3986 section 3.1), such as `ldap:`.

    Text such as `${jndi:...}` in a message about Log4Shell names no
    scheme, so Log4j would fetch nothing.
    """
    for index, byte in enumerate(name[: MAX_SCHEME_BYTES + 1]):
        if byte == 0x3A:  # ':'
            return index > 0
        letter = 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A
        if index == 0 and not letter:
            return False
        if not (letter or 0x30 <= byte <= 0x39 or byte in b"+-."):
            return False
    return False


def find_lookups(text: bytes) -> list[tuple[bytes, bool]]:
    """Return (resolved jndi lookup, obfuscated) for each JNDI lookup in `text`.

    `obfuscated` is True when nested lookups built the result. Each byte is
    read once: scanning goes on after the end of each top-level lookup.
    """
    found = []
    position = 0
    while len(found) < MAX_LOOKUPS:
        start = text.find(b"${", position)
        if start < 0:
            break
        position, _, nested, jndi = _resolve(text, start + 2, 1)
        if jndi is not None:
            found.append((jndi, nested > 0))
    return found


def percent_decode(text: bytes) -> bytes:
    """Replace each %XX escape and each JSON escape of an ASCII character (\\u00XX) with its byte; other bytes stay."""
    return _ESCAPE.sub(lambda match: bytes([int(match.group(1) or match.group(2), 16)]), text)


def scan_line(line: bytes) -> list[tuple[bytes, bool, bool]]:
    """Return (lookup, obfuscated, url_encoded) for each JNDI lookup in one line.

    The raw line is searched first. Only when it has none and contains an
    encoded `$`, `{` or `%` or a JSON escape is it decoded, at most
    MAX_DECODE_ROUNDS times, and searched again. Its hits then have
    `url_encoded` True.
    """
    hits = find_lookups(line)
    text = line
    rounds = 0
    while not hits and rounds < MAX_DECODE_ROUNDS and any(marker in text for marker in _ENCODED_MARKERS):
        text = percent_decode(text)
        rounds += 1
        hits = find_lookups(text)
    return [(lookup, obfuscated, rounds > 0) for lookup, obfuscated in hits]

"""Bounded byte readers and text cleaning shared by the protocol parsers.

Every parser reads through Reader, which checks each length against the
bytes actually captured, so a declared length can never make a parser read
past its input. A parser stops with Truncated when the capture ends inside
a structure and with Malformed when a field is impossible. The inspector
counts both per protocol and keeps the fields parsed so far.
"""

from __future__ import annotations

import re

# Widths (characters) that text fields are cut to in results.
NAME_WIDTH = 64  # AE titles, HL7 applications, user names, client ids
HOST_WIDTH = 255  # DNS names, SNI, HTTP Host (a DNS name is at most 253)
PATH_WIDTH = 256  # HTTP paths, MQTT topics, banners
MAX_ITEMS = 16  # list fields (topics, names, messages) keep this many entries


class InspectError(Exception):
    """Base of the two parser outcomes other than success."""


class Truncated(InspectError):
    """The captured bytes end inside a structure."""


class Malformed(InspectError):
    """A field contains a value the protocol does not allow."""


class PyReader:
    """Cursor over bytes that raises Truncated instead of reading past the end (pure Python reference)."""

    __slots__ = ("buffer", "position", "end", "cut")

    def __init__(self, buffer: bytes, position: int = 0, end: int | None = None):
        self.buffer = buffer
        self.cut = False  # set by callers when the capture ended inside this structure
        self.position = position
        self.end = len(buffer) if end is None else min(end, len(buffer))

    @property
    def remaining(self) -> int:
        return self.end - self.position

    # The readers below index the buffer directly instead of going through
    # take(): they run for every field of every message, once per flow.

    def _advance(self, count: int) -> int:
        start = self.position
        if count < 0:
            raise Malformed(f"negative length {count}")
        if start + count > self.end:
            raise Truncated(f"need {count} bytes, {self.end - start} captured")
        self.position = start + count
        return start

    def take(self, count: int) -> bytes:
        start = self._advance(count)
        return self.buffer[start : start + count]

    def skip(self, count: int) -> None:
        self._advance(count)

    def u8(self) -> int:
        return self.buffer[self._advance(1)]

    def u16(self) -> int:
        start = self._advance(2)
        return (self.buffer[start] << 8) | self.buffer[start + 1]

    def u24(self) -> int:
        start = self._advance(3)
        return int.from_bytes(self.buffer[start : start + 3], "big")

    def u32(self) -> int:
        start = self._advance(4)
        return int.from_bytes(self.buffer[start : start + 4], "big")

    def u16le(self) -> int:
        start = self._advance(2)
        return self.buffer[start] | (self.buffer[start + 1] << 8)

    def u32le(self) -> int:
        start = self._advance(4)
        return int.from_bytes(self.buffer[start : start + 4], "little")

    def sub(self, count: int) -> PyReader:
        """Return a reader over the next `count` bytes and move past them."""
        if count < 0:
            raise Malformed(f"negative length {count}")
        if count > self.remaining:
            raise Truncated(f"need {count} bytes, {self.remaining} captured")
        child = PyReader(self.buffer, self.position, self.position + count)
        self.position += count
        return child


_NOT_PRINTABLE_ASCII = re.compile(rb"[^\x20-\x7e]")


def clean_text(raw: bytes, width: int = NAME_WIDTH) -> str:
    """Decode wire text for a result: control characters become '?', cut to `width`."""
    raw = raw[: width * 4]
    if _NOT_PRINTABLE_ASCII.search(raw) is None:
        # Printable ASCII, the common case, needs no per-character check.
        return raw[:width].decode("ascii")
    text = raw.decode("utf-8", errors="replace")
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text[:width]


try:
    # The compiled Reader has the same contract and is several times faster.
    from engine._native.inspect_wire import Reader
except ImportError:
    Reader = PyReader

"""Read pcap and pcapng captures in batches of packet records.

The file format comes from the magic number, never from the file name. A
plain regular file is mapped with mmap and parsed in place, so batch.data is
a read-only view of the mapping and data_offset is the byte offset in the
file. Pages the reader has moved past are dropped from the resident set
(madvise MADV_DONTNEED), so resident memory stays flat however long the file
is. A batch kept by the caller stays valid because its pages fault back in
from the page cache. Compressed files (gzip, zstd), pipes and stdin are
read in chunks. Each chunk becomes a new buffer, so a batch's data stays
valid after the reader moves on. The record walk itself runs in
engine._native.reader without the GIL.
"""

from __future__ import annotations

import gzip
import io
import logging
import mmap
import os
import stat
import struct
import sys
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from engine._native import reader as _native
from engine.decode.layout import PACKET_DTYPE

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8192
MAX_BATCH_SIZE = 1 << 20
# Bytes requested from a compressed stream per read. A record that spans
# chunks is carried into the next buffer, so memory stays near one chunk
# plus the largest record (at most MAX_BLOCK_LENGTH).
STREAM_CHUNK_SIZE = 4 * 1024 * 1024
# Compressed bytes per zstd decompress call. One call has no output limit,
# and an RLE block (RFC 8878) encodes 128 KiB in 4 bytes, so this step
# bounds one call's output near 64 MiB: 2 KiB of zstd-compressed zeros
# decompress to 63 MiB.
ZSTD_INPUT_STEP = 2048
# Mapped bytes the reader has moved past before it drops them from the
# resident set in one madvise call. File-backed resident memory stays near
# this much plus the span of one batch.
MAPPED_RELEASE_STEP = 8 * 1024 * 1024

ANOMALY_NAMES: tuple[str, ...] = tuple(_native.ANOMALY_NAMES)
MAX_BLOCK_LENGTH = _native.MAX_BLOCK_LENGTH

PCAP_HEADER_LENGTH = 24
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
# First four file bytes -> (struct byte order, nanosecond timestamps).
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", False),
    b"\xa1\xb2\xc3\xd4": (">", False),
    b"\x4d\x3c\xb2\xa1": ("<", True),
    b"\xa1\xb2\x3c\x4d": (">", True),
}
STDIN_NAME = "<stdin>"


class CaptureError(Exception):
    """A capture that cannot be read: unknown format, or a corrupt record.

    `offset` is the byte offset of the bad header or record in the
    (decompressed) capture, or None where no single offset applies.
    """

    def __init__(self, message: str, *, path: str | None = None, offset: int | None = None):
        super().__init__(message)
        self.path = path
        self.offset = offset


class Batch:
    """Up to batch_size packet records and the buffer their data_offset indexes."""

    __slots__ = ("packets", "data", "count")

    def __init__(self, packets: np.ndarray, data: np.ndarray, count: int):
        self.packets = packets  # PACKET_DTYPE records, len(packets) == count
        self.data = data  # 1-D uint8; packet bytes are data[data_offset:data_offset + caplen]
        self.count = count

    def __repr__(self) -> str:
        return f"Batch(count={self.count}, data_bytes={self.data.shape[0]})"


class _PrefixedStream(io.RawIOBase):
    """A readable stream that first returns `prefix`, then reads from `stream`.

    Magic detection has to read the first bytes of stdin, which cannot seek
    back; this puts them in front again.
    """

    def __init__(self, prefix: bytes, stream: BinaryIO):
        super().__init__()
        self._prefix = prefix
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._prefix:
            size = min(len(view), len(self._prefix))
            view[:size] = self._prefix[:size]
            self._prefix = self._prefix[size:]
            return size
        reader = getattr(self._stream, "read1", self._stream.read)
        chunk = reader(len(view))
        view[: len(chunk)] = chunk
        return len(chunk)


class ZstdStream(io.RawIOBase):
    """Decompressed bytes of the zstd frames in `raw`, one after another.

    zstandard's stream_reader ends silently on a frame cut short, so this
    feeds a decompressobj itself and raises EOFError when the input ends
    inside a frame. Input goes in ZSTD_INPUT_STEP pieces because a single
    decompress call has no output limit.
    """

    def __init__(self, raw: BinaryIO):
        import zstandard

        super().__init__()
        self._raw = raw
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = self._decompressor.decompressobj()
        self._frame_started = False
        self._pending = b""
        self._pending_offset = 0
        self._input_ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._pending_offset == len(self._pending):
            if self._input_ended:
                return 0
            self._decompress_step()
        view = memoryview(buffer).cast("B")
        start = self._pending_offset
        size = min(len(view), len(self._pending) - start)
        view[:size] = memoryview(self._pending)[start : start + size]
        self._pending_offset += size
        return size

    def _decompress_step(self) -> None:
        data = self._raw.read(ZSTD_INPUT_STEP)
        if not data:
            self._input_ended = True
            if self._frame_started:
                raise EOFError("zstd input ends inside a frame")
            return
        output = []
        while data:
            self._frame_started = True
            output.append(self._frame.decompress(data))
            if not self._frame.eof:
                break
            # A frame ended; what follows it is the next frame.
            data = self._frame.unused_data
            self._frame = self._decompressor.decompressobj()
            self._frame_started = False
        self._pending = b"".join(output)
        self._pending_offset = 0


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    parts = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _describe_magic(magic: bytes) -> str:
    return "0x" + magic.hex() if magic else "(no bytes)"


def open_capture(source: str | os.PathLike, batch_size: int = DEFAULT_BATCH_SIZE) -> CaptureReader:
    """Open a pcap or pcapng capture, plain or gzip/zstd compressed.

    `source` is a path, or "-" for stdin. The header is read and checked
    here, so a file that is not a capture raises CaptureError before the
    first batch.
    """
    return CaptureReader(source, batch_size=batch_size)


class CaptureReader:
    """An open capture; iterate over it for Batch objects.

    Attributes: format ("pcap", "pcap-ns" or "pcapng"), compression (None,
    "gzip" or "zstd"), interfaces (one dict per interface, indexed by
    iface_id) and stats (packet, byte and anomaly counters).
    """

    def __init__(self, source: str | os.PathLike, batch_size: int = DEFAULT_BATCH_SIZE):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size {batch_size} is outside 1..{MAX_BATCH_SIZE}")
        self.batch_size = batch_size
        self.compression: str | None = None
        self.format: str = ""
        self._file: BinaryIO | None = None
        self._stream: BinaryIO | None = None
        self._mmap: mmap.mmap | None = None
        self._mapped_released = 0  # file offset below which pages were released
        self._parser = None
        self._python_truncations = 0
        self._batches: Iterator[Batch] | None = None
        self._closed = False
        self._decompress_errors: tuple[type[BaseException], ...] = (OSError, zlib.error)
        self._pending_error: CaptureError | None = None
        self._stream_ended = False
        self._decompressed_bytes = 0

        self.name = STDIN_NAME if os.fspath(source) == "-" else os.fspath(source)
        try:
            if self.name == STDIN_NAME:
                # sys.stdin is None when the process started with file
                # descriptor 0 closed.
                if sys.stdin is None:
                    raise CaptureError(
                        "standard input is closed; pipe a capture into it or pass a file path instead of -",
                        path=self.name,
                    )
                self._open_stream(sys.stdin.buffer)
            else:
                self._open_path(Path(source))
        except BaseException:
            self.close()
            raise

    # --- opening ---

    def _open_path(self, path: Path) -> None:
        try:
            self._file = open(path, "rb")
        except FileNotFoundError:
            raise CaptureError(f"capture file not found: {path}", path=self.name) from None
        except IsADirectoryError:
            raise CaptureError(f"{path} is a directory, not a capture file", path=self.name) from None
        except PermissionError:
            raise CaptureError(
                f"cannot read {path}: permission denied", path=self.name
            ) from None

        status = os.fstat(self._file.fileno())
        if not stat.S_ISREG(status.st_mode):
            self._open_stream(self._file)
            return
        if status.st_size == 0:
            raise CaptureError(
                f"not a pcap or pcapng file: {path} is empty (0 bytes)", path=self.name, offset=0
            )

        magic = self._file.read(4)
        if magic.startswith(GZIP_MAGIC) or magic == ZSTD_MAGIC:
            self._file.seek(0)
            self._open_stream(self._file)
            return

        # The mapping stays open while any batch's data view refers to it.
        self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_SEQUENTIAL"):
            # Larger read-ahead, and the kernel may reclaim passed pages first.
            self._mmap.madvise(mmap.MADV_SEQUENTIAL)
        data = np.frombuffer(self._mmap, dtype=np.uint8)
        header_length = self._start_parser(bytes(data[:PCAP_HEADER_LENGTH]))
        self._batches = self._iterate(data, header_length, at_eof=True, refill=None)

    def _open_stream(self, raw: BinaryIO) -> None:
        """Set up chunked reading of a pipe, stdin or compressed file."""
        head = _read_exactly(raw, 4)
        stream: BinaryIO = _PrefixedStream(head, raw)
        if head.startswith(GZIP_MAGIC):
            self.compression = "gzip"
            stream = gzip.GzipFile(fileobj=io.BufferedReader(stream), mode="rb")
        elif head == ZSTD_MAGIC:
            import zstandard

            self.compression = "zstd"
            self._decompress_errors = (OSError, zstandard.ZstdError)
            stream = ZstdStream(stream)
        self._stream = stream

        first = self._read_chunk(PCAP_HEADER_LENGTH)
        while len(first) < PCAP_HEADER_LENGTH:
            more = self._read_chunk(PCAP_HEADER_LENGTH - len(first))
            if not more:
                break
            first += more
        header_length = self._start_parser(first)
        self._batches = self._iterate(
            np.frombuffer(first, dtype=np.uint8), header_length, at_eof=False, refill=self._read_chunk
        )

    def _read_chunk(self, size: int | None = None) -> bytes:
        """Return up to `size` bytes of the (decompressed) stream; b"" at its end.

        An uncompressed pipe gets one read, so a slow writer is not waited
        for. A decompressor is read in steps with read1, so a stream that is
        cut short still yields what was decompressed before the cut. A
        corrupt stream returns the steps before the damage, then raises
        CaptureError on the next call.
        """
        size = size or STREAM_CHUNK_SIZE
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        if self._stream_ended:
            return b""
        read = getattr(self._stream, "read1", self._stream.read)
        if self.compression is None:
            return read(size)

        parts = []
        total = 0
        while total < size:
            try:
                part = read(size - total)
            except EOFError:
                log.warning("%s: compressed stream is cut short; reading stops there", self.name)
                self._python_truncations += 1
                self._stream_ended = True
                break
            except self._decompress_errors as error:
                self._pending_error = CaptureError(
                    f"cannot decompress {self.name} ({self.compression}) after "
                    f"{self._decompressed_bytes + total} bytes: {error}; "
                    f"check the file with `{self.compression} -t`",
                    path=self.name,
                    offset=self._decompressed_bytes + total,
                )
                break
            if not part:
                self._stream_ended = True
                break
            parts.append(part)
            total += len(part)
        self._decompressed_bytes += total
        if total == 0 and self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        return b"".join(parts)

    def _start_parser(self, first: bytes) -> int:
        """Pick the parser from the magic in `first`; return the bytes of file header consumed."""
        magic = first[:4]
        if len(first) == 0:
            if self._python_truncations:
                reason = f"the {self.compression} stream of {self.name} ends before the first byte"
            else:
                reason = f"{self.name} is empty"
            raise CaptureError(f"not a pcap or pcapng file: {reason}", path=self.name, offset=0)
        if magic == PCAPNG_MAGIC:
            self.format = "pcapng"
            self._parser = _native.RecordParser.pcapng()
            return 0
        if magic not in PCAP_MAGICS:
            kind = ""
            if self.compression and (magic.startswith(GZIP_MAGIC) or magic == ZSTD_MAGIC):
                kind = " (compressed twice?)"
            raise CaptureError(
                f"not a pcap or pcapng file: magic {_describe_magic(magic)} at offset 0{kind}",
                path=self.name,
                offset=0,
            )
        if len(first) < PCAP_HEADER_LENGTH:
            raise CaptureError(
                f"pcap file header cut short: {len(first)} of {PCAP_HEADER_LENGTH} bytes in {self.name}",
                path=self.name,
                offset=len(first),
            )

        byte_order, nanosecond = PCAP_MAGICS[magic]
        major, minor, _thiszone, _sigfigs, snaplen, link_field = struct.unpack(
            byte_order + "HHiIII", first[4:PCAP_HEADER_LENGTH]
        )
        if major != 2:
            raise CaptureError(
                f"unsupported pcap version {major}.{minor} in {self.name}; only 2.x is "
                "defined, so the file is probably corrupt",
                path=self.name,
                offset=4,
            )
        self.format = "pcap-ns" if nanosecond else "pcap"
        swap = (byte_order == "<") != (sys.byteorder == "little")
        # The upper bits of the link-type field carry FCS information; the
        # link type is the low 16 bits.
        if minor < 3:
            lengths = _native.LENGTHS_SWAPPED
        elif minor == 3:
            lengths = _native.LENGTHS_MAYBE_SWAPPED
        else:
            lengths = _native.LENGTHS_NOT_SWAPPED
        self._parser = _native.RecordParser.pcap(
            swap, nanosecond, snaplen, link_field & 0xFFFF, lengths
        )
        return PCAP_HEADER_LENGTH

    # --- reading ---

    def _iterate(self, data: np.ndarray, pos: int, at_eof: bool, refill) -> Iterator[Batch]:
        parser = self._parser
        base_offset = 0  # capture offset of data[0]
        while True:
            packets = np.empty(self.batch_size, dtype=PACKET_DTYPE)
            count = 0
            while True:
                pos, count, status = parser.parse(data, pos, at_eof, packets, count)
                if status != _native.STATUS_NEED_DATA or count > 0:
                    break
                data, pos, base_offset, at_eof = self._refill(data, pos, base_offset, refill)

            if count > 0:
                yield Batch(packets[:count], data, count)
                # The caller asked for the next batch, so it is done with
                # the pages of this one, unless it kept the batch.
                if self._mmap is not None:
                    self._release_mapped_pages(pos)

            if status == _native.STATUS_BATCH_FULL:
                continue
            if status == _native.STATUS_NEED_DATA:
                data, pos, base_offset, at_eof = self._refill(data, pos, base_offset, refill)
                continue
            if status == _native.STATUS_TRUNCATED:
                log.warning(
                    "%s: cut short in a record at byte offset %d; %d packets read",
                    self.name,
                    base_offset + pos,
                    parser.packets,
                )
            elif status == _native.STATUS_ERROR:
                raise self._record_error(base_offset + parser.error_pos)
            self._log_summary()
            return

    def _release_mapped_pages(self, end_offset: int) -> None:
        """Drop the mapped pages before end_offset from the resident set.

        The mapping is shared and read-only, so MADV_DONTNEED loses no data:
        a later read of those bytes (a batch the caller kept) faults the page
        back in from the page cache or the file.
        """
        end = end_offset - end_offset % mmap.PAGESIZE
        if end - self._mapped_released < MAPPED_RELEASE_STEP or not hasattr(mmap, "MADV_DONTNEED"):
            return
        self._mmap.madvise(mmap.MADV_DONTNEED, self._mapped_released, end - self._mapped_released)
        self._mapped_released = end

    def _refill(self, data: np.ndarray, pos: int, base_offset: int, refill):
        """Return a new buffer holding the unparsed tail of `data` plus one more chunk."""
        chunk = refill()
        tail = data[pos:].tobytes()
        at_eof = not chunk
        buffer = np.frombuffer(tail + chunk, dtype=np.uint8)
        return buffer, 0, base_offset + pos, at_eof

    def _record_error(self, offset: int) -> CaptureError:
        parser = self._parser
        code = parser.error_code
        value = parser.error_value
        limit = parser.error_limit
        block = f"block type 0x{parser.error_block_type:08x}"
        if code == _native.ERROR_CAPLEN_LIMIT:
            reason = f"record claims caplen {value}, above the limit of {limit} bytes"
        elif code == _native.ERROR_BLOCK_LENGTH:
            reason = f"{block} has length {value}, which is not a multiple of 4 or is below the minimum of {limit}"
        elif code == _native.ERROR_BLOCK_TOO_LONG:
            reason = f"{block} has length {value}, above the limit of {limit} bytes"
        elif code == _native.ERROR_BYTE_ORDER_MAGIC:
            reason = f"section header has byte-order magic 0x{value:08x}, expected 0x1a2b3c4d"
        elif code == _native.ERROR_PCAPNG_VERSION:
            reason = f"section header has pcapng major version {value}; only version 1 is defined"
        elif code == _native.ERROR_TOO_MANY_INTERFACES:
            reason = f"more than {limit} interface description blocks"
        else:
            reason = f"parser error code {code}"
        return CaptureError(
            f"corrupt capture {self.name} at byte offset {offset}: {reason}; "
            f"the {parser.packets} packets before it were read",
            path=self.name,
            offset=offset,
        )

    def _log_summary(self) -> None:
        anomalies = {name: n for name, n in self.stats.items() if name in ANOMALY_NAMES and n}
        if anomalies:
            log.warning("%s: capture anomalies %s", self.name, anomalies)
        log.info("%s: read %d packets (%s)", self.name, self._parser.packets, self.format)

    # --- public surface ---

    def __iter__(self) -> CaptureReader:
        return self

    def __next__(self) -> Batch:
        if self._closed or self._batches is None:
            raise StopIteration
        return next(self._batches)

    @property
    def stats(self) -> dict[str, int]:
        """Counters so far: packets, bytes (captured), records_skipped and one per anomaly name."""
        parser = self._parser
        counts = {
            "packets": int(parser.packets),
            "bytes": int(parser.bytes_captured),
            "records_skipped": int(parser.records_skipped),
        }
        counts.update({name: int(n) for name, n in parser.anomaly_counts().items()})
        # A compressed stream cut inside a record is counted by both the
        # decompressor and the parser; it is one truncation.
        counts["truncated_file"] = max(counts["truncated_file"], self._python_truncations)
        return counts

    @property
    def interfaces(self) -> list[dict]:
        """One dict per interface seen so far: link_type, snaplen, ts_resolution_ns, ..."""
        return self._parser.interface_list()

    def close(self) -> None:
        """Close the file. Batches already returned stay readable."""
        self._closed = True
        self._batches = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                # A batch still views the mapping; it is unmapped when the
                # last such view is garbage collected.
                pass
            self._mmap = None
        if self._stream is not None and self._stream is not self._file:
            self._stream.close()
        self._stream = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

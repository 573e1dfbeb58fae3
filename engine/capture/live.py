"""Live capture from a network interface through an AF_PACKET TPACKET_V3 ring.

    from engine.capture.live import LiveCapture, RingConfig

    capture = LiveCapture("eth1", RingConfig(), bpf_program=None)
    capture.start()                      # accept packets (the ring opens filtered)
    batch = capture.read(timeout_ms=100) # a Batch, or None after the timeout
    capture.stats                        # kernel and reader counters

A batch has the shape the file reader produces: PACKET_DTYPE records with
the capture fields filled (iface_id 0, link_type from the interface) and a
data buffer of their own, so it stays valid after the ring moves on. The
outermost VLAN tag, which the kernel removes, is back in the frame.
"""

from __future__ import annotations

import logging
import mmap
import time
from dataclasses import dataclass

import numpy as np

from engine._native import afpacket as _native
from engine.capture.files import Batch
from engine.decode.layout import PACKET_DTYPE

log = logging.getLogger(__name__)

MIN_BLOCK_SIZE = mmap.PAGESIZE
MAX_BLOCK_SIZE = 1 << 30
MAX_BLOCK_COUNT = 1 << 16
# The kernel retires a block that has frames once it has been open this long.
MAX_BLOCK_TIMEOUT_MS = 60_000
# read() copies frames into a fresh buffer of this size per batch (or one
# block plus a tagged frame, if larger), so a batch owns at most this much.
BATCH_DATA_BYTES = 8 << 20
MAX_BATCH_SIZE = 1 << 20
# How long read() keeps filling a batch after its first frame. Larger
# batches cost less Python time per packet; the wait adds to alert latency.
DEFAULT_BATCH_TIMEOUT_MS = 100
VLAN_TAG_LENGTH = 4


@dataclass
class RingConfig:
    """Sizes of the TPACKET_V3 receive ring of one capture socket.

    The ring holds block_size * block_count bytes of frames (64 MiB with
    the defaults, about half a second of a saturated 1 Gbit/s port) in
    kernel pages that are never swapped out. A frame larger than
    block_size is cut to fit, so block_size must exceed the largest frame
    (jumbo frames, or GRO aggregates when GRO is on) as well as snaplen.
    """

    block_size: int = 1 << 20  # bytes; a power of two and a multiple of the page size
    block_count: int = 64
    # Only bounds the kernel's frame count check in TPACKET_V3, where
    # frames are packed at their own length.
    frame_size: int = 2048
    # A block with at least one frame is handed over after this long even
    # if not full: the delay a quiet link adds, milliseconds. On a slow
    # link every block carries only this much traffic, so block_count x
    # block_timeout_ms (6.4 s) is how long a worker may stall there
    # before the ring fills.
    block_timeout_ms: int = 100
    snaplen: int = 65535  # bytes kept of each frame
    promiscuous: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the first invalid size and the allowed range."""
        block = self.block_size
        if not MIN_BLOCK_SIZE <= block <= MAX_BLOCK_SIZE or block & (block - 1):
            raise ValueError(
                f"invalid block_size {block}; expected a power of two from {MIN_BLOCK_SIZE} "
                f"to {MAX_BLOCK_SIZE} bytes"
            )
        if not 1 <= self.block_count <= MAX_BLOCK_COUNT:
            raise ValueError(f"invalid block_count {self.block_count}; expected 1 to {MAX_BLOCK_COUNT}")
        header = _native.tpacket3_header_length()
        if self.frame_size < header or self.frame_size % 16 or self.frame_size > block:
            raise ValueError(
                f"invalid frame_size {self.frame_size}; expected a multiple of 16 from {header} "
                f"to block_size ({block}) bytes"
            )
        if not 1 <= self.block_timeout_ms <= MAX_BLOCK_TIMEOUT_MS:
            raise ValueError(
                f"invalid block_timeout_ms {self.block_timeout_ms}; expected 1 to {MAX_BLOCK_TIMEOUT_MS}"
            )
        if not 64 <= self.snaplen <= _native.SNAPLEN_LIMIT:
            raise ValueError(f"invalid snaplen {self.snaplen}; expected 64 to {_native.SNAPLEN_LIMIT} bytes")
        overhead = header + _native.block_header_length()
        if self.snaplen + overhead > block:
            raise ValueError(
                f"snaplen {self.snaplen} plus {overhead} bytes of block and frame headers does not "
                f"fit in block_size {block}; raise block_size or lower snaplen"
            )

    @property
    def ring_bytes(self) -> int:
        return self.block_size * self.block_count


class LiveCapture:
    """One capture socket on `interface`: a ring, an optional fanout group and a filter.

    The socket drops every packet until start(), so several sockets can
    join one fanout group before any of them receives a packet: no packet
    is seen twice while the group forms.
    """

    def __init__(self, interface: str, ring: RingConfig | None = None, bpf_program=None,
                 fanout_group: int | None = None, batch_size: int = 8192,
                 batch_timeout_ms: int = DEFAULT_BATCH_TIMEOUT_MS):
        self.config = ring or RingConfig()
        self.config.validate()
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"invalid batch_size {batch_size}; expected 1 to {MAX_BATCH_SIZE}")
        if not 0 <= batch_timeout_ms <= MAX_BLOCK_TIMEOUT_MS:
            raise ValueError(f"invalid batch_timeout_ms {batch_timeout_ms}; expected 0 to {MAX_BLOCK_TIMEOUT_MS}")
        self.interface = interface
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_ms / 1000
        self.bpf_program = bpf_program
        self._data_bytes = max(BATCH_DATA_BYTES, self.config.block_size + 64)
        self._ring = _native.Ring(
            interface,
            self.config.block_size,
            self.config.block_count,
            self.config.frame_size,
            self.config.block_timeout_ms,
            self.config.snaplen,
            self.config.promiscuous,
        )
        self.link_type = self._ring.link_type
        self.fanout_group = fanout_group
        try:
            if fanout_group is not None:
                self._ring.join_fanout(fanout_group)
        except BaseException:
            self._ring.close()
            raise
        self._stopped_at: float | None = None
        self._spare: tuple[np.ndarray, np.ndarray] | None = None

    def start(self) -> None:
        """Replace the drop-all filter by the BPF program (or accept-all): packets start arriving."""
        self._ring.set_filter(self.bpf_program)

    def set_filter(self, bpf_program) -> None:
        """Attach another BPF program to the running socket (None accepts every packet)."""
        self.bpf_program = bpf_program
        if self._stopped_at is None:
            self._ring.set_filter(bpf_program)

    def stop(self) -> None:
        """Stop new packets from entering the ring; read() then drains what is in it."""
        if self._stopped_at is None:
            self._ring.stop_capture()
            self._stopped_at = time.monotonic()

    def read(self, timeout_ms: int = 100) -> Batch | None:
        """Return the next batch, or None when no frame arrived within `timeout_ms`.

        A batch is returned once it has batch_size packets, its data
        buffer is full, or batch_timeout_ms have passed since its first
        frame was read, whichever comes first.
        """
        if self._spare is not None:
            packets, data = self._spare
            self._spare = None
        else:
            packets = np.empty(self.batch_size, dtype=PACKET_DTYPE)
            data = np.empty(self._data_bytes, dtype=np.uint8)
        room_needed = self.config.snaplen + VLAN_TAG_LENGTH
        count = 0
        used = 0
        first_read_at = 0.0
        while count < self.batch_size and data.size - used >= room_needed:
            if count == 0:
                wait_ms = timeout_ms
            else:
                wait_ms = int((first_read_at + self.batch_timeout_s - time.monotonic()) * 1000)
                if wait_ms <= 0:
                    break
            read, read_bytes = self._ring.read_batch(packets[count:], data[used:], wait_ms)
            if read == 0:
                if count == 0:
                    # Nothing arrived: the buffers serve the next call.
                    self._spare = (packets, data)
                    return None
                continue
            if count == 0:
                first_read_at = time.monotonic()
            else:
                # The ring wrote offsets relative to data[used:].
                packets["data_offset"][count:count + read] += used
            count += read
            used += read_bytes
        return Batch(packets[:count], data[:used], count)

    def drain(self):
        """Yield the batches left in the ring after stop(), until the ring is empty.

        The kernel hands over a partly filled block only when its block
        timeout expires, so this reads until two block timeouts have passed
        since stop() with nothing more arriving.
        """
        if self._stopped_at is None:
            raise RuntimeError("call stop() before drain(); a running capture never runs dry")
        settle_s = 2 * self.config.block_timeout_ms / 1000 + 0.05
        while True:
            batch = self.read(timeout_ms=self.config.block_timeout_ms)
            if batch is not None:
                yield batch
                continue
            if time.monotonic() - self._stopped_at >= settle_s:
                return

    @property
    def stats(self) -> dict[str, int]:
        """Kernel counters (packets, drops, freezes) and reader counters since the socket opened.

        kernel_packets counts the packets the filter accepted, including
        kernel_drops: those the kernel discarded because the ring was full.
        kernel_freezes counts the times the ring filled and froze.
        """
        ring = self._ring
        counters = dict(ring.read_statistics()) if not ring.closed else {
            "kernel_packets": ring.kernel_packets,
            "kernel_drops": ring.kernel_drops,
            "kernel_freezes": ring.kernel_freezes,
        }
        counters.update(
            packets=ring.packets_read,
            bytes=ring.bytes_read,
            blocks=ring.blocks_read,
            vlan_tags_restored=ring.vlan_tags_restored,
            frames_truncated=ring.frames_truncated,
        )
        return {name: int(value) for name, value in counters.items()}

    def fileno(self) -> int:
        return self._ring.fileno()

    def close(self) -> None:
        """Unmap the ring and close the socket."""
        self._ring.close()

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

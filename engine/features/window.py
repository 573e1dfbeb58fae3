"""Damped window statistics per source host, host pair, socket pair and service.

WindowFeatures owns the bounded tables. update() hands each packet batch to
the compiled kernel in engine.features.kernels, and query() reads the
window features of given (source, destination, ports, protocol) rows at
given times. See that module for the statistics and the eviction rule.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from engine.decode.layout import PACKET_DTYPE
from engine.features import kernels
from engine.features.schema import HALF_LIVES_S, WINDOW_FEATURES_PER_HALF_LIFE

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 1 << 16
_ADDRESS_DTYPE = np.dtype(("u1", (16,)))


def _check_capacity(name: str, value: int) -> int:
    if value < kernels.MAX_PROBE or value & (value - 1):
        raise ValueError(
            f"invalid {name} {value}: expected a power of two of at least {kernels.MAX_PROBE}"
        )
    return int(value)


def _slot_rows(capacity: int, words: int) -> np.ndarray:
    """Return zeroed float64 slot rows [capacity, words], 64-byte aligned, with their pages mapped.

    A row is a whole number of cache lines, so with the start aligned no
    slot straddles a line it does not own.
    """
    line_words = 64 // 8
    buffer = np.empty(capacity * words + line_words, dtype=np.float64)
    buffer.fill(0)
    skip = (-buffer.ctypes.data % 64) // 8
    return buffer[skip:skip + capacity * words].reshape(capacity, words)


class WindowFeatures:
    """Bounded tables of damped statistics, updated per packet batch.

    Each table contains at most `capacity` keys (hosts, host pairs, socket
    pairs and services each have their own table of that size). A new key
    that finds all MAX_PROBE slots of its probe window taken evicts the
    least recently active of them; `counters` counts the evictions per
    table. Memory is 1,280 bytes per capacity unit with the four
    default half-lives, so the default 65536 takes about 84 MB.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, half_lives_s=HALF_LIVES_S):
        # Tables are written with zeros here rather than left to the kernel
        # to fault in. A new key lands on a random slot, so a lazily mapped
        # table paid a page fault for most of its first keys, and a fresh
        # table's first pass ran 2-4x slower than later ones. The cost moves
        # to start-up: about 84 MB to write at the default capacity.
        capacity = _check_capacity("capacity", capacity)
        half_lives = np.asarray(half_lives_s, dtype=np.float64)
        if half_lives.ndim != 1 or half_lives.size == 0 or not np.all(half_lives > 0):
            raise ValueError(f"invalid half_lives_s {half_lives_s!r}: expected positive seconds")
        if half_lives.size > kernels.MAX_WINDOWS:
            raise ValueError(
                f"invalid half_lives_s: {half_lives.size} half-lives, expected at most {kernels.MAX_WINDOWS}"
            )
        self.capacity = capacity
        self.half_lives_s = half_lives
        self.decay_rates = math.log(2.0) / half_lives
        windows = half_lives.size
        self.host_rows = _slot_rows(capacity, kernels.row_words("host", windows))
        self.pair_rows = _slot_rows(capacity, kernels.row_words("pair", windows))
        self.sock_rows = _slot_rows(capacity, kernels.row_words("socket", windows))
        self.service_rows = _slot_rows(capacity, kernels.row_words("service", windows))

        self.counters = np.zeros(len(kernels.COUNTER_NAMES), dtype=np.int64)
        self.base_ns: int | None = None
        # Seconds since base_ns that new sums are scaled to; see kernels.
        self.landmark = np.zeros(1, dtype=np.float64)
        self._logged_evictions = 0

    @property
    def feature_count(self) -> int:
        return self.half_lives_s.size * WINDOW_FEATURES_PER_HALF_LIFE

    @property
    def stats(self) -> dict[str, int]:
        """Counters by name: packets added, skipped, and evictions per table."""
        return {name: int(value) for name, value in zip(kernels.COUNTER_NAMES, self.counters)}

    def update(self, packets: np.ndarray, data=None) -> None:
        """Add a batch of decoded packets (PACKET_DTYPE) to the tables, in order.

        `data` (the payload buffer) is accepted for symmetry with the other
        batch stages and not read: the statistics use headers only.
        """
        if not isinstance(packets, np.ndarray) or packets.dtype != PACKET_DTYPE:
            actual = getattr(packets, "dtype", type(packets).__name__)
            raise TypeError(f"invalid packets: expected a PACKET_DTYPE array, got {actual}")
        if packets.ndim != 1:
            raise ValueError(f"invalid packets: expected 1 dimension, got shape {packets.shape}")
        if packets.size == 0:
            return
        if self.base_ns is None:
            self.base_ns = int(packets["ts_ns"][0])
        kernels.update_tables(
            packets["ts_ns"], packets["wirelen"], packets["ip_version"], packets["status"],
            packets["src_addr"], packets["dst_addr"], packets["src_port"], packets["dst_port"],
            packets["ip_proto"], packets["tcp_flags"],
            np.int64(self.base_ns), self.half_lives_s, self.decay_rates, self.landmark,
            self.host_rows, self.pair_rows, self.sock_rows, self.service_rows, self.counters,
        )
        self._log_evictions()

    def _log_evictions(self) -> None:
        # One warning per tenfold rise, so a full table cannot flood the log.
        evicted = int(self.counters[kernels.C_HOST_EVICTED:].sum())
        if evicted == 0:
            return
        if self._logged_evictions == 0 or evicted >= 10 * self._logged_evictions:
            log.warning(
                "window tables full: %d keys evicted so far (%s); raise capacity above %d",
                evicted, self.stats, self.capacity,
            )
            self._logged_evictions = evicted

    def query(self, src_addr, dst_addr, src_port, dst_port, protocol, at_ns, out=None, first_column=0):
        """Return float64 window features [rows, feature_count] for each key row at at_ns.

        Addresses are [rows, 16] uint8 in the packet layout. With `out`, the
        features are written into out[:, first_column:first_column + feature_count].
        """
        src_addr = np.asarray(src_addr)
        dst_addr = np.asarray(dst_addr)
        rows = src_addr.shape[0]
        for name, array in (("src_addr", src_addr), ("dst_addr", dst_addr)):
            if array.dtype != np.uint8 or array.shape != (rows, 16):
                raise ValueError(
                    f"invalid {name}: expected uint8 of shape ({rows}, 16), got {array.dtype} {array.shape}"
                )
        columns = self.feature_count
        if out is None:
            out = np.zeros((rows, columns), dtype=np.float64)
            first_column = 0
        elif out.ndim != 2 or out.shape[0] != rows or out.shape[1] < first_column + columns:
            raise ValueError(
                f"invalid out shape {out.shape}: expected ({rows}, >= {first_column + columns})"
            )
        elif out.dtype != np.float64:
            raise TypeError(f"invalid out dtype {out.dtype}: expected float64")
        if rows == 0:
            return out
        base_ns = self.base_ns if self.base_ns is not None else 0
        kernels.query_tables(
            src_addr, dst_addr,
            np.asarray(src_port).astype(np.uint64), np.asarray(dst_port).astype(np.uint64),
            np.asarray(protocol).astype(np.uint64), np.asarray(at_ns, dtype=np.int64),
            np.int64(base_ns), self.decay_rates,
            self.host_rows, self.pair_rows, self.sock_rows, out, first_column,
        )
        return out

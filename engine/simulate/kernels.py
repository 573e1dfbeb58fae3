"""Numba kernels of the pcap writer: slice checksums and payload copies.

Both loop over bytes, which NumPy can only express with large temporary
index arrays. They are compiled with cache=True, so only the first run on a
machine pays the JIT (about a second).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def slice_word_sums(blob, starts, lengths):  # pragma: no cover - compiled
    """Folded one's-complement sum of big-endian 16-bit words of each blob slice.

    An odd final byte is padded with zero on the right (RFC 1071, section 1).
    """
    out = np.empty(starts.shape[0], dtype=np.int64)
    for i in range(starts.shape[0]):
        total = 0
        start = starts[i]
        end = start + lengths[i]
        j = start
        while j + 1 < end:
            total += (np.int64(blob[j]) << 8) | np.int64(blob[j + 1])
            j += 2
        if j < end:
            total += np.int64(blob[j]) << 8
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        out[i] = total
    return out


@njit(cache=True, nogil=True)
def copy_slices(out, destinations, blob, sources, lengths):  # pragma: no cover - compiled
    """out[destinations[i]:+lengths[i]] = blob[sources[i]:+lengths[i]] for every i."""
    for i in range(destinations.shape[0]):
        d = destinations[i]
        s = sources[i]
        for k in range(lengths[i]):
            out[d + k] = blob[s + k]


@njit(cache=True, nogil=True)
def copy_rows(out, destinations, rows, lengths):  # pragma: no cover - compiled
    """out[destinations[i]:+lengths[i]] = rows[i, :lengths[i]] for every i."""
    for i in range(destinations.shape[0]):
        d = destinations[i]
        for k in range(lengths[i]):
            out[d + k] = rows[i, k]

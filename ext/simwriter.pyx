# Byte loops of the simulator's pcap writer: per-slice Internet checksums
# and scatter copies. NumPy can only express them with large temporary index
# arrays; compiled ahead here, they cost nothing at CLI start.

from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcpy

import numpy as np


def slice_word_sums(const uint8_t[::1] blob, const int64_t[::1] starts, const int64_t[::1] lengths):
    """Return the folded one's-complement sum of big-endian 16-bit words of each blob slice.

    An odd final byte is padded with zero on the right (RFC 1071, section 1).
    Raises IndexError when a slice runs past the blob.
    """
    cdef Py_ssize_t count = starts.shape[0]
    if lengths.shape[0] != count:
        raise ValueError(f"got {lengths.shape[0]} lengths for {count} starts")
    out = np.empty(count, dtype=np.int64)
    cdef int64_t[::1] sums = out
    cdef Py_ssize_t i, j, end
    cdef uint64_t total
    for i in range(count):
        if starts[i] < 0 or lengths[i] < 0 or starts[i] + lengths[i] > blob.shape[0]:
            raise IndexError(f"slice {i} ({starts[i]}+{lengths[i]}) runs past the {blob.shape[0]}-byte blob")
    with nogil:
        for i in range(count):
            total = 0
            j = starts[i]
            end = j + lengths[i]
            while j + 1 < end:
                total += (<uint64_t> blob[j] << 8) | blob[j + 1]
                j += 2
            if j < end:
                total += <uint64_t> blob[j] << 8
            while total >> 16:
                total = (total & 0xFFFF) + (total >> 16)
            sums[i] = <int64_t> total
    return out


def copy_slices(uint8_t[::1] out, const int64_t[::1] destinations, const uint8_t[::1] blob,
                const int64_t[::1] sources, const int64_t[::1] lengths):
    """Copy blob[sources[i]:+lengths[i]] to out[destinations[i]:] for every i."""
    cdef Py_ssize_t count = destinations.shape[0], i
    if sources.shape[0] != count or lengths.shape[0] != count:
        raise ValueError("destinations, sources and lengths differ in length")
    for i in range(count):
        if (destinations[i] < 0 or sources[i] < 0 or lengths[i] < 0
                or destinations[i] + lengths[i] > out.shape[0] or sources[i] + lengths[i] > blob.shape[0]):
            raise IndexError(f"copy {i} runs outside its buffers")
    with nogil:
        for i in range(count):
            if lengths[i]:
                memcpy(&out[destinations[i]], &blob[sources[i]], lengths[i])


def copy_rows(uint8_t[::1] out, const int64_t[::1] destinations, const uint8_t[:, ::1] rows,
              const int64_t[::1] lengths):
    """Copy rows[i, :lengths[i]] to out[destinations[i]:] for every i."""
    cdef Py_ssize_t count = destinations.shape[0], i
    if rows.shape[0] != count or lengths.shape[0] != count:
        raise ValueError("destinations, rows and lengths differ in length")
    for i in range(count):
        if (destinations[i] < 0 or lengths[i] < 0 or lengths[i] > rows.shape[1]
                or destinations[i] + lengths[i] > out.shape[0]):
            raise IndexError(f"row copy {i} runs outside its buffers")
    with nogil:
        for i in range(count):
            if lengths[i]:
                memcpy(&out[destinations[i]], &rows[i, 0], lengths[i])

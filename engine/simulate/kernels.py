"""Byte loops of the pcap writer: slice checksums and payload copies.

The loops are compiled ahead in ext/simwriter.pyx; these wrappers give
them contiguous arrays of the types they take.
"""

from __future__ import annotations

import numpy as np

from engine._native import simwriter


def _int64(values) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int64)


def _bytes(values) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.uint8)


def slice_word_sums(blob, starts, lengths) -> np.ndarray:
    """Folded one's-complement sum of big-endian 16-bit words of each blob slice.

    An odd final byte is padded with zero on the right (RFC 1071, section 1).
    """
    return simwriter.slice_word_sums(_bytes(blob), _int64(starts), _int64(lengths))


def copy_slices(out, destinations, blob, sources, lengths) -> None:
    """out[destinations[i]:+lengths[i]] = blob[sources[i]:+lengths[i]] for every i."""
    simwriter.copy_slices(out, _int64(destinations), _bytes(blob), _int64(sources), _int64(lengths))


def copy_rows(out, destinations, rows, lengths) -> None:
    """out[destinations[i]:+lengths[i]] = rows[i, :lengths[i]] for every i."""
    simwriter.copy_rows(out, _int64(destinations), _bytes(rows), _int64(lengths))

"""The Python edge of the L2-L4 decoder in ext/decode.pyx.

decode_batch() checks its arguments once per batch and hands the whole batch
to a nogil Cython loop, which fills the decode fields of every packet record
in place. A malformed or truncated packet does not raise. It is counted
under an anomaly name (ANOMALY_NAMES) and marked in its record's status and
anomaly fields. docs/decode.md describes every field, status and anomaly.
"""

import numpy as np

from engine._native import decode as _native
from engine.decode.layout import PACKET_DTYPE

ANOMALY_NAMES: tuple[str, ...] = _native.ANOMALY_NAMES
ANOMALY_COUNT: int = _native.ANOMALY_COUNT
SUPPORTED_LINK_TYPES: dict[int, str] = _native.SUPPORTED_LINK_TYPES
UNKNOWN_LINK_TYPE_SLOTS: int = _native.UNKNOWN_LINK_TYPE_SLOTS

if len(ANOMALY_NAMES) != ANOMALY_COUNT:
    raise ImportError(
        f"decoder lists {len(ANOMALY_NAMES)} anomaly names for {ANOMALY_COUNT} "
        "anomaly ids; rebuild engine._native.decode"
    )

# Row of the unknown-link-type table that counts link types seen after every
# other row was taken.
_OVERFLOW_LINK_TYPE = -1


def new_anomaly_counters() -> np.ndarray:
    """Return a zeroed int64 counter array indexed by anomaly id."""
    return np.zeros(ANOMALY_COUNT, dtype=np.int64)


def new_link_type_table() -> np.ndarray:
    """Return an empty table of (link_type, packets) rows for unknown link types.

    The first UNKNOWN_LINK_TYPE_SLOTS rows take link types in the order they
    appear and are never evicted. The last row has link type -1 and counts the
    packets of every link type that found the table full.
    """
    table = np.zeros((UNKNOWN_LINK_TYPE_SLOTS + 1, 2), dtype=np.int64)
    table[-1, 0] = _OVERFLOW_LINK_TYPE
    return table


def _check_array(name, array, dtype, ndim):
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.dtype != dtype:
        raise TypeError(f"{name} has dtype {array.dtype}; expected {dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} has {array.ndim} dimensions; expected {ndim}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} is not C-contiguous; pass np.ascontiguousarray({name})")
    if not array.flags.writeable:
        raise ValueError(f"{name} is read-only; the decoder writes into it")


def decode_batch(packets, data, counters=None, link_type_table=None) -> np.ndarray:
    """Decode a batch in place and return the anomaly counters.

    `packets` is a 1-D PACKET_DTYPE array whose capture fields (data_offset,
    caplen, wirelen, link_type) are filled; `data` is the uint8 buffer those
    offsets index. The decode fields of every record are overwritten.
    `counters` (from new_anomaly_counters) and `link_type_table` (from
    new_link_type_table) accumulate across batches; new ones are made when
    they are None.

    Raises TypeError or ValueError naming the argument when a dtype, shape or
    contiguity is wrong (nothing is decoded), and ValueError naming the first
    packet whose bytes lie outside `data` (the packets before it are decoded).
    """
    _check_array("packets", packets, PACKET_DTYPE, 1)
    if not isinstance(data, np.ndarray):
        raise TypeError(f"data must be a numpy uint8 array, got {type(data).__name__}")
    if data.dtype != np.uint8 or data.ndim != 1 or not data.flags.c_contiguous:
        raise TypeError(
            f"data must be a 1-D C-contiguous uint8 array, got dtype {data.dtype} "
            f"with shape {data.shape}"
        )
    if counters is None:
        counters = new_anomaly_counters()
    _check_array("counters", counters, np.dtype(np.int64), 1)
    if counters.shape[0] != ANOMALY_COUNT:
        raise ValueError(
            f"counters has {counters.shape[0]} entries; expected {ANOMALY_COUNT} "
            "(use new_anomaly_counters())"
        )
    if link_type_table is None:
        link_type_table = new_link_type_table()
    _check_array("link_type_table", link_type_table, np.dtype(np.int64), 2)
    expected_shape = (UNKNOWN_LINK_TYPE_SLOTS + 1, 2)
    if link_type_table.shape != expected_shape:
        raise ValueError(
            f"link_type_table has shape {link_type_table.shape}; expected "
            f"{expected_shape} (use new_link_type_table())"
        )

    bad_index = _native.decode_into(packets, data, counters, link_type_table)
    if bad_index >= 0:
        record = packets[bad_index]
        raise ValueError(
            f"packet {bad_index} (data_offset {int(record['data_offset'])}, caplen "
            f"{int(record['caplen'])}) ends past the {data.shape[0]}-byte data buffer; "
            "decoding stopped there"
        )
    return counters


def anomaly_counts(counters) -> dict[str, int]:
    """Map each anomaly name with a nonzero count to its count."""
    return {
        ANOMALY_NAMES[anomaly_id]: int(count)
        for anomaly_id, count in enumerate(counters)
        if anomaly_id != 0 and count
    }


def unknown_link_type_counts(link_type_table) -> dict[int, int]:
    """Map each unknown link type to its packet count; -1 collects the overflow."""
    return {
        int(link_type): int(count)
        for link_type, count in link_type_table
        if count
    }

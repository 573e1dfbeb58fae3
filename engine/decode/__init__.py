"""Packet decoding: the packet record layout and the L2-L4 decoder.

    from engine.decode import decode_batch, anomaly_counts

    counters = decode_batch(batch.packets, batch.data)   # fills decode fields in place
    anomaly_counts(counters)                              # {"truncated_tcp": 3, ...}

The decoder names are loaded on first use, so modules that only need
engine.decode.layout import without the compiled decoder.
"""

_DECODER_NAMES = (
    "ANOMALY_COUNT",
    "ANOMALY_NAMES",
    "SUPPORTED_LINK_TYPES",
    "UNKNOWN_LINK_TYPE_SLOTS",
    "anomaly_counts",
    "decode_batch",
    "new_anomaly_counters",
    "new_link_type_table",
    "unknown_link_type_counts",
)

__all__ = list(_DECODER_NAMES)


def __getattr__(name):
    if name in _DECODER_NAMES:
        from engine.decode import decoder

        return getattr(decoder, name)
    raise AttributeError(f"module 'engine.decode' has no attribute {name!r}")

"""Capture sources: pcap and pcapng files, compressed files and stdin.

    from engine.capture import open_capture, CaptureError

    with open_capture("trace.pcapng", batch_size=8192) as reader:
        for batch in reader:
            batch.packets  # PACKET_DTYPE records; capture fields filled, the rest zero
            batch.data     # uint8 array that packets["data_offset"] indexes
        reader.stats       # packets, bytes, records_skipped and anomaly counters

A batch stays valid for as long as the caller keeps a reference to it,
because every batch has its own packet array and its data array keeps the
mapped file or the stream chunk alive. See docs/capture.md for formats, link types and anomaly names.
"""

from engine.capture.files import (
    ANOMALY_NAMES,
    DEFAULT_BATCH_SIZE,
    Batch,
    CaptureError,
    CaptureReader,
    open_capture,
)

__all__ = [
    "ANOMALY_NAMES",
    "DEFAULT_BATCH_SIZE",
    "Batch",
    "CaptureError",
    "CaptureReader",
    "open_capture",
]

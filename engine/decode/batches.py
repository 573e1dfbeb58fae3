"""Build packet batches from raw frames, for tests, benchmarks and tools.

The capture reader makes batches from files and live capture. This helper
makes the same arrays from frames already in memory, such as bytes built
with dpkt or hex fixtures, to feed the decoder and the stages after it.
"""

import numpy as np

from engine.decode.layout import empty_packets


def build_batch(frames, link_type=1, wirelens=None, start_offset=0, gap=0):
    """Return (packets, data) for `frames`, one record per frame.

    Each frame is copied into `data` after `start_offset` bytes, with `gap`
    bytes between frames; the padding stays zero. `link_type` is one value or
    one per frame. `wirelens` defaults to each frame's length, as when nothing
    was cut by the snaplen.
    """
    frames = [bytes(frame) for frame in frames]
    count = len(frames)
    link_types = np.broadcast_to(np.asarray(link_type, dtype=np.uint16), (count,))
    if wirelens is None:
        wirelens = [len(frame) for frame in frames]
    if len(wirelens) != count:
        raise ValueError(f"got {len(wirelens)} wire lengths for {count} frames")

    packets = empty_packets(count)
    data = np.zeros(start_offset + sum(len(f) + gap for f in frames), dtype=np.uint8)
    offset = start_offset
    for index, frame in enumerate(frames):
        data[offset:offset + len(frame)] = np.frombuffer(frame, dtype=np.uint8)
        packets[index]["data_offset"] = offset
        packets[index]["caplen"] = len(frame)
        packets[index]["wirelen"] = wirelens[index]
        packets[index]["link_type"] = link_types[index]
        packets[index]["record_index"] = index
        offset += len(frame) + gap
    return packets, data

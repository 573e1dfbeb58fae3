"""The packet record dtype, derived from the ww_packet struct in ext/ww_packet.pxd."""

from engine._native.packet import packet_dtype, packet_itemsize

PACKET_DTYPE = packet_dtype()

if PACKET_DTYPE.itemsize != packet_itemsize():
    raise ImportError(
        f"packet dtype itemsize {PACKET_DTYPE.itemsize} differs from "
        f"sizeof(ww_packet) {packet_itemsize()}; rebuild the extensions"
    )


def empty_packets(count: int):
    """Return a zeroed packet array of `count` records."""
    import numpy as np

    return np.zeros(count, dtype=PACKET_DTYPE)

# Expose the ww_packet layout to Python as a NumPy dtype.
#
# The dtype comes from Cython's buffer format of ww_packet itself (a typed
# memoryview over one struct), so adding or reordering a field in packet.pxd
# changes the dtype with it.

cimport numpy as cnp
import numpy as np

from libc.string cimport memset

from ww_packet cimport ww_packet

cnp.import_array()


def packet_dtype():
    """Return the NumPy structured dtype of ww_packet."""
    cdef ww_packet sample
    memset(&sample, 0, sizeof(ww_packet))
    cdef ww_packet[::1] view = <ww_packet[:1]> &sample
    return np.asarray(view).dtype


def packet_itemsize():
    """Return sizeof(ww_packet) as the C compiler laid it out."""
    return sizeof(ww_packet)

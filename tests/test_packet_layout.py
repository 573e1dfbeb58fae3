"""The packet record dtype matches the C struct it is derived from."""

import numpy as np

from engine._native.packet import packet_itemsize
from engine.decode.layout import PACKET_DTYPE, empty_packets


def test_dtype_itemsize_matches_struct():
    assert PACKET_DTYPE.itemsize == packet_itemsize()


def test_dtype_key_field_offsets():
    # Pinned so a change to ww_packet is a deliberate, reviewed change: the
    # flow table and the features read these fields at these offsets.
    fields = PACKET_DTYPE.fields
    assert fields["ts_ns"][1] == 0
    assert fields["data_offset"][1] == 8
    assert fields["caplen"][1] == 16
    assert fields["src_addr"][0] == np.dtype(("u1", (16,)))
    assert fields["vlan_ids"][0] == np.dtype(("<u2", (3,)))
    assert PACKET_DTYPE.itemsize == 200


def test_empty_packets_zeroed():
    packets = empty_packets(4)
    assert packets.shape == (4,)
    assert packets["caplen"].sum() == 0

"""Packet decoding: the packet record layout and the L2-L4 decoder."""

# Per-flow stream capture for the application-layer inspectors.
#
# The kernel keeps, for each tracked flow, the first `stream_cap` bytes of
# each direction in TCP sequence order (UDP: the first datagrams, each with
# a 2-byte big-endian length prefix). Protocol parsers run on those bytes
# once per flow, so no Python code runs per packet.
#
# Bounds (all fixed when the table is created):
#   - `capacity` flows (a power of two); a new flow that arrives while the
#     table holds capacity * 3/4 flows is not tracked and is counted in
#     `table_full`. Tracked flows are never evicted to make room: a slot is
#     freed only when the flow ends, expires idle, or the table is flushed.
#   - `stream_cap` bytes per direction (default 4096). Bytes past the cap are
#     not stored and the direction is marked full.
#   - one out-of-order range per direction: a segment that arrives ahead of
#     the expected sequence number is written at its place in the buffer
#     (segments that extend it are added), and in-order data that reaches it
#     closes the hole. A disjoint out-of-order segment is dropped and counted
#     in `tcp_gap`; the stream then stops short at that hole.

from libc.stdint cimport INT64_MAX, INT64_MIN, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

cimport numpy as cnp
import numpy as np

from ww_packet cimport ww_packet

cnp.import_array()

# ww_inspect_flow.stream_flags bits, per direction.
cdef enum: STREAM_FULL = 0x01       # stream_cap reached
cdef enum: STREAM_GAP = 0x02        # an out-of-order segment was dropped: the stream may end short
cdef enum: STREAM_SNAPLEN = 0x04    # a segment was cut by the snaplen
cdef enum: STREAM_CLOSED = 0x08     # FIN or RST seen in this direction
cdef enum: STREAM_MIDSTREAM = 0x10  # no SYN seen: the stream starts at the first data segment
cdef enum: STREAM_SYN_SEEN = 0x20  # a SYN was seen in this direction
cdef enum: STREAM_DONE_MASK = 0x0D  # full, snaplen or closed: no more bytes will be stored

# ww_inspect_flow.state
cdef enum: SLOT_FREE = 0
cdef enum: SLOT_ACTIVE = 1      # bytes are being captured
cdef enum: SLOT_PARSED = 2      # results were taken; later packets are ignored until the flow ends

cdef enum: TCP_FIN = 0x01
cdef enum: TCP_SYN = 0x02
cdef enum: TCP_RST = 0x04

cdef enum: PROTO_TCP = 6
cdef enum: PROTO_UDP = 17
cdef enum: DIRECTION_UNSET = 0xFF
cdef enum: UDP_LENGTH_PREFIX = 2

STREAM_FLAG_NAMES = {
    0x01: "full",
    0x02: "gap",
    0x04: "snaplen",
    0x08: "closed",
    0x10: "midstream",
    0x20: "syn",
}

# Counter names, in the order of the counters array.
COUNTER_NAMES = (
    "packets_seen",        # packets handed to update()
    "packets_skipped",     # not TCP/UDP, not decoded, or no flow id
    "flows_tracked",       # flows given a slot
    "table_full",          # new flows not tracked because the table was full
    "tcp_retransmitted",   # segments entirely before the expected sequence
    "tcp_out_of_order",    # segments written ahead of a hole
    "tcp_gap",             # out-of-order segments dropped (disjoint from the tracked range)
    "snaplen_cut",         # segments shorter than the IP length claims
    "udp_datagrams",       # datagrams stored
    "flows_released",      # slots freed
    "flows_without_payload",  # flows ended or ready with no bytes captured: no result
)
cdef enum: C_PACKETS_SEEN = 0
cdef enum: C_PACKETS_SKIPPED = 1
cdef enum: C_FLOWS_TRACKED = 2
cdef enum: C_TABLE_FULL = 3
cdef enum: C_TCP_RETRANSMITTED = 4
cdef enum: C_TCP_OUT_OF_ORDER = 5
cdef enum: C_TCP_GAP = 6
cdef enum: C_SNAPLEN_CUT = 7
cdef enum: C_UDP_DATAGRAMS = 8
cdef enum: C_FLOWS_RELEASED = 9
cdef enum: C_FLOWS_WITHOUT_PAYLOAD = 10
cdef enum: N_COUNTERS = 11


ctypedef struct ww_inspect_flow:
    uint64_t flow_id             # flow id from the flow table; 0 marks a free slot
    int64_t first_ts_ns          # capture time of the first packet seen, ns since the epoch
    int64_t last_ts_ns           # capture time of the latest packet seen
    uint32_t next_seq[2]         # next expected TCP sequence number, per direction
    uint32_t stored_len[2]       # contiguous bytes in the stream buffer, per direction
    uint32_t hole_start[2]       # offset where data written past a hole starts; 0 without one
    uint32_t hole_end[2]         # end offset of data written past a hole; 0 without one
    uint32_t packets[2]          # packets seen, per direction
    uint64_t wire_bytes[2]       # L4 payload bytes on the wire, per direction
    uint16_t initiator_port      # TCP/UDP port of the side that sent direction 0
    uint16_t responder_port
    uint8_t initiator_addr[16]   # IP address, same layout as ww_packet.src_addr
    uint8_t responder_addr[16]
    uint8_t initiator_mac[6]     # outermost Ethernet address; zero without Ethernet
    uint8_t responder_mac[6]
    uint8_t seq_known[2]         # 1 once next_seq is set, per direction
    uint8_t stream_flags[2]      # STREAM_* bits, per direction
    uint8_t addr_known[2]        # 1 once a packet in this direction filled its endpoint
    uint8_t ip_proto             # 6 TCP, 17 UDP
    uint8_t ip_version           # 4 or 6
    uint8_t state                # SLOT_* value
    uint8_t end_requested        # 1 when the flow ended: the slot is freed once taken
    uint8_t ready                # 1 when both directions are done (or the flow ended)


def flow_dtype():
    """Return the NumPy dtype of ww_inspect_flow (derived from the struct)."""
    cdef ww_inspect_flow sample
    memset(&sample, 0, sizeof(ww_inspect_flow))
    cdef ww_inspect_flow[::1] view = <ww_inspect_flow[:1]> &sample
    return np.asarray(view).dtype


cdef inline uint64_t _hash_flow_id(uint64_t flow_id) noexcept nogil:
    return flow_id * <uint64_t>0x9E3779B97F4A7C15ULL


cdef dict _flow_record(ww_inspect_flow* f):
    # A dict built here costs far less per flow than indexing a NumPy record.
    return {
        "flow_id": f.flow_id,
        "first_ts_ns": f.first_ts_ns,
        "last_ts_ns": f.last_ts_ns,
        "stored_len": (f.stored_len[0], f.stored_len[1]),
        "packets": (f.packets[0], f.packets[1]),
        "wire_bytes": (f.wire_bytes[0], f.wire_bytes[1]),
        "stream_flags": (f.stream_flags[0], f.stream_flags[1]),
        "initiator_port": f.initiator_port,
        "responder_port": f.responder_port,
        "initiator_addr": (<char*>f.initiator_addr)[:16],
        "responder_addr": (<char*>f.responder_addr)[:16],
        "initiator_mac": (<char*>f.initiator_mac)[:6],
        "responder_mac": (<char*>f.responder_mac)[:6],
        "ip_proto": f.ip_proto,
        "ip_version": f.ip_version,
    }


cdef class StreamTable:
    """First bytes of both directions of each flow, keyed by flow id.

    `capacity` must be a power of two; `stream_cap` is bytes per direction.
    Memory is capacity * (2 * stream_cap + sizeof(ww_inspect_flow)) bytes,
    allocated once.
    """

    cdef readonly uint32_t capacity
    cdef readonly uint32_t stream_cap
    cdef readonly uint32_t max_tracked
    cdef readonly uint32_t tracked
    # Flows marked ready or ended since the last take_ready(); zero lets
    # take_ready() return without scanning every slot.
    cdef readonly uint64_t pending
    # Lower bound of last_ts_ns over tracked flows not yet ended; while it is
    # within the idle timeout, expire_idle() returns without a scan.
    cdef readonly int64_t oldest_ts_ns
    # Latest ts_ns of the last update() batch; INT64_MIN when it had no packets.
    cdef readonly int64_t batch_max_ts_ns
    cdef public object flows_array
    cdef public object streams_array
    cdef public object counters_array
    cdef ww_inspect_flow[::1] flows
    cdef uint8_t[:, :, ::1] streams
    cdef uint64_t[::1] counters

    def __cinit__(self, uint32_t capacity=4096, uint32_t stream_cap=4096):
        if capacity < 4 or (capacity & (capacity - 1)) != 0:
            raise ValueError(
                f"invalid capacity {capacity}; expected a power of two >= 4"
            )
        if stream_cap < 64 or stream_cap > 1 << 20:
            raise ValueError(
                f"invalid stream_cap {stream_cap}; expected 64 to 1048576 bytes"
            )
        self.capacity = capacity
        self.stream_cap = stream_cap
        self.max_tracked = capacity - capacity // 4
        self.tracked = 0
        self.pending = 0
        self.oldest_ts_ns = INT64_MAX
        self.batch_max_ts_ns = INT64_MIN
        self.flows_array = np.zeros(capacity, dtype=flow_dtype())
        # fill() writes every page now, so packets never pay a first-touch
        # page fault and the memory is committed when the table is made.
        self.streams_array = np.empty((capacity, 2, stream_cap), dtype=np.uint8)
        self.streams_array.fill(0)
        self.counters_array = np.zeros(N_COUNTERS, dtype=np.uint64)
        self.flows = self.flows_array
        self.streams = self.streams_array
        self.counters = self.counters_array

    def counters_dict(self):
        """Return the counters as {name: value}."""
        return {name: int(self.counters_array[i]) for i, name in enumerate(COUNTER_NAMES)}

    cdef int64_t _find(self, uint64_t flow_id) noexcept nogil:
        cdef uint32_t mask = self.capacity - 1
        cdef uint32_t i = <uint32_t>(_hash_flow_id(flow_id) >> 32) & mask
        cdef uint32_t probes = 0
        while probes < self.capacity:
            if self.flows[i].flow_id == flow_id:
                return i
            if self.flows[i].flow_id == 0:
                return -1
            i = (i + 1) & mask
            probes += 1
        return -1

    cdef int64_t _insert(self, uint64_t flow_id) noexcept nogil:
        cdef uint32_t mask = self.capacity - 1
        cdef uint32_t i
        if self.tracked >= self.max_tracked:
            self.counters[C_TABLE_FULL] += 1
            return -1
        i = <uint32_t>(_hash_flow_id(flow_id) >> 32) & mask
        while self.flows[i].flow_id != 0:
            i = (i + 1) & mask
        memset(&self.flows[i], 0, sizeof(ww_inspect_flow))
        self.flows[i].flow_id = flow_id
        self.flows[i].state = SLOT_ACTIVE
        self.tracked += 1
        self.counters[C_FLOWS_TRACKED] += 1
        return i

    cdef void _free(self, uint32_t slot) noexcept nogil:
        # Backward-shift deletion keeps linear probing correct without
        # tombstones: later entries of the same probe run move into the hole.
        cdef uint32_t mask = self.capacity - 1
        cdef uint32_t hole = slot
        cdef uint32_t j = slot
        cdef uint32_t home
        memset(&self.flows[hole], 0, sizeof(ww_inspect_flow))
        while True:
            j = (j + 1) & mask
            if self.flows[j].flow_id == 0:
                break
            home = <uint32_t>(_hash_flow_id(self.flows[j].flow_id) >> 32) & mask
            # Move j into the hole unless its home lies cyclically in (hole, j].
            if (j > hole and (home <= hole or home > j)) or (
                j < hole and (home <= hole and home > j)
            ):
                self.flows[hole] = self.flows[j]
                memcpy(&self.streams[hole, 0, 0], &self.streams[j, 0, 0], 2 * self.stream_cap)
                memset(&self.flows[j], 0, sizeof(ww_inspect_flow))
                hole = j
        self.tracked -= 1
        self.counters[C_FLOWS_RELEASED] += 1

    cdef void _append_tcp(self, uint32_t slot, uint8_t d, const ww_packet* p,
                          const uint8_t* payload, uint32_t present_len) noexcept nogil:
        cdef ww_inspect_flow* f = &self.flows[slot]
        cdef uint32_t wire_len = p.payload_wire_len
        cdef uint32_t skip = 0
        cdef uint32_t offset, n, end
        cdef int32_t diff
        cdef uint32_t seq = p.tcp_seq
        if wire_len < present_len:
            wire_len = present_len
        if p.tcp_flags & TCP_SYN:
            # The SYN takes one sequence number; data on a SYN (TCP Fast
            # Open, crafted packets) starts right after it.
            seq += 1
            f.stream_flags[d] |= STREAM_SYN_SEEN
            if not f.seq_known[d]:
                f.next_seq[d] = seq
                f.seq_known[d] = 1
        if wire_len == 0 or f.stream_flags[d] & (STREAM_FULL | STREAM_SNAPLEN):
            return
        if not f.seq_known[d]:
            f.next_seq[d] = seq
            f.seq_known[d] = 1
            f.stream_flags[d] |= STREAM_MIDSTREAM
        # Signed difference, so sequence wraparound compares correctly.
        diff = <int32_t>(seq - f.next_seq[d])
        if diff < 0:
            if <uint32_t>(-diff) >= wire_len:
                self.counters[C_TCP_RETRANSMITTED] += 1
                return
            skip = <uint32_t>(-diff)
            diff = 0
        offset = f.stored_len[d] + <uint32_t>diff
        if offset >= self.stream_cap:
            return
        n = present_len - skip if skip < present_len else 0
        if n > self.stream_cap - offset:
            n = self.stream_cap - offset
        if diff > 0:
            self._write_ahead(slot, d, offset, payload + skip, n)
            return
        if n > 0:
            memcpy(&self.streams[slot, d, offset], payload + skip, n)
        end = offset + n
        f.stored_len[d] = end
        f.next_seq[d] = seq + wire_len
        if present_len < wire_len:
            # The snaplen cut this segment: later bytes would not be contiguous.
            f.stream_flags[d] |= STREAM_SNAPLEN
            self.counters[C_SNAPLEN_CUT] += 1
            return
        if f.hole_end[d] != 0 and end >= f.hole_start[d]:
            # In-order data reached the bytes written ahead of the hole.
            if f.hole_end[d] > end:
                f.next_seq[d] += f.hole_end[d] - end
                f.stored_len[d] = f.hole_end[d]
            f.hole_start[d] = 0
            f.hole_end[d] = 0
        if f.stored_len[d] >= self.stream_cap:
            f.stream_flags[d] |= STREAM_FULL

    cdef void _write_ahead(self, uint32_t slot, uint8_t d, uint32_t offset,
                           const uint8_t* payload, uint32_t n) noexcept nogil:
        # Keep one contiguous range past the hole; a segment that neither
        # starts it nor extends it is dropped, so the stream may end short.
        cdef ww_inspect_flow* f = &self.flows[slot]
        if n == 0:
            return
        if f.hole_end[d] == 0:
            f.hole_start[d] = offset
            f.hole_end[d] = offset
        elif offset >= f.hole_start[d] and offset + n <= f.hole_end[d]:
            self.counters[C_TCP_RETRANSMITTED] += 1
            return
        elif offset != f.hole_end[d]:
            self.counters[C_TCP_GAP] += 1
            f.stream_flags[d] |= STREAM_GAP
            return
        memcpy(&self.streams[slot, d, offset], payload, n)
        f.hole_end[d] = offset + n
        self.counters[C_TCP_OUT_OF_ORDER] += 1

    cdef void _append_udp(self, uint32_t slot, uint8_t d, const uint8_t* payload,
                          uint32_t present_len) noexcept nogil:
        cdef ww_inspect_flow* f = &self.flows[slot]
        cdef uint32_t room, n
        if f.stream_flags[d] & STREAM_FULL:
            return
        room = self.stream_cap - f.stored_len[d]
        if room < UDP_LENGTH_PREFIX + 1:
            f.stream_flags[d] |= STREAM_FULL
            return
        n = present_len
        if n > room - UDP_LENGTH_PREFIX:
            # Store whole datagrams only, so parsers never see a cut message
            # that the capture itself did not cut.
            f.stream_flags[d] |= STREAM_FULL
            return
        self.streams[slot, d, f.stored_len[d]] = <uint8_t>(n >> 8)
        self.streams[slot, d, f.stored_len[d] + 1] = <uint8_t>(n & 0xFF)
        memcpy(&self.streams[slot, d, f.stored_len[d] + UDP_LENGTH_PREFIX], payload, n)
        f.stored_len[d] += UDP_LENGTH_PREFIX + n
        self.counters[C_UDP_DATAGRAMS] += 1

    def update(self, ww_packet[::1] packets, const uint8_t[::1] data):
        """Capture the payload of each TCP/UDP packet into its flow's streams.

        Packets need flow_id and direction from the flow table. Returns the
        number of flows that became ready (both directions done) in this batch.
        """
        cdef Py_ssize_t i, n = packets.shape[0]
        cdef Py_ssize_t data_len = data.shape[0]
        cdef const ww_packet* p
        cdef ww_inspect_flow* f
        cdef int64_t slot
        cdef uint8_t d, other
        cdef uint32_t present_len
        cdef uint64_t start
        cdef uint32_t newly_ready = 0
        cdef int64_t batch_max_ts_ns = INT64_MIN
        with nogil:
            for i in range(n):
                p = &packets[i]
                self.counters[C_PACKETS_SEEN] += 1
                if p.ts_ns > batch_max_ts_ns:
                    batch_max_ts_ns = p.ts_ns
                if (p.status != 0 or p.flow_id == 0 or p.direction > 1
                        or (p.ip_proto != PROTO_TCP and p.ip_proto != PROTO_UDP)):
                    self.counters[C_PACKETS_SKIPPED] += 1
                    continue
                d = p.direction
                slot = self._find(p.flow_id)
                if slot < 0:
                    slot = self._insert(p.flow_id)
                    if slot < 0:
                        continue
                    f = &self.flows[slot]
                    f.first_ts_ns = p.ts_ns
                    if p.ts_ns < self.oldest_ts_ns:
                        self.oldest_ts_ns = p.ts_ns
                    f.ip_proto = p.ip_proto
                    f.ip_version = p.ip_version
                f = &self.flows[slot]
                if p.ts_ns > f.last_ts_ns:
                    f.last_ts_ns = p.ts_ns
                f.packets[d] += 1
                f.wire_bytes[d] += p.payload_wire_len
                if not f.addr_known[d]:
                    f.addr_known[d] = 1
                    other = 1 - d
                    if d == 0:
                        memcpy(f.initiator_addr, p.src_addr, 16)
                        memcpy(f.responder_addr, p.dst_addr, 16)
                        memcpy(f.initiator_mac, p.eth_src, 6)
                        memcpy(f.responder_mac, p.eth_dst, 6)
                        f.initiator_port = p.src_port
                        f.responder_port = p.dst_port
                    elif not f.addr_known[other]:
                        memcpy(f.initiator_addr, p.dst_addr, 16)
                        memcpy(f.responder_addr, p.src_addr, 16)
                        memcpy(f.initiator_mac, p.eth_dst, 6)
                        memcpy(f.responder_mac, p.eth_src, 6)
                        f.initiator_port = p.dst_port
                        f.responder_port = p.src_port
                if f.state != SLOT_ACTIVE:
                    continue
                present_len = p.payload_len
                if p.payload_wire_len < present_len:
                    # Ethernet padding can make the captured payload look longer.
                    present_len = p.payload_wire_len
                start = p.data_offset + p.payload_offset
                if present_len > 0 and (p.payload_offset == 0 or start + present_len > <uint64_t>data_len):
                    self.counters[C_PACKETS_SKIPPED] += 1
                    continue
                if p.payload_wire_len > present_len:
                    if p.ip_proto == PROTO_UDP:
                        self.counters[C_SNAPLEN_CUT] += 1
                if p.ip_proto == PROTO_TCP:
                    self._append_tcp(<uint32_t>slot, d, p, &data[start] if present_len > 0 else NULL, present_len)
                    if p.tcp_flags & (TCP_FIN | TCP_RST):
                        f.stream_flags[d] |= STREAM_CLOSED
                        if p.tcp_flags & TCP_RST:
                            f.stream_flags[1 - d] |= STREAM_CLOSED
                elif present_len > 0:
                    self._append_udp(<uint32_t>slot, d, &data[start], present_len)
                if (not f.ready and f.stream_flags[0] & STREAM_DONE_MASK
                        and f.stream_flags[1] & STREAM_DONE_MASK):
                    f.ready = 1
                    newly_ready += 1
        self.batch_max_ts_ns = batch_max_ts_ns
        self.pending += newly_ready
        return newly_ready

    def end_flows(self, const uint64_t[::1] flow_ids):
        """Mark flows as ended (flow table expiry): take() frees their slots."""
        cdef Py_ssize_t i
        cdef int64_t slot
        with nogil:
            for i in range(flow_ids.shape[0]):
                slot = self._find(flow_ids[i])
                if slot >= 0:
                    self.flows[slot].end_requested = 1
                    self.flows[slot].ready = 1
                    self.pending += 1

    def expire_idle(self, int64_t now_ns, int64_t idle_timeout_ns):
        """Mark flows idle since before now_ns - idle_timeout_ns as ended."""
        cdef uint32_t i
        cdef int64_t limit = now_ns - idle_timeout_ns
        cdef int64_t oldest = INT64_MAX
        cdef ww_inspect_flow* f
        if self.oldest_ts_ns >= limit:
            return
        with nogil:
            for i in range(self.capacity):
                f = &self.flows[i]
                if f.flow_id == 0 or f.end_requested:
                    continue
                if f.last_ts_ns < limit:
                    f.end_requested = 1
                    f.ready = 1
                    self.pending += 1
                elif f.last_ts_ns < oldest:
                    oldest = f.last_ts_ns
        self.oldest_ts_ns = oldest

    def end_all(self):
        """Mark every tracked flow as ended (end of capture)."""
        cdef uint32_t i
        for i in range(self.capacity):
            if self.flows[i].flow_id != 0:
                self.flows[i].end_requested = 1
                self.flows[i].ready = 1
                self.pending += 1

    def take_ready(self):
        """Return (flow record dict, initiator bytes, responder bytes) for each ready flow.

        The dict has the ww_inspect_flow field names; two-element fields are
        tuples and addresses are bytes.

        Flows already parsed return nothing again. Ended flows are freed;
        other ready flows stay as parsed so their later packets are ignored.
        """
        cdef uint32_t i
        cdef ww_inspect_flow* f
        cdef int64_t slot
        cdef list taken = []
        cdef list to_free = []
        if self.pending == 0:
            return taken
        self.pending = 0
        for i in range(self.capacity):
            f = &self.flows[i]
            if f.flow_id == 0 or not f.ready:
                continue
            if f.state == SLOT_ACTIVE and f.stored_len[0] == 0 and f.stored_len[1] == 0:
                # Nothing was captured (handshake only, or no payload yet):
                # there is nothing to parse, so no result is made.
                self.counters[C_FLOWS_WITHOUT_PAYLOAD] += 1
                f.state = SLOT_PARSED
            if f.state == SLOT_ACTIVE:
                taken.append((
                    _flow_record(f),
                    (<char*>&self.streams[i, 0, 0])[:f.stored_len[0]],
                    (<char*>&self.streams[i, 1, 0])[:f.stored_len[1]],
                ))
                f.state = SLOT_PARSED
            if f.end_requested:
                to_free.append(f.flow_id)
        # Free after the scan: backward-shift deletion moves entries, which
        # would otherwise make the scan skip or revisit some of them.
        for flow_id in to_free:
            slot = self._find(flow_id)
            if slot >= 0:
                self._free(<uint32_t>slot)
        return taken

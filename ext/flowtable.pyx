# The bidirectional flow table: assigns each decoded packet to a flow, keeps
# per-flow and per-direction statistics, and exports ww_flow records when
# flows end. engine.flows.table wraps it; see docs/flows.md for the fields.
#
# Layout. Flows live in a pool of `capacity` entries handed out from a free
# list, so the memory a run touches follows the number of live flows, not the
# capture length. An open-addressing index (linear probing, backward-shift
# deletion so there are no tombstones) maps a canonical key to its pool
# slot. The index starts small and doubles whenever live flows fill half of
# it, until it has at least two buckets per pool entry, so a large capacity
# does not spread a few flows over an index too big for the CPU caches. The slot number is the
# packets' flow_slot and stays valid while the flow lives.
#
# Entries keep only what packets update, split by cache line (flow_entry
# below); the ww_flow record is built when a flow is exported. update()
# prefetches the bucket and entry of packets a few places ahead, because
# with tens of thousands of flows most entries are not in the CPU caches.
#
# Closing. A TCP flow that ends (RST, or FIN from both sides then an ACK)
# stays in its slot, marked closed, until close_delay_ns of capture time
# pass without a packet of it. The late ACK or repeated RST that often
# follows a close thus joins the flow instead of opening a one-packet flow
# (counter packets_after_close). The delay runs from the last packet, as
# the idle timeout does, so the sweep reads no more of a closed entry than
# of an open one. The active timeout still ends a closed flow that keeps
# getting late packets. A SYN without ACK on a closed flow is a new
# connection reusing the ports: the closed flow is exported and the SYN
# starts the next one. A close delay of 0 exports a flow at the packet that
# ends it.
#
# Bounds. Pool: `capacity` live flows, closed ones included; when it is
# full, a closed flow among the index neighbours of the new key is exported
# as `end_of_flow`, or else the least recently seen one as `evicted`
# (counters flow_table_full and flows_evicted). Fragment map:
# FRAGMENT_MAP_SIZE entries, direct-mapped, a newer first fragment
# overwrites an older one (counter fragment_map_overwrites). Export buffer:
# grows to the largest number of flows ended by one call.

cimport cython
cimport numpy as cnp
import numpy as np

from libc.math cimport sqrt
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcmp, memcpy, memset

from ww_packet cimport (
    WW_DIRECTION_UNSET,
    WW_FRAG_IS_FRAGMENT,
    WW_STATUS_MALFORMED,
    WW_STATUS_TRUNCATED,
    ww_packet,
)
from ww_flow cimport (
    WW_CONN_OTH,
    WW_CONN_REJ,
    WW_CONN_RSTO,
    WW_CONN_RSTOS0,
    WW_CONN_RSTR,
    WW_CONN_RSTRH,
    WW_CONN_S0,
    WW_CONN_S1,
    WW_CONN_S2,
    WW_CONN_S3,
    WW_CONN_SF,
    WW_CONN_SH,
    WW_CONN_SHR,
    WW_EXPIRATION_ACTIVE,
    WW_EXPIRATION_END_OF_FLOW,
    WW_EXPIRATION_EVICTED,
    WW_EXPIRATION_FLUSHED,
    WW_EXPIRATION_IDLE,
    WW_EXPIRATION_LIVE,
    ww_flow,
    ww_flow_direction,
)

cdef extern from *:
    """
    /* Prefetch for writing into all cache levels. */
    static inline void ww_prefetch_write(const void *address) { __builtin_prefetch(address, 1, 3); }
    static inline int ww_lowest_bit(unsigned int value) { return __builtin_ctz(value); }
    """
    void ww_prefetch_write(const void *address) noexcept nogil
    int ww_lowest_bit(unsigned int value) noexcept nogil

cdef extern from "ww_flow_hash.h" nogil:
    int ww_sha1_short(const uint8_t *message, size_t length, uint8_t *digest)
    void ww_base64_encode(const uint8_t *data, size_t length, char *text)

cnp.import_array()

cdef enum:
    IPPROTO_ICMP = 1
    IPPROTO_TCP = 6
    IPPROTO_UDP = 17
    IPPROTO_ICMPV6 = 58
    IPPROTO_SCTP = 132

cdef enum:
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    TCP_PSH = 0x08
    TCP_ACK = 0x10
    TCP_URG = 0x20
    TCP_ECE = 0x40
    TCP_CWR = 0x80

# Per-direction TCP events (direction_state.events) that conn_state reads.
cdef enum:
    EVENT_SYN = 0x01        # SYN without ACK
    EVENT_SYNACK = 0x02     # SYN with ACK
    EVENT_FIN = 0x04
    EVENT_RST = 0x08

# History letters, one bit each in entry.history_seen[direction]; a letter
# is written the first time its event happens in that direction.
cdef enum:
    HISTORY_SYN = 0         # S s
    HISTORY_SYNACK = 1      # H h
    HISTORY_ACK = 2         # A a: pure ACK (no SYN, FIN, RST or payload)
    HISTORY_DATA = 3        # D d: payload bytes
    HISTORY_FIN = 4         # F f
    HISTORY_RST = 5         # R r

cdef enum:
    FRAGMENT_MAP_SIZE = 4096
    # Pool entries scanned per update() for idle and active timeouts, at least.
    SWEEP_MIN_ENTRIES = 4096
    # Index buckets inspected for an eviction victim when the pool is full.
    EVICTION_WINDOW = 32
    EMPTY_BUCKET = 0
    INITIAL_BUCKETS = 4096
    # update() builds the key of packet i + PREFETCH_DISTANCE and starts
    # loading its index bucket, then starts loading the flow entry of packet
    # i + PREFETCH_DISTANCE / 2, so both are in cache when packet i needs
    # them. PREFETCH_RING is a power of two above the distance.
    PREFETCH_DISTANCE = 8
    PREFETCH_RING = 16

# A first fragment older than this (capture time) no longer claims later
# fragments; 30 s is below the 60 s reassembly timeout Linux uses.
cdef int64_t FRAGMENT_MAX_AGE_NS = 30000000000
# clock_ns before the first IP packet.
cdef int64_t CLOCK_UNSET = -(1 << 62)
# A packet more than this ahead of the clock moves it only once the next
# packet is not back more than this before it. One bad timestamp (a record
# dated years ahead) otherwise ended every live flow by idle timeout and
# split the rest of the capture into one-packet flows; a real gap in
# traffic is confirmed by its second packet. The packet's own flow still
# times out against its own timestamp.
# The same rule runs backwards: a packet more than this behind the clock,
# followed by one no more than this after it, means the clock was stepped
# back (NTP, a wrong RTC, captures given out of time order), and the clock
# moves back to it (counter clock_steps_back). Without that, every flow
# started after the step looked idle at the next sweep. A single old packet
# followed by one near the clock is an outlier and leaves the clock alone.
cdef int64_t CLOCK_JUMP_NS = 60 * 1000000000


ctypedef struct flow_key:
    # Canonical order: (addr_lo, port_lo) is the smaller endpoint, compared
    # as 16 address bytes then the port, so both directions build the same
    # key. Every byte, padding included, is written, so keys compare and hash
    # as plain memory.
    uint8_t addr_lo[16]
    uint8_t addr_hi[16]
    uint16_t port_lo
    uint16_t port_hi
    uint16_t vlan_ids[3]
    uint8_t ip_version
    uint8_t ip_proto
    uint32_t tunnel_id
    uint8_t tunnel_type
    uint8_t pad[7]


# Statistics of one direction while its flow lives. The first cache line
# is written by every packet of the direction, the second by every later
# one (intervals) and by TCP flags. finish_direction() derives the exported
# ww_flow_direction from it.
ctypedef struct direction_stats:
    uint64_t packets
    uint64_t bytes             # sum of wire lengths
    uint64_t payload_bytes
    int64_t first_seen_ns      # smallest timestamp
    int64_t last_seen_ns       # largest timestamp, the base of the next interval
    uint32_t min_ps
    uint32_t max_ps
    double mean_ps
    double ps_m2               # Welford sum of squared deviations of the size
    double min_piat_ms
    double max_piat_ms
    double mean_piat_ms
    double piat_m2
    uint32_t flag_packets[8]   # packets with TCP flag bit b set: bit 0 FIN ... bit 7 CWR


# The bidirectional state that every packet reads or writes: one cache
# line. Bidirectional sizes, bytes and flag counts are not kept here but
# merged from the two directions when the flow is exported.
ctypedef struct flow_hot:
    int64_t first_seen_ns      # smallest timestamp: the active timeout runs from it
    int64_t last_seen_ns       # largest timestamp: the idle timeout runs from it
    uint64_t packets
    double min_piat_ms         # inter-arrival times over both directions
    double max_piat_ms
    double mean_piat_ms
    double piat_m2
    uint8_t initiator_is_lo    # the initiator is the key's lo endpoint
    uint8_t fin_directions     # bit d: direction d sent a FIN
    uint8_t last_fin_direction
    uint8_t events[2]          # EVENT_* bits by direction (TCP)
    uint8_t history_seen[2]    # HISTORY_* bits by direction
    uint8_t closed             # the flow ended and waits out the close delay


# Fields read only when a flow starts, ends or gets a history letter.
ctypedef struct flow_cold:
    uint8_t src_mac[6]         # initiator side, from the first packet
    uint8_t dst_mac[6]
    uint32_t fragments
    char history[16]
    uint8_t history_len
    uint8_t vlan_depth
    uint8_t flipped            # a reply came first, so the initiator is its receiver
    uint8_t one_way            # ICMP type without a reply type (Community ID)
    uint8_t pad[28]            # rounds flow_entry up to a multiple of 64 bytes


# One pool slot, 448 bytes on a 64-byte boundary: a lookup reads line 0
# (key and flow_id), a packet then writes line 1 and the one or two lines
# of its direction, so a packet touches at most four lines of its flow.
ctypedef struct flow_entry:
    flow_key key
    uint64_t flow_id           # 0 while the slot is free
    flow_hot hot
    direction_stats dirs[2]    # src2dst, dst2src
    flow_cold cold


# A flow key built ahead of its packet by prepare_key().
ctypedef struct pending_key:
    flow_key key
    uint64_t hash
    int src_is_lo              # -1: no key built, process_packet builds it
    uint8_t one_way


ctypedef struct fragment_entry:
    uint8_t src_addr[16]
    uint8_t dst_addr[16]
    uint32_t frag_id
    uint8_t ip_version
    uint8_t ip_proto
    uint8_t direction
    uint8_t used
    uint32_t slot
    uint64_t flow_id
    int64_t ts_ns


ctypedef struct table_counters:
    uint64_t packets
    uint64_t packets_without_flow      # no IP layer (ARP, non-IP, undecodable)
    uint64_t packets_without_ports     # TCP/UDP cut before its ports
    uint64_t flows_created
    uint64_t flows_expired_idle
    uint64_t flows_expired_active
    uint64_t flows_ended
    uint64_t packets_after_close       # late packets added to a closed flow within the close delay
    uint64_t flows_evicted
    uint64_t flow_table_full
    uint64_t flows_flushed
    uint64_t timestamp_backwards
    uint64_t timestamp_jumps_held      # a packet far ahead of the clock that the next packet did not confirm
    uint64_t clock_steps_back          # the clock moved back to a packet far behind it that the next one confirmed
    uint64_t fragments_attributed
    uint64_t fragments_unattributed
    uint64_t fragment_map_overwrites
    uint64_t index_grow_failed         # the index could not double (out of memory)


ctypedef struct table_state:
    flow_entry *pool           # 64-byte aligned start inside pool_allocation
    void *pool_allocation      # what calloc returned, for free()
    uint32_t capacity
    uint32_t *free_slots
    uint32_t free_count
    uint32_t high_water        # pool slots below this have been used
    uint32_t sweep_cursor
    uint64_t *buckets          # (hash >> 32) << 32 | (slot + 1); 0 is empty
    uint64_t bucket_mask
    uint64_t max_buckets       # the index stops doubling at this size
    fragment_entry *fragments
    int64_t idle_timeout_ns
    int64_t active_timeout_ns
    int64_t close_delay_ns     # at most idle_timeout_ns; 0 exports a flow when it ends
    int64_t clock_ns           # largest confirmed capture time since the last step back: timeouts run on it
    int64_t previous_ts_ns
    int64_t jump_candidate_ns  # a time far ahead of or behind clock_ns, waiting for a second packet near it
    uint64_t next_flow_id
    uint64_t live_flows
    uint16_t community_id_seed
    ww_flow *exports
    uint64_t export_count
    uint64_t export_capacity
    int export_failed          # realloc failed: the caller raises MemoryError
    table_counters counters


# ---------------------------------------------------------------- helpers

cdef inline uint64_t mix64(uint64_t value) noexcept nogil:
    # The MurmurHash3 64-bit finaliser: full avalanche for the bucket index.
    value ^= value >> 33
    value *= 0xff51afd7ed558ccdULL
    value ^= value >> 33
    value *= 0xc4ceb9fe1a85ec53ULL
    value ^= value >> 33
    return value


cdef inline uint64_t hash_key(const flow_key *key) noexcept nogil:
    # Multiply-xor over the key's seven words, then one full avalanche.
    cdef uint64_t words[7]
    cdef uint64_t value = 0x9E3779B97F4A7C15ULL
    cdef int i
    memcpy(words, key, sizeof(flow_key))
    for i in range(7):
        value = (value ^ words[i]) * 0xbf58476d1ce4e5b9ULL
        value ^= value >> 31
    return mix64(value)


cdef inline int icmp_reply_type(uint8_t ip_proto, uint8_t icmp_type) noexcept nogil:
    # The type that answers `icmp_type`, or -1 for a one-way type. The pairs
    # are those of the Community ID specification v1 (ICMP and ICMPv6).
    if ip_proto == IPPROTO_ICMP:
        if icmp_type == 8: return 0        # echo request / reply
        if icmp_type == 0: return 8
        if icmp_type == 13: return 14      # timestamp
        if icmp_type == 14: return 13
        if icmp_type == 15: return 16      # information
        if icmp_type == 16: return 15
        if icmp_type == 10: return 9       # router solicitation / advertisement
        if icmp_type == 9: return 10
        if icmp_type == 17: return 18      # address mask
        if icmp_type == 18: return 17
        return -1
    if icmp_type == 128: return 129        # echo request / reply
    if icmp_type == 129: return 128
    if icmp_type == 130: return 131        # multicast listener query / report
    if icmp_type == 131: return 130
    if icmp_type == 133: return 134        # router solicitation / advertisement
    if icmp_type == 134: return 133
    if icmp_type == 135: return 136        # neighbor solicitation / advertisement
    if icmp_type == 136: return 135
    if icmp_type == 139: return 140        # node information query / response
    if icmp_type == 140: return 139
    if icmp_type == 144: return 145        # home agent address discovery
    if icmp_type == 145: return 144
    return -1


cdef inline int has_ports(uint8_t ip_proto) noexcept nogil:
    return ip_proto == IPPROTO_TCP or ip_proto == IPPROTO_UDP or ip_proto == IPPROTO_SCTP


cdef inline int build_key(const ww_packet *packet, uint16_t src_port, uint16_t dst_port,
                          flow_key *key) noexcept nogil:
    # Fill `key` for a packet with these ports; return 1 if the packet's
    # source is the key's lo endpoint.
    cdef int order = memcmp(packet.src_addr, packet.dst_addr, 16)
    cdef int src_is_lo = order < 0 or (order == 0 and src_port <= dst_port)
    memset(key, 0, sizeof(flow_key))
    if src_is_lo:
        memcpy(key.addr_lo, packet.src_addr, 16)
        memcpy(key.addr_hi, packet.dst_addr, 16)
        key.port_lo = src_port
        key.port_hi = dst_port
    else:
        memcpy(key.addr_lo, packet.dst_addr, 16)
        memcpy(key.addr_hi, packet.src_addr, 16)
        key.port_lo = dst_port
        key.port_hi = src_port
    key.vlan_ids[0] = packet.vlan_ids[0]
    key.vlan_ids[1] = packet.vlan_ids[1]
    key.vlan_ids[2] = packet.vlan_ids[2]
    key.ip_version = packet.ip_version
    key.ip_proto = packet.ip_proto
    key.tunnel_id = packet.tunnel_id
    key.tunnel_type = packet.tunnel_type
    return src_is_lo


# ---------------------------------------------------------------- index

cdef inline uint64_t home_bucket(uint64_t hash_or_bucket, uint64_t mask) noexcept nogil:
    # The home bucket comes from the high 32 bits of the hash, which every
    # bucket stores as its tag, so deleting and regrowing never reads the
    # pool. The index has at most 2^32 buckets (capacity < 2^31).
    return (hash_or_bucket >> 32) & mask


cdef inline int64_t index_find(table_state *t, const flow_key *key, uint64_t h,
                               uint64_t *position) noexcept nogil:
    # Return the pool slot of `key`, or -1 with *position at the empty bucket
    # where it would go.
    cdef uint64_t i = home_bucket(h, t.bucket_mask)
    cdef uint64_t bucket
    cdef uint64_t tag = h >> 32
    cdef uint32_t slot
    while True:
        bucket = t.buckets[i]
        if bucket == EMPTY_BUCKET:
            position[0] = i
            return -1
        if (bucket >> 32) == tag:
            slot = <uint32_t>(bucket & 0xFFFFFFFFULL) - 1
            if memcmp(&t.pool[slot].key, key, sizeof(flow_key)) == 0:
                position[0] = i
                return slot
        i = (i + 1) & t.bucket_mask


cdef inline void index_remove(table_state *t, uint32_t slot) noexcept nogil:
    # Delete the bucket of `slot` and shift later members of its cluster
    # back, so lookups never need tombstones.
    cdef uint64_t mask = t.bucket_mask
    cdef uint64_t i = home_bucket(hash_key(&t.pool[slot].key), mask)
    cdef uint64_t j, home, bucket
    while (t.buckets[i] & 0xFFFFFFFFULL) != <uint64_t>slot + 1:
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        bucket = t.buckets[j]
        if bucket == EMPTY_BUCKET:
            break
        home = home_bucket(bucket, mask)
        # The entry at j may move to the hole at i unless its home bucket
        # lies cyclically in (i, j].
        if i <= j:
            if i < home and home <= j:
                continue
        else:
            if i < home or home <= j:
                continue
        t.buckets[i] = bucket
        i = j
    t.buckets[i] = EMPTY_BUCKET


cdef inline int key_ports(const ww_packet *packet, uint16_t *src_port, uint16_t *dst_port,
                          uint8_t *one_way) noexcept nogil:
    # Set the key ports of a packet that is not a later fragment; return 0
    # when a TCP, UDP or SCTP packet was cut before its ports.
    cdef int reply_type
    src_port[0] = 0
    dst_port[0] = 0
    one_way[0] = 0
    if has_ports(packet.ip_proto):
        if packet.l4_offset == 0 and (packet.status == WW_STATUS_TRUNCATED
                                      or packet.status == WW_STATUS_MALFORMED):
            return 0
        src_port[0] = packet.src_port
        dst_port[0] = packet.dst_port
    elif packet.ip_proto == IPPROTO_ICMP or packet.ip_proto == IPPROTO_ICMPV6:
        # NOTE: ICMP errors (unreachable, time exceeded) form flows of their
        # own and are not attributed to the flow of the packet they quote.
        src_port[0] = packet.icmp_type
        reply_type = icmp_reply_type(packet.ip_proto, packet.icmp_type)
        if reply_type >= 0:
            dst_port[0] = <uint16_t>reply_type
        else:
            dst_port[0] = packet.icmp_code
            one_way[0] = 1
    return 1


cdef inline void prepare_key(table_state *t, pending_key *pending,
                             const ww_packet *packet) noexcept nogil:
    # Build the key of a packet that update() reaches PREFETCH_DISTANCE
    # packets later, and start loading its home bucket. A later fragment
    # (its flow comes from the fragment map) or a packet without a flow is
    # left to process_packet.
    cdef uint16_t src_port, dst_port
    pending.src_is_lo = -1
    if packet.ip_version != 4 and packet.ip_version != 6:
        return
    if (packet.frag_flags & WW_FRAG_IS_FRAGMENT) and packet.frag_offset > 0:
        return
    if not key_ports(packet, &src_port, &dst_port, &pending.one_way):
        return
    pending.src_is_lo = build_key(packet, src_port, dst_port, &pending.key)
    pending.hash = hash_key(&pending.key)
    ww_prefetch_write(&t.buckets[home_bucket(pending.hash, t.bucket_mask)])


cdef inline void prefetch_entry(const table_state *t, const pending_key *pending) noexcept nogil:
    # Start loading the lines a packet of a known flow writes. Only the home
    # bucket is checked, so a flow further down its cluster is not
    # prefetched; the table may also change before the packet comes, which
    # costs a wasted load and nothing else.
    cdef uint64_t bucket
    cdef const flow_entry *e
    if pending.src_is_lo < 0:
        return
    bucket = t.buckets[home_bucket(pending.hash, t.bucket_mask)]
    if bucket == EMPTY_BUCKET or (bucket >> 32) != (pending.hash >> 32):
        return
    e = &t.pool[(bucket & 0xFFFFFFFFULL) - 1]
    ww_prefetch_write(e)
    ww_prefetch_write(&e.hot)
    ww_prefetch_write(&e.dirs[0])
    ww_prefetch_write(&e.dirs[1])


# ---------------------------------------------------------------- records

cdef inline void copy_flag_counts(ww_flow_direction *out, const uint32_t *counts) noexcept nogil:
    out.fin_packets = counts[0]
    out.syn_packets = counts[1]
    out.rst_packets = counts[2]
    out.psh_packets = counts[3]
    out.ack_packets = counts[4]
    out.urg_packets = counts[5]
    out.ece_packets = counts[6]
    out.cwr_packets = counts[7]


cdef void finish_direction(ww_flow_direction *out, const direction_stats *s) noexcept nogil:
    out.first_seen_ns = s.first_seen_ns
    out.last_seen_ns = s.last_seen_ns
    out.duration_ms = (s.last_seen_ns - s.first_seen_ns) / 1e6
    out.packets = s.packets
    out.bytes = s.bytes
    out.payload_bytes = s.payload_bytes
    out.min_ps = s.min_ps
    out.max_ps = s.max_ps
    out.mean_ps = s.mean_ps
    out.stddev_ps = sqrt(s.ps_m2 / (s.packets - 1)) if s.packets > 1 else 0.0
    out.min_piat_ms = s.min_piat_ms
    out.max_piat_ms = s.max_piat_ms
    out.mean_piat_ms = s.mean_piat_ms
    out.stddev_piat_ms = sqrt(s.piat_m2 / (s.packets - 2)) if s.packets > 2 else 0.0
    copy_flag_counts(out, s.flag_packets)


cdef void finish_bidirectional(ww_flow_direction *out, const flow_hot *h,
                               const direction_stats *a, const direction_stats *b) noexcept nogil:
    # Sizes and flags merge the two directions; the size mean and variance
    # combine with the pairwise formula of Chan, Golub and LeVeque (1979),
    # which equals the sequential Welford result up to rounding.
    cdef uint32_t counts[8]
    cdef double n, delta, m2
    cdef int k
    cdef const direction_stats *only
    out.first_seen_ns = h.first_seen_ns
    out.last_seen_ns = h.last_seen_ns
    out.duration_ms = (h.last_seen_ns - h.first_seen_ns) / 1e6
    out.packets = a.packets + b.packets
    out.bytes = a.bytes + b.bytes
    out.payload_bytes = a.payload_bytes + b.payload_bytes
    if a.packets == 0 or b.packets == 0:
        only = b if a.packets == 0 else a
        out.min_ps = only.min_ps
        out.max_ps = only.max_ps
        out.mean_ps = only.mean_ps
        m2 = only.ps_m2
    else:
        out.min_ps = a.min_ps if a.min_ps < b.min_ps else b.min_ps
        out.max_ps = a.max_ps if a.max_ps > b.max_ps else b.max_ps
        n = <double>(a.packets + b.packets)
        delta = b.mean_ps - a.mean_ps
        out.mean_ps = a.mean_ps + delta * (<double>b.packets / n)
        m2 = a.ps_m2 + b.ps_m2 + delta * delta * (<double>a.packets * <double>b.packets / n)
    out.stddev_ps = sqrt(m2 / (out.packets - 1)) if out.packets > 1 else 0.0
    out.min_piat_ms = h.min_piat_ms
    out.max_piat_ms = h.max_piat_ms
    out.mean_piat_ms = h.mean_piat_ms
    out.stddev_piat_ms = sqrt(h.piat_m2 / (h.packets - 2)) if h.packets > 2 else 0.0
    for k in range(8):
        counts[k] = a.flag_packets[k] + b.flag_packets[k]
    copy_flag_counts(out, counts)


cdef uint8_t conn_state_of(const flow_entry *e) noexcept nogil:
    # Zeek-like conn_state from the TCP events of each side; docs/flows.md
    # lists the rules in this order.
    cdef uint8_t orig = e.hot.events[0]
    cdef uint8_t resp = e.hot.events[1]
    cdef uint64_t resp_packets = e.dirs[1].packets
    if e.key.ip_proto != IPPROTO_TCP:
        return WW_CONN_SF if resp_packets > 0 else WW_CONN_S0
    if resp & EVENT_RST:
        if (orig & EVENT_SYN) and not (resp & EVENT_SYNACK):
            return WW_CONN_REJ
        if (resp & EVENT_SYNACK) and not (orig & EVENT_SYN):
            return WW_CONN_RSTRH
        return WW_CONN_RSTR
    if orig & EVENT_RST:
        if (orig & EVENT_SYN) and not (resp & EVENT_SYNACK):
            return WW_CONN_RSTOS0
        return WW_CONN_RSTO
    if (orig & EVENT_FIN) and (resp & EVENT_FIN):
        return WW_CONN_SF
    if orig & EVENT_FIN:
        if (orig & EVENT_SYN) and not (resp & EVENT_SYNACK):
            return WW_CONN_SH
        return WW_CONN_S2
    if resp & EVENT_FIN:
        if (resp & EVENT_SYNACK) and not (orig & EVENT_SYN):
            return WW_CONN_SHR
        return WW_CONN_S3
    if (orig & EVENT_SYN) and resp_packets == 0:
        return WW_CONN_S0
    if (orig & EVENT_SYN) and (resp & EVENT_SYNACK):
        return WW_CONN_S1
    return WW_CONN_OTH


cdef void write_community_id(ww_flow *record, uint8_t one_way, uint16_t seed) noexcept nogil:
    # Community ID v1: SHA-1 over seed, both addresses, protocol, a zero
    # byte and (for port protocols and ICMP) both ports, all in network
    # order, with the smaller (address, port) endpoint first unless the
    # ICMP type is one-way. The text is "1:" + base64 of the digest.
    cdef uint8_t message[40]
    cdef uint8_t digest[20]
    cdef size_t n = 0
    cdef int address_len = 4 if record.ip_version == 4 else 16
    cdef const uint8_t *first_addr = record.src_addr
    cdef const uint8_t *second_addr = record.dst_addr
    cdef uint16_t first_port = record.src_port
    cdef uint16_t second_port = record.dst_port
    cdef int order
    cdef int with_ports = has_ports(record.ip_proto) or record.ip_proto == IPPROTO_ICMP \
        or record.ip_proto == IPPROTO_ICMPV6
    if not one_way:
        order = memcmp(record.src_addr, record.dst_addr, address_len)
        if order > 0 or (order == 0 and with_ports and record.src_port > record.dst_port):
            first_addr = record.dst_addr
            second_addr = record.src_addr
            first_port = record.dst_port
            second_port = record.src_port
    message[0] = seed >> 8
    message[1] = seed & 0xFF
    n = 2
    memcpy(&message[n], first_addr, address_len)
    n += address_len
    memcpy(&message[n], second_addr, address_len)
    n += address_len
    message[n] = record.ip_proto
    message[n + 1] = 0
    n += 2
    if with_ports:
        message[n] = first_port >> 8
        message[n + 1] = first_port & 0xFF
        message[n + 2] = second_port >> 8
        message[n + 3] = second_port & 0xFF
        n += 4
    ww_sha1_short(message, n, digest)
    record.community_id[0] = b'1'
    record.community_id[1] = b':'
    ww_base64_encode(digest, 20, &record.community_id[2])


cdef int export_entry(table_state *t, flow_entry *e, uint8_t reason) noexcept nogil:
    # Append a finished copy of e.record to the export buffer; 0 on success.
    cdef ww_flow *grown
    cdef uint64_t new_capacity
    cdef ww_flow *out
    if t.export_count == t.export_capacity:
        new_capacity = t.export_capacity * 2 if t.export_capacity else 1024
        grown = <ww_flow *>realloc(t.exports, new_capacity * sizeof(ww_flow))
        if grown == NULL:
            t.export_failed = 1
            return -1
        t.exports = grown
        t.export_capacity = new_capacity
    out = &t.exports[t.export_count]
    t.export_count += 1
    finish_record(e, out, reason, t.community_id_seed)
    return 0


cdef void finish_record(const flow_entry *e, ww_flow *out, uint8_t reason,
                        uint16_t seed) noexcept nogil:
    cdef const flow_key *key = &e.key
    memset(out, 0, sizeof(ww_flow))
    out.flow_id = e.flow_id
    if e.hot.initiator_is_lo:
        memcpy(out.src_addr, key.addr_lo, 16)
        memcpy(out.dst_addr, key.addr_hi, 16)
        out.src_port = key.port_lo
        out.dst_port = key.port_hi
    else:
        memcpy(out.src_addr, key.addr_hi, 16)
        memcpy(out.dst_addr, key.addr_lo, 16)
        out.src_port = key.port_hi
        out.dst_port = key.port_lo
    memcpy(out.vlan_ids, key.vlan_ids, sizeof(key.vlan_ids))
    out.vlan_depth = e.cold.vlan_depth
    out.ip_version = key.ip_version
    out.ip_proto = key.ip_proto
    out.tunnel_type = key.tunnel_type
    out.tunnel_id = key.tunnel_id
    memcpy(out.src_mac, e.cold.src_mac, 6)
    memcpy(out.dst_mac, e.cold.dst_mac, 6)
    out.fragments = e.cold.fragments
    memcpy(out.history, e.cold.history, 16)
    out.expiration_id = reason
    finish_direction(&out.src2dst, &e.dirs[0])
    finish_direction(&out.dst2src, &e.dirs[1])
    finish_bidirectional(&out.bidirectional, &e.hot, &e.dirs[0], &e.dirs[1])
    out.conn_state = conn_state_of(e)
    write_community_id(out, e.cold.one_way, seed)


cdef inline void release_slot(table_state *t, uint32_t slot) noexcept nogil:
    index_remove(t, slot)
    t.pool[slot].flow_id = 0
    t.free_slots[t.free_count] = slot
    t.free_count += 1
    t.live_flows -= 1


cdef inline void export_closed(table_state *t, flow_entry *e) noexcept nogil:
    # Export a flow that ended (now, or earlier and waited out the close
    # delay); the caller frees or reuses its slot.
    export_entry(t, e, WW_EXPIRATION_END_OF_FLOW)
    t.counters.flows_ended += 1


cdef inline void close_flow(table_state *t, flow_entry *e, uint32_t slot) noexcept nogil:
    # The flow's TCP connection ended: keep it for the close delay so late
    # packets join it, or export it at once without a delay.
    if t.close_delay_ns == 0:
        export_closed(t, e)
        release_slot(t, slot)
        return
    e.hot.closed = 1


cdef inline int closed_flow_over(const table_state *t, const flow_entry *e,
                                 int64_t now_ns) noexcept nogil:
    # A closed flow is over once the close delay has passed since its last
    # packet, or once it has lasted the active timeout.
    return now_ns - e.hot.last_seen_ns > t.close_delay_ns or \
        now_ns - e.hot.first_seen_ns > t.active_timeout_ns


cdef inline int before_flow(const table_state *t, const flow_entry *e, int64_t now_ns) noexcept nogil:
    # A packet more than the idle timeout before a flow's first packet can
    # no more belong to it than one that long after its last packet. This
    # happens after the clock steps back, and without the check the flow's
    # duration would span the step.
    return e.hot.first_seen_ns - now_ns > t.idle_timeout_ns


# ---------------------------------------------------------------- flow life

cdef inline uint8_t is_reply_segment(const ww_packet *packet) noexcept nogil:
    # Return 1 if a TCP segment that opens a flow is taken as a reply: its
    # receiver started the connection and the capture missed the opening
    # packet. A SYN-ACK replies to a SYN. A host sends an RST-ACK to a SYN at
    # a closed port (RFC 9293 section 3.10.7.1), but a client that aborts a
    # connection begun before the capture sends one too. Services mostly
    # listen on low ports, and clients send from ephemeral ones (from 32768
    # on Linux by default, 49152 in RFC 6335). So an RST-ACK counts as a
    # reply only when it comes from the lower port.
    cdef uint8_t flags = packet.tcp_flags
    if (flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK):
        return 1
    if (flags & (TCP_SYN | TCP_RST | TCP_ACK)) == (TCP_RST | TCP_ACK):
        return packet.src_port < packet.dst_port
    # NOTE: a flow picked up midstream (ACK, data or FIN first) keeps its
    # first sender as initiator, even when the ports say it is the server.
    return 0

cdef void start_flow(table_state *t, flow_entry *e, const ww_packet *packet, int sender_is_lo,
                     int sender_is_initiator, uint8_t flipped) noexcept nogil:
    # Reset e (its key and cold.one_way already set) for a new flow whose
    # initiator is the packet's sender when sender_is_initiator.
    cdef flow_key key = e.key
    cdef uint8_t one_way = e.cold.one_way
    memset(e, 0, sizeof(flow_entry))
    e.key = key
    e.cold.one_way = one_way
    e.cold.flipped = flipped
    e.hot.initiator_is_lo = sender_is_lo if sender_is_initiator else not sender_is_lo
    t.next_flow_id += 1
    e.flow_id = t.next_flow_id
    e.cold.vlan_depth = packet.vlan_depth if packet.vlan_depth < 3 else 3
    if sender_is_initiator:
        memcpy(e.cold.src_mac, packet.eth_src, 6)
        memcpy(e.cold.dst_mac, packet.eth_dst, 6)
    else:
        memcpy(e.cold.src_mac, packet.eth_dst, 6)
        memcpy(e.cold.dst_mac, packet.eth_src, 6)
    if flipped:
        e.cold.history[0] = b'^'
        e.cold.history_len = 1
    t.counters.flows_created += 1


cdef inline void add_history(flow_entry *e, int direction, int letter) noexcept nogil:
    cdef char *letters = b"SHADFR" if direction == 0 else b"shadfr"
    if e.hot.history_seen[direction] & (1 << letter):
        return
    e.hot.history_seen[direction] |= 1 << letter
    if e.cold.history_len < 15:
        e.cold.history[e.cold.history_len] = letters[letter]
        e.cold.history_len += 1


cdef inline void count_flags(uint32_t *counts, uint8_t flags) noexcept nogil:
    # One step per set flag; most segments carry one or two.
    cdef unsigned int remaining = flags
    while remaining:
        counts[ww_lowest_bit(remaining)] += 1
        remaining &= remaining - 1


cdef inline void add_interval(double *min_ms, double *max_ms, double *mean_ms, double *m2,
                              uint64_t intervals, double piat_ms) noexcept nogil:
    # Welford update with the interval count after this interval.
    cdef double previous_mean
    if intervals == 1:
        min_ms[0] = piat_ms
        max_ms[0] = piat_ms
        mean_ms[0] = piat_ms
        return
    if piat_ms < min_ms[0]:
        min_ms[0] = piat_ms
    if piat_ms > max_ms[0]:
        max_ms[0] = piat_ms
    previous_mean = mean_ms[0]
    mean_ms[0] += (piat_ms - previous_mean) / intervals
    m2[0] += (piat_ms - previous_mean) * (piat_ms - mean_ms[0])


cdef inline void add_to_direction(direction_stats *d, int64_t ts_ns, uint32_t size,
                                  uint32_t payload) noexcept nogil:
    cdef double x = size
    cdef double previous_mean, piat_ms
    if d.packets == 0:
        d.first_seen_ns = ts_ns
        d.last_seen_ns = ts_ns
        d.min_ps = size
        d.max_ps = size
        d.mean_ps = x
    else:
        # Intervals are measured from the latest timestamp so far, so a
        # packet stamped earlier than its predecessor adds an interval of 0.
        piat_ms = (ts_ns - d.last_seen_ns) * 1e-6 if ts_ns > d.last_seen_ns else 0.0
        add_interval(&d.min_piat_ms, &d.max_piat_ms, &d.mean_piat_ms, &d.piat_m2,
                     d.packets, piat_ms)
        if ts_ns > d.last_seen_ns:
            d.last_seen_ns = ts_ns
        if ts_ns < d.first_seen_ns:
            d.first_seen_ns = ts_ns
        if size < d.min_ps:
            d.min_ps = size
        if size > d.max_ps:
            d.max_ps = size
        previous_mean = d.mean_ps
        d.mean_ps += (x - previous_mean) / (d.packets + 1)
        d.ps_m2 += (x - previous_mean) * (x - d.mean_ps)
    d.packets += 1
    d.bytes += size
    d.payload_bytes += payload


cdef inline void add_to_bidirectional(flow_hot *h, int64_t ts_ns) noexcept nogil:
    cdef double piat_ms
    if h.packets == 0:
        h.first_seen_ns = ts_ns
        h.last_seen_ns = ts_ns
    else:
        piat_ms = (ts_ns - h.last_seen_ns) * 1e-6 if ts_ns > h.last_seen_ns else 0.0
        add_interval(&h.min_piat_ms, &h.max_piat_ms, &h.mean_piat_ms, &h.piat_m2,
                     h.packets, piat_ms)
        if ts_ns > h.last_seen_ns:
            h.last_seen_ns = ts_ns
        if ts_ns < h.first_seen_ns:
            h.first_seen_ns = ts_ns
    h.packets += 1


cdef int add_packet(flow_entry *e, const ww_packet *packet, int direction,
                    int is_tcp) noexcept nogil:
    # Add the packet to e's statistics; return 1 if it ends a TCP flow.
    cdef direction_stats *d = &e.dirs[direction]
    cdef uint8_t flags = packet.tcp_flags
    cdef uint32_t payload = packet.payload_wire_len
    add_to_direction(d, packet.ts_ns, packet.wirelen, payload)
    add_to_bidirectional(&e.hot, packet.ts_ns)
    if not is_tcp:
        if payload > 0:
            add_history(e, direction, HISTORY_DATA)
        return 0

    count_flags(d.flag_packets, flags)
    if flags & TCP_SYN:
        if flags & TCP_ACK:
            e.hot.events[direction] |= EVENT_SYNACK
            add_history(e, direction, HISTORY_SYNACK)
        else:
            e.hot.events[direction] |= EVENT_SYN
            add_history(e, direction, HISTORY_SYN)
    if payload > 0:
        add_history(e, direction, HISTORY_DATA)
    elif (flags & TCP_ACK) and not (flags & (TCP_SYN | TCP_FIN | TCP_RST)):
        add_history(e, direction, HISTORY_ACK)
    if flags & TCP_FIN:
        e.hot.events[direction] |= EVENT_FIN
        add_history(e, direction, HISTORY_FIN)
    if flags & TCP_RST:
        e.hot.events[direction] |= EVENT_RST
        add_history(e, direction, HISTORY_RST)
        return 1

    # FIN from both sides ends the flow once the side that sent the first
    # FIN acknowledges the second one.
    if flags & TCP_FIN:
        if not (e.hot.fin_directions & (1 << direction)):
            e.hot.fin_directions |= 1 << direction
            e.hot.last_fin_direction = direction
        return 0
    if e.hot.fin_directions == 3 and (flags & TCP_ACK) and direction != e.hot.last_fin_direction:
        return 1
    return 0


cdef int grow_index(table_state *t) noexcept nogil:
    # Double the index and reinsert every bucket at its home in the new
    # size; the tags carry the hash bits, so no pool entry is read.
    cdef uint64_t count = (t.bucket_mask + 1) * 2
    cdef uint64_t mask = count - 1
    cdef uint64_t *grown = <uint64_t *>calloc(count, sizeof(uint64_t))
    cdef uint64_t i, j, bucket
    if grown == NULL:
        t.counters.index_grow_failed += 1
        return -1
    for j in range(t.bucket_mask + 1):
        bucket = t.buckets[j]
        if bucket == EMPTY_BUCKET:
            continue
        i = home_bucket(bucket, mask)
        while grown[i] != EMPTY_BUCKET:
            i = (i + 1) & mask
        grown[i] = bucket
    free(t.buckets)
    t.buckets = grown
    t.bucket_mask = mask
    return 0


cdef int64_t evict_one(table_state *t, uint64_t h) noexcept nogil:
    # Free a slot among the index buckets from h's home bucket on and
    # return it. A closed flow goes first, because it has ended and only
    # waits for late packets; otherwise the least recently seen flow.
    cdef uint64_t i = home_bucket(h, t.bucket_mask)
    cdef uint64_t bucket
    cdef int k
    cdef int64_t victim = -1
    cdef int64_t oldest = 0
    cdef uint8_t victim_closed = 0
    cdef uint32_t slot
    cdef const flow_entry *candidate
    for k in range(EVICTION_WINDOW):
        bucket = t.buckets[(i + k) & t.bucket_mask]
        if bucket != EMPTY_BUCKET:
            slot = <uint32_t>(bucket & 0xFFFFFFFFULL) - 1
            candidate = &t.pool[slot]
            if victim >= 0 and candidate.hot.closed < victim_closed:
                continue
            if victim < 0 or candidate.hot.closed > victim_closed \
                    or candidate.hot.last_seen_ns < oldest:
                victim = slot
                oldest = candidate.hot.last_seen_ns
                victim_closed = candidate.hot.closed
    if victim < 0:
        # An empty window is unlikely because a full table has at least a
        # quarter of its buckets in use. Take the sweep cursor's flow or the
        # next live one.
        victim = t.sweep_cursor % t.high_water
        while t.pool[victim].flow_id == 0:
            victim = (victim + 1) % t.high_water
    if t.pool[victim].hot.closed:
        export_closed(t, &t.pool[victim])
    else:
        export_entry(t, &t.pool[victim], WW_EXPIRATION_EVICTED)
        t.counters.flows_evicted += 1
    release_slot(t, <uint32_t>victim)
    return victim


cdef inline uint32_t fragment_index(const ww_packet *packet) noexcept nogil:
    cdef uint64_t words[4]
    cdef uint64_t value
    memcpy(words, packet.src_addr, 16)
    memcpy(&words[2], packet.dst_addr, 16)
    value = mix64(words[0] ^ mix64(words[1] ^ mix64(words[2] ^ mix64(words[3]))))
    value = mix64(value ^ packet.frag_id ^ (<uint64_t>packet.ip_proto << 32))
    return <uint32_t>(value & (FRAGMENT_MAP_SIZE - 1))


cdef inline int fragment_matches(const fragment_entry *f, const ww_packet *packet) noexcept nogil:
    return f.used and f.frag_id == packet.frag_id and f.ip_proto == packet.ip_proto \
        and f.ip_version == packet.ip_version \
        and memcmp(f.src_addr, packet.src_addr, 16) == 0 \
        and memcmp(f.dst_addr, packet.dst_addr, 16) == 0


cdef void remember_fragment(table_state *t, const ww_packet *packet, uint32_t slot,
                            int direction) noexcept nogil:
    cdef fragment_entry *f = &t.fragments[fragment_index(packet)]
    if f.used and not fragment_matches(f, packet) and packet.ts_ns - f.ts_ns < FRAGMENT_MAX_AGE_NS:
        t.counters.fragment_map_overwrites += 1
    memcpy(f.src_addr, packet.src_addr, 16)
    memcpy(f.dst_addr, packet.dst_addr, 16)
    f.frag_id = packet.frag_id
    f.ip_version = packet.ip_version
    f.ip_proto = packet.ip_proto
    f.direction = direction
    f.used = 1
    f.slot = slot
    f.flow_id = t.pool[slot].flow_id
    f.ts_ns = packet.ts_ns


cdef int64_t attributed_fragment_slot(table_state *t, const ww_packet *packet,
                                      int *direction) noexcept nogil:
    # The live flow of this non-first fragment's first fragment, or -1.
    cdef fragment_entry *f = &t.fragments[fragment_index(packet)]
    if not fragment_matches(f, packet):
        return -1
    if packet.ts_ns - f.ts_ns > FRAGMENT_MAX_AGE_NS:
        return -1
    if t.pool[f.slot].flow_id != f.flow_id:
        return -1
    direction[0] = f.direction
    return f.slot


cdef void sweep(table_state *t, uint64_t budget) noexcept nogil:
    # Expire idle and over-age flows, and export closed flows past the close
    # delay, among `budget` pool entries from the cursor on, so a flow that
    # gets no more packets still ends on time.
    cdef uint64_t k
    cdef uint32_t slot
    cdef flow_entry *e
    if t.high_water == 0:
        return
    if budget > t.high_water:
        budget = t.high_water
    for k in range(budget):
        slot = t.sweep_cursor
        t.sweep_cursor += 1
        if t.sweep_cursor >= t.high_water:
            t.sweep_cursor = 0
        e = &t.pool[slot]
        if e.flow_id == 0:
            continue
        if e.hot.closed:
            if closed_flow_over(t, e, t.clock_ns):
                export_closed(t, e)
                release_slot(t, slot)
            continue
        if t.clock_ns - e.hot.last_seen_ns > t.idle_timeout_ns:
            export_entry(t, e, WW_EXPIRATION_IDLE)
            release_slot(t, slot)
            t.counters.flows_expired_idle += 1
        elif t.clock_ns - e.hot.first_seen_ns > t.active_timeout_ns:
            export_entry(t, e, WW_EXPIRATION_ACTIVE)
            release_slot(t, slot)
            t.counters.flows_expired_active += 1


cdef inline int64_t advance_clock(table_state *t, int64_t ts_ns) noexcept nogil:
    # Return the time the packet's own flow times out against: the clock,
    # or the packet's time while a jump ahead or a step back to it waits for
    # confirmation. A packet after a step back joins a flow of its key seen
    # before the step only while it lies within the idle timeout of that
    # flow's first packet (before_flow). Otherwise it ends that flow as idle.
    # NOTE: an outlier of a live flow's key, dated more than the idle
    # timeout back, therefore splits that flow in three: before, the
    # outlier alone, and after.
    if t.jump_candidate_ns != CLOCK_UNSET:
        if t.jump_candidate_ns > t.clock_ns:
            if ts_ns >= t.jump_candidate_ns - CLOCK_JUMP_NS:
                # Traffic went on from the far time: a real gap.
                t.clock_ns = t.jump_candidate_ns
            else:
                # The next packet fell back near the old clock: an outlier.
                t.counters.timestamp_jumps_held += 1
        elif ts_ns <= t.jump_candidate_ns + CLOCK_JUMP_NS:
            # Traffic went on from the earlier time: the clock stepped back.
            # Flows seen before the step keep their later timestamps, so
            # they stay in the table until the clock passes them again,
            # a flush or an eviction, and packets of the same key join them.
            t.clock_ns = t.jump_candidate_ns
            t.counters.clock_steps_back += 1
        t.jump_candidate_ns = CLOCK_UNSET
    if ts_ns <= t.clock_ns:
        if ts_ns < t.clock_ns - CLOCK_JUMP_NS:
            t.jump_candidate_ns = ts_ns
            return ts_ns
        return t.clock_ns
    if t.clock_ns == CLOCK_UNSET or ts_ns - t.clock_ns <= CLOCK_JUMP_NS:
        t.clock_ns = ts_ns
    else:
        t.jump_candidate_ns = ts_ns
    return ts_ns


cdef void process_packet(table_state *t, ww_packet *packet,
                         const pending_key *pending) noexcept nogil:
    # `pending` is the key prepare_key() built for this packet, if any.
    cdef flow_key built_key
    cdef const flow_key *key = &built_key
    cdef uint64_t h, position
    cdef int64_t found
    cdef uint32_t slot
    cdef int direction = 0
    cdef int src_is_lo, sender_is_initiator, ended
    cdef int after_close = 0
    cdef int is_tcp = packet.ip_proto == IPPROTO_TCP
    cdef int is_fragment = (packet.frag_flags & WW_FRAG_IS_FRAGMENT) != 0
    cdef int later_fragment = is_fragment and packet.frag_offset > 0
    cdef uint16_t src_port = 0, dst_port = 0
    cdef uint8_t flipped = 0
    cdef uint8_t one_way = 0
    cdef int64_t now_ns
    cdef flow_entry *e

    t.counters.packets += 1
    packet.direction = WW_DIRECTION_UNSET
    packet.flow_slot = 0
    packet.flow_id = 0
    if packet.ip_version != 4 and packet.ip_version != 6:
        t.counters.packets_without_flow += 1
        return
    if packet.ts_ns < t.previous_ts_ns:
        t.counters.timestamp_backwards += 1
    t.previous_ts_ns = packet.ts_ns
    now_ns = advance_clock(t, packet.ts_ns)

    if later_fragment:
        found = attributed_fragment_slot(t, packet, &direction)
        if found >= 0:
            e = &t.pool[found]
            e.cold.fragments += 1
            add_packet(e, packet, direction, 0)
            t.counters.fragments_attributed += 1
            packet.direction = direction
            packet.flow_slot = <uint32_t>found
            packet.flow_id = e.flow_id
            return
        # NOTE: a later fragment that arrives before its first fragment, or
        # after the map entry was overwritten, gets a flow of its own with
        # ports 0 instead of its real flow.
        t.counters.fragments_unattributed += 1
    elif pending.src_is_lo < 0 and not key_ports(packet, &src_port, &dst_port, &one_way):
        t.counters.packets_without_ports += 1
        return

    if pending.src_is_lo >= 0:
        key = &pending.key
        h = pending.hash
        src_is_lo = pending.src_is_lo
        one_way = pending.one_way
    else:
        src_is_lo = build_key(packet, src_port, dst_port, &built_key)
        h = hash_key(&built_key)
    found = index_find(t, key, h, &position)
    if found >= 0:
        slot = <uint32_t>found
        e = &t.pool[slot]
        if e.hot.closed:
            # A SYN without ACK reuses the ports for a new connection. Any
            # other packet within the close delay is a late one of the flow.
            if closed_flow_over(t, e, now_ns) or before_flow(t, e, now_ns) or \
                    (is_tcp and (packet.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN):
                export_closed(t, e)
                flipped = is_tcp and is_reply_segment(packet)
                start_flow(t, e, packet, src_is_lo, not flipped, flipped)
            else:
                after_close = 1
        elif now_ns - e.hot.last_seen_ns > t.idle_timeout_ns or before_flow(t, e, now_ns):
            export_entry(t, e, WW_EXPIRATION_IDLE)
            t.counters.flows_expired_idle += 1
            flipped = is_tcp and is_reply_segment(packet)
            start_flow(t, e, packet, src_is_lo, not flipped, flipped)
        elif now_ns - e.hot.first_seen_ns > t.active_timeout_ns:
            # The next segment of a long flow keeps the initiator it had.
            export_entry(t, e, WW_EXPIRATION_ACTIVE)
            t.counters.flows_expired_active += 1
            sender_is_initiator = (src_is_lo == e.hot.initiator_is_lo)
            flipped = e.cold.flipped
            start_flow(t, e, packet, src_is_lo, sender_is_initiator, flipped)
    else:
        if (t.live_flows + 1) * 2 > t.bucket_mask + 1 and t.bucket_mask + 1 < t.max_buckets:
            if grow_index(t) == 0:
                index_find(t, key, h, &position)
        # Full: no free pool slot, or an index that could not grow is three
        # quarters used, where linear probing slows down sharply.
        if t.free_count == 0 or (t.live_flows + 1) * 4 > (t.bucket_mask + 1) * 3:
            t.counters.flow_table_full += 1
            evict_one(t, h)
            index_find(t, key, h, &position)
        t.free_count -= 1
        slot = t.free_slots[t.free_count]
        if slot + 1 > t.high_water:
            t.high_water = slot + 1
        e = &t.pool[slot]
        e.key = key[0]
        e.cold.one_way = one_way
        t.buckets[position] = ((h >> 32) << 32) | (<uint64_t>slot + 1)
        t.live_flows += 1
        # A reply seen first answers a packet we missed: its receiver
        # initiated the connection.
        flipped = is_tcp and is_reply_segment(packet)
        start_flow(t, e, packet, src_is_lo, not flipped, flipped)

    direction = 0 if src_is_lo == e.hot.initiator_is_lo else 1
    if key.port_lo == key.port_hi and memcmp(key.addr_lo, key.addr_hi, 16) == 0:
        # Both endpoints are the same: every packet goes from the initiator.
        direction = 0
    ended = add_packet(e, packet, direction, is_tcp and not later_fragment)
    packet.direction = direction
    packet.flow_slot = slot
    packet.flow_id = e.flow_id
    if is_fragment and not later_fragment:
        remember_fragment(t, packet, slot, direction)
    if after_close:
        t.counters.packets_after_close += 1
    elif ended:
        close_flow(t, e, slot)


# ---------------------------------------------------------------- Python

def flow_dtype():
    """Return the NumPy structured dtype of ww_flow (nested per direction)."""
    cdef ww_flow sample
    memset(&sample, 0, sizeof(ww_flow))
    cdef ww_flow[::1] view = <ww_flow[:1]> &sample
    return np.asarray(view).dtype


def flow_itemsize():
    """Return sizeof(ww_flow) as the C compiler laid it out."""
    return sizeof(ww_flow)


def flow_entry_size():
    """Return sizeof(flow_entry): the bytes one live flow takes in the pool."""
    return sizeof(flow_entry)


def flow_key_size():
    """Return sizeof(flow_key): the bytes a key compares and hashes."""
    return sizeof(flow_key)


def community_id_for(int ip_version, int ip_proto, bytes src_addr, bytes dst_addr,
                     int src_port, int dst_port, bint one_way=False, int seed=0):
    """Compute a Community ID v1 string with the table's C code (for tests)."""
    cdef ww_flow record
    memset(&record, 0, sizeof(ww_flow))
    if len(src_addr) != len(dst_addr) or len(src_addr) not in (4, 16):
        raise ValueError(
            f"invalid address lengths {len(src_addr)} and {len(dst_addr)}; expected 4 or 16 bytes each"
        )
    memcpy(record.src_addr, <const char *>src_addr, len(src_addr))
    memcpy(record.dst_addr, <const char *>dst_addr, len(dst_addr))
    record.ip_version = ip_version
    record.ip_proto = ip_proto
    record.src_port = src_port
    record.dst_port = dst_port
    write_community_id(&record, one_way, seed)
    return record.community_id.decode("ascii")


cdef class FlowTableKernel:
    """The compiled flow table; engine.flows.FlowTable validates and wraps it."""

    cdef table_state t
    cdef object _dtype

    def __cinit__(self, uint32_t capacity, int64_t idle_timeout_ns, int64_t active_timeout_ns,
                  uint16_t community_id_seed, int64_t close_delay_ns):
        cdef uint64_t max_buckets = 16
        cdef uint64_t buckets
        cdef uint32_t i
        memset(&self.t, 0, sizeof(table_state))
        if capacity < 1:
            raise ValueError(f"invalid capacity {capacity}; expected at least 1 flow")
        if close_delay_ns < 0:
            raise ValueError(f"invalid close_delay_ns {close_delay_ns}; expected 0 or more")
        while max_buckets < 2 * <uint64_t>capacity:
            max_buckets <<= 1
        buckets = INITIAL_BUCKETS if INITIAL_BUCKETS < max_buckets else max_buckets
        self.t.capacity = capacity
        # calloc leaves pages untouched until a flow uses them; the extra
        # 64 bytes let every entry start on a cache line.
        self.t.pool_allocation = calloc(<size_t>capacity * sizeof(flow_entry) + 64, 1)
        if self.t.pool_allocation != NULL:
            self.t.pool = <flow_entry *>((<uintptr_t>self.t.pool_allocation + 63) & ~(<uintptr_t>63))
        self.t.free_slots = <uint32_t *>calloc(capacity, sizeof(uint32_t))
        self.t.buckets = <uint64_t *>calloc(buckets, sizeof(uint64_t))
        self.t.fragments = <fragment_entry *>calloc(FRAGMENT_MAP_SIZE, sizeof(fragment_entry))
        if (self.t.pool == NULL or self.t.free_slots == NULL or self.t.buckets == NULL
                or self.t.fragments == NULL):
            raise MemoryError(
                f"cannot allocate a flow table of {capacity} flows "
                f"({capacity * sizeof(flow_entry) // 1048576} MiB); lower the capacity"
            )
        self.t.bucket_mask = buckets - 1
        self.t.max_buckets = max_buckets
        # Slots are handed out from 0 upwards, so a small run touches only
        # the start of the pool.
        for i in range(capacity):
            self.t.free_slots[i] = capacity - 1 - i
        self.t.free_count = capacity
        self.t.idle_timeout_ns = idle_timeout_ns
        self.t.active_timeout_ns = active_timeout_ns
        # A closed flow is idle, so it never waits longer than the idle timeout.
        self.t.close_delay_ns = close_delay_ns if close_delay_ns < idle_timeout_ns else idle_timeout_ns
        self.t.community_id_seed = community_id_seed
        self.t.clock_ns = CLOCK_UNSET
        self.t.previous_ts_ns = CLOCK_UNSET
        self.t.jump_candidate_ns = CLOCK_UNSET
        self._dtype = flow_dtype()

    def __dealloc__(self):
        free(self.t.pool_allocation)
        free(self.t.free_slots)
        free(self.t.buckets)
        free(self.t.fragments)
        free(self.t.exports)

    cdef object _take_exports(self):
        cdef cnp.ndarray out = np.empty(self.t.export_count, dtype=self._dtype)
        if self.t.export_count:
            memcpy(cnp.PyArray_DATA(out), self.t.exports, self.t.export_count * sizeof(ww_flow))
        self.t.export_count = 0
        if self.t.export_failed:
            self.t.export_failed = 0
            raise MemoryError("cannot grow the flow export buffer; flows ended in this batch were lost")
        return out

    @cython.boundscheck(False)
    def update(self, ww_packet[::1] packets):
        """Assign flows to a batch; return the flows that ended, as ww_flow rows."""
        cdef Py_ssize_t i, n = packets.shape[0]
        cdef uint64_t budget = n if n > SWEEP_MIN_ENTRIES else SWEEP_MIN_ENTRIES
        cdef pending_key ring[PREFETCH_RING]
        with nogil:
            for i in range(min(n, <Py_ssize_t>PREFETCH_DISTANCE)):
                prepare_key(&self.t, &ring[i], &packets[i])
            for i in range(n):
                if i + PREFETCH_DISTANCE < n:
                    prepare_key(&self.t, &ring[(i + PREFETCH_DISTANCE) & (PREFETCH_RING - 1)],
                                &packets[i + PREFETCH_DISTANCE])
                if i + PREFETCH_DISTANCE // 2 < n:
                    prefetch_entry(&self.t, &ring[(i + PREFETCH_DISTANCE // 2) & (PREFETCH_RING - 1)])
                process_packet(&self.t, &packets[i], &ring[i & (PREFETCH_RING - 1)])
            # While a step back waits for its second packet the clock is
            # still the later one, and the sweep would end the flow of the
            # packet behind it at once. The next batch sweeps instead.
            if self.t.jump_candidate_ns == CLOCK_UNSET or self.t.jump_candidate_ns > self.t.clock_ns:
                sweep(&self.t, budget)
        return self._take_exports()

    def flush(self):
        """End every live flow (reason flushed, or end_of_flow if closed) and return them."""
        cdef uint32_t slot
        with nogil:
            for slot in range(self.t.high_water):
                if self.t.pool[slot].flow_id == 0:
                    continue
                if self.t.pool[slot].hot.closed:
                    export_closed(&self.t, &self.t.pool[slot])
                else:
                    export_entry(&self.t, &self.t.pool[slot], WW_EXPIRATION_FLUSHED)
                    self.t.counters.flows_flushed += 1
                self.t.pool[slot].flow_id = 0
            memset(self.t.buckets, 0, (self.t.bucket_mask + 1) * sizeof(uint64_t))
            for slot in range(self.t.capacity):
                self.t.free_slots[slot] = self.t.capacity - 1 - slot
            self.t.free_count = self.t.capacity
            self.t.high_water = 0
            self.t.sweep_cursor = 0
            self.t.live_flows = 0
        return self._take_exports()

    def active_snapshot(self, int64_t min_age_ns):
        """Return copies of open flows that started at least min_age_ns ago.

        Closed flows waiting out the close delay are left out: they have
        ended and are exported as end_of_flow soon.
        """
        cdef uint32_t slot
        cdef flow_entry *e
        with nogil:
            for slot in range(self.t.high_water):
                e = &self.t.pool[slot]
                if e.flow_id != 0 and not e.hot.closed and \
                        self.t.clock_ns - e.hot.first_seen_ns >= min_age_ns:
                    export_entry(&self.t, e, WW_EXPIRATION_LIVE)
        return self._take_exports()

    @property
    def clock_ns(self):
        """Capture time the timeouts run on, ns; None before the first IP packet.

        It is the largest time seen since the last confirmed step back.
        """
        return None if self.t.clock_ns == CLOCK_UNSET else self.t.clock_ns

    @property
    def live_flows(self):
        return self.t.live_flows

    @property
    def counters(self):
        """The table's counters as a dict of ints."""
        return dict(self.t.counters)

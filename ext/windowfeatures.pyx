# Damped window statistics: the batch update and the feature query.
#
# engine.features.kernels wraps these functions and documents the tables,
# the statistics and the eviction rule; the field and counter indices below
# must equal the constants there (the tests compare every output against
# slow references written from the definitions).
#
# Every table is an open-addressing array of fixed capacity (a power of
# two). A key is looked up in at most MAX_PROBE slots from its hash; when
# all of them hold other keys, the slot with the oldest activity time is
# reused and the table's eviction counter goes up. Slots are never emptied.
#
# A table is one C-contiguous float64 array [capacity, row_words], 64-byte
# aligned, and a slot is one row: a header of eight words (the key, its
# last activity time, its landmark and one spare value), then the
# statistics [windows, fields], then per-table extras, padded to whole
# cache lines. An update reads and writes one slot's lines only: with the
# key, times and sums in separate arrays a packet touched about 44 lines
# over its five keys, and the misses on them, not the arithmetic, bounded
# the update rate.

cimport cython
from libc.math cimport INFINITY, NAN, exp, sqrt
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef enum:
    MAX_PROBE = 8
    KEY_WORDS = 5

    # Slot header words. The key's words 0-4 are uint64; the rest float64.
    SLOT_TIME = 5  # last activity, seconds since base_ns
    SLOT_LANDMARK = 6  # the landmark the slot's sums are scaled to
    SLOT_AUX = 7  # hosts: time of the last packet sent (NaN before one)
    HEADER_WORDS = 8
    LINE_WORDS = 8
    # Pair rows end with the last packet time of each direction.
    PAIR_EXTRA_WORDS = 2

    H_W = 0
    H_LS = 1
    H_SS = 2
    H_IW = 3
    H_ILS = 4
    H_ISS = 5
    H_FAN_HOSTS = 6
    H_FAN_PORTS = 7
    H_FANIN = 8
    H_SYN = 9
    H_SYNACK = 10
    HOST_FIELDS = 11

    P_W = 0
    P_LS = 1
    P_SS = 2
    P_RES = 3
    P_DIRECTION_FIELDS = 4
    P_SR = 8
    PAIR_FIELDS = 9

    C_PACKETS = 0
    C_SKIPPED = 1
    C_HOST_EVICTED = 2
    C_PAIR_EVICTED = 3
    C_SOCKET_EVICTED = 4
    C_SERVICE_EVICTED = 5

    OUT_SRC_HOST = 0
    OUT_PAIR = 5
    OUT_SOCKET = 12
    OUT_FAN = 19
    OUT_PER_WINDOW = 24

    TCP_SYN = 0x02
    TCP_ACK = 0x10

    # Half-lives a table may carry, the size of the decay-factor buffer.
    # WindowFeatures rejects more, and update_tables checks it again.
    MAX_WINDOWS = 16

    # How far (in e-folds of the fastest half-life) the stored sums may grow
    # past their landmark before the landmark moves: exp(400) leaves over
    # 10^130 of headroom below the float64 limit for sums of squared sizes.
    RENORMALISE_NATS = 400
    # How far before the shared landmark a key's update may be and still
    # use it: exp(-300) keeps the sums far from the float64 subnormals. A
    # key updated further back (merged captures, a clock step) keeps a
    # landmark of its own until its updates catch up.
    BACKWARD_NATS = 300

    # Packets between key preparation (hash and prefetch) and the update
    # that uses the keys, and the ring that holds the prepared keys between
    # them (a power of two, larger than LOOKAHEAD).
    LOOKAHEAD = 6
    KEY_RING = 8

# Python-visible copies, so the wrapper can check they match its own.
LAYOUT = {
    "MAX_PROBE": MAX_PROBE, "KEY_WORDS": KEY_WORDS, "HOST_FIELDS": HOST_FIELDS,
    "PAIR_FIELDS": PAIR_FIELDS, "OUT_PER_WINDOW": OUT_PER_WINDOW, "MAX_WINDOWS": MAX_WINDOWS,
    "HEADER_WORDS": HEADER_WORDS,
}

# Key word 4 never uses its top bit (socket ports and protocol take 40
# bits), so a stored key carries it as the mark of a used slot: a zeroed
# slot cannot match any key, the all-zero address included.
cdef uint64_t USED_BIT = 1ULL << 63


def row_words(table, int windows):
    """Return the words per slot of a table ("host", "pair", "socket", "service") with `windows` half-lives."""
    cdef int words
    if table == "host":
        words = HEADER_WORDS + windows * HOST_FIELDS
    elif table == "pair":
        words = HEADER_WORDS + windows * PAIR_FIELDS + PAIR_EXTRA_WORDS
    elif table == "socket":
        words = HEADER_WORDS + windows * PAIR_FIELDS
    elif table == "service":
        words = HEADER_WORDS
    else:
        raise ValueError(f"invalid table {table!r}: expected host, pair, socket or service")
    return (words + LINE_WORDS - 1) // LINE_WORDS * LINE_WORDS

cdef extern from *:
    """
    #define WW_PREFETCH_WRITE(address) __builtin_prefetch((const void*)(address), 1, 3)
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    #define WW_LITTLE_ENDIAN 1
    #else
    #define WW_LITTLE_ENDIAN 0
    #endif
    """
    void WW_PREFETCH_WRITE(const void* address) noexcept nogil
    const bint WW_LITTLE_ENDIAN


cdef uint64_t MIX_1 = 0xBF58476D1CE4E5B9ULL
cdef uint64_t MIX_2 = 0x94D049BB133111EBULL
cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL


ctypedef struct key_table:
    double* rows  # [capacity, row_words]: slot header, statistics, extras
    Py_ssize_t row_words
    uint64_t mask  # capacity - 1
    int evict_counter  # index into counters


cdef inline double* _row(const key_table* table, uint64_t slot) noexcept nogil:
    return table.rows + <Py_ssize_t>slot * table.row_words


cdef inline uint64_t* _slot_key(double* row) noexcept nogil:
    return <uint64_t*>row


# Growth factors exp(rate * (t - landmark)) of one time t for every
# half-life. Most keys of a packet share its time, so the last result is
# kept instead of calling exp() again.
ctypedef struct growth_cache:
    double since_landmark_s
    double factor[MAX_WINDOWS]


# One packet's table keys, computed LOOKAHEAD packets before they are used.
# The *_start fields are the first probe slots (hash & mask) of each table.
ctypedef struct packet_keys:
    bint valid
    double now_s
    double size
    uint8_t flags
    uint64_t proto
    uint64_t s0, s1, d0, d1
    uint64_t sport, dport
    int pair_direction
    int socket_direction
    uint64_t pair_key[4]
    uint64_t socket_key[5]
    uint64_t service
    uint64_t src_start, dst_start, pair_start, socket_start, service_start


cdef inline uint64_t _mix(uint64_t value) noexcept nogil:
    # splitmix64 finaliser: a full-avalanche bijection on 64 bits.
    value = (value ^ (value >> 30)) * MIX_1
    value = (value ^ (value >> 27)) * MIX_2
    return value ^ (value >> 31)


cdef inline uint64_t _hash_key(uint64_t k0, uint64_t k1, uint64_t k2, uint64_t k3, uint64_t k4) noexcept nogil:
    cdef uint64_t h = k0 * MIX_1 + k1 * MIX_2 + k2 * GOLDEN
    cdef uint64_t a = k3 * MIX_1
    cdef uint64_t b = k4 * MIX_2
    h ^= (a >> 17) | (a << 47)
    h ^= (b >> 29) | (b << 35)
    return _mix(h)


cdef inline bint _key_equals(const uint64_t* key, uint64_t k0, uint64_t k1, uint64_t k2, uint64_t k3,
                             uint64_t k4) noexcept nogil:
    # k4 carries USED_BIT here, so an unused slot never matches.
    return key[0] == k0 and key[1] == k1 and key[2] == k2 and key[3] == k3 and key[4] == k4


cdef inline void _store_key(uint64_t* key, uint64_t k0, uint64_t k1, uint64_t k2, uint64_t k3,
                            uint64_t k4) noexcept nogil:
    key[0] = k0
    key[1] = k1
    key[2] = k2
    key[3] = k3
    key[4] = k4


cdef Py_ssize_t _find_or_insert(key_table* table, uint64_t start, uint64_t k0, uint64_t k1, uint64_t k2,
                                uint64_t k3, uint64_t k4, int64_t* counters, bint* is_new) noexcept nogil:
    """Return the key's slot, claiming a free one or evicting the least recently active one if absent.

    start is the key's first probe slot, _hash_key(...) & table.mask.
    """
    cdef uint64_t slot
    cdef Py_ssize_t oldest_slot = <Py_ssize_t>start
    cdef double oldest_time = INFINITY
    cdef double* row
    cdef uint64_t* key
    cdef uint64_t marked = k4 | USED_BIT
    cdef int probe
    for probe in range(MAX_PROBE):
        slot = (start + <uint64_t>probe) & table.mask
        row = _row(table, slot)
        key = _slot_key(row)
        if _key_equals(key, k0, k1, k2, k3, marked):
            is_new[0] = False
            return <Py_ssize_t>slot
        if not (key[4] & USED_BIT):
            _store_key(key, k0, k1, k2, k3, marked)
            is_new[0] = True
            return <Py_ssize_t>slot
        if row[SLOT_TIME] < oldest_time:
            oldest_time = row[SLOT_TIME]
            oldest_slot = <Py_ssize_t>slot
    counters[table.evict_counter] += 1
    _store_key(_slot_key(_row(table, <uint64_t>oldest_slot)), k0, k1, k2, k3, marked)
    is_new[0] = True
    return oldest_slot


cdef Py_ssize_t _find(const key_table* table, uint64_t k0, uint64_t k1, uint64_t k2, uint64_t k3,
                      uint64_t k4) noexcept nogil:
    """Return the key's slot, or -1 if the table does not contain it."""
    cdef uint64_t start = _hash_key(k0, k1, k2, k3, k4) & table.mask
    cdef uint64_t slot
    cdef uint64_t marked = k4 | USED_BIT
    cdef const uint64_t* key
    cdef int probe
    for probe in range(MAX_PROBE):
        slot = (start + <uint64_t>probe) & table.mask
        key = _slot_key(_row(table, slot))
        if _key_equals(key, k0, k1, k2, k3, marked):
            return <Py_ssize_t>slot
        if not (key[4] & USED_BIT):
            return -1
    return -1


cdef inline void _prefetch_slot(const key_table* table, uint64_t slot) noexcept nogil:
    # The first probe slot covers most lookups while the table is below its
    # capacity. Its lines are contiguous and 64-byte aligned.
    cdef const double* row = _row(table, slot)
    cdef Py_ssize_t offset = 0
    while offset < table.row_words:
        WW_PREFETCH_WRITE(row + offset)
        offset += LINE_WORDS


cdef inline void _prepare(
    packet_keys* out, Py_ssize_t i, const int64_t[:] ts_ns, const uint32_t[:] wirelen,
    const uint8_t[:] ip_version, const uint8_t[:] status, const uint8_t[:, :] src_addr,
    const uint8_t[:, :] dst_addr, const uint16_t[:] src_port, const uint16_t[:] dst_port,
    const uint8_t[:] ip_proto, const uint8_t[:] tcp_flags, int64_t base_ns,
    const key_table* hosts, const key_table* pairs, const key_table* sockets, const key_table* services,
) noexcept nogil:
    """Compute packet i's keys and first probe slots, and prefetch those slots."""
    out.valid = ip_version[i] != 0 and status[i] <= 1
    if not out.valid:
        return
    out.now_s = (ts_ns[i] - base_ns) * 1e-9
    out.size = <double>wirelen[i]
    out.flags = tcp_flags[i]
    out.proto = ip_proto[i]
    _address_words(src_addr, i, &out.s0, &out.s1)
    _address_words(dst_addr, i, &out.d0, &out.d1)
    out.sport = src_port[i]
    out.dport = dst_port[i]
    cdef uint64_t s0 = out.s0, s1 = out.s1, d0 = out.d0, d1 = out.d1
    cdef uint64_t sport = out.sport, dport = out.dport, proto = out.proto
    if s0 < d0 or (s0 == d0 and s1 <= d1):
        out.pair_direction = 0
        out.pair_key[0] = s0
        out.pair_key[1] = s1
        out.pair_key[2] = d0
        out.pair_key[3] = d1
    else:
        out.pair_direction = 1
        out.pair_key[0] = d0
        out.pair_key[1] = d1
        out.pair_key[2] = s0
        out.pair_key[3] = s1
    if s0 < d0 or (s0 == d0 and (s1 < d1 or (s1 == d1 and sport <= dport))):
        out.socket_direction = 0
        out.socket_key[0] = s0
        out.socket_key[1] = s1
        out.socket_key[2] = d0
        out.socket_key[3] = d1
        out.socket_key[4] = (sport << 24) | (dport << 8) | proto
    else:
        out.socket_direction = 1
        out.socket_key[0] = d0
        out.socket_key[1] = d1
        out.socket_key[2] = s0
        out.socket_key[3] = s1
        out.socket_key[4] = (dport << 24) | (sport << 8) | proto
    out.service = (dport << 8) | proto
    out.src_start = _hash_key(s0, s1, 0, 0, 0) & hosts.mask
    out.dst_start = _hash_key(d0, d1, 0, 0, 0) & hosts.mask
    out.pair_start = _hash_key(out.pair_key[0], out.pair_key[1], out.pair_key[2], out.pair_key[3], 0) & pairs.mask
    out.socket_start = _hash_key(out.socket_key[0], out.socket_key[1], out.socket_key[2], out.socket_key[3],
                                 out.socket_key[4]) & sockets.mask
    out.service_start = _hash_key(s0, s1, d0, d1, out.service) & services.mask
    _prefetch_slot(hosts, out.src_start)
    _prefetch_slot(hosts, out.dst_start)
    _prefetch_slot(pairs, out.pair_start)
    _prefetch_slot(sockets, out.socket_start)
    _prefetch_slot(services, out.service_start)


cdef inline const double* _growth(growth_cache* cache, const double* rates, const int* power_of_next,
                                  int windows, double fastest_rate, double since_landmark_s) noexcept nogil:
    """Return exp(rate_k * since_landmark_s) for every half-life k, each at least exp(-BACKWARD_NATS).

    When a rate is a whole multiple m of the next one (0.1 s against 1 s:
    m = 10), its factor is the next factor to the power m: a few multiplies
    in place of exp(). The relative error grows by about m per link, under
    1e-12 for the default half-lives.
    """
    cdef int k, m
    cdef double base, result
    if since_landmark_s != cache.since_landmark_s and since_landmark_s * fastest_rate < -BACKWARD_NATS:
        # A packet far older than the landmark: its weight in the fast
        # half-lives is below exp(-300) of the newest and is held there, so
        # the sums never meet subnormal numbers; the slow ones stay exact.
        for k in range(windows):
            cache.factor[k] = exp(max(since_landmark_s * rates[k], -BACKWARD_NATS))
        cache.since_landmark_s = since_landmark_s
    elif since_landmark_s != cache.since_landmark_s:
        k = windows - 1
        while k >= 0:
            m = power_of_next[k]
            if m == 0:
                cache.factor[k] = exp(since_landmark_s * rates[k])
            else:
                base = cache.factor[k + 1]
                result = 1.0
                while m > 0:
                    if m & 1:
                        result *= base
                    base *= base
                    m >>= 1
                cache.factor[k] = result
            k -= 1
        cache.since_landmark_s = since_landmark_s
    return cache.factor


cdef inline void _add_directional(double* stats, int direction, double size, double growth) noexcept nogil:
    # stats points at one slot's fields for one half-life. The residual is
    # a distance from the mean, a ratio of two sums of the same scale, so it
    # is stored as is; the products of residuals are a damped sum and grow.
    cdef int base = direction * P_DIRECTION_FIELDS
    cdef int other = (1 - direction) * P_DIRECTION_FIELDS
    stats[base + P_W] += growth
    stats[base + P_LS] += size * growth
    stats[base + P_SS] += size * size * growth
    cdef double residual = size - stats[base + P_LS] / stats[base + P_W]
    stats[base + P_RES] = residual
    stats[P_SR] += residual * stats[other + P_RES] * growth


cdef inline void _move_to_landmark(double* row, double* row_landmark_s, double landmark_s, int windows,
                                   int fields, const double* rates, bint keep_residuals) noexcept nogil:
    # Rescale one key's sums from the landmark they were stored against to
    # the current one. Values below 1e-300 of the new scale are worth
    # nothing at the new landmark and are set to 0, so later arithmetic
    # never meets subnormal numbers.
    cdef int k, f
    cdef double scale, value
    for k in range(windows):
        scale = exp(-(landmark_s - row_landmark_s[0]) * rates[k])
        for f in range(fields):
            if keep_residuals and (f == P_RES or f == P_DIRECTION_FIELDS + P_RES):
                continue
            value = row[k * fields + f] * scale
            if -1e-300 < value < 1e-300:
                value = 0.0
            row[k * fields + f] = value
    row_landmark_s[0] = landmark_s


cdef inline const double* _key_growth(
    double* stats, double* key_time_s, double* key_landmark_s, bint is_new, double now_s, double landmark_s,
    int windows, int fields, bint keep_residuals, const double* rates, const int* power_of_next,
    double fastest_rate, growth_cache* packet_growth, growth_cache* key_growth,
) noexcept nogil:
    """Bring one key's sums to a landmark that can hold a packet at now_s; return the growth factors.

    Keys use the shared landmark while their packets are at most
    BACKWARD_NATS before it. A key that receives much older packets (merged
    captures, a clock step) keeps a landmark of its own, so its sums stay
    exact and its queries stay finite.
    """
    cdef double key_landmark
    if is_new:
        if (landmark_s - now_s) * fastest_rate <= BACKWARD_NATS:
            key_landmark_s[0] = landmark_s
        else:
            key_landmark_s[0] = now_s
        key_time_s[0] = now_s
    else:
        key_landmark = key_landmark_s[0]
        if (landmark_s - now_s) * fastest_rate <= BACKWARD_NATS:
            if key_landmark != landmark_s:
                _move_to_landmark(stats, key_landmark_s, landmark_s, windows, fields, rates, keep_residuals)
        elif (now_s - key_landmark) * fastest_rate > RENORMALISE_NATS:
            _move_to_landmark(stats, key_landmark_s, now_s, windows, fields, rates, keep_residuals)
        if now_s > key_time_s[0]:
            key_time_s[0] = now_s
    key_landmark = key_landmark_s[0]
    if key_landmark == landmark_s:
        return _growth(packet_growth, rates, power_of_next, windows, fastest_rate, now_s - key_landmark)
    return _growth(key_growth, rates, power_of_next, windows, fastest_rate, now_s - key_landmark)


cdef inline void _address_words(const uint8_t[:, :] address, Py_ssize_t row,
                                 uint64_t* low, uint64_t* high) noexcept nogil:
    """Pack a 16-byte address row into two little-endian words (IPv4 fills the low word)."""
    cdef int j
    cdef const uint8_t* row_bytes
    if WW_LITTLE_ENDIAN and address.strides[1] == 1:
        # Packet rows keep the address bytes contiguous: two loads in place
        # of sixteen shifted byte loads.
        row_bytes = &address[row, 0]
        memcpy(low, row_bytes, 8)
        memcpy(high, row_bytes + 8, 8)
        return
    low[0] = 0
    high[0] = 0
    for j in range(8):
        low[0] |= (<uint64_t>address[row, j]) << (8 * j)
        high[0] |= (<uint64_t>address[row, 8 + j]) << (8 * j)


cdef inline void _clear(double* stats, Py_ssize_t count) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(count):
        stats[j] = 0.0


cdef int _check_table(str name, const double[:, ::1] rows, Py_ssize_t expected_words) except -1:
    cdef Py_ssize_t capacity = rows.shape[0]
    if rows.shape[1] != expected_words or capacity < MAX_PROBE or capacity & (capacity - 1):
        raise ValueError(
            f"invalid {name} table shape ({capacity}, {rows.shape[1]}): expected a power of two of at least "
            f"{MAX_PROBE} rows of {expected_words} words"
        )
    return 0


cdef void _open_table(key_table* table, double[:, ::1] rows, int evict_counter):
    table.rows = &rows[0, 0]
    table.row_words = rows.shape[1]
    table.mask = <uint64_t>(rows.shape[0] - 1)
    table.evict_counter = evict_counter


@cython.boundscheck(False)
@cython.wraparound(False)
def update_tables(
    const int64_t[:] ts_ns, const uint32_t[:] wirelen, const uint8_t[:] ip_version, const uint8_t[:] status,
    const uint8_t[:, :] src_addr, const uint8_t[:, :] dst_addr, const uint16_t[:] src_port,
    const uint16_t[:] dst_port, const uint8_t[:] ip_proto, const uint8_t[:] tcp_flags,
    int64_t base_ns, const double[::1] half_lives_s, const double[::1] decay_rates, double[::1] landmark,
    double[:, ::1] host_rows, double[:, ::1] pair_rows, double[:, ::1] sock_rows, double[:, ::1] service_rows,
    int64_t[::1] counters,
):
    """Add one batch of packets to the window tables, in packet order.

    landmark[0] is the tables' landmark time (seconds since base_ns); it
    moves forward here before the stored sums grow too large. Each slot's
    header holds the landmark its own sums are scaled to.
    """
    if half_lives_s.shape[0] > MAX_WINDOWS or decay_rates.shape[0] != half_lives_s.shape[0]:
        raise ValueError(
            f"invalid half-lives: {half_lives_s.shape[0]} half-lives and {decay_rates.shape[0]} decay rates, "
            f"expected equal counts of at most {MAX_WINDOWS}"
        )
    if landmark.shape[0] != 1:
        raise ValueError(f"invalid landmark: expected 1 value, got {landmark.shape[0]}")
    cdef int windows = <int>half_lives_s.shape[0]
    _check_table("host", host_rows, row_words("host", windows))
    _check_table("pair", pair_rows, row_words("pair", windows))
    _check_table("socket", sock_rows, row_words("socket", windows))
    _check_table("service", service_rows, row_words("service", windows))
    cdef int power_of_next[MAX_WINDOWS]
    cdef double fastest_rate = 0.0
    cdef double ratio
    cdef int k
    for k in range(windows):
        fastest_rate = max(fastest_rate, decay_rates[k])
        power_of_next[k] = 0
        if k + 1 < windows and decay_rates[k + 1] > 0.0:
            ratio = decay_rates[k] / decay_rates[k + 1]
            if 1.0 <= ratio <= 1024.0 and abs(ratio - round(ratio)) < 1e-9:
                power_of_next[k] = <int>round(ratio)
    cdef Py_ssize_t count = ts_ns.shape[0]
    cdef Py_ssize_t host_fields = windows * HOST_FIELDS
    cdef Py_ssize_t pair_fields = windows * PAIR_FIELDS
    # Where a pair row's last-seen times start.
    cdef Py_ssize_t pair_extra = HEADER_WORDS + pair_fields
    cdef key_table hosts, pairs, sockets, services
    _open_table(&hosts, host_rows, C_HOST_EVICTED)
    _open_table(&pairs, pair_rows, C_PAIR_EVICTED)
    _open_table(&sockets, sock_rows, C_SOCKET_EVICTED)
    _open_table(&services, service_rows, C_SERVICE_EVICTED)

    cdef const double* rates = &decay_rates[0]
    cdef const double* half_lives = &half_lives_s[0]
    cdef int64_t* counter = &counters[0]
    cdef double landmark_s = landmark[0]
    # The growth factors of keys on the shared landmark (one set per packet),
    # and of keys with a landmark of their own: one buffer per role, as the
    # source's factors are still used after the others are looked up.
    cdef growth_cache packet_growth, src_own, dst_own, pair_own, socket_own
    packet_growth.since_landmark_s = NAN
    src_own.since_landmark_s = NAN
    dst_own.since_landmark_s = NAN
    pair_own.since_landmark_s = NAN
    socket_own.since_landmark_s = NAN

    cdef Py_ssize_t i, ahead, src_slot, dst_slot, slot
    cdef int direction
    cdef bint is_new, is_tcp, is_syn, has_gap, src_kept
    cdef double now_s, size, gap_s, silence_s
    cdef uint64_t s0, s1, d0, d1, sport, dport, proto
    cdef uint8_t flags
    cdef double* row
    cdef double* src_row
    cdef double* dst_row
    cdef double* stats
    cdef double* src_stats
    cdef double* dst_stats
    cdef const double* src_growth
    cdef const double* dst_growth
    cdef const double* growth
    cdef const uint64_t* src_key
    cdef packet_keys ring[KEY_RING]
    cdef packet_keys* keys

    # Sums are stored scaled by exp(rate * (t - landmark)) of the time t
    # they were added at, so the value at time T is the stored sum times
    # exp(-rate * (T - landmark)). An update then adds without decaying
    # the key's other sums first, and costs no exp() beyond the packet's
    # own factors. Each packet counts at its own time, so reordered input
    # gives the same sums as sorted input. The landmark moves to the packet
    # time when the fastest half-life's factor passes exp(RENORMALISE_NATS);
    # each key's sums move to the new landmark at the key's next update
    # (_key_growth), so no update walks the table.
    #
    # The loop runs LOOKAHEAD packets behind its key preparation: packet
    # i + LOOKAHEAD gets its keys hashed and its likely slots prefetched
    # while packet i is applied.
    with nogil:
        for ahead in range(count + LOOKAHEAD):
            if ahead < count:
                _prepare(&ring[ahead & (KEY_RING - 1)], ahead, ts_ns, wirelen, ip_version, status,
                         src_addr, dst_addr, src_port, dst_port, ip_proto, tcp_flags, base_ns,
                         &hosts, &pairs, &sockets, &services)
            i = ahead - LOOKAHEAD
            if i < 0:
                continue
            keys = &ring[i & (KEY_RING - 1)]
            # Truncated packets still carry valid addresses, but malformed
            # and non-IP ones do not.
            if not keys.valid:
                counter[C_SKIPPED] += 1
                continue
            counter[C_PACKETS] += 1
            now_s = keys.now_s
            size = keys.size
            flags = keys.flags
            proto = keys.proto
            is_tcp = proto == 6
            s0 = keys.s0
            s1 = keys.s1
            d0 = keys.d0
            d1 = keys.d1
            sport = keys.sport
            dport = keys.dport

            if (now_s - landmark_s) * fastest_rate > RENORMALISE_NATS:
                landmark_s = now_s

            # Source host: size, inter-arrival time and connection attempts.
            src_slot = _find_or_insert(&hosts, keys.src_start, s0, s1, 0, 0, 0, counter, &is_new)
            src_row = _row(&hosts, <uint64_t>src_slot)
            src_stats = src_row + HEADER_WORDS
            if is_new:
                _clear(src_stats, host_fields)
                src_row[SLOT_AUX] = NAN
            src_growth = _key_growth(src_stats, &src_row[SLOT_TIME], &src_row[SLOT_LANDMARK], is_new, now_s,
                                     landmark_s, windows, HOST_FIELDS, False, rates, power_of_next,
                                     fastest_rate, &packet_growth, &src_own)
            gap_s = now_s - src_row[SLOT_AUX]
            has_gap = gap_s == gap_s
            if has_gap and gap_s < 0.0:
                gap_s = 0.0
            is_syn = is_tcp and (flags & TCP_SYN) != 0 and (flags & TCP_ACK) == 0
            for k in range(windows):
                src_stats[k * HOST_FIELDS + H_W] += src_growth[k]
                src_stats[k * HOST_FIELDS + H_LS] += size * src_growth[k]
                src_stats[k * HOST_FIELDS + H_SS] += size * size * src_growth[k]
                if has_gap:
                    src_stats[k * HOST_FIELDS + H_IW] += src_growth[k]
                    src_stats[k * HOST_FIELDS + H_ILS] += gap_s * src_growth[k]
                    src_stats[k * HOST_FIELDS + H_ISS] += gap_s * gap_s * src_growth[k]
                if is_syn:
                    src_stats[k * HOST_FIELDS + H_SYN] += src_growth[k]
            src_row[SLOT_AUX] = now_s

            # Destination host: fan-in and SYN-ACKs received. Looked up after
            # the source, so an eviction here cannot reuse the source's slot
            # before its update above is complete.
            dst_slot = _find_or_insert(&hosts, keys.dst_start, d0, d1, 0, 0, 0, counter, &is_new)
            dst_row = _row(&hosts, <uint64_t>dst_slot)
            dst_stats = dst_row + HEADER_WORDS
            if is_new:
                _clear(dst_stats, host_fields)
                dst_row[SLOT_AUX] = NAN
            dst_growth = _key_growth(dst_stats, &dst_row[SLOT_TIME], &dst_row[SLOT_LANDMARK], is_new, now_s,
                                     landmark_s, windows, HOST_FIELDS, False, rates, power_of_next,
                                     fastest_rate, &packet_growth, &dst_own)
            if is_tcp and (flags & TCP_SYN) != 0 and (flags & TCP_ACK) != 0:
                for k in range(windows):
                    dst_stats[k * HOST_FIELDS + H_SYNACK] += dst_growth[k]
            # The destination lookup may have evicted the source: then there
            # is nothing left to credit with fan-out below.
            src_key = _slot_key(src_row)
            src_kept = src_key[0] == s0 and src_key[1] == s1

            # Host pair, canonical order: direction 0 when the lower address sends.
            direction = keys.pair_direction
            slot = _find_or_insert(&pairs, keys.pair_start, keys.pair_key[0], keys.pair_key[1],
                                   keys.pair_key[2], keys.pair_key[3], 0, counter, &is_new)
            row = _row(&pairs, <uint64_t>slot)
            stats = row + HEADER_WORDS
            if is_new:
                _clear(stats, pair_fields)
                row[pair_extra] = -INFINITY
                row[pair_extra + 1] = -INFINITY
            growth = _key_growth(stats, &row[SLOT_TIME], &row[SLOT_LANDMARK], is_new, now_s, landmark_s,
                                 windows, PAIR_FIELDS, True, rates, power_of_next, fastest_rate,
                                 &packet_growth, &pair_own)
            silence_s = now_s - row[pair_extra + direction]
            row[pair_extra + direction] = now_s
            for k in range(windows):
                _add_directional(stats + k * PAIR_FIELDS, direction, size, growth[k])
                if silence_s > half_lives[k]:
                    if src_kept:
                        src_stats[k * HOST_FIELDS + H_FAN_HOSTS] += src_growth[k]
                    dst_stats[k * HOST_FIELDS + H_FANIN] += dst_growth[k]

            # Socket pair, canonical by (address, port).
            direction = keys.socket_direction
            slot = _find_or_insert(&sockets, keys.socket_start, keys.socket_key[0], keys.socket_key[1],
                                   keys.socket_key[2], keys.socket_key[3], keys.socket_key[4], counter, &is_new)
            row = _row(&sockets, <uint64_t>slot)
            stats = row + HEADER_WORDS
            if is_new:
                _clear(stats, pair_fields)
            growth = _key_growth(stats, &row[SLOT_TIME], &row[SLOT_LANDMARK], is_new, now_s, landmark_s,
                                 windows, PAIR_FIELDS, True, rates, power_of_next, fastest_rate,
                                 &packet_growth, &socket_own)
            for k in range(windows):
                _add_directional(stats + k * PAIR_FIELDS, direction, size, growth[k])

            # Service: (source, destination, destination port, protocol).
            slot = _find_or_insert(&services, keys.service_start, s0, s1, d0, d1, keys.service, counter, &is_new)
            row = _row(&services, <uint64_t>slot)
            if is_new:
                silence_s = INFINITY
                row[SLOT_TIME] = now_s
            else:
                silence_s = now_s - row[SLOT_TIME]
                if now_s > row[SLOT_TIME]:
                    row[SLOT_TIME] = now_s
            if src_kept:
                for k in range(windows):
                    if silence_s > half_lives[k]:
                        src_stats[k * HOST_FIELDS + H_FAN_PORTS] += src_growth[k]
    landmark[0] = landmark_s


cdef inline double _std(double weight, double linear_sum, double squared_sum) noexcept nogil:
    if weight <= 0.0:
        return 0.0
    cdef double mean = linear_sum / weight
    cdef double variance = squared_sum / weight - mean * mean
    if variance <= 0.0:
        return 0.0
    return sqrt(variance)


cdef inline double _mean(double weight, double linear_sum) noexcept nogil:
    if weight <= 0.0:
        return 0.0
    return linear_sum / weight


cdef inline double _decay_factor(double rate, double now_s, double then_s, double landmark_s) noexcept nogil:
    # A key's sums are scaled to its landmark; a query before the key's
    # last update reads the sums as of that update.
    if now_s < then_s:
        now_s = then_s
    return exp(-(now_s - landmark_s) * rate)


cdef inline void _write_directional(double[:, :] out, Py_ssize_t row, Py_ssize_t column, const double* stats,
                                    int direction, double factor) noexcept nogil:
    # stats points at one slot's fields for one half-life. Columns: weight,
    # size mean, size std, magnitude, radius, covariance, correlation.
    cdef int base = direction * P_DIRECTION_FIELDS
    cdef int other = (1 - direction) * P_DIRECTION_FIELDS
    cdef double w_this = stats[base + P_W]
    cdef double w_other = stats[other + P_W]
    cdef double mean_this = _mean(w_this, stats[base + P_LS])
    cdef double mean_other = _mean(w_other, stats[other + P_LS])
    cdef double std_this = _std(w_this, stats[base + P_LS], stats[base + P_SS])
    cdef double std_other = _std(w_other, stats[other + P_LS], stats[other + P_SS])
    cdef double covariance = 0.0
    cdef double correlation = 0.0
    if w_this + w_other > 0.0:
        covariance = stats[P_SR] / (w_this + w_other)
    if std_this > 0.0 and std_other > 0.0:
        correlation = covariance / (std_this * std_other)
    out[row, column + 0] = w_this * factor
    out[row, column + 1] = mean_this
    out[row, column + 2] = std_this
    out[row, column + 3] = sqrt(mean_this * mean_this + mean_other * mean_other)
    out[row, column + 4] = sqrt(std_this * std_this + std_other * std_other)
    out[row, column + 5] = covariance
    out[row, column + 6] = correlation


@cython.boundscheck(False)
@cython.wraparound(False)
def query_tables(
    const uint8_t[:, :] src_addr, const uint8_t[:, :] dst_addr, const uint64_t[:] src_port,
    const uint64_t[:] dst_port, const uint64_t[:] protocol, const int64_t[:] at_ns,
    int64_t base_ns, const double[::1] decay_rates,
    double[:, ::1] host_rows, double[:, ::1] pair_rows, double[:, ::1] sock_rows,
    double[:, :] out, Py_ssize_t first_column,
):
    """Write the window features of each (source, destination, ports, protocol) row into out.

    Weights and counts are decayed to at_ns; keys not in a table read 0.
    """
    cdef int windows = <int>decay_rates.shape[0]
    _check_table("host", host_rows, row_words("host", windows))
    _check_table("pair", pair_rows, row_words("pair", windows))
    _check_table("socket", sock_rows, row_words("socket", windows))
    cdef Py_ssize_t rows = src_addr.shape[0]
    cdef key_table hosts, pairs, sockets
    _open_table(&hosts, host_rows, C_HOST_EVICTED)
    _open_table(&pairs, pair_rows, C_PAIR_EVICTED)
    _open_table(&sockets, sock_rows, C_SOCKET_EVICTED)

    cdef Py_ssize_t i, c, column, src_slot, dst_slot, pair_slot, sock_slot
    cdef int j, k, pair_direction, sock_direction
    cdef double now_s, rate, factor, w, iw, syn, ratio
    cdef uint64_t s0, s1, d0, d1, sport, dport, proto, ports
    cdef const double* stats
    cdef const double* src_row = NULL
    cdef const double* dst_row = NULL
    cdef const double* pair_row = NULL
    cdef const double* sock_row = NULL

    with nogil:
        for i in range(rows):
            now_s = (at_ns[i] - base_ns) * 1e-9
            _address_words(src_addr, i, &s0, &s1)
            _address_words(dst_addr, i, &d0, &d1)
            sport = src_port[i]
            dport = dst_port[i]
            proto = protocol[i]
            for c in range(windows * OUT_PER_WINDOW):
                out[i, first_column + c] = 0.0

            src_slot = _find(&hosts, s0, s1, 0, 0, 0)
            dst_slot = _find(&hosts, d0, d1, 0, 0, 0)
            if s0 < d0 or (s0 == d0 and s1 <= d1):
                pair_direction = 0
                pair_slot = _find(&pairs, s0, s1, d0, d1, 0)
            else:
                pair_direction = 1
                pair_slot = _find(&pairs, d0, d1, s0, s1, 0)
            if s0 < d0 or (s0 == d0 and (s1 < d1 or (s1 == d1 and sport <= dport))):
                sock_direction = 0
                ports = (sport << 24) | (dport << 8) | proto
                sock_slot = _find(&sockets, s0, s1, d0, d1, ports)
            else:
                sock_direction = 1
                ports = (dport << 24) | (sport << 8) | proto
                sock_slot = _find(&sockets, d0, d1, s0, s1, ports)
            if src_slot >= 0:
                src_row = _row(&hosts, <uint64_t>src_slot)
            if dst_slot >= 0:
                dst_row = _row(&hosts, <uint64_t>dst_slot)
            if pair_slot >= 0:
                pair_row = _row(&pairs, <uint64_t>pair_slot)
            if sock_slot >= 0:
                sock_row = _row(&sockets, <uint64_t>sock_slot)

            for k in range(windows):
                column = first_column + k * OUT_PER_WINDOW
                rate = decay_rates[k]
                if src_slot >= 0:
                    factor = _decay_factor(rate, now_s, src_row[SLOT_TIME], src_row[SLOT_LANDMARK])
                    stats = src_row + HEADER_WORDS + k * HOST_FIELDS
                    w = stats[H_W]
                    iw = stats[H_IW]
                    out[i, column + OUT_SRC_HOST + 0] = w * factor
                    out[i, column + OUT_SRC_HOST + 1] = _mean(w, stats[H_LS])
                    out[i, column + OUT_SRC_HOST + 2] = _std(w, stats[H_LS], stats[H_SS])
                    out[i, column + OUT_SRC_HOST + 3] = _mean(iw, stats[H_ILS])
                    out[i, column + OUT_SRC_HOST + 4] = _std(iw, stats[H_ILS], stats[H_ISS])
                    out[i, column + OUT_FAN + 0] = stats[H_FAN_HOSTS] * factor
                    out[i, column + OUT_FAN + 1] = stats[H_FAN_PORTS] * factor
                    syn = stats[H_SYN]
                    out[i, column + OUT_FAN + 3] = syn * factor
                    if syn > 0.0:
                        ratio = 1.0 - stats[H_SYNACK] / syn
                        out[i, column + OUT_FAN + 4] = min(max(ratio, 0.0), 1.0)
                if dst_slot >= 0:
                    factor = _decay_factor(rate, now_s, dst_row[SLOT_TIME], dst_row[SLOT_LANDMARK])
                    out[i, column + OUT_FAN + 2] = dst_row[HEADER_WORDS + k * HOST_FIELDS + H_FANIN] * factor
                if pair_slot >= 0:
                    factor = _decay_factor(rate, now_s, pair_row[SLOT_TIME], pair_row[SLOT_LANDMARK])
                    _write_directional(out, i, column + OUT_PAIR, pair_row + HEADER_WORDS + k * PAIR_FIELDS,
                                       pair_direction, factor)
                if sock_slot >= 0:
                    factor = _decay_factor(rate, now_s, sock_row[SLOT_TIME], sock_row[SLOT_LANDMARK])
                    _write_directional(out, i, column + OUT_SOCKET, sock_row + HEADER_WORDS + k * PAIR_FIELDS,
                                       sock_direction, factor)

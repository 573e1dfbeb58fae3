# Damped window statistics: the batch update and the feature query.
#
# engine.features.kernels wraps these functions and documents the tables,
# the statistics and the eviction rule; the field and counter indices below
# must equal the constants there (the tests compare every output against
# slow references written from the definitions).
#
# Every table is an open-addressing array of fixed capacity (a power of
# two) with five uint64 key words per slot. A key is looked up in at most
# MAX_PROBE slots from its hash; when all of them hold other keys, the slot
# with the oldest activity time is reused and the table's eviction counter
# goes up. Slots are never emptied.
#
# Stats arrays are C-contiguous float64 [capacity, windows, fields], so one
# slot's statistics for every half-life sit next to each other.

cimport cython
from libc.math cimport INFINITY, NAN, exp, sqrt
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    MAX_PROBE = 8
    KEY_WORDS = 5

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

# Python-visible copies, so the wrapper can check they match its own.
LAYOUT = {
    "MAX_PROBE": MAX_PROBE, "KEY_WORDS": KEY_WORDS, "HOST_FIELDS": HOST_FIELDS,
    "PAIR_FIELDS": PAIR_FIELDS, "OUT_PER_WINDOW": OUT_PER_WINDOW, "MAX_WINDOWS": MAX_WINDOWS,
}

cdef uint64_t MIX_1 = 0xBF58476D1CE4E5B9ULL
cdef uint64_t MIX_2 = 0x94D049BB133111EBULL
cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL


ctypedef struct key_table:
    uint64_t* keys  # [capacity, KEY_WORDS]
    uint8_t* used  # [capacity]: 1 once a slot has held a key
    double* time_s  # [capacity]: last activity, seconds since base_ns
    uint64_t mask  # capacity - 1
    int evict_counter  # index into counters


# Decay factors of one elapsed time for every half-life. Packets of one
# burst often share a gap, and many keys share the batch's elapsed time, so
# the last result is kept instead of calling exp() again.
ctypedef struct decay_cache:
    double elapsed_s
    double factor[MAX_WINDOWS]


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
    return key[0] == k0 and key[1] == k1 and key[2] == k2 and key[3] == k3 and key[4] == k4


cdef inline void _store_key(uint64_t* key, uint64_t k0, uint64_t k1, uint64_t k2, uint64_t k3,
                            uint64_t k4) noexcept nogil:
    key[0] = k0
    key[1] = k1
    key[2] = k2
    key[3] = k3
    key[4] = k4


cdef Py_ssize_t _find_or_insert(key_table* table, uint64_t k0, uint64_t k1, uint64_t k2, uint64_t k3,
                                uint64_t k4, int64_t* counters, bint* is_new) noexcept nogil:
    """Return the key's slot, claiming a free one or evicting the least recently active one if absent."""
    cdef uint64_t start = _hash_key(k0, k1, k2, k3, k4) & table.mask
    cdef uint64_t slot
    cdef Py_ssize_t oldest_slot = <Py_ssize_t>start
    cdef double oldest_time = INFINITY
    cdef int probe
    for probe in range(MAX_PROBE):
        slot = (start + <uint64_t>probe) & table.mask
        if not table.used[slot]:
            table.used[slot] = 1
            _store_key(table.keys + slot * KEY_WORDS, k0, k1, k2, k3, k4)
            is_new[0] = True
            return <Py_ssize_t>slot
        if _key_equals(table.keys + slot * KEY_WORDS, k0, k1, k2, k3, k4):
            is_new[0] = False
            return <Py_ssize_t>slot
        if table.time_s[slot] < oldest_time:
            oldest_time = table.time_s[slot]
            oldest_slot = <Py_ssize_t>slot
    counters[table.evict_counter] += 1
    _store_key(table.keys + oldest_slot * KEY_WORDS, k0, k1, k2, k3, k4)
    is_new[0] = True
    return oldest_slot


cdef Py_ssize_t _find(key_table* table, uint64_t k0, uint64_t k1, uint64_t k2, uint64_t k3,
                      uint64_t k4) noexcept nogil:
    """Return the key's slot, or -1 if the table does not contain it."""
    cdef uint64_t start = _hash_key(k0, k1, k2, k3, k4) & table.mask
    cdef uint64_t slot
    cdef int probe
    for probe in range(MAX_PROBE):
        slot = (start + <uint64_t>probe) & table.mask
        if not table.used[slot]:
            return -1
        if _key_equals(table.keys + slot * KEY_WORDS, k0, k1, k2, k3, k4):
            return <Py_ssize_t>slot
    return -1


cdef inline const double* _factors(decay_cache* cache, const double* rates, int windows,
                                   double elapsed_s) noexcept nogil:
    cdef int k
    if elapsed_s != cache.elapsed_s:
        for k in range(windows):
            cache.factor[k] = exp(-elapsed_s * rates[k])
        cache.elapsed_s = elapsed_s
    return cache.factor


cdef inline void _decay_host(double* stats, decay_cache* cache, const double* rates, int windows,
                             double elapsed_s) noexcept nogil:
    if elapsed_s <= 0.0:
        return
    cdef const double* factor = _factors(cache, rates, windows, elapsed_s)
    cdef int k, f
    for k in range(windows):
        for f in range(HOST_FIELDS):
            stats[k * HOST_FIELDS + f] *= factor[k]


cdef inline void _decay_pair(double* stats, decay_cache* cache, const double* rates, int windows,
                             double elapsed_s) noexcept nogil:
    # The residuals are the last values' distances from their means, not
    # sums, so they keep their size. Every damped sum decays.
    if elapsed_s <= 0.0:
        return
    cdef const double* factor = _factors(cache, rates, windows, elapsed_s)
    cdef int k, f
    for k in range(windows):
        for f in range(PAIR_FIELDS):
            if f != P_RES and f != P_DIRECTION_FIELDS + P_RES:
                stats[k * PAIR_FIELDS + f] *= factor[k]


cdef inline void _add_directional(double* stats, int direction, double size) noexcept nogil:
    # stats points at one slot's fields for one half-life.
    cdef int base = direction * P_DIRECTION_FIELDS
    cdef int other = (1 - direction) * P_DIRECTION_FIELDS
    stats[base + P_W] += 1.0
    stats[base + P_LS] += size
    stats[base + P_SS] += size * size
    cdef double residual = size - stats[base + P_LS] / stats[base + P_W]
    stats[base + P_RES] = residual
    stats[P_SR] += residual * stats[other + P_RES]


cdef inline void _address_words(const uint8_t[:, :] address, Py_ssize_t row,
                                 uint64_t* low, uint64_t* high) noexcept nogil:
    """Pack a 16-byte address row into two little-endian words (IPv4 fills the low word)."""
    cdef int j
    low[0] = 0
    high[0] = 0
    for j in range(8):
        low[0] |= (<uint64_t>address[row, j]) << (8 * j)
        high[0] |= (<uint64_t>address[row, 8 + j]) << (8 * j)


cdef inline void _clear(double* stats, Py_ssize_t count) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(count):
        stats[j] = 0.0


@cython.boundscheck(False)
@cython.wraparound(False)
def update_tables(
    const int64_t[:] ts_ns, const uint32_t[:] wirelen, const uint8_t[:] ip_version, const uint8_t[:] status,
    const uint8_t[:, :] src_addr, const uint8_t[:, :] dst_addr, const uint16_t[:] src_port,
    const uint16_t[:] dst_port, const uint8_t[:] ip_proto, const uint8_t[:] tcp_flags,
    int64_t base_ns, const double[::1] half_lives_s, const double[::1] decay_rates,
    uint64_t[:, ::1] host_keys, uint8_t[::1] host_used, double[::1] host_time, double[::1] host_last_sent,
    double[:, :, ::1] host_stats,
    uint64_t[:, ::1] pair_keys, uint8_t[::1] pair_used, double[::1] pair_time, double[:, ::1] pair_last_seen,
    double[:, :, ::1] pair_stats,
    uint64_t[:, ::1] sock_keys, uint8_t[::1] sock_used, double[::1] sock_time, double[:, :, ::1] sock_stats,
    uint64_t[:, ::1] service_keys, uint8_t[::1] service_used, double[::1] service_time,
    int64_t[::1] counters,
):
    """Add one batch of packets to the window tables, in packet order."""
    if half_lives_s.shape[0] > MAX_WINDOWS or decay_rates.shape[0] != half_lives_s.shape[0]:
        raise ValueError(
            f"invalid half-lives: {half_lives_s.shape[0]} half-lives and {decay_rates.shape[0]} decay rates, "
            f"expected equal counts of at most {MAX_WINDOWS}"
        )
    cdef int windows = <int>half_lives_s.shape[0]
    cdef Py_ssize_t count = ts_ns.shape[0]
    cdef Py_ssize_t host_row = windows * HOST_FIELDS
    cdef Py_ssize_t pair_row = windows * PAIR_FIELDS
    cdef key_table hosts, pairs, sockets, services
    hosts.keys = &host_keys[0, 0]
    hosts.used = &host_used[0]
    hosts.time_s = &host_time[0]
    hosts.mask = <uint64_t>(host_keys.shape[0] - 1)
    hosts.evict_counter = C_HOST_EVICTED
    pairs.keys = &pair_keys[0, 0]
    pairs.used = &pair_used[0]
    pairs.time_s = &pair_time[0]
    pairs.mask = <uint64_t>(pair_keys.shape[0] - 1)
    pairs.evict_counter = C_PAIR_EVICTED
    sockets.keys = &sock_keys[0, 0]
    sockets.used = &sock_used[0]
    sockets.time_s = &sock_time[0]
    sockets.mask = <uint64_t>(sock_keys.shape[0] - 1)
    sockets.evict_counter = C_SOCKET_EVICTED
    services.keys = &service_keys[0, 0]
    services.used = &service_used[0]
    services.time_s = &service_time[0]
    services.mask = <uint64_t>(service_keys.shape[0] - 1)
    services.evict_counter = C_SERVICE_EVICTED

    cdef double* host_base = &host_stats[0, 0, 0]
    cdef double* pair_base = &pair_stats[0, 0, 0]
    cdef double* sock_base = &sock_stats[0, 0, 0]
    cdef double* last_seen = &pair_last_seen[0, 0]
    cdef const double* rates = &decay_rates[0]
    cdef const double* half_lives = &half_lives_s[0]
    cdef int64_t* counter = &counters[0]
    cdef decay_cache cache
    cache.elapsed_s = -1.0  # never looked up: decay is skipped for elapsed <= 0

    cdef Py_ssize_t i, src_slot, dst_slot, slot, src_slot_again
    cdef int j, k, direction
    cdef bint is_new, is_tcp, is_syn, has_gap, src_first
    cdef double now_s, size, gap_s, silence_s
    cdef uint64_t s0, s1, d0, d1, sport, dport, proto, ports, service
    cdef uint8_t flags
    cdef double* stats

    with nogil:
        for i in range(count):
            # Truncated packets still carry valid addresses, but malformed
            # and non-IP ones do not.
            if ip_version[i] == 0 or status[i] > 1:
                counter[C_SKIPPED] += 1
                continue
            counter[C_PACKETS] += 1
            now_s = (ts_ns[i] - base_ns) * 1e-9
            size = <double>wirelen[i]
            flags = tcp_flags[i]
            proto = ip_proto[i]
            is_tcp = ip_proto[i] == 6
            _address_words(src_addr, i, &s0, &s1)
            _address_words(dst_addr, i, &d0, &d1)
            sport = src_port[i]
            dport = dst_port[i]

            # Source host: size, inter-arrival time and connection attempts.
            src_slot = _find_or_insert(&hosts, s0, s1, 0, 0, 0, counter, &is_new)
            stats = host_base + src_slot * host_row
            if is_new:
                _clear(stats, host_row)
                host_time[src_slot] = now_s
                host_last_sent[src_slot] = NAN
            _decay_host(stats, &cache, rates, windows, now_s - host_time[src_slot])
            if now_s > host_time[src_slot]:
                host_time[src_slot] = now_s
            gap_s = now_s - host_last_sent[src_slot]
            has_gap = gap_s == gap_s
            if has_gap and gap_s < 0.0:
                gap_s = 0.0
            is_syn = is_tcp and (flags & TCP_SYN) != 0 and (flags & TCP_ACK) == 0
            for k in range(windows):
                stats[k * HOST_FIELDS + H_W] += 1.0
                stats[k * HOST_FIELDS + H_LS] += size
                stats[k * HOST_FIELDS + H_SS] += size * size
                if has_gap:
                    stats[k * HOST_FIELDS + H_IW] += 1.0
                    stats[k * HOST_FIELDS + H_ILS] += gap_s
                    stats[k * HOST_FIELDS + H_ISS] += gap_s * gap_s
                if is_syn:
                    stats[k * HOST_FIELDS + H_SYN] += 1.0
            host_last_sent[src_slot] = now_s

            # Destination host: fan-in and SYN-ACKs received. Looked up after
            # the source, so an eviction here cannot reuse the source's slot
            # before its update above is complete.
            dst_slot = _find_or_insert(&hosts, d0, d1, 0, 0, 0, counter, &is_new)
            stats = host_base + dst_slot * host_row
            if is_new:
                _clear(stats, host_row)
                host_time[dst_slot] = now_s
                host_last_sent[dst_slot] = NAN
            _decay_host(stats, &cache, rates, windows, now_s - host_time[dst_slot])
            if now_s > host_time[dst_slot]:
                host_time[dst_slot] = now_s
            if is_tcp and (flags & TCP_SYN) != 0 and (flags & TCP_ACK) != 0:
                for k in range(windows):
                    stats[k * HOST_FIELDS + H_SYNACK] += 1.0

            # Host pair, canonical order: direction 0 when the lower address sends.
            if s0 < d0 or (s0 == d0 and s1 <= d1):
                direction = 0
                slot = _find_or_insert(&pairs, s0, s1, d0, d1, 0, counter, &is_new)
            else:
                direction = 1
                slot = _find_or_insert(&pairs, d0, d1, s0, s1, 0, counter, &is_new)
            stats = pair_base + slot * pair_row
            if is_new:
                _clear(stats, pair_row)
                pair_time[slot] = now_s
                last_seen[2 * slot] = -INFINITY
                last_seen[2 * slot + 1] = -INFINITY
            _decay_pair(stats, &cache, rates, windows, now_s - pair_time[slot])
            if now_s > pair_time[slot]:
                pair_time[slot] = now_s
            silence_s = now_s - last_seen[2 * slot + direction]
            last_seen[2 * slot + direction] = now_s
            src_slot_again = src_slot
            if host_keys[src_slot, 0] != s0 or host_keys[src_slot, 1] != s1:
                # The destination lookup evicted the source: nothing to credit.
                src_slot_again = -1
            for k in range(windows):
                _add_directional(stats + k * PAIR_FIELDS, direction, size)
                if silence_s > half_lives[k]:
                    if src_slot_again >= 0:
                        host_base[src_slot_again * host_row + k * HOST_FIELDS + H_FAN_HOSTS] += 1.0
                    host_base[dst_slot * host_row + k * HOST_FIELDS + H_FANIN] += 1.0

            # Socket pair, canonical by (address, port).
            src_first = s0 < d0 or (s0 == d0 and (s1 < d1 or (s1 == d1 and sport <= dport)))
            if src_first:
                direction = 0
                ports = (sport << 24) | (dport << 8) | proto
                slot = _find_or_insert(&sockets, s0, s1, d0, d1, ports, counter, &is_new)
            else:
                direction = 1
                ports = (dport << 24) | (sport << 8) | proto
                slot = _find_or_insert(&sockets, d0, d1, s0, s1, ports, counter, &is_new)
            stats = sock_base + slot * pair_row
            if is_new:
                _clear(stats, pair_row)
                sock_time[slot] = now_s
            _decay_pair(stats, &cache, rates, windows, now_s - sock_time[slot])
            if now_s > sock_time[slot]:
                sock_time[slot] = now_s
            for k in range(windows):
                _add_directional(stats + k * PAIR_FIELDS, direction, size)

            # Service: (source, destination, destination port, protocol).
            service = (dport << 8) | proto
            slot = _find_or_insert(&services, s0, s1, d0, d1, service, counter, &is_new)
            if is_new:
                silence_s = INFINITY
            else:
                silence_s = now_s - service_time[slot]
            if now_s > service_time[slot]:
                service_time[slot] = now_s
            if src_slot_again >= 0:
                for k in range(windows):
                    if silence_s > half_lives[k]:
                        host_base[src_slot_again * host_row + k * HOST_FIELDS + H_FAN_PORTS] += 1.0


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


cdef inline double _decay_factor(double rate, double now_s, double then_s) noexcept nogil:
    if now_s <= then_s:
        return 1.0
    return exp(-(now_s - then_s) * rate)


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
    uint64_t[:, ::1] host_keys, uint8_t[::1] host_used, double[::1] host_time, double[:, :, ::1] host_stats,
    uint64_t[:, ::1] pair_keys, uint8_t[::1] pair_used, double[::1] pair_time, double[:, :, ::1] pair_stats,
    uint64_t[:, ::1] sock_keys, uint8_t[::1] sock_used, double[::1] sock_time, double[:, :, ::1] sock_stats,
    double[:, :] out, Py_ssize_t first_column,
):
    """Write the window features of each (source, destination, ports, protocol) row into out.

    Weights and counts are decayed to at_ns; keys not in a table read 0.
    """
    cdef int windows = <int>decay_rates.shape[0]
    cdef Py_ssize_t rows = src_addr.shape[0]
    cdef Py_ssize_t host_row = windows * HOST_FIELDS
    cdef Py_ssize_t pair_row = windows * PAIR_FIELDS
    cdef key_table hosts, pairs, sockets
    hosts.keys = &host_keys[0, 0]
    hosts.used = &host_used[0]
    hosts.time_s = &host_time[0]
    hosts.mask = <uint64_t>(host_keys.shape[0] - 1)
    pairs.keys = &pair_keys[0, 0]
    pairs.used = &pair_used[0]
    pairs.time_s = &pair_time[0]
    pairs.mask = <uint64_t>(pair_keys.shape[0] - 1)
    sockets.keys = &sock_keys[0, 0]
    sockets.used = &sock_used[0]
    sockets.time_s = &sock_time[0]
    sockets.mask = <uint64_t>(sock_keys.shape[0] - 1)
    cdef const double* host_base = &host_stats[0, 0, 0]
    cdef const double* pair_base = &pair_stats[0, 0, 0]
    cdef const double* sock_base = &sock_stats[0, 0, 0]

    cdef Py_ssize_t i, c, column, src_slot, dst_slot, pair_slot, sock_slot
    cdef int j, k, pair_direction, sock_direction
    cdef double now_s, rate, factor, w, iw, syn, ratio
    cdef uint64_t s0, s1, d0, d1, sport, dport, proto, ports
    cdef const double* stats

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

            for k in range(windows):
                column = first_column + k * OUT_PER_WINDOW
                rate = decay_rates[k]
                if src_slot >= 0:
                    factor = _decay_factor(rate, now_s, host_time[src_slot])
                    stats = host_base + src_slot * host_row + k * HOST_FIELDS
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
                    factor = _decay_factor(rate, now_s, host_time[dst_slot])
                    out[i, column + OUT_FAN + 2] = host_base[dst_slot * host_row + k * HOST_FIELDS + H_FANIN] * factor
                if pair_slot >= 0:
                    factor = _decay_factor(rate, now_s, pair_time[pair_slot])
                    _write_directional(out, i, column + OUT_PAIR, pair_base + pair_slot * pair_row + k * PAIR_FIELDS,
                                       pair_direction, factor)
                if sock_slot >= 0:
                    factor = _decay_factor(rate, now_s, sock_time[sock_slot])
                    _write_directional(out, i, column + OUT_SOCKET, sock_base + sock_slot * pair_row + k * PAIR_FIELDS,
                                       sock_direction, factor)

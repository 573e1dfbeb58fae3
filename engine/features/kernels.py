"""Numba kernels of the damped window statistics (compiled with nogil: they release the GIL).

Every statistic is a damped sum: before a new value is added at time t, the
sums of its key are multiplied by 2^(-(t - t_last) / half_life), so a packet
of age a counts 2^(-a / half_life). Weight, mean and variance follow from
the sums (weight W, linear sum LS, squared sum SS): mean = LS / W,
variance = SS / W - mean^2. Each update is O(1) per key and half-life.

Four open-addressing tables hold the state, each with a fixed capacity (a
power of two) and fixed-width keys of five uint64 words:

  hosts     one IP address (words 0-1), as source and as destination
  pairs     two addresses in canonical order, lower first (words 0-3)
  sockets   two (address, port) ends in canonical order plus ports and
            protocol packed into word 4
  services  source address, destination address, destination port and
            protocol (the key of port fan-out); only a last-seen time

A key is looked up in at most MAX_PROBE slots from its hash. When all of
them hold other keys, the slot with the oldest activity time is evicted
and reused, and the table's eviction counter goes up. Slots are never
emptied, so a lookup may stop at the first unused slot.

Timestamps inside the kernels are float64 seconds since the table's base
time (the first packet seen), which keeps microsecond precision for years.
A timestamp that goes backwards decays nothing and adds a zero gap.
"""

import math

import numpy as np
from numba import njit

MAX_PROBE = 8
KEY_WORDS = 5

# Host statistics per half-life (last axis of host_stats).
H_W = 0  # damped packets sent
H_LS = 1  # damped sum of sent wire sizes, bytes
H_SS = 2  # damped sum of squared sizes
H_IW = 3  # damped count of inter-arrival gaps between sent packets
H_ILS = 4  # damped sum of those gaps, s
H_ISS = 5  # damped sum of squared gaps
H_FAN_HOSTS = 6  # damped count of new destination hosts
H_FAN_PORTS = 7  # damped count of new (destination, port, protocol)
H_FANIN = 8  # damped count of new source hosts, counted at the destination
H_SYN = 9  # damped TCP SYN-without-ACK packets sent
H_SYNACK = 10  # damped TCP SYN-ACK packets received
HOST_FIELDS = 11

# Pair and socket statistics per half-life: one block per canonical
# direction (0: lower end sends), then the residual cross product.
P_W = 0
P_LS = 1
P_SS = 2
P_RES = 3  # residual of the direction's last value against its mean
P_DIRECTION_FIELDS = 4
P_SR = 8  # damped sum of residual products of the two directions
PAIR_FIELDS = 9

# Indices of the counters array.
C_PACKETS = 0  # IP packets added to the tables
C_SKIPPED = 1  # packets without an IP layer or with a decode error
C_HOST_EVICTED = 2
C_PAIR_EVICTED = 3
C_SOCKET_EVICTED = 4
C_SERVICE_EVICTED = 5
COUNTER_NAMES = (
    "window_packets",
    "window_packets_skipped",
    "window_hosts_evicted",
    "window_pairs_evicted",
    "window_sockets_evicted",
    "window_services_evicted",
)

TCP_SYN = 0x02
TCP_ACK = 0x10

_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _mix(value):
    # splitmix64 finaliser: a full-avalanche bijection on 64 bits.
    value = (value ^ (value >> np.uint64(30))) * _MIX_1
    value = (value ^ (value >> np.uint64(27))) * _MIX_2
    return value ^ (value >> np.uint64(31))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _hash_key(k0, k1, k2, k3, k4):
    # Each word times its own odd constant, then one full mix. Crafted
    # collisions can only evict entries within one probe window, because a
    # lookup never scans more than MAX_PROBE slots.
    h = k0 * _MIX_1 + k1 * _MIX_2 + k2 * _GOLDEN
    h ^= (k3 * _MIX_1) >> np.uint64(17) | (k3 * _MIX_1) << np.uint64(47)
    h ^= (k4 * _MIX_2) >> np.uint64(29) | (k4 * _MIX_2) << np.uint64(35)
    return _mix(h)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _address_words(addresses, row):
    # Little-endian words of the 16 address bytes. IPv4 fills word 0 only.
    low = np.uint64(0)
    high = np.uint64(0)
    for j in range(8):
        low |= np.uint64(addresses[row, j]) << np.uint64(8 * j)
        high |= np.uint64(addresses[row, 8 + j]) << np.uint64(8 * j)
    return low, high


@njit(cache=True, nogil=True, error_model="numpy")
def _find_or_insert(keys, used, activity_s, k0, k1, k2, k3, k4, now_s, counters, evict_counter):
    """Return (slot, is_new) for the key, claiming or evicting a slot if it is absent."""
    mask = keys.shape[0] - 1
    start = _hash_key(k0, k1, k2, k3, k4) & np.uint64(mask)
    oldest_slot = -1
    oldest_time = np.inf
    for probe in range(MAX_PROBE):
        slot = (start + np.uint64(probe)) & np.uint64(mask)
        if not used[slot]:
            used[slot] = 1
            keys[slot, 0] = k0
            keys[slot, 1] = k1
            keys[slot, 2] = k2
            keys[slot, 3] = k3
            keys[slot, 4] = k4
            return np.int64(slot), True
        if keys[slot, 0] == k0 and keys[slot, 1] == k1 and keys[slot, 2] == k2 and keys[slot, 3] == k3 and keys[slot, 4] == k4:
            return np.int64(slot), False
        if activity_s[slot] < oldest_time:
            oldest_time = activity_s[slot]
            oldest_slot = np.int64(slot)
    counters[evict_counter] += 1
    keys[oldest_slot, 0] = k0
    keys[oldest_slot, 1] = k1
    keys[oldest_slot, 2] = k2
    keys[oldest_slot, 3] = k3
    keys[oldest_slot, 4] = k4
    return oldest_slot, True


@njit(cache=True, nogil=True, error_model="numpy")
def _find(keys, used, k0, k1, k2, k3, k4):
    """Return the key's slot, or -1 if the table does not contain it."""
    mask = keys.shape[0] - 1
    start = _hash_key(k0, k1, k2, k3, k4) & np.uint64(mask)
    for probe in range(MAX_PROBE):
        slot = (start + np.uint64(probe)) & np.uint64(mask)
        if not used[slot]:
            return np.int64(-1)
        if keys[slot, 0] == k0 and keys[slot, 1] == k1 and keys[slot, 2] == k2 and keys[slot, 3] == k3 and keys[slot, 4] == k4:
            return np.int64(slot)
    return np.int64(-1)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _decay_rows(stats, slot, decay_rates, elapsed_s, field_count):
    if elapsed_s <= 0.0:
        return
    for k in range(decay_rates.shape[0]):
        factor = math.exp(-elapsed_s * decay_rates[k])
        for f in range(field_count):
            stats[slot, k, f] *= factor


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _decay_pair(stats, slot, decay_rates, elapsed_s):
    # The residuals are the last values' distances from their means, not
    # sums, so they keep their size. Every damped sum decays.
    if elapsed_s <= 0.0:
        return
    for k in range(decay_rates.shape[0]):
        factor = math.exp(-elapsed_s * decay_rates[k])
        for f in range(PAIR_FIELDS):
            if f != P_RES and f != P_DIRECTION_FIELDS + P_RES:
                stats[slot, k, f] *= factor


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _add_directional(stats, slot, k, direction, size):
    base = direction * P_DIRECTION_FIELDS
    other = (1 - direction) * P_DIRECTION_FIELDS
    stats[slot, k, base + P_W] += 1.0
    stats[slot, k, base + P_LS] += size
    stats[slot, k, base + P_SS] += size * size
    residual = size - stats[slot, k, base + P_LS] / stats[slot, k, base + P_W]
    stats[slot, k, base + P_RES] = residual
    stats[slot, k, P_SR] += residual * stats[slot, k, other + P_RES]


@njit(cache=True, nogil=True, error_model="numpy")
def update_tables(
    ts_ns, wirelen, ip_version, status, src_addr, dst_addr, src_port, dst_port, ip_proto, tcp_flags,
    base_ns, half_lives_s, decay_rates,
    host_keys, host_used, host_time, host_last_sent, host_stats,
    pair_keys, pair_used, pair_time, pair_last_seen, pair_stats,
    sock_keys, sock_used, sock_time, sock_stats,
    service_keys, service_used, service_time,
    counters,
):
    """Add one batch of packets to the window tables, in packet order."""
    windows = half_lives_s.shape[0]
    zero = np.uint64(0)
    for i in range(ts_ns.shape[0]):
        # Truncated packets still carry valid addresses, but malformed and
        # non-IP ones do not.
        if ip_version[i] == 0 or status[i] > 1:
            counters[C_SKIPPED] += 1
            continue
        counters[C_PACKETS] += 1
        now_s = (ts_ns[i] - base_ns) * 1e-9
        size = float(wirelen[i])
        flags = tcp_flags[i]
        proto = np.uint64(ip_proto[i])
        is_tcp = ip_proto[i] == 6
        s0, s1 = _address_words(src_addr, i)
        d0, d1 = _address_words(dst_addr, i)
        sport = np.uint64(src_port[i])
        dport = np.uint64(dst_port[i])

        # Source host: size, inter-arrival time and connection attempts.
        src_slot, is_new = _find_or_insert(host_keys, host_used, host_time, s0, s1, zero, zero, zero, now_s, counters, C_HOST_EVICTED)
        if is_new:
            host_stats[src_slot, :, :] = 0.0
            host_time[src_slot] = now_s
            host_last_sent[src_slot] = np.nan
        _decay_rows(host_stats, src_slot, decay_rates, now_s - host_time[src_slot], HOST_FIELDS)
        host_time[src_slot] = max(host_time[src_slot], now_s)
        gap_s = now_s - host_last_sent[src_slot]
        has_gap = not math.isnan(gap_s)
        if has_gap and gap_s < 0.0:
            gap_s = 0.0
        is_syn = is_tcp and (flags & TCP_SYN) != 0 and (flags & TCP_ACK) == 0
        for k in range(windows):
            host_stats[src_slot, k, H_W] += 1.0
            host_stats[src_slot, k, H_LS] += size
            host_stats[src_slot, k, H_SS] += size * size
            if has_gap:
                host_stats[src_slot, k, H_IW] += 1.0
                host_stats[src_slot, k, H_ILS] += gap_s
                host_stats[src_slot, k, H_ISS] += gap_s * gap_s
            if is_syn:
                host_stats[src_slot, k, H_SYN] += 1.0
        host_last_sent[src_slot] = now_s

        # Destination host: fan-in and SYN-ACKs received. Looked up after
        # the source, so an eviction here cannot reuse the source's slot
        # before its update above is complete.
        dst_slot, is_new = _find_or_insert(host_keys, host_used, host_time, d0, d1, zero, zero, zero, now_s, counters, C_HOST_EVICTED)
        if is_new:
            host_stats[dst_slot, :, :] = 0.0
            host_time[dst_slot] = now_s
            host_last_sent[dst_slot] = np.nan
        _decay_rows(host_stats, dst_slot, decay_rates, now_s - host_time[dst_slot], HOST_FIELDS)
        host_time[dst_slot] = max(host_time[dst_slot], now_s)
        if is_tcp and (flags & TCP_SYN) != 0 and (flags & TCP_ACK) != 0:
            for k in range(windows):
                host_stats[dst_slot, k, H_SYNACK] += 1.0

        # Host pair, canonical order: direction 0 when the lower address sends.
        if s0 < d0 or (s0 == d0 and s1 <= d1):
            direction = 0
            slot, is_new = _find_or_insert(pair_keys, pair_used, pair_time, s0, s1, d0, d1, zero, now_s, counters, C_PAIR_EVICTED)
        else:
            direction = 1
            slot, is_new = _find_or_insert(pair_keys, pair_used, pair_time, d0, d1, s0, s1, zero, now_s, counters, C_PAIR_EVICTED)
        if is_new:
            pair_stats[slot, :, :] = 0.0
            pair_time[slot] = now_s
            pair_last_seen[slot, 0] = -np.inf
            pair_last_seen[slot, 1] = -np.inf
        _decay_pair(pair_stats, slot, decay_rates, now_s - pair_time[slot])
        pair_time[slot] = max(pair_time[slot], now_s)
        silence_s = now_s - pair_last_seen[slot, direction]
        pair_last_seen[slot, direction] = now_s
        src_slot_again = src_slot
        if host_keys[src_slot, 0] != s0 or host_keys[src_slot, 1] != s1:
            # The destination lookup evicted the source: nothing to credit.
            src_slot_again = -1
        for k in range(windows):
            _add_directional(pair_stats, slot, k, direction, size)
            if silence_s > half_lives_s[k]:
                if src_slot_again >= 0:
                    host_stats[src_slot_again, k, H_FAN_HOSTS] += 1.0
                host_stats[dst_slot, k, H_FANIN] += 1.0

        # Socket pair, canonical by (address, port).
        src_first = s0 < d0 or (s0 == d0 and (s1 < d1 or (s1 == d1 and sport <= dport)))
        if src_first:
            direction = 0
            ports = (sport << np.uint64(24)) | (dport << np.uint64(8)) | proto
            slot, is_new = _find_or_insert(sock_keys, sock_used, sock_time, s0, s1, d0, d1, ports, now_s, counters, C_SOCKET_EVICTED)
        else:
            direction = 1
            ports = (dport << np.uint64(24)) | (sport << np.uint64(8)) | proto
            slot, is_new = _find_or_insert(sock_keys, sock_used, sock_time, d0, d1, s0, s1, ports, now_s, counters, C_SOCKET_EVICTED)
        if is_new:
            sock_stats[slot, :, :] = 0.0
            sock_time[slot] = now_s
        _decay_pair(sock_stats, slot, decay_rates, now_s - sock_time[slot])
        sock_time[slot] = max(sock_time[slot], now_s)
        for k in range(windows):
            _add_directional(sock_stats, slot, k, direction, size)

        # Service: (source, destination, destination port, protocol).
        service = (dport << np.uint64(8)) | proto
        slot, is_new = _find_or_insert(service_keys, service_used, service_time, s0, s1, d0, d1, service, now_s, counters, C_SERVICE_EVICTED)
        if is_new:
            silence_s = np.inf
        else:
            silence_s = now_s - service_time[slot]
        service_time[slot] = max(service_time[slot], now_s)
        if src_slot_again >= 0:
            for k in range(windows):
                if silence_s > half_lives_s[k]:
                    host_stats[src_slot_again, k, H_FAN_PORTS] += 1.0


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _std(weight, linear_sum, squared_sum):
    if weight <= 0.0:
        return 0.0
    mean = linear_sum / weight
    variance = squared_sum / weight - mean * mean
    if variance <= 0.0:
        return 0.0
    return math.sqrt(variance)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _mean(weight, linear_sum):
    if weight <= 0.0:
        return 0.0
    return linear_sum / weight


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _write_directional(out, row, column, stats, slot, k, direction, factor):
    # weight, size mean, size std, magnitude, radius, covariance, correlation
    base = direction * P_DIRECTION_FIELDS
    other = (1 - direction) * P_DIRECTION_FIELDS
    w_this = stats[slot, k, base + P_W]
    w_other = stats[slot, k, other + P_W]
    mean_this = _mean(w_this, stats[slot, k, base + P_LS])
    mean_other = _mean(w_other, stats[slot, k, other + P_LS])
    std_this = _std(w_this, stats[slot, k, base + P_LS], stats[slot, k, base + P_SS])
    std_other = _std(w_other, stats[slot, k, other + P_LS], stats[slot, k, other + P_SS])
    covariance = 0.0
    if w_this + w_other > 0.0:
        covariance = stats[slot, k, P_SR] / (w_this + w_other)
    correlation = 0.0
    if std_this > 0.0 and std_other > 0.0:
        correlation = covariance / (std_this * std_other)
    out[row, column + 0] = w_this * factor
    out[row, column + 1] = mean_this
    out[row, column + 2] = std_this
    out[row, column + 3] = math.sqrt(mean_this * mean_this + mean_other * mean_other)
    out[row, column + 4] = math.sqrt(std_this * std_this + std_other * std_other)
    out[row, column + 5] = covariance
    out[row, column + 6] = correlation


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _decay_factor(rate, now_s, then_s):
    if now_s <= then_s:
        return 1.0
    return math.exp(-(now_s - then_s) * rate)


# Per-half-life column layout of query_tables; matches WINDOW_STEMS.
OUT_SRC_HOST = 0
OUT_PAIR = 5
OUT_SOCKET = 12
OUT_FAN = 19
OUT_PER_WINDOW = 24


@njit(cache=True, nogil=True, error_model="numpy")
def query_tables(
    src_addr, dst_addr, src_port, dst_port, protocol, at_ns,
    base_ns, decay_rates,
    host_keys, host_used, host_time, host_stats,
    pair_keys, pair_used, pair_time, pair_stats,
    sock_keys, sock_used, sock_time, sock_stats,
    out, first_column,
):
    """Write the window features of each (source, destination, ports, protocol) row into out.

    Weights and counts are decayed to at_ns; keys not in a table read 0.
    """
    windows = decay_rates.shape[0]
    zero = np.uint64(0)
    for i in range(src_addr.shape[0]):
        now_s = (at_ns[i] - base_ns) * 1e-9
        s0, s1 = _address_words(src_addr, i)
        d0, d1 = _address_words(dst_addr, i)
        sport = np.uint64(src_port[i])
        dport = np.uint64(dst_port[i])
        proto = np.uint64(protocol[i])
        for k in range(windows):
            for c in range(OUT_PER_WINDOW):
                out[i, first_column + k * OUT_PER_WINDOW + c] = 0.0

        src_slot = _find(host_keys, host_used, s0, s1, zero, zero, zero)
        dst_slot = _find(host_keys, host_used, d0, d1, zero, zero, zero)
        if s0 < d0 or (s0 == d0 and s1 <= d1):
            pair_direction = 0
            pair_slot = _find(pair_keys, pair_used, s0, s1, d0, d1, zero)
        else:
            pair_direction = 1
            pair_slot = _find(pair_keys, pair_used, d0, d1, s0, s1, zero)
        if s0 < d0 or (s0 == d0 and (s1 < d1 or (s1 == d1 and sport <= dport))):
            sock_direction = 0
            ports = (sport << np.uint64(24)) | (dport << np.uint64(8)) | proto
            sock_slot = _find(sock_keys, sock_used, s0, s1, d0, d1, ports)
        else:
            sock_direction = 1
            ports = (dport << np.uint64(24)) | (sport << np.uint64(8)) | proto
            sock_slot = _find(sock_keys, sock_used, d0, d1, s0, s1, ports)

        for k in range(windows):
            column = first_column + k * OUT_PER_WINDOW
            rate = decay_rates[k]
            if src_slot >= 0:
                factor = _decay_factor(rate, now_s, host_time[src_slot])
                w = host_stats[src_slot, k, H_W]
                iw = host_stats[src_slot, k, H_IW]
                out[i, column + OUT_SRC_HOST + 0] = w * factor
                out[i, column + OUT_SRC_HOST + 1] = _mean(w, host_stats[src_slot, k, H_LS])
                out[i, column + OUT_SRC_HOST + 2] = _std(w, host_stats[src_slot, k, H_LS], host_stats[src_slot, k, H_SS])
                out[i, column + OUT_SRC_HOST + 3] = _mean(iw, host_stats[src_slot, k, H_ILS])
                out[i, column + OUT_SRC_HOST + 4] = _std(iw, host_stats[src_slot, k, H_ILS], host_stats[src_slot, k, H_ISS])
                out[i, column + OUT_FAN + 0] = host_stats[src_slot, k, H_FAN_HOSTS] * factor
                out[i, column + OUT_FAN + 1] = host_stats[src_slot, k, H_FAN_PORTS] * factor
                syn = host_stats[src_slot, k, H_SYN]
                out[i, column + OUT_FAN + 3] = syn * factor
                if syn > 0.0:
                    ratio = 1.0 - host_stats[src_slot, k, H_SYNACK] / syn
                    out[i, column + OUT_FAN + 4] = min(max(ratio, 0.0), 1.0)
            if dst_slot >= 0:
                factor = _decay_factor(rate, now_s, host_time[dst_slot])
                out[i, column + OUT_FAN + 2] = host_stats[dst_slot, k, H_FANIN] * factor
            if pair_slot >= 0:
                factor = _decay_factor(rate, now_s, pair_time[pair_slot])
                _write_directional(out, i, column + OUT_PAIR, pair_stats, pair_slot, k, pair_direction, factor)
            if sock_slot >= 0:
                factor = _decay_factor(rate, now_s, sock_time[sock_slot])
                _write_directional(out, i, column + OUT_SOCKET, sock_stats, sock_slot, k, sock_direction, factor)

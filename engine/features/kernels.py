"""Window-statistics kernels: the tables' layout, constants and compiled update and query.

The loops live in the Cython module engine._native.windowfeatures
(ext/windowfeatures.pyx) and run without the GIL. This module keeps the
layout constants that engine.features.window and the tests use.

Every statistic is a damped sum: a packet of age a counts
2^(-a / half_life). Weight, mean and variance follow from the sums (weight
W, linear sum LS, squared sum SS): mean = LS / W, variance = SS / W - mean^2.
Each update is O(1) per key and half-life.

The sums are stored against a landmark time L rather than decayed at every
update: a value added at time t is stored times exp(rate * (t - L)), with
rate = ln 2 / half_life, and the sum at time T is the stored sum times
exp(-rate * (T - L)). An update then only adds. The packet's growth
factors are computed once and shared by every key it touches, while
decaying each key at its update cost an exp() per key and half-life and a
multiply per stored field. Means, variances and the pair residuals are
ratios of sums of one scale and need no factor. The landmark moves forward to the packet time once the
fastest half-life's factor passes exp(400) (every 58 s of traffic with the
0.1 s half-life), and each key is rescaled to the new landmark at its next
update, so no update walks a whole table. A key whose packets are older
than the landmark by more than 300 e-folds of the fastest half-life (43 s
for 0.1 s: merged captures, a clock step) keeps a landmark of its own. A
packet older than its key's landmark by more than that counts with at
least exp(-300) of its weight in each half-life, not less: a difference
far below float64 precision next to the key's newer packets.

Four open-addressing tables hold the state, each with a fixed capacity (a
power of two) and fixed-width keys of five uint64 words, stored with the
key's statistics in one row per slot (see HEADER_WORDS):

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
Every packet counts at its own timestamp, so reordered input gives the
sums of sorted input. A packet older than its host's previous one adds a
zero inter-arrival gap.
"""

from engine._native import windowfeatures
from engine._native.windowfeatures import query_tables, row_words, update_tables

__all__ = ["query_tables", "row_words", "update_tables"]

MAX_PROBE = 8
KEY_WORDS = 5
# A slot is one row of its table's float64 array. The header contains the key
# (words 0-4, read as uint64; the top bit of word 4 marks a used slot), the
# last activity time, the landmark of the slot's sums and a host's last
# send time. The statistics [half-life, field] follow. Pair rows end with
# the last packet time per direction. Rows are padded to whole 64-byte
# lines, and row_words gives the width.
HEADER_WORDS = 8

# Host statistics per half-life (after the slot header).
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

# Per-half-life column layout of query_tables; matches WINDOW_STEMS.
OUT_SRC_HOST = 0
OUT_PAIR = 5
OUT_SOCKET = 12
OUT_FAN = 19
OUT_PER_WINDOW = 24

# Half-lives one table can carry: the compiled update keeps the decay
# factors of every half-life in a fixed-size buffer.
MAX_WINDOWS = 16


def _check_layout() -> None:
    expected = {
        "MAX_PROBE": MAX_PROBE, "KEY_WORDS": KEY_WORDS, "HOST_FIELDS": HOST_FIELDS,
        "PAIR_FIELDS": PAIR_FIELDS, "OUT_PER_WINDOW": OUT_PER_WINDOW, "MAX_WINDOWS": MAX_WINDOWS,
        "HEADER_WORDS": HEADER_WORDS,
    }
    if windowfeatures.LAYOUT != expected:
        raise ImportError(
            f"engine._native.windowfeatures has layout {windowfeatures.LAYOUT}, expected {expected}; "
            "rebuild it with `python setup.py build_ext --inplace`"
        )


_check_layout()

"""Window-feature kernels against slow references written from the definitions."""

import math
import subprocess
import sys

import numpy as np
import pytest

from engine.decode.layout import empty_packets
from engine.features import FEATURE_SCHEMA, HALF_LIVES_S, WindowFeatures
from engine.features.kernels import OUT_FAN, OUT_PAIR, OUT_PER_WINDOW, OUT_SOCKET, OUT_SRC_HOST
from engine.features.schema import FLOW_FEATURE_COUNT, WINDOW_STEMS, render_markdown
from tests.conftest import REPO_ROOT

BASE_NS = 1_700_000_000 * 10**9
TCP = 6
UDP = 17
SYN = 0x02
ACK = 0x10


def ipv4(last_octet):
    address = np.zeros(16, dtype=np.uint8)
    address[:4] = (10, 0, 0, last_octet)
    return address


def make_packets(rows):
    """Build packets from (time_s, src, dst, sport, dport, proto, wirelen, tcp_flags) rows."""
    packets = empty_packets(len(rows))
    for i, (time_s, src, dst, sport, dport, proto, size, flags) in enumerate(rows):
        packets[i]["ts_ns"] = BASE_NS + round(time_s * 1e9)
        packets[i]["src_addr"] = ipv4(src)
        packets[i]["dst_addr"] = ipv4(dst)
        packets[i]["src_port"] = sport
        packets[i]["dst_port"] = dport
        packets[i]["ip_proto"] = proto
        packets[i]["wirelen"] = size
        packets[i]["caplen"] = size
        packets[i]["tcp_flags"] = flags
        packets[i]["ip_version"] = 4
    return packets


def random_rows(seed, count=400):
    rng = np.random.default_rng(seed)
    rows = []
    time_s = 0.0
    for _ in range(count):
        time_s += float(rng.exponential(0.2))
        src, dst = (int(v) for v in rng.choice([1, 2, 3, 4, 5], size=2, replace=False))
        proto = TCP if rng.random() < 0.7 else UDP
        flags = int(rng.choice([SYN, SYN | ACK, ACK, ACK | 0x08])) if proto == TCP else 0
        rows.append((time_s, src, dst, int(rng.choice([1000, 1001])), int(rng.choice([22, 80, 443])),
                     proto, int(rng.integers(60, 1500)), flags))
    return rows


def weighted_stats(events, at_s, half_life_s):
    """Return (damped weight at at_s, weighted mean, weighted std) of (time, value) events."""
    if not events:
        return 0.0, 0.0, 0.0
    times = np.array([t for t, _ in events])
    values = np.array([v for _, v in events])
    weights = np.power(2.0, -(at_s - times) / half_life_s)
    # Mean and variance do not change when every weight is scaled, so they
    # use weights relative to the newest event: long after the last event
    # the weights at at_s underflow, while the statistics still exist.
    relative = np.power(2.0, -(times.max() - times) / half_life_s)
    mean = float(np.sum(relative * values) / np.sum(relative))
    variance = float(np.sum(relative * values**2) / np.sum(relative)) - mean**2
    return float(np.sum(weights)), mean, math.sqrt(max(variance, 0.0))


def reference_features(rows, src, dst, sport, dport, proto, at_s, half_life_s):
    """Window features of one key from the definitions, one packet at a time."""
    sent_sizes, gaps, syns, synacks = [], [], [], []
    fan_hosts, fan_ports, fan_in = [], [], []
    last_sent = {}
    last_pair = {}
    last_service = {}
    for time_s, s, d, sp, dp, pr, size, flags in rows:
        if s == src:
            sent_sizes.append((time_s, size))
            if s in last_sent:
                gaps.append((time_s, time_s - last_sent[s]))
            if pr == TCP and flags & SYN and not flags & ACK:
                syns.append((time_s, 1.0))
        if d == src and pr == TCP and flags & SYN and flags & ACK:
            synacks.append((time_s, 1.0))
        last_sent[s] = time_s
        silence = time_s - last_pair.get((s, d), -math.inf)
        last_pair[(s, d)] = time_s
        if silence > half_life_s and s == src:
            fan_hosts.append((time_s, 1.0))
        if silence > half_life_s and d == dst:
            fan_in.append((time_s, 1.0))
        silence = time_s - last_service.get((s, d, dp, pr), -math.inf)
        last_service[(s, d, dp, pr)] = time_s
        if silence > half_life_s and s == src:
            fan_ports.append((time_s, 1.0))
    weight, size_mean, size_std = weighted_stats(sent_sizes, at_s, half_life_s)
    _, gap_mean, gap_std = weighted_stats(gaps, at_s, half_life_s)
    forward = [(t, size) for t, s, d, *_rest, size, _f in rows if (s, d) == (src, dst)]
    backward = [(t, size) for t, s, d, *_rest, size, _f in rows if (s, d) == (dst, src)]
    pair_weight, pair_mean, pair_std = weighted_stats(forward, at_s, half_life_s)
    _, back_mean, back_std = weighted_stats(backward, at_s, half_life_s)
    syn_weight = weighted_stats(syns, at_s, half_life_s)[0]
    synack_weight = weighted_stats(synacks, at_s, half_life_s)[0]
    return {
        "src_host_weight": weight,
        "src_host_size_mean": size_mean,
        "src_host_size_std": size_std,
        "src_host_iat_mean": gap_mean,
        "src_host_iat_std": gap_std,
        "pair_weight": pair_weight,
        "pair_size_mean": pair_mean,
        "pair_size_std": pair_std,
        "pair_magnitude": math.hypot(pair_mean, back_mean),
        "pair_radius": math.hypot(pair_std, back_std),
        "src_fanout_hosts": weighted_stats(fan_hosts, at_s, half_life_s)[0],
        "src_fanout_ports": weighted_stats(fan_ports, at_s, half_life_s)[0],
        "dst_fanin_hosts": weighted_stats(fan_in, at_s, half_life_s)[0],
        "src_syn_weight": syn_weight,
        "src_conn_fail_ratio": min(max(1.0 - synack_weight / syn_weight, 0.0), 1.0) if syn_weight > 0 else 0.0,
    }


def query_one(windows, src, dst, sport, dport, proto, at_s):
    return windows.query(
        ipv4(src)[None, :], ipv4(dst)[None, :], [sport], [dport], [proto],
        [BASE_NS + round(at_s * 1e9)],
    )[0]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_window_kernel_matches_reference(seed):
    rows = random_rows(seed)
    windows = WindowFeatures(capacity=1024)
    packets = make_packets(rows)
    # Two batches, so state carried between update() calls is covered.
    windows.update(packets[:150])
    windows.update(packets[150:])
    assert_matches_reference(windows, rows)


def assert_matches_reference(windows, rows, names=None):
    """Compare three key rows' features just after the last row with the slow reference."""
    at_s = max(row[0] for row in rows) + 0.05
    stems = [stem for stem, _unit, _meaning in WINDOW_STEMS]
    for src, dst in ((1, 2), (3, 5), (4, 1)):
        features = query_one(windows, src, dst, 1000, 80, TCP, at_s)
        for k, half_life_s in enumerate(HALF_LIVES_S):
            expected = reference_features(rows, src, dst, 1000, 80, TCP, at_s, half_life_s)
            for name in names or expected:
                actual = features[k * OUT_PER_WINDOW + stems.index(name)]
                # A standard deviation near 0 is the square root of a
                # cancelled difference, so it gets an absolute tolerance.
                tolerance = 1e-4 if name.endswith(("_std", "_radius")) else 1e-9
                assert actual == pytest.approx(expected[name], rel=1e-7, abs=tolerance), (name, half_life_s, src, dst)


@pytest.mark.parametrize("seed", [4, 5])
def test_window_kernel_matches_reference_across_landmarks(seed):
    # Gaps of 2 s on average over about 800 s: the stored sums move to a new
    # landmark every 58 s (400 e-folds of the 0.1 s half-life), and keys
    # idle for minutes are rescaled at their next update.
    rng = np.random.default_rng(seed)
    rows = [(t, s, d, sp, dp, pr, size, flags) for t, s, d, sp, dp, pr, size, flags in random_rows(seed)]
    times = np.cumsum(rng.exponential(2.0, len(rows)))
    rows = [(float(t),) + row[1:] for t, row in zip(times, rows)]
    windows = WindowFeatures(capacity=1024)
    windows.update(make_packets(rows))
    assert windows.landmark[0] > 600.0
    assert_matches_reference(windows, rows)


def test_idle_key_keeps_burst_after_landmarks():
    # Hosts 7 and 8 exchange a burst, then go quiet while hosts 1 and 2
    # talk for 300 s (the landmark moves five times). A flow of 7 -> 8
    # scored at its last packet (as an idle timeout does) must still read
    # the burst's weights, not values lost to rescaling.
    burst = [(0.01 * j, 7, 8, 1000, 80, UDP, 200 + j, 0) for j in range(5)]
    others = [(1.0 + 0.5 * j, 1, 2, 1000, 80, UDP, 100, 0) for j in range(600)]
    windows = WindowFeatures(capacity=1024)
    windows.update(make_packets(burst + others))
    assert windows.landmark[0] > 250.0
    at_s = burst[-1][0]
    features = query_one(windows, 7, 8, 1000, 80, UDP, at_s)
    stems = [stem for stem, _unit, _meaning in WINDOW_STEMS]
    for k, half_life_s in enumerate(HALF_LIVES_S):
        expected = reference_features(burst, 7, 8, 1000, 80, UDP, at_s, half_life_s)
        for name in ("src_host_weight", "src_host_size_mean", "pair_weight", "src_fanout_hosts"):
            actual = features[k * OUT_PER_WINDOW + stems.index(name)]
            assert actual == pytest.approx(expected[name], rel=1e-9), (name, half_life_s)


def test_window_late_packet_after_landmark_moved_stays_finite():
    # A packet 200 s older than everything before it (a second capture that
    # starts earlier) counts at the landmark instead of underflowing.
    rows = [(300.0 + 0.5 * j, 1, 2, 1000, 80, UDP, 100, 0) for j in range(10)]
    rows.append((100.0, 3, 4, 1000, 80, UDP, 400, 0))
    windows = WindowFeatures(capacity=64)
    windows.update(make_packets(rows))
    features = query_one(windows, 3, 4, 1000, 80, UDP, 100.0)
    assert np.all(np.isfinite(features))
    for k in range(len(HALF_LIVES_S)):
        assert features[k * OUT_PER_WINDOW + OUT_SRC_HOST + 0] == pytest.approx(1.0)
        assert features[k * OUT_PER_WINDOW + OUT_SRC_HOST + 1] == pytest.approx(400.0)


def test_window_socket_pair_uses_ports():
    rows = [
        (0.0, 1, 2, 1000, 80, TCP, 100, SYN),
        (0.1, 2, 1, 80, 1000, TCP, 300, SYN | ACK),
        (0.2, 1, 2, 1000, 80, TCP, 200, ACK),
        (0.3, 1, 2, 1001, 80, TCP, 999, SYN),
    ]
    windows = WindowFeatures(capacity=64)
    windows.update(make_packets(rows))
    features = query_one(windows, 1, 2, 1000, 80, TCP, 0.2)
    half_life_s = HALF_LIVES_S[-1]
    column = (len(HALF_LIVES_S) - 1) * OUT_PER_WINDOW + OUT_SOCKET
    weight, mean, std = weighted_stats([(0.0, 100), (0.2, 200)], 0.2, half_life_s)
    assert features[column + 0] == pytest.approx(weight)
    assert features[column + 1] == pytest.approx(mean)
    assert features[column + 2] == pytest.approx(std)
    # The reverse direction has one 300-byte packet: magnitude is |(mean, 300)|.
    assert features[column + 3] == pytest.approx(math.hypot(mean, 300.0))
    reversed_features = query_one(windows, 2, 1, 80, 1000, TCP, 0.2)
    assert reversed_features[column + 1] == pytest.approx(300.0)
    assert reversed_features[column + 3] == pytest.approx(features[column + 3])


def reference_covariance(rows, half_life_s):
    """Replay the residual-product recursion in plain Python: (covariance, correlation) of host 1 to 2."""
    sums = {1: [0.0, 0.0, 0.0], 2: [0.0, 0.0, 0.0]}  # weight, linear, squared per sender
    residual = {1: 0.0, 2: 0.0}
    cross = 0.0
    last_s = rows[0][0]
    for time_s, src, dst, *_rest, size, _flags in rows:
        factor = 2.0 ** (-(time_s - last_s) / half_life_s)
        last_s = time_s
        cross *= factor
        for sender in sums:
            sums[sender] = [v * factor for v in sums[sender]]
        weight, linear, squared = sums[src]
        sums[src] = [weight + 1, linear + size, squared + size * size]
        residual[src] = size - sums[src][1] / sums[src][0]
        cross += residual[src] * residual[dst]
    covariance = cross / (sums[1][0] + sums[2][0])
    stds = []
    for sender in (1, 2):
        weight, linear, squared = sums[sender]
        stds.append(math.sqrt(max(squared / weight - (linear / weight) ** 2, 0.0)))
    return covariance, covariance / (stds[0] * stds[1])


@pytest.mark.parametrize("echo_sign", [1, -1])
def test_window_covariance_matches_reference(echo_sign):
    # Replies whose sizes follow (or mirror) the request sizes.
    rows = []
    for i, size in enumerate([100, 900, 150, 1000, 120, 950, 110, 980]):
        rows.append((i * 1.0, 1, 2, 1000, 80, TCP, size, ACK))
        rows.append((i * 1.0 + 0.01, 2, 1, 80, 1000, TCP, 1100 + echo_sign * (size - 500), ACK))
    windows = WindowFeatures(capacity=64)
    windows.update(make_packets(rows))
    features = query_one(windows, 1, 2, 1000, 80, TCP, rows[-1][0])
    for k, half_life_s in enumerate(HALF_LIVES_S):
        column = k * OUT_PER_WINDOW + OUT_PAIR
        covariance, correlation = reference_covariance(rows, half_life_s)
        assert features[column + 5] == pytest.approx(covariance, rel=1e-9)
        assert features[column + 6] == pytest.approx(correlation, rel=1e-9)
    assert np.sign(features[(len(HALF_LIVES_S) - 1) * OUT_PER_WINDOW + OUT_PAIR + 5]) == echo_sign


def test_window_unknown_key_reads_zero():
    windows = WindowFeatures(capacity=64)
    windows.update(make_packets([(0.0, 1, 2, 1000, 80, TCP, 100, SYN)]))
    features = query_one(windows, 7, 8, 1, 2, UDP, 1.0)
    assert np.all(features == 0.0)


def test_window_skips_non_ip_packets():
    packets = make_packets([(0.0, 1, 2, 1000, 80, TCP, 100, SYN), (0.1, 1, 2, 1000, 80, TCP, 100, ACK)])
    packets[1]["ip_version"] = 0
    windows = WindowFeatures(capacity=64)
    windows.update(packets)
    assert windows.stats["window_packets"] == 1
    assert windows.stats["window_packets_skipped"] == 1


def test_window_eviction_is_counted():
    # 16 slots, 40 distinct sources: the host table must evict, and a
    # recent source must still be found afterwards.
    rows = [(i * 0.01, 10 + i, 2, 1000, 80, UDP, 100, 0) for i in range(40)]
    windows = WindowFeatures(capacity=16)
    windows.update(make_packets(rows))
    assert windows.stats["window_hosts_evicted"] > 0
    assert windows.stats["window_packets"] == 40
    last = query_one(windows, 49, 2, 1000, 80, UDP, 0.39)
    assert last[OUT_SRC_HOST] == pytest.approx(1.0)


def test_window_time_going_backwards():
    rows = [(1.0, 1, 2, 1000, 80, UDP, 100, 0), (0.5, 1, 2, 1000, 80, UDP, 300, 0)]
    windows = WindowFeatures(capacity=64)
    windows.update(make_packets(rows))
    features = query_one(windows, 1, 2, 1000, 80, UDP, 1.0)
    assert np.all(np.isfinite(features))
    for k, half_life_s in enumerate(HALF_LIVES_S):
        column = k * OUT_PER_WINDOW + OUT_SRC_HOST
        # The late packet counts at its own time, 0.5 s before the first.
        late_weight = 2.0 ** (-0.5 / half_life_s)
        assert features[column + 0] == pytest.approx(1.0 + late_weight)
        assert features[column + 1] == pytest.approx((100 + 300 * late_weight) / (1.0 + late_weight))
        # Its negative gap counts as 0.
        assert features[column + 3] == pytest.approx(0.0)


def test_service_seen_before_base_time():
    # The table's base time is the first packet's. A service first seen
    # 0.5 s before it (a capture whose clock steps back) must remember that
    # time: its next packet 0.4 s later is a new fan-out port for the 0.1 s
    # half-life only. A slot that kept its zeroed time read a negative
    # silence and never counted.
    rows = [
        (1.0, 1, 2, 1000, 80, UDP, 100, 0),
        (0.5, 1, 3, 1000, 80, UDP, 100, 0),
        (0.9, 1, 3, 1000, 80, UDP, 100, 0),
    ]
    windows = WindowFeatures(capacity=64)
    windows.update(make_packets(rows))
    features = query_one(windows, 1, 3, 1000, 80, UDP, 1.0)
    stems = [stem for stem, _unit, _meaning in WINDOW_STEMS]
    column = stems.index("src_fanout_ports")
    counted = []
    for k, half_life_s in enumerate(HALF_LIVES_S):
        expected = reference_features(rows, 1, 3, 1000, 80, UDP, 1.0, half_life_s)["src_fanout_ports"]
        assert features[k * OUT_PER_WINDOW + column] == pytest.approx(expected, rel=1e-9), half_life_s
        counted.append(expected)
    # Three new ports at 0.1 s (the third after 0.4 s of silence), two at 1 s.
    assert counted[0] == pytest.approx(1.0 + 2 ** (-5.0) + 2 ** (-1.0))
    assert counted[1] == pytest.approx(1.0 + 2 ** (-0.5))


@pytest.mark.parametrize("seed", [6, 7])
def test_window_reordered_input_matches_sorted(seed):
    # Packets shuffled within 2 s, as a SPAN of several ports or merged
    # captures deliver them: the damped sums are those of the packet times.
    rows = random_rows(seed, count=200)
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(0.0, 2.0, len(rows))
    shuffled = [rows[i] for i in np.argsort([row[0] + j for row, j in zip(rows, jitter)])]
    assert shuffled != rows
    windows = WindowFeatures(capacity=1024)
    windows.update(make_packets(shuffled))
    # Gaps and silences depend on arrival order; weights and sizes do not.
    assert_matches_reference(windows, rows, names=("src_host_weight", "src_host_size_mean", "src_host_size_std",
                                                   "pair_weight", "pair_size_mean", "pair_size_std"))


def test_window_rejects_wrong_dtype():
    windows = WindowFeatures(capacity=64)
    with pytest.raises(TypeError, match="PACKET_DTYPE"):
        windows.update(np.zeros(4, dtype=np.int64))


def test_window_rejects_bad_capacity():
    with pytest.raises(ValueError, match="power of two"):
        WindowFeatures(capacity=1000)


def test_fan_columns_follow_schema():
    names = [feature.name for feature in FEATURE_SCHEMA[FLOW_FEATURE_COUNT:]]
    assert names[OUT_FAN] == "src_fanout_hosts_100ms"
    assert names[OUT_PAIR] == "pair_weight_100ms"
    assert names[OUT_SOCKET] == "sock_weight_100ms"
    assert len(names) == OUT_PER_WINDOW * len(HALF_LIVES_S)


def test_features_doc_in_sync():
    doc = (REPO_ROOT / "docs" / "features.md").read_text(encoding="utf-8")
    assert doc == render_markdown(), "regenerate with: python -m engine.features.schema > docs/features.md"


def test_window_rejects_too_many_half_lives():
    with pytest.raises(ValueError, match="at most 16"):
        WindowFeatures(capacity=64, half_lives_s=[float(i + 1) for i in range(17)])


def test_window_weight_with_equal_gaps():
    # 50 packets from one source every 20 ms: every update decays by the
    # same gap, so the kernel reuses its decay factors. At the last packet
    # the source weight is the geometric sum of 2^(-j * gap / half_life).
    gap_s = 0.02
    count = 50
    rows = [(j * gap_s, 1, 2, 1000, 80, UDP, 100, 0) for j in range(count)]
    windows = WindowFeatures(capacity=64)
    windows.update(make_packets(rows))
    features = query_one(windows, 1, 2, 1000, 80, UDP, (count - 1) * gap_s)
    for k, half_life_s in enumerate(HALF_LIVES_S):
        expected = sum(2.0 ** (-j * gap_s / half_life_s) for j in range(count))
        assert features[k * OUT_PER_WINDOW + OUT_SRC_HOST] == pytest.approx(expected, rel=1e-9)


def test_window_import_leaves_numba_unloaded():
    # The features and the model run on compiled extensions, so starting
    # `wardwatch analyze` must not pay for importing numba.
    code = (
        "import sys, engine.features.matrix, engine.features.window, engine.detect.model; "
        "sys.exit(1 if 'numba' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_window_query_rejects_float32_out():
    windows = WindowFeatures(capacity=64)
    windows.update(make_packets([(0.0, 1, 2, 1000, 80, UDP, 100, 0)]))
    out = np.zeros((1, windows.feature_count), dtype=np.float32)
    with pytest.raises(TypeError, match="float64"):
        windows.query(ipv4(1)[None, :], ipv4(2)[None, :], [1000], [80], [UDP], [BASE_NS], out=out)

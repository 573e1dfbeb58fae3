"""Window features on real captures, checked against dpkt."""

import collections

import dpkt
import numpy as np
import pytest

from engine.features import HALF_LIVES_S, WindowFeatures
from engine.features.kernels import OUT_PER_WINDOW, OUT_SRC_HOST

capture_module = pytest.importorskip("engine.capture", reason="capture reader not built")
decode_module = pytest.importorskip("engine.decode", reason="decoder not built")

CAPTURES = ("cl-asyncrat.pcap", "sv-mqtt5-pub-jpeg.pcap")


def dpkt_ip_packets(path):
    """Return [(time_ns, src bytes, wire length)] of Ethernet frames carrying IPv4 or IPv6."""
    packets = []
    with open(path, "rb") as handle:
        for timestamp, frame in dpkt.pcap.Reader(handle):
            ethernet = dpkt.ethernet.Ethernet(frame)
            if isinstance(ethernet.data, (dpkt.ip.IP, dpkt.ip6.IP6)):
                packets.append((round(float(timestamp) * 1e9), bytes(ethernet.data.src), len(frame)))
    return packets


@pytest.mark.parametrize("name", CAPTURES)
def test_window_counts_match_dpkt(shared_pcaps, name):
    path = shared_pcaps / name
    if not path.is_file():
        pytest.skip(f"{name} not in the shared captures")
    windows = WindowFeatures(capacity=1024)
    last_ns = 0
    with capture_module.open_capture(path) as reader:
        counters = None
        for batch in reader:
            packets = batch.packets[: batch.count]
            counters = decode_module.decode_batch(packets, batch.data, counters)
            windows.update(packets, batch.data)
            last_ns = max(last_ns, int(packets["ts_ns"].max()))
    expected = dpkt_ip_packets(path)
    assert windows.stats["window_packets"] == len(expected)

    # The 100 s weight of the busiest source, read at the last packet, is
    # the sum of 2^(-age / 100 s) over its packets.
    by_source = collections.defaultdict(list)
    for time_ns, source, _size in expected:
        by_source[source].append(time_ns)
    source, times = max(by_source.items(), key=lambda item: len(item[1]))
    address = np.zeros((1, 16), dtype=np.uint8)
    address[0, : len(source)] = np.frombuffer(source, dtype=np.uint8)
    features = windows.query(address, address, [0], [0], [0], [last_ns])[0]
    column = HALF_LIVES_S.index(100.0) * OUT_PER_WINDOW + OUT_SRC_HOST
    ages_s = (last_ns - np.array(times)) * 1e-9
    assert features[column] == pytest.approx(np.sum(np.power(2.0, -ages_s / 100.0)), rel=1e-6)
    sizes = [size for _t, s, size in expected if s == source]
    weights = np.power(2.0, -ages_s / 100.0)
    assert features[column + 1] == pytest.approx(np.sum(weights * sizes) / np.sum(weights), rel=1e-6)

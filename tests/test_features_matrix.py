"""The feature matrix of flow records from the real flow table."""

import numpy as np
import pytest

from engine.features import FEATURE_SCHEMA, WindowFeatures, flow_feature_matrix
from engine.features.schema import FLOW_FEATURE_COUNT
from tests.test_features_window import ACK, SYN, TCP, make_packets

flows_module = pytest.importorskip("engine.flows", reason="flow table not built")


def handshake_rows():
    # 10.0.0.1:1000 -> 10.0.0.2:22: SYN, SYN-ACK, ACK, two data packets, then
    # a second connection from 10.0.0.3 that is never answered (S0).
    return [
        (0.00, 1, 2, 1000, 22, TCP, 74, SYN),
        (0.01, 2, 1, 22, 1000, TCP, 74, SYN | ACK),
        (0.02, 1, 2, 1000, 22, TCP, 66, ACK),
        (0.03, 1, 2, 1000, 22, TCP, 200, ACK | 0x08),
        (0.04, 2, 1, 22, 1000, TCP, 400, ACK | 0x08),
        (0.50, 3, 2, 4000, 22, TCP, 74, SYN),
    ]


def test_matrix_from_flow_table():
    packets = make_packets(handshake_rows())
    table = flows_module.FlowTable()
    windows = WindowFeatures(capacity=64)
    ended = [table.update(packets)]
    windows.update(packets)
    ended.append(table.flush())
    flows = np.concatenate(ended)
    X = flow_feature_matrix(flows, windows)
    assert X.shape == (2, len(FEATURE_SCHEMA))
    assert X.dtype == np.float32
    names = [feature.name for feature in FEATURE_SCHEMA]
    first = int(np.flatnonzero(flows["src_port"] == 1000)[0])
    row = X[first]
    assert row[names.index("dst_port")] == 22
    assert row[names.index("src2dst_packets")] == 3
    assert row[names.index("dst2src_packets")] == 2
    assert row[names.index("src2dst_bytes")] == 74 + 66 + 200
    assert row[names.index("dst2src_bytes")] == 74 + 400
    # Window columns are the tables read at the flow's last packet time.
    expected = windows.query(
        np.ascontiguousarray(flows["src_addr"]), np.ascontiguousarray(flows["dst_addr"]),
        flows["src_port"], flows["dst_port"], flows["ip_proto"], flows["bidirectional_last_seen_ns"],
    ).astype(np.float32)
    assert np.array_equal(X[:, FLOW_FEATURE_COUNT:], expected)
    # The host pair 10.0.0.1 -> 10.0.0.2 sent 3 packets within 40 ms, so its
    # 100 s weight is close to 3.
    assert row[names.index("pair_weight_100s")] == pytest.approx(3.0, rel=1e-3)

"""Join flow records with the window features of their hosts into the feature matrix."""

from __future__ import annotations

import numpy as np

from engine.features.schema import FEATURE_SCHEMA, FLOW_FEATURE_COUNT
from engine.features.window import WindowFeatures

# Flow record fields the join keys on.
KEY_FIELDS = {
    "src_addr": "src_addr",
    "dst_addr": "dst_addr",
    "src_port": "src_port",
    "dst_port": "dst_port",
    "protocol": "ip_proto",
    "last_seen_ns": "bidirectional_last_seen_ns",
}


def flow_field(flows: np.ndarray, path: str) -> np.ndarray:
    """Return the column `path` ("src2dst.bytes" for a nested field) of flow records."""
    column = flows
    for part in path.split("."):
        names = column.dtype.names or ()
        if part not in names:
            raise KeyError(f"flow records have no field {path!r}: {part!r} is not one of {', '.join(names)}")
        column = column[part]
    return column


def flow_feature_matrix(flows: np.ndarray, windows: WindowFeatures) -> np.ndarray:
    """Return float32 features [n_flows, len(FEATURE_SCHEMA)] in schema column order.

    Flow columns are read from the flow records; window columns are the
    statistics of each flow's source host, host pair, socket pair and
    destination, decayed to the flow's last packet time. Works the same on
    ended flows and on snapshots of live ones.
    """
    window_columns = len(FEATURE_SCHEMA) - FLOW_FEATURE_COUNT
    if windows.feature_count != window_columns:
        raise ValueError(
            f"window tables produce {windows.feature_count} features but the schema expects "
            f"{window_columns}; use the default half-lives"
        )
    out = np.zeros((flows.shape[0], len(FEATURE_SCHEMA)), dtype=np.float64)
    for column, feature in enumerate(FEATURE_SCHEMA[:FLOW_FEATURE_COUNT]):
        out[:, column] = flow_field(flows, feature.source)
    keys = {name: flow_field(flows, path) for name, path in KEY_FIELDS.items()}
    windows.query(
        np.ascontiguousarray(keys["src_addr"]),
        np.ascontiguousarray(keys["dst_addr"]),
        keys["src_port"],
        keys["dst_port"],
        keys["protocol"],
        keys["last_seen_ns"],
        out=out,
        first_column=FLOW_FEATURE_COUNT,
    )
    return out.astype(np.float32)

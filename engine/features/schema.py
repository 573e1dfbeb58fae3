"""The feature schema: every column of the model's feature matrix, declared once.

Each feature has a name, a unit, a window and a meaning. The window is the
half-life of the damped statistic it comes from ("flow" for features of the
flow record itself). The model file stores the schema and its hash, and
loading a model whose hash differs from FEATURE_SCHEMA raises, so a scorer
never reads columns in an order it was not trained on. docs/features.md is
generated from this table by `python -m engine.features.schema`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

# Half-lives of the damped window statistics, in seconds. A statistic's
# weight halves every half-life, so 0.1 s reacts to bursts and floods while
# 100 s keeps the slow shape of a scan or a beacon.
HALF_LIVES_S = (0.1, 1.0, 10.0, 100.0)


@dataclass(frozen=True)
class Feature:
    name: str
    unit: str
    window: str  # "flow", or the half-life such as "1s"
    meaning: str
    source: str | None = None  # FLOW_DTYPE field a flow feature is read from


def window_label(half_life_s: float) -> str:
    """Format a half-life for a feature name: 0.1 -> "100ms", 10.0 -> "10s"."""
    if half_life_s < 1.0:
        return f"{round(half_life_s * 1000)}ms"
    return f"{half_life_s:g}s"


# Flow features, read from the flow record at flow end (or at a snapshot of a
# long flow). `source` names the FLOW_DTYPE field.
_FLOW_FEATURES = (
    ("protocol", "IANA number", "IP protocol of the flow (6 TCP, 17 UDP, 1 ICMP)", "ip_proto"),
    ("dst_port", "port", "responder port (0 for protocols without ports)", "dst_port"),
    ("duration_ms", "ms", "last packet time minus first packet time", "bidirectional_duration_ms"),
    ("src2dst_packets", "packets", "packets from initiator to responder", "src2dst_packets"),
    ("dst2src_packets", "packets", "packets from responder to initiator", "dst2src_packets"),
    ("src2dst_bytes", "bytes", "wire bytes from initiator to responder", "src2dst_bytes"),
    ("dst2src_bytes", "bytes", "wire bytes from responder to initiator", "dst2src_bytes"),
    ("src2dst_payload_bytes", "bytes", "L4 payload bytes from initiator to responder, as the IP headers claim", "src2dst_payload_bytes"),
    ("dst2src_payload_bytes", "bytes", "L4 payload bytes from responder to initiator, as the IP headers claim", "dst2src_payload_bytes"),
    ("src2dst_mean_ps", "bytes", "mean packet size from initiator to responder", "src2dst_mean_ps"),
    ("dst2src_mean_ps", "bytes", "mean packet size from responder to initiator", "dst2src_mean_ps"),
    ("src2dst_stddev_ps", "bytes", "standard deviation of packet size, initiator to responder", "src2dst_stddev_ps"),
    ("dst2src_stddev_ps", "bytes", "standard deviation of packet size, responder to initiator", "dst2src_stddev_ps"),
    ("src2dst_mean_piat_ms", "ms", "mean inter-arrival time, initiator to responder", "src2dst_mean_piat_ms"),
    ("dst2src_mean_piat_ms", "ms", "mean inter-arrival time, responder to initiator", "dst2src_mean_piat_ms"),
    ("src2dst_syn_packets", "packets", "TCP packets with SYN set, initiator to responder", "src2dst_syn_packets"),
    ("dst2src_syn_packets", "packets", "TCP packets with SYN set, responder to initiator", "dst2src_syn_packets"),
    ("src2dst_rst_packets", "packets", "TCP packets with RST set, initiator to responder", "src2dst_rst_packets"),
    ("dst2src_rst_packets", "packets", "TCP packets with RST set, responder to initiator", "dst2src_rst_packets"),
    ("src2dst_fin_packets", "packets", "TCP packets with FIN set, initiator to responder", "src2dst_fin_packets"),
    ("dst2src_fin_packets", "packets", "TCP packets with FIN set, responder to initiator", "dst2src_fin_packets"),
    ("src2dst_psh_packets", "packets", "TCP packets with PSH set, initiator to responder", "src2dst_psh_packets"),
    ("dst2src_psh_packets", "packets", "TCP packets with PSH set, responder to initiator", "dst2src_psh_packets"),
    ("conn_state", "code", "conn_state code of the flow record (the ww_conn_state enum, see docs/flows.md)", "conn_state"),
)

# Window features per half-life: (name stem, unit, meaning). The kernel in
# engine.features.window writes them in this order for each half-life.
WINDOW_STEMS = (
    ("src_host_weight", "packets", "damped count of packets sent by the flow's source host"),
    ("src_host_size_mean", "bytes", "damped mean wire size of packets sent by the source host"),
    ("src_host_size_std", "bytes", "damped standard deviation of that size"),
    ("src_host_iat_mean", "s", "damped mean time between packets sent by the source host"),
    ("src_host_iat_std", "s", "damped standard deviation of that inter-arrival time"),
    ("pair_weight", "packets", "damped count of packets from the source host to the destination host"),
    ("pair_size_mean", "bytes", "damped mean wire size, source host to destination host"),
    ("pair_size_std", "bytes", "damped standard deviation of that size"),
    ("pair_magnitude", "bytes", "square root of the sum of squared mean sizes of both directions of the host pair"),
    ("pair_radius", "bytes", "square root of the sum of the size variances of both directions of the host pair"),
    ("pair_covariance", "bytes^2", "damped covariance of the two directions' size residuals of the host pair"),
    ("pair_correlation", "ratio", "pair_covariance divided by the product of both directions' standard deviations"),
    ("sock_weight", "packets", "damped count of packets from the source socket to the destination socket"),
    ("sock_size_mean", "bytes", "damped mean wire size, source socket to destination socket"),
    ("sock_size_std", "bytes", "damped standard deviation of that size"),
    ("sock_magnitude", "bytes", "as pair_magnitude, for the socket pair (addresses, ports, protocol)"),
    ("sock_radius", "bytes", "as pair_radius, for the socket pair"),
    ("sock_covariance", "bytes^2", "as pair_covariance, for the socket pair"),
    ("sock_correlation", "ratio", "as pair_correlation, for the socket pair"),
    ("src_fanout_hosts", "hosts", "damped count of destination hosts the source host contacted after a silence longer than the half-life (an estimate of distinct destinations in the window)"),
    ("src_fanout_ports", "services", "as src_fanout_hosts, for distinct (destination host, destination port, protocol)"),
    ("dst_fanin_hosts", "hosts", "as src_fanout_hosts, counted at the destination: distinct source hosts that contacted it"),
    ("src_syn_weight", "packets", "damped count of TCP SYN packets without ACK (connection attempts) sent by the source host"),
    ("src_conn_fail_ratio", "ratio", "share of the source host's connection attempts that got no SYN-ACK (S0 and REJ), from 0 to 1"),
)


def _build_schema() -> tuple[Feature, ...]:
    features = [Feature(name, unit, "flow", meaning, source) for name, unit, meaning, source in _FLOW_FEATURES]
    for half_life_s in HALF_LIVES_S:
        label = window_label(half_life_s)
        for stem, unit, meaning in WINDOW_STEMS:
            features.append(Feature(f"{stem}_{label}", unit, label, meaning))
    return tuple(features)


FEATURE_SCHEMA: tuple[Feature, ...] = _build_schema()
FEATURE_NAMES: tuple[str, ...] = tuple(feature.name for feature in FEATURE_SCHEMA)
FLOW_FEATURE_COUNT = len(_FLOW_FEATURES)
WINDOW_FEATURES_PER_HALF_LIFE = len(WINDOW_STEMS)


def schema_to_json(schema=FEATURE_SCHEMA) -> list[dict]:
    """Return the schema as a list of plain dicts, the form stored in a model file."""
    return [asdict(feature) for feature in schema]


def schema_hash(schema=FEATURE_SCHEMA) -> str:
    """Return the SHA-256 hex digest of the schema's canonical JSON."""
    canonical = json.dumps(schema_to_json(schema), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


FEATURE_SCHEMA_HASH = schema_hash()


def render_markdown() -> str:
    """Render docs/features.md from FEATURE_SCHEMA."""
    lines = [
        "# Features",
        "",
        "<!-- Generated by `python -m engine.features.schema > docs/features.md`;",
        "     tests/test_features_schema.py fails when this file and the code differ. -->",
        "",
        "Every column of the feature matrix the model scores, in column order.",
        "Flow features come from the flow record at flow end, or at a snapshot of a",
        "long flow. Window features are damped statistics of all packets seen so",
        "far, read for the flow's hosts and sockets at the flow's last packet time:",
        "a statistic's weight halves every half-life (the window column), so each",
        "packet counts 2^(-age/half-life). Means and standard deviations are",
        "ratios of damped sums, so they do not decay by themselves; weights and",
        "counts do. A key never seen (or evicted from its bounded table) reads 0.",
        "",
        f"Schema hash (SHA-256 of the canonical JSON, stored in every model file): `{FEATURE_SCHEMA_HASH}`",
        "",
        "| # | name | unit | window | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for index, feature in enumerate(FEATURE_SCHEMA):
        meaning = feature.meaning
        if feature.source is not None:
            meaning = f"{meaning} (flow field `{feature.source}`)"
        lines.append(f"| {index} | `{feature.name}` | {feature.unit} | {feature.window} | {meaning} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")

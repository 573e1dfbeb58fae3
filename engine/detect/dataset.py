"""Captures and simulator labels into feature matrices and per-flow class names."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from engine.features import WindowFeatures, flow_feature_matrix
from engine.features.matrix import flow_field
from engine.taxonomy import ATTACK_CLASSES, BENIGN

log = logging.getLogger(__name__)

# Label times and flow times come from different clocks of the simulator
# (scenario plan and packet timestamps), so a flow matches a label whose
# [start, end] it overlaps within this slack.
LABEL_TIME_SLACK_S = 1.0
_PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}


def extract_capture(path, window_capacity: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Read a capture through decode, flows and windows; return (flow records, feature matrix).

    NOTE: the window tables are updated with a whole batch before the flows
    that ended in it are read, so a flow ending mid-batch gets up to one
    batch of later packets in its window features.
    """
    from engine.capture import open_capture
    from engine.decode import decode_batch
    from engine.flows import FlowTable

    table = FlowTable()
    windows = WindowFeatures(capacity=window_capacity)
    counters = None
    flow_parts, matrix_parts = [], []
    with open_capture(path) as reader:
        for batch in reader:
            packets = batch.packets[: batch.count]
            counters = decode_batch(packets, batch.data, counters)
            ended = table.update(packets, batch.data)
            windows.update(packets, batch.data)
            if ended.size:
                flow_parts.append(ended)
                matrix_parts.append(flow_feature_matrix(ended, windows))
    ended = table.flush()
    if ended.size:
        flow_parts.append(ended)
        matrix_parts.append(flow_feature_matrix(ended, windows))
    if not flow_parts:
        raise ValueError(f"capture {path} has no IP flows to train on")
    log.info("%s: %d flows, window counters %s", path, sum(len(p) for p in flow_parts), windows.stats)
    return np.concatenate(flow_parts), np.concatenate(matrix_parts)


def _address_text(raw: np.ndarray, version: int) -> str:
    data = bytes(raw)
    if version == 4:
        return str(ipaddress.IPv4Address(data[:4]))
    return str(ipaddress.IPv6Address(data))


def _protocol_number(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value.lower() not in _PROTOCOL_NUMBERS:
            raise ValueError(f"invalid protocol {value!r} in labels: expected one of {sorted(_PROTOCOL_NUMBERS)} or a number")
        return _PROTOCOL_NUMBERS[value.lower()]
    return int(value)


def _selector_from(selector: dict) -> dict | None:
    """Turn a label's flow selector (src_cidr or src, dst, dport, proto) into match fields.

    Returns None for a selector of a non-IP protocol such as ARP, which no
    flow record can match.
    """
    proto = selector.get("proto")
    if isinstance(proto, str) and proto.lower() not in _PROTOCOL_NUMBERS:
        return None
    source = selector.get("src_cidr") or selector.get("src")
    dst = selector.get("dst")
    if isinstance(dst, str):
        dst = [dst]
    dport = selector.get("dport")
    return {
        "src_network": None if source is None else ipaddress.ip_network(source, strict=False),
        "dst": set(dst) if dst else None,
        "dst_ports": {int(dport)} if dport is not None else set(),
        "proto": _protocol_number(proto),
    }


def read_labels(path) -> list[dict]:
    """Read simulator labels (JSON lines); raise ValueError naming the line of an invalid record."""
    labels = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: invalid JSON: {error}") from error
        attack_class = record.get("attack_class")
        if attack_class not in ATTACK_CLASSES:
            raise ValueError(f"{path}:{number}: unknown attack_class {attack_class!r}: expected a key of ATTACK_CLASSES")
        if "start" not in record or "end" not in record:
            raise ValueError(f"{path}:{number}: label lacks start or end")
        labels.append(record)
    return labels


def label_flows(flows: np.ndarray, labels: list[dict]) -> np.ndarray:
    """Return the class name of each flow: the attack class of a matching label, else benign.

    A label's "flows" entries match a flow by 5-tuple in either direction
    (a missing element matches anything). A label with an empty "flows"
    list and a "selector" (src_cidr or src, dst, dport, proto) matches the
    flows the selector describes. A label with neither matches flows from
    its src to its dst (a string, a list, or null for any) on its
    dst_ports. All need the flow's time range to overlap the label's
    [start, end].
    """
    first_ns = flow_field(flows, "bidirectional_first_seen_ns")
    last_ns = flow_field(flows, "bidirectional_last_seen_ns")
    versions = flows["ip_version"]
    src = [_address_text(flows["src_addr"][i], versions[i]) for i in range(flows.size)]
    dst = [_address_text(flows["dst_addr"][i], versions[i]) for i in range(flows.size)]
    sport = flows["src_port"].astype(int)
    dport = flows["dst_port"].astype(int)
    proto = flows["ip_proto"].astype(int)

    exact: dict[tuple, list[tuple[float, float, str]]] = defaultdict(list)
    selectors: list[dict] = []
    for label in labels:
        start = float(label["start"]) - LABEL_TIME_SLACK_S
        end = float(label["end"]) + LABEL_TIME_SLACK_S
        if label.get("flows"):
            for entry in label["flows"]:
                key = (entry.get("src"), entry.get("sport"), entry.get("dst"), entry.get("dport"), _protocol_number(entry.get("proto")))
                exact[key].append((start, end, label["attack_class"]))
        elif label.get("selector"):
            selector = _selector_from(label["selector"])
            if selector is not None:
                selectors.append(dict(selector, start=start, end=end, attack_class=label["attack_class"]))
        elif "flows" not in label:
            targets = label.get("dst")
            if isinstance(targets, str):
                targets = [targets]
            selectors.append({
                "src_network": None if label.get("src") is None else ipaddress.ip_network(label["src"], strict=False),
                "dst": set(targets) if targets else None,
                "dst_ports": set(label.get("dst_ports") or ()),
                "proto": None,
                "start": start, "end": end, "attack_class": label["attack_class"],
            })
    wildcard_shapes = {tuple(part is None for part in key) for key in exact}

    result = np.full(flows.size, BENIGN, dtype=object)
    for i in range(flows.size):
        begin_s = first_ns[i] * 1e-9
        finish_s = last_ns[i] * 1e-9
        forward = (src[i], int(sport[i]), dst[i], int(dport[i]), int(proto[i]))
        reverse = (dst[i], int(dport[i]), src[i], int(sport[i]), int(proto[i]))
        found = None
        for shape in wildcard_shapes:
            for tuple_ in (forward, reverse):
                key = tuple(None if wild else part for part, wild in zip(tuple_, shape))
                for start, end, attack_class in exact.get(key, ()):
                    if begin_s <= end and finish_s >= start:
                        found = attack_class
        if found is None:
            for selector in selectors:
                if selector["src_network"] is not None and ipaddress.ip_address(src[i]) not in selector["src_network"]:
                    continue
                if selector["dst"] is not None and dst[i] not in selector["dst"]:
                    continue
                if selector["dst_ports"] and int(dport[i]) not in selector["dst_ports"]:
                    continue
                if selector["proto"] is not None and int(proto[i]) != selector["proto"]:
                    continue
                if begin_s <= selector["end"] and finish_s >= selector["start"]:
                    found = selector["attack_class"]
        if found is not None:
            result[i] = found
    return result.astype(str)


def load_dataset(captures, label_paths) -> tuple[np.ndarray, np.ndarray]:
    """Return (feature matrix, class names) over several captures with their label files."""
    if len(captures) != len(label_paths):
        raise ValueError(f"got {len(captures)} captures but {len(label_paths)} label files; pass one --labels per capture")
    matrices, names = [], []
    for capture, label_path in zip(captures, label_paths):
        flows, X = extract_capture(capture)
        classes = label_flows(flows, read_labels(label_path))
        log.info("%s: %d flows, %d labelled as attacks", capture, flows.size, int(np.sum(classes != BENIGN)))
        matrices.append(X)
        names.append(classes)
    return np.concatenate(matrices), np.concatenate(names)

"""Joining flow records to simulator labels."""

import numpy as np
import pytest

from engine.detect.dataset import label_flows, read_labels

flows_module = pytest.importorskip("engine.flows", reason="flow table not built")

BASE_S = 1_800_000_000


def flow(src, sport, dst, dport, proto, first_s, last_s):
    record = np.zeros(1, dtype=flows_module.FLOW_DTYPE)
    record["src_addr"][0, :4] = [int(part) for part in src.split(".")]
    record["dst_addr"][0, :4] = [int(part) for part in dst.split(".")]
    record["ip_version"] = 4
    record["src_port"] = sport
    record["dst_port"] = dport
    record["ip_proto"] = proto
    record["bidirectional_first_seen_ns"] = int((BASE_S + first_s) * 1e9)
    record["bidirectional_last_seen_ns"] = int((BASE_S + last_s) * 1e9)
    return record


def test_labels_exact_tuple_both_directions():
    flows = np.concatenate([
        flow("10.0.0.5", 5000, "10.0.0.9", 22, 6, 10, 11),   # matches as listed
        flow("10.0.0.9", 22, "10.0.0.5", 5000, 6, 10, 11),   # initiator seen reversed
        flow("10.0.0.5", 5000, "10.0.0.9", 22, 6, 500, 501),  # same tuple, later reuse
        flow("10.0.0.5", 5001, "10.0.0.9", 22, 6, 10, 11),   # other source port
    ])
    labels = [{
        "attack_class": "ssh_bruteforce", "start": BASE_S + 9, "end": BASE_S + 12,
        "flows": [{"src": "10.0.0.5", "sport": 5000, "dst": "10.0.0.9", "dport": 22, "proto": "tcp"}],
    }]
    assert label_flows(flows, labels).tolist() == ["ssh_bruteforce", "ssh_bruteforce", "benign", "benign"]


def test_labels_selector_with_cidr():
    flows = np.concatenate([
        flow("192.0.2.7", 40000, "10.0.0.17", 104, 6, 100, 100),
        flow("192.0.2.200", 40001, "10.0.0.17", 104, 17, 100, 100),  # wrong protocol
        flow("198.51.100.7", 40002, "10.0.0.17", 104, 6, 100, 100),  # outside the CIDR
        flow("192.0.2.8", 40003, "10.0.0.17", 80, 6, 100, 100),  # wrong port
    ])
    labels = [{
        "attack_class": "syn_flood", "start": BASE_S + 99, "end": BASE_S + 110, "flows": [],
        "selector": {"src_cidr": "192.0.2.0/24", "dst": "10.0.0.17", "dport": 104, "proto": "tcp"},
    }]
    assert label_flows(flows, labels).tolist() == ["syn_flood", "benign", "benign", "benign"]


def test_labels_arp_selector_matches_nothing():
    flows = flow("10.40.0.12", 1000, "10.40.0.10", 80, 6, 5, 6)
    labels = [{
        "attack_class": "arp_spoof", "src": "10.40.0.12", "dst": ["10.40.0.10"], "dst_ports": [],
        "start": BASE_S, "end": BASE_S + 10, "flows": [],
        "selector": {"claimed_ip": "10.40.0.1", "proto": "arp", "src_mac": "c8:f7:50:52:00:02"},
    }]
    assert label_flows(flows, labels).tolist() == ["benign"]


def test_labels_fallback_src_dst_ports():
    flows = np.concatenate([
        flow("10.0.0.5", 5000, "10.0.0.9", 3389, 6, 10, 11),
        flow("10.0.0.5", 5001, "10.0.0.9", 22, 6, 10, 11),
    ])
    labels = [{"attack_class": "rdp_bruteforce", "src": "10.0.0.5", "dst": "10.0.0.9",
               "dst_ports": [3389], "start": BASE_S + 10, "end": BASE_S + 11}]
    assert label_flows(flows, labels).tolist() == ["rdp_bruteforce", "benign"]


def test_read_labels_rejects_unknown_class(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"attack_class": "port_scan", "start": 1, "end": 2}\n{"attack_class": "made_up", "start": 1, "end": 2}\n')
    with pytest.raises(ValueError, match=r"labels.jsonl:2: unknown attack_class 'made_up'"):
        read_labels(path)


def test_read_labels_rejects_bad_json(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="labels.jsonl:1: invalid JSON"):
        read_labels(path)

"""A flow reported from an interim snapshot is not counted again when it ends."""

import ipaddress

import dpkt
import numpy as np

from engine.analyze.pipeline import AnalyzeOptions, Pipeline
from engine.capture import open_capture
from engine.detect import load_model
from tests.conftest import REPO_ROOT

SAMPLE = REPO_ROOT / "engine" / "data" / "sample.pcap"
FLOOD_SOURCES = ipaddress.ip_network("192.0.2.0/24")  # the sample label's src_cidr
FLOOD_TARGET = ("10.10.0.17", 104)


def flood_connections() -> int:
    """Count distinct (source, port) pairs that sent a SYN to the flood target, read with dpkt."""
    connections = set()
    with open(SAMPLE, "rb") as handle:
        for _ts, frame in dpkt.pcap.Reader(handle):
            ip = dpkt.ethernet.Ethernet(frame).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            source = ipaddress.ip_address(ip.src)
            target = (str(ipaddress.ip_address(ip.dst)), tcp.dport)
            if source in FLOOD_SOURCES and target == FLOOD_TARGET and tcp.flags & dpkt.tcp.TH_SYN:
                connections.add((source, tcp.sport))
    return len(connections)


def test_flood_flows_counted_once_with_interim_snapshots():
    # Interim snapshots every 2 s of capture time, so flood flows are
    # reported while live and then end inside later batches.
    pipeline = Pipeline(load_model(), AnalyzeOptions(interim_interval_s=2.0))
    detections = []
    with open_capture(SAMPLE, batch_size=512) as reader:
        for batch in reader:
            detections += pipeline.process(batch.packets, batch.data)
    detections += pipeline.finish()
    flood = [d for d in detections if d.origin == "model" and d.attack_class == "syn_flood"]
    counted = sum(d.count for d in flood)
    connections = flood_connections()
    assert connections == 2250
    assert counted <= connections
    assert counted >= 0.9 * connections
    assert pipeline.counters["flows_reported_at_interim"] > 0


def test_interim_reported_ids_cover_every_member():
    # A detection lists at most MAX_FLOW_IDS flow ids, but every flow it
    # counts must be remembered, or the rest are counted again at their end.
    pipeline = Pipeline(load_model(), AnalyzeOptions(interim_interval_s=2.0))
    with open_capture(SAMPLE, batch_size=512) as reader:
        for batch in reader:
            pipeline.process(batch.packets, batch.data)
    remembered = np.fromiter(pipeline._interim_reported, dtype=np.uint64)
    assert remembered.size == np.unique(remembered).size
    assert pipeline.counters["flows_reported_at_interim"] + remembered.size >= 2000

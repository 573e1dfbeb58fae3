"""An overloaded flow table must not turn flow fragments into attack alerts."""

import numpy as np

from engine.analyze.pipeline import AnalyzeOptions, Pipeline
from engine.capture import open_capture
from engine.detect import load_model
from engine.flows.layout import FLOW_DTYPE
from tests.conftest import REPO_ROOT

SAMPLE = REPO_ROOT / "engine" / "data" / "sample.pcap"
MQTT_BROKER = "10.10.0.19"  # the sample's broker; its clients publish telemetry over long sessions


def detections_with(options):
    pipeline = Pipeline(load_model(), options)
    detections = []
    with open_capture(SAMPLE) as reader:
        for batch in reader:
            detections += pipeline.process(batch.packets, batch.data)
    detections += pipeline.finish()
    return pipeline, detections


def test_tiny_flow_table_gives_no_mqtt_beacons():
    # Four flow slots: almost every flow is evicted, and each MQTT session
    # is cut into one fragment per publish, which looked like regular
    # connections to a C2 server (53 high c2 alerts before the fix).
    pipeline, detections = detections_with(AnalyzeOptions(flow_capacity=4, window_capacity=8))
    assert pipeline.flow_table.stats["flows_evicted"] > 2000
    mqtt_beacons = [
        d for d in detections
        if d.attack_class == "c2_beacon" and d.dst_ip == MQTT_BROKER and d.dst_port == 1883
    ]
    assert mqtt_beacons == []
    assert pipeline.counters["evicted_flows_not_reported"] > 0
    assert pipeline.counters["beacon_flows_midstream"] > 0


def test_default_table_keeps_the_sample_beacon():
    # The sample's real beacon (label c2_beacon to 198.51.100.66:443) is
    # still reported with the default capacities.
    pipeline, detections = detections_with(AnalyzeOptions())
    beacons = [d for d in detections if d.attack_class == "c2_beacon"]
    assert {d.dst_ip for d in beacons} == {"198.51.100.66"}
    assert pipeline.counters["evicted_flows_not_reported"] == 0


def test_midstream_tcp_flows_never_make_a_beacon():
    # Five evenly spaced TCP flows whose histories lack the originator's
    # SYN: remainders of sessions, not connection starts.
    pipeline = Pipeline(load_model())
    beacon = pipeline._beacon_class
    flows = np.zeros(5, dtype=FLOW_DTYPE)
    flows["flow_id"] = np.arange(1, 6)
    flows["ip_version"] = 4
    flows["ip_proto"] = 6
    flows["src_addr"][:, :4] = [10, 30, 0, 11]
    flows["dst_addr"][:, :4] = [10, 10, 0, 19]
    flows["dst_port"] = 1883
    flows["history"] = b"DdA"  # data and ACKs only
    flows["bidirectional_first_seen_ns"] = np.arange(5, dtype=np.int64) * 10 * 10**9
    allowed = pipeline._beacon_corroborated(np.full(5, beacon), np.ones(5, dtype=bool), flows)
    assert allowed.tolist() == [False] * 5
    assert pipeline.counters["beacon_flows_midstream"] == 5
    assert pipeline.counters["beacon_flows_held"] == 0

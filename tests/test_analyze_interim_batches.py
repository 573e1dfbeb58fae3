"""An interim snapshot is scored over several batches, each flow once, none counted twice."""

import numpy as np
import pytest

import engine.analyze.pipeline as pipeline_module
from engine.analyze.pipeline import AnalyzeOptions, Pipeline
from engine.capture import open_capture
from engine.detect import load_model
from engine.flows.layout import EXPIRATION_NAMES
from tests.conftest import REPO_ROOT
from tests.test_analyze_interim import flood_connections

SAMPLE = REPO_ROOT / "engine" / "data" / "sample.pcap"
LIVE = EXPIRATION_NAMES.index("live")
FLOWS_PER_BATCH = 64


@pytest.fixture
def snapshot_rows_per_call(monkeypatch):
    """Record, per feature-matrix call, how many of the flows are interim snapshot rows."""
    calls = []
    original = pipeline_module.flow_feature_matrix

    def recording(flows, windows):
        calls.append(int((flows["expiration_id"] == LIVE).sum()))
        return original(flows, windows)

    monkeypatch.setattr(pipeline_module, "flow_feature_matrix", recording)
    return calls


def run_sample(options: AnalyzeOptions):
    """Run the sample capture through a pipeline with the shipped model; return it and its detections."""
    pipeline = Pipeline(load_model(), options)
    detections = []
    with open_capture(SAMPLE, batch_size=512) as reader:
        for batch in reader:
            detections += pipeline.process(batch.packets, batch.data)
    detections += pipeline.finish()
    return pipeline, detections


def test_snapshot_split_over_batches(snapshot_rows_per_call):
    pipeline, _ = run_sample(AnalyzeOptions(interim_interval_s=2.0, interim_flows_per_batch=FLOWS_PER_BATCH))
    interim_calls = [rows for rows in snapshot_rows_per_call if rows]
    counters = pipeline.counters

    assert counters["interim_batches_deferred"] > 0
    assert max(interim_calls) <= FLOWS_PER_BATCH
    # Every snapshot row is scored once. It is then either in the
    # snapshot's verdicts or dropped because its flow ended meanwhile.
    snapshot_rows = counters["interim_flows_scored"] + counters["interim_flows_ended_while_pending"]
    assert sum(interim_calls) == snapshot_rows


def test_snapshot_in_one_batch_when_small(snapshot_rows_per_call):
    pipeline, _ = run_sample(AnalyzeOptions(interim_interval_s=2.0, interim_flows_per_batch=1 << 20))
    interim_calls = [rows for rows in snapshot_rows_per_call if rows]

    assert pipeline.counters["interim_batches_deferred"] == 0
    assert len(interim_calls) == pipeline.counters["interim_snapshots"]


def test_split_snapshot_counts_flood_once():
    pipeline, detections = run_sample(
        AnalyzeOptions(interim_interval_s=2.0, interim_flows_per_batch=FLOWS_PER_BATCH)
    )
    flood = [d for d in detections if d.origin == "model" and d.attack_class == "syn_flood"]
    counted = sum(d.count for d in flood)
    connections = flood_connections()

    assert pipeline.counters["interim_flows_ended_while_pending"] > 0
    assert pipeline.counters["flows_reported_at_interim"] > 0
    assert counted <= connections
    assert counted >= 0.9 * connections


def test_reload_drops_pending_snapshot():
    options = AnalyzeOptions(interim_interval_s=2.0, interim_flows_per_batch=1)
    pipeline = Pipeline(load_model(), options)
    with open_capture(SAMPLE, batch_size=512) as reader:
        for batch in reader:
            pipeline.process(batch.packets, batch.data)
            if pipeline._pending_interim is not None:
                break
    assert pipeline._pending_interim is not None

    # The new model must not give verdicts on the previous model's scores.
    pipeline.set_model(load_model())

    assert pipeline._pending_interim is None


@pytest.mark.parametrize("flows_per_batch", [0, -1])
def test_invalid_flows_per_batch_rejected(flows_per_batch):
    with pytest.raises(ValueError, match="interim_flows_per_batch"):
        Pipeline(None, AnalyzeOptions(interim_flows_per_batch=flows_per_batch))


def test_finish_completes_pending_snapshot():
    options = AnalyzeOptions(interim_interval_s=2.0, interim_flows_per_batch=1)
    pipeline = Pipeline(load_model(), options)
    with open_capture(SAMPLE, batch_size=512) as reader:
        for batch in reader:
            pipeline.process(batch.packets, batch.data)
            if pipeline._pending_interim is not None and pipeline._pending_interim.flows.size > 1:
                break
    pending_rows = pipeline._pending_interim.flows.size
    scored_before = pipeline.counters["interim_flows_scored"] + pipeline.counters["interim_flows_ended_while_pending"]

    pipeline.finish()

    assert pipeline._pending_interim is None
    scored_after = pipeline.counters["interim_flows_scored"] + pipeline.counters["interim_flows_ended_while_pending"]
    assert scored_after - scored_before == pending_rows
    assert np.unique(np.fromiter(pipeline._interim_reported, dtype=np.uint64)).size == len(pipeline._interim_reported)

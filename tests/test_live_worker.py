"""Worker pieces that need no capture: reload of model and thresholds, the stats record, the read-gap warning."""

import sqlite3

import numpy as np
import pytest

from engine.alerts.store import ensure_schema, read_run_stats, write_run_stats
from engine.analyze.pipeline import AnalyzeOptions
from engine.analyze.rules import RuleConfig
from engine.capture.live import RingConfig
from engine.live.supervisor import LiveRun, LiveRunStats, LiveSettings
from engine.live.worker import PacketRules, ReloadRequest, WorkerPipeline, apply_reload, warm_up
from engine.flows import FLOW_DTYPE


class FakeModel:
    """The attributes Pipeline.set_model reads; scoring is never reached in these tests."""

    def __init__(self, thresholds):
        self.class_names = ["benign", "port_scan"]
        self.thresholds = thresholds


def small_options(**rules):
    return AnalyzeOptions(flow_capacity=1024, window_capacity=1024, rules=RuleConfig(**rules))


def test_reload_swaps_model_and_thresholds():
    pipeline = WorkerPipeline(None, small_options())
    new_model = FakeModel({"port_scan": 0.7})
    request = ReloadRequest(
        options=AnalyzeOptions(flow_capacity=1024, window_capacity=1024, interim_interval_s=5.0,
                               rules=RuleConfig(scan_ports_per_host=99)),
        model_path="model.ww", use_model=True,
    )
    loaded = []
    needs_restart = apply_reload(pipeline, request, lambda path: loaded.append(path) or new_model)
    assert needs_restart == []
    assert loaded == ["model.ww"]
    assert pipeline.model is new_model
    assert list(pipeline._class_thresholds) == [np.inf, 0.7]
    assert pipeline.options.interim_interval_s == 5.0
    assert pipeline.rules.config.scan_ports_per_host == 99
    # The rules object (and its window state) is the same one.
    assert isinstance(pipeline.rules, PacketRules)


def test_reload_keeps_sized_options():
    pipeline = WorkerPipeline(None, small_options())
    request = ReloadRequest(
        options=AnalyzeOptions(flow_capacity=2048, window_capacity=1024, idle_timeout_s=30.0,
                               rules=RuleConfig(scan_window_s=60.0, scan_ports_per_host=99)),
        model_path=None, use_model=False,
    )
    needs_restart = apply_reload(pipeline, request, lambda path: pytest.fail("no model to load"))
    assert needs_restart == ["idle_timeout_s", "flow_capacity", "rules.scan_window_s"]
    assert pipeline.options.idle_timeout_s == 120.0
    assert pipeline.flow_table.capacity == 1024
    # A rule window change holds back every rule change of that reload.
    assert pipeline.rules.config.scan_ports_per_host == 15
    assert pipeline.model is None


def test_reload_failure_changes_nothing():
    pipeline = WorkerPipeline(None, small_options())
    request = ReloadRequest(options=small_options(scan_ports_per_host=99), model_path="bad.ww", use_model=True)

    def broken_loader(path):
        raise ValueError(f"model file {path} is not a readable .npz archive")

    with pytest.raises(ValueError, match="bad.ww"):
        apply_reload(pipeline, request, broken_loader)
    assert pipeline.rules.config.scan_ports_per_host == 15
    assert pipeline.model is None


def test_worker_pipeline_leaves_flow_rules_out():
    pipeline = WorkerPipeline(None, small_options())
    flows = np.zeros(3, dtype=FLOW_DTYPE)
    assert pipeline.rules.on_flows(flows) == []
    pipeline.score_flows(flows)
    ended = pipeline.take_ended_flows()
    assert ended.shape == (3,)
    assert pipeline.take_ended_flows() is None
    # Interim snapshots are not ended flows.
    pipeline.score_flows(flows, interim=True)
    assert pipeline.take_ended_flows() is None


def test_warm_up_runs_every_stage():
    # Made-up frames through decode, flows, windows, rules and finish.
    warm_up(None, small_options())


def test_live_stats_row_round_trip():
    connection = sqlite3.connect(":memory:")
    connection.row_factory = sqlite3.Row
    ensure_schema(connection)
    stats = LiveRunStats(sensor_id="sensor-1", source="live:eth9", interface="eth9", packets=1200,
                         flows=30, kernel_packets=1210, kernel_drops=10, workers=[{"worker": 0}])
    write_run_stats(connection, stats)
    stored = read_run_stats(connection, stats.run_id)
    assert stored.source == "live:eth9"
    assert stored.packets == 1200
    assert stored.flows == 30
    # The bus message carries the live fields too.
    message = dict(vars(stats), type="stats")
    assert message["kernel_drops"] == 10
    assert message["workers"] == [{"worker": 0}]


def read_gap_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "between two ring reads" in r.getMessage()]


def test_read_gap_warning_once_per_maximum(caplog):
    # 8 blocks x 100 ms: the ring keeps 0.8 s of a quiet link, and a gap
    # above half of that is worth a warning.
    ring = RingConfig(block_count=8, block_timeout_ms=100)
    settings = LiveSettings(interface="eth9", workers=2, ring=ring, bpf_program=None, fanout_group=1,
                            batch_size=64, batch_timeout_ms=100, stats_interval_s=1.0)
    run = LiveRun(settings, AnalyzeOptions(), None, sink_factory=None)
    run.worker_stats[0] = {"worker": 0, "pid": 100, "read_gap_max_ms": 500.0}
    run.worker_stats[1] = {"worker": 1, "pid": 101, "read_gap_max_ms": 300.0}

    with caplog.at_level("WARNING"):
        run._publish_stats()
    first = read_gap_warnings(caplog)
    assert len(first) == 1
    assert "worker 0 (pid 100) spent 0.5 s" in first[0]
    assert "holds 0.8 s" in first[0]

    # The same maximum again is not repeated; a longer gap is logged.
    caplog.clear()
    with caplog.at_level("WARNING"):
        run._publish_stats()
    assert read_gap_warnings(caplog) == []
    run.worker_stats[0]["read_gap_max_ms"] = 900.0
    with caplog.at_level("WARNING"):
        run._publish_stats()
    second = read_gap_warnings(caplog)
    assert len(second) == 1
    assert "spent 0.9 s" in second[0]

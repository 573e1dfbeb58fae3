"""One capture worker: a ring in a fanout group feeding its own analysis pipeline.

The supervisor forks each worker after opening its capture socket, so the
worker needs no privilege of its own. A worker owns its flow table and
window features; the kernel's flow-symmetric fanout hash sends both
directions of a flow to the same worker. Detections, ended flows (for
the flow rules and the flow log) and statistics go to the supervisor over a
multiprocessing queue as tuples whose first item names the message:

  ("batch", worker_id, [Detection, ...], FLOW_DTYPE array or None, [FlowInspection, ...])
      the detections of one batch, the flows that ended in it and the
      protocol inspection results that became ready
  ("stats", worker_id, {counter: value})
  ("reloaded", worker_id, error text or None)
  ("done", worker_id, {counter: value})    the last message of a clean exit
  ("failed", worker_id, error text)        the last message after an error

SIGTERM and SIGINT stop the capture: the worker closes the socket to new
packets, processes what the ring still holds, flushes every live flow
through the scorer and the rules, then sends "done".
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

import numpy as np

from engine.analyze.pipeline import AnalyzeOptions, Pipeline
from engine.analyze.rules import FlowRules
from engine.live.privileges import set_parent_death_signal

log = logging.getLogger(__name__)

# Maximum wait for packets before the worker checks for a stop or a reload.
READ_TIMEOUT_MS = 100


@dataclass
class WorkerSettings:
    worker_id: int
    options: AnalyzeOptions
    stats_interval_s: float
    inspect: bool = True


@dataclass
class ReloadRequest:
    """A reload order for a worker: new analysis options and the model to load."""

    options: AnalyzeOptions
    model_path: str | None
    use_model: bool


class PacketRules(FlowRules):
    """The packet rules (ARP) only: the supervisor runs the flow rules on the flows of all workers.

    A flow rule counts flows across hosts and ports (a scan, a SYN flood
    from many sources), and the fanout hash spreads those flows over the
    workers, so no single worker would reach the threshold.
    """

    def on_flows(self, flows: np.ndarray) -> list:
        return []


class WorkerPipeline(Pipeline):
    """The analysis pipeline of one worker: packet rules here, ended flows kept for the supervisor."""

    def __init__(self, model, options: AnalyzeOptions, inspector=None):
        super().__init__(model, options, inspector)
        self.rules = PacketRules(self.options.rules)
        self.ended_flows: list[np.ndarray] = []

    def score_flows(self, flows: np.ndarray, interim: bool = False):
        if not interim and flows.size:
            self.ended_flows.append(flows.copy())
        return super().score_flows(flows, interim)

    def take_ended_flows(self) -> np.ndarray | None:
        if not self.ended_flows:
            return None
        flows = np.concatenate(self.ended_flows) if len(self.ended_flows) > 1 else self.ended_flows[0]
        self.ended_flows = []
        return flows


# Options a reload may change on a running pipeline. The flow table and the
# rule windows are sized at start, so their options need a restart.
RELOADABLE_OPTIONS = (
    "interim_interval_s", "interim_flows_per_batch", "anomaly_min_packets",
    "flood_min_flows", "flood_min_flows_per_s", "scan_min_ports", "sweep_min_hosts", "tunnel_min_queries",
)
RULE_WINDOW_FIELDS = (
    "scan_window_s", "bruteforce_window_s", "synflood_window_s", "dns_window_s", "reflection_window_s",
    "max_keys",
)


def apply_reload(pipeline: Pipeline, request: ReloadRequest, load_model) -> list[str]:
    """Apply a reload to a live pipeline; return the option names that still need a restart.

    Raises whatever `load_model` raises, before anything has changed.
    """
    model = load_model(request.model_path) if request.use_model else None
    pipeline.set_model(model)
    current, new = pipeline.options, request.options
    for name in RELOADABLE_OPTIONS:
        setattr(current, name, getattr(new, name))
    needs_restart = [
        name for name in ("idle_timeout_s", "active_timeout_s", "flow_capacity", "window_capacity")
        if getattr(current, name) != getattr(new, name)
    ]
    needs_restart += reload_rules(pipeline.rules, current, new)
    return needs_restart


def reload_rules(rules: FlowRules, current: AnalyzeOptions, new: AnalyzeOptions) -> list[str]:
    """Give running rules the thresholds of `new`; return the window options that need a restart.

    The rule windows are sized at start, so when a window option differs
    nothing changes.
    """
    windows_changed = [
        name for name in RULE_WINDOW_FIELDS if getattr(current.rules, name) != getattr(new.rules, name)
    ]
    if windows_changed:
        return [f"rules.{name}" for name in windows_changed]
    current.rules = new.rules
    rules.config = new.rules
    return []


def _warm_up_frames() -> list[bytes]:
    """Return a TCP handshake, its reset and a DNS query: frames that reach every stage."""
    import dpkt

    client, server = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])
    client_mac, server_mac = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")

    def frame(src, dst, src_mac, dst_mac, transport, protocol):
        ip = dpkt.ip.IP(src=src, dst=dst, p=protocol, ttl=64, data=transport)
        ip.len = len(bytes(ip))
        return bytes(dpkt.ethernet.Ethernet(src=src_mac, dst=dst_mac, type=0x0800, data=ip))

    tcp = dpkt.ip.IP_PROTO_TCP
    syn = dpkt.tcp.TCP(sport=40000, dport=443, seq=1, flags=dpkt.tcp.TH_SYN)
    syn_ack = dpkt.tcp.TCP(sport=443, dport=40000, seq=7, ack=2, flags=dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)
    reset = dpkt.tcp.TCP(sport=40000, dport=443, seq=2, flags=dpkt.tcp.TH_RST)
    question = dpkt.dns.DNS(id=0x1234, qd=[dpkt.dns.DNS.Q(name="example.org")])
    query = dpkt.udp.UDP(sport=40001, dport=53, data=bytes(question))
    query.ulen = len(bytes(query))
    return [
        frame(client, server, client_mac, server_mac, syn, tcp),
        frame(server, client, server_mac, client_mac, syn_ack, tcp),
        frame(client, server, client_mac, server_mac, reset, tcp),
        frame(client, server, client_mac, server_mac, query, dpkt.ip.IP_PROTO_UDP),
    ]


def new_inspector(inspect: bool):
    """Return a protocol inspector for one pipeline, or None when inspection is off."""
    if not inspect:
        return None
    from engine.inspect.inspector import Inspector

    return Inspector()


def warm_up(model, options: AnalyzeOptions, inspect: bool = True) -> None:
    """Run a throwaway pipeline over a few made-up frames.

    The first batch of a new process loads the compiled kernels (about a
    second, measured on the 2-core development machine), and a worker
    that stalls that long at start can fill a ring on a busy link.
    Workers forked after this call start with the kernels loaded.
    """
    from engine.decode.layout import empty_packets

    frames = _warm_up_frames()
    packets = empty_packets(len(frames))
    data = np.frombuffer(b"".join(frames), dtype=np.uint8)
    offset = 0
    for index, frame in enumerate(frames):
        packets[index]["ts_ns"] = (index + 1) * 1_000_000
        packets[index]["data_offset"] = offset
        packets[index]["caplen"] = packets[index]["wirelen"] = len(frame)
        packets[index]["link_type"] = 1
        packets[index]["record_index"] = index
        offset += len(frame)
    pipeline = Pipeline(model, options, new_inspector(inspect))
    pipeline.process(packets, data)
    pipeline.finish()
    pipeline.drain_inspections()


class _StopFlag:
    def __init__(self):
        self.requested = False

    def request(self, signum, _frame):
        self.requested = True


def run_worker(settings: WorkerSettings, capture, model, results, control, other_captures=()) -> None:
    """Capture and analyse until SIGTERM or SIGINT; the target of a forked worker process."""
    stop = _StopFlag()
    signal.signal(signal.SIGTERM, stop.request)
    signal.signal(signal.SIGINT, stop.request)
    # The supervisor coordinates reloads; a SIGHUP sent to the whole
    # process group must not kill a worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # A worker whose supervisor died (even by SIGKILL) stops and flushes
    # as on SIGTERM, instead of capturing while no process reads its results.
    set_parent_death_signal(signal.SIGTERM)
    supervisor_pid = os.getppid()
    worker_id = settings.worker_id
    for other in other_captures:
        other.close()

    try:
        pipeline = WorkerPipeline(model, settings.options, new_inspector(settings.inspect))
        read_gap = ReadGap()
        _capture_loop(settings, capture, pipeline, results, control, stop, read_gap)
        for batch in capture.drain():
            _process(worker_id, pipeline, batch, results)
        _send_batch(worker_id, pipeline, pipeline.finish(), results)
        results.put(("done", worker_id, _worker_stats(worker_id, capture, pipeline, read_gap)))
    except Exception as error:  # reported to the supervisor, which stops the run
        log.exception("worker %d failed", worker_id)
        results.put(("failed", worker_id, f"{type(error).__name__}: {error}"))
    finally:
        capture.close()
        results.close()
        if os.getppid() == supervisor_pid:
            results.join_thread()
        else:
            # The supervisor is gone and the queue has no reader, so
            # waiting for it to drain would never end.
            results.cancel_join_thread()


class ReadGap:
    """Maximum time, in ms, that a worker spent between two ring reads since it started.

    The kernel fills the ring during that time, so a gap longer than the
    ring holds (block count x block timeout on a quiet link) drops packets.
    """

    def __init__(self):
        self.max_ms = 0.0
        self._last_read_at: float | None = None

    def mark_read_end(self) -> None:
        self._last_read_at = time.perf_counter()

    def mark_read_start(self) -> None:
        if self._last_read_at is not None:
            self.max_ms = max(self.max_ms, (time.perf_counter() - self._last_read_at) * 1000)


def _capture_loop(settings, capture, pipeline, results, control, stop, read_gap) -> None:
    worker_id = settings.worker_id
    capture.start()
    log.info("worker %d (pid %d) capturing on %s", worker_id, os.getpid(), capture.interface)
    next_stats = time.monotonic() + settings.stats_interval_s
    while not stop.requested:
        read_gap.mark_read_start()
        batch = capture.read(timeout_ms=READ_TIMEOUT_MS)
        read_gap.mark_read_end()
        if batch is not None:
            _process(worker_id, pipeline, batch, results)
        while control.poll():
            _handle_control(worker_id, pipeline, control.recv(), results)
        now = time.monotonic()
        if now >= next_stats:
            next_stats = now + settings.stats_interval_s
            results.put(("stats", worker_id, _worker_stats(worker_id, capture, pipeline, read_gap)))
    capture.stop()
    log.info("worker %d stopping: draining the ring", worker_id)


def _process(worker_id, pipeline, batch, results) -> None:
    _send_batch(worker_id, pipeline, pipeline.process(batch.packets, batch.data), results)


def _send_batch(worker_id, pipeline, detections, results) -> None:
    flows = pipeline.take_ended_flows()
    inspections = pipeline.drain_inspections()
    if detections or flows is not None or inspections:
        results.put(("batch", worker_id, detections, flows, inspections))


def _handle_control(worker_id, pipeline, message, results) -> None:
    if not isinstance(message, ReloadRequest):
        log.warning("worker %d: ignoring unknown control message %r", worker_id, type(message).__name__)
        return
    from engine.detect import load_model

    try:
        needs_restart = apply_reload(pipeline, message, load_model)
    except Exception as error:  # the old model and options stay in use
        results.put(("reloaded", worker_id, f"{type(error).__name__}: {error}"))
        return
    if needs_restart:
        log.warning("worker %d: changes to %s take effect after a restart", worker_id, ", ".join(needs_restart))
    results.put(("reloaded", worker_id, None))


def _worker_stats(worker_id, capture, pipeline, read_gap) -> dict:
    stats = {"worker": worker_id, "pid": os.getpid(), "sent_at": time.time()}
    stats["read_gap_max_ms"] = round(read_gap.max_ms, 1)
    stats.update(capture.stats)
    pipeline_stats = pipeline.stats
    stats["flows"] = int(pipeline_stats.get("flows", 0))
    stats["live_flows"] = int(pipeline_stats.get("live_flows", 0))
    stats["flows_evicted"] = int(pipeline_stats.get("flow_flows_evicted", 0))
    stats["analysed_packets"] = int(pipeline_stats.get("packets", 0))
    stats["analysed_bytes"] = int(pipeline_stats.get("bytes", 0))
    stats["first_packet_ns"] = pipeline.first_packet_ns
    stats["last_packet_ns"] = pipeline.last_packet_ns
    stats["anomalies"] = dict(pipeline.anomalies)
    return stats

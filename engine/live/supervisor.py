"""The supervisor of `wardwatch run`: capture sockets, worker processes, one alert sink.

Start-up order, chosen so that a mistake fails before capture starts and
no packet is seen twice:
  1. the caller has checked the configuration, loaded the model and
     compiled the filter;
  2. open one capture socket per worker, each dropping every packet, and
     join them all to one PACKET_FANOUT_HASH group;
  3. drop every privilege except CAP_NET_RAW (and switch user if asked);
  4. fork the workers, each of which attaches the real filter to its own
     socket and starts reading;
  5. open the alert sink (store, bus, outputs) in this process only, so
     no forked worker inherits a ZeroMQ context or an SQLite connection.

Signals: SIGINT and SIGTERM stop the workers, which drain their rings and
flush their live flows. The supervisor then publishes what they sent,
closes the open alert aggregates and exits. SIGHUP reloads the
configuration file and the model: the supervisor checks them first and
keeps the running ones if either is invalid.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import time
from dataclasses import dataclass, field

from engine.alerts.store import RunStats
from engine.capture.live import LiveCapture, RingConfig
from engine.analyze.alerts import alert_from_detection
from engine.live.privileges import drop_privileges
from engine.analyze.pipeline import Pipeline
from engine.analyze.rules import FlowRules
from engine.live.worker import WorkerSettings, reload_rules, run_worker, warm_up

log = logging.getLogger(__name__)

# How long stopping workers may take to drain and flush before they are killed.
SHUTDOWN_TIMEOUT_S = 60.0
# Wait for worker messages this long before checking signals and timers.
RESULT_POLL_S = 0.2
# Bound of the worker-to-supervisor queue, in messages. A worker whose put()
# finds it full waits, stops reading its ring, and the kernel counts drops
# once the ring is full. One message holds at most one batch's detections
# and ended flows (536 bytes per flow), so the queue contains an estimated
# 64 x 4 MiB at the very worst.
MAX_QUEUED_MESSAGES = 64
# Worker messages handled before the loop checks signals and timers again.
MESSAGES_PER_POLL = 1000
# Aggregates are closed by wall-clock quiet time at most this often.
EXPIRE_INTERVAL_S = 1.0


@dataclass
class LiveRunStats(RunStats):
    """A runs row of a live capture, plus the kernel and per-worker counters sent on `stats`.

    Only the RunStats fields go to the runs table; every field goes into
    the `stats` bus message.
    """

    interface: str = ""
    kernel_packets: int = 0  # accepted by the filters, drops included, all workers
    kernel_drops: int = 0  # discarded by the kernel because a ring was full
    kernel_freezes: int = 0  # times a ring filled up and froze
    packets_per_s: float = 0.0  # analysed packets per second over the last interval, all workers
    workers: list[dict] = field(default_factory=list)


@dataclass
class LiveSettings:
    interface: str
    workers: int
    ring: RingConfig
    bpf_program: list | None
    fanout_group: int
    batch_size: int
    batch_timeout_ms: int
    stats_interval_s: float
    login_interval_s: float = 300.0
    user: str | None = None
    group: str | None = None
    drop_privileges: bool = True


class LiveRun:
    """Run workers on one interface until a stop signal; publish their alerts through one sink.

    `sink_factory()` returns an open AlertSink. `on_alerts(alerts)` gets
    every publication (for the console), `reload()` returns a
    ReloadRequest or raises with a message, and `flow_writer(flows)`
    writes a FLOW_DTYPE array to the flow log and returns the rows written.
    """

    def __init__(self, settings: LiveSettings, options, model, sink_factory, on_alerts=None, reload=None,
                 flow_writer=None, sensor_id: str = "", inspection_factory=None):
        self.settings = settings
        self.options = options
        self.model = model
        self.sink_factory = sink_factory
        self.on_alerts = on_alerts
        self.reload = reload
        self.flow_writer = flow_writer
        self.sensor_id = sensor_id
        # inspection_factory(sink) returns the stage that turns protocol
        # inspection results into assets, findings and login records
        # (engine.analyze.cli.InspectionStage); None turns inspection off.
        self.inspection_factory = inspection_factory
        self.inspection = None
        # The flow rules see the ended flows of every worker, as they see
        # every flow of a file in `wardwatch analyze`.
        self.flow_rules = FlowRules(options.rules)
        self.sink = None
        self.captures: list[LiveCapture] = []
        self.processes: dict[int, multiprocessing.Process] = {}
        self.controls: dict[int, object] = {}
        self.worker_stats: dict[int, dict] = {}
        self.done: set[int] = set()
        self.failures: dict[int, str] = {}
        self.flows_logged = 0
        self._stop_requested = False
        self._reload_requested = False
        self._stop_sent_at: float | None = None
        context = multiprocessing.get_context("fork")
        self._context = context
        self.results = context.Queue(maxsize=MAX_QUEUED_MESSAGES)
        self.run_stats = LiveRunStats(sensor_id=sensor_id, source=f"live:{settings.interface}",
                                      interface=settings.interface)
        self._last_totals = (time.monotonic(), 0)  # (when, analysed packets) of the last report
        # worker id -> (sent_at, analysed packets, packets/s) of its last report
        self._previous_reports: dict[int, tuple[float, int, float]] = {}
        # Worker id -> the read gap (ms) last warned about, so each new maximum is logged once.
        self._read_gap_warned_ms: dict[int, float] = {}

    # --- start ---

    def start(self) -> None:
        """Open the sockets, drop privileges and fork the workers (steps 2 to 4 above)."""
        warm_up(self.model, self.options, inspect=self.inspection_factory is not None)
        self.open_captures()
        try:
            if self.settings.drop_privileges:
                drop_privileges(self.settings.user, self.settings.group)
            self.install_signal_handlers()
            self.start_workers()
        except BaseException:
            self.close_captures()
            raise

    def open_captures(self) -> None:
        """Open one socket per worker in the fanout group; raise OSError or ValueError on failure."""
        settings = self.settings
        try:
            for _ in range(settings.workers):
                self.captures.append(LiveCapture(
                    settings.interface, settings.ring, bpf_program=settings.bpf_program,
                    fanout_group=settings.fanout_group, batch_size=settings.batch_size,
                    batch_timeout_ms=settings.batch_timeout_ms,
                ))
        except BaseException:
            self.close_captures()
            raise
        log.info(
            "opened %d capture sockets on %s (fanout group %d, ring %d x %d bytes each)",
            settings.workers, settings.interface, settings.fanout_group,
            settings.ring.block_count, settings.ring.block_size,
        )

    def close_captures(self) -> None:
        for capture in self.captures:
            capture.close()

    def start_workers(self) -> None:
        """Fork one worker per capture socket; this process keeps no socket afterwards."""
        for worker_id, capture in enumerate(self.captures):
            receiver, sender = self._context.Pipe(duplex=False)
            worker_settings = WorkerSettings(
                worker_id=worker_id,
                options=self.options,
                stats_interval_s=max(0.1, self.settings.stats_interval_s / 2),
                inspect=self.inspection_factory is not None,
            )
            others = [c for c in self.captures if c is not capture]
            process = self._context.Process(
                target=run_worker,
                args=(worker_settings, capture, self.model, self.results, receiver, others),
                name=f"wardwatch-worker-{worker_id}",
            )
            process.start()
            receiver.close()
            self.processes[worker_id] = process
            self.controls[worker_id] = sender
        # The workers hold the sockets now.
        self.close_captures()

    # --- signals ---

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum, _frame) -> None:
        self._stop_requested = True

    def _on_reload(self, signum, _frame) -> None:
        self._reload_requested = True

    def request_stop(self) -> None:
        self._stop_requested = True

    # --- main loop ---

    def serve(self) -> int:
        """Handle worker messages until every worker has finished; return the exit code (0 or 1).

        Raises what sink_factory raises, after stopping the workers.
        """
        try:
            self.sink = self.sink_factory()
            if self.inspection_factory is not None:
                self.inspection = self.inspection_factory(self.sink)
        except BaseException:
            self._stop_workers()
            self._wait_for_workers()
            raise
        write_stats = self._publish_stats
        next_stats = time.monotonic() + self.settings.stats_interval_s
        next_expire = time.monotonic() + EXPIRE_INTERVAL_S
        next_login_analysis = time.monotonic() + self.settings.login_interval_s
        try:
            while len(self.done) + len(self.failures) < len(self.processes):
                if self._stop_requested and self._stop_sent_at is None:
                    self._stop_workers()
                if self._reload_requested:
                    self._reload_requested = False
                    self._reload()
                self._receive()
                self._check_workers()
                now = time.monotonic()
                if now >= next_expire:
                    next_expire = now + EXPIRE_INTERVAL_S
                    # Live timestamps are wall-clock time, so aggregates
                    # close on quiet time even when no packet arrives.
                    self._published(self.sink.expire(time.time()))
                if now >= next_stats:
                    next_stats = now + self.settings.stats_interval_s
                    write_stats()
                if now >= next_login_analysis:
                    next_login_analysis = now + self.settings.login_interval_s
                    self._analyse_logins()
                if self._stop_sent_at is not None and now - self._stop_sent_at > SHUTDOWN_TIMEOUT_S:
                    self._kill_workers()
                    break
            self._receive(block=False)
            self._analyse_logins()
            self.finish_alerts()
        except BaseException:
            self._stop_workers()
            self._wait_for_workers()
            raise
        finally:
            for process in self.processes.values():
                process.join(timeout=5)
            self.run_stats.ended_at = time.time()
            write_stats(final=True)
        return 1 if self.failures else 0

    def _receive(self, block: bool = True) -> None:
        timeout = RESULT_POLL_S if block else 0
        # Bounded, so signals and timers are checked on a busy link too.
        for _ in range(MESSAGES_PER_POLL):
            try:
                message = self.results.get(timeout=timeout) if timeout else self.results.get_nowait()
            except queue.Empty:
                return
            self._dispatch(message)
            timeout = 0

    def _dispatch(self, message) -> None:
        kind, worker_id, body = message[0], message[1], message[2]
        if kind == "batch":
            self._handle_batch(body, message[3], message[4])
        elif kind == "stats":
            self.worker_stats[worker_id] = body
        elif kind == "done":
            self.worker_stats[worker_id] = body
            self.done.add(worker_id)
            log.info("worker %d finished: %d packets, %d flows", worker_id,
                     body.get("analysed_packets", 0), body.get("flows", 0))
        elif kind == "failed":
            self.failures[worker_id] = body
            log.error("worker %d failed: %s; stopping the other workers", worker_id, body)
            self._stop_requested = True
        elif kind == "reloaded":
            if body is None:
                log.info("worker %d reloaded the configuration and the model", worker_id)
            else:
                log.error("worker %d could not reload and keeps its running model: %s", worker_id, body)
        else:
            log.warning("ignoring unknown worker message %r from worker %d", kind, worker_id)

    def _handle_batch(self, detections, flows, inspections) -> None:
        # Submission order follows `wardwatch analyze`, because the first
        # detection of an aggregate sets its source and summary: packet
        # rules, flow rules, the model's detections, then inspection alerts.
        packet_rules = [d for d in detections if d.origin.startswith("rule:")]
        scored = [d for d in detections if not d.origin.startswith("rule:")]
        flow_rules = []
        if flows is not None:
            flow_rules = [Pipeline._from_rule(hit) for hit in self.flow_rules.on_flows(flows)]
        for detection in packet_rules + flow_rules + scored:
            self._published(self.sink.submit(alert_from_detection(detection, self.sensor_id)))
        if self.inspection is not None and (inspections or flows is not None):
            for alert in self.inspection.on_results(inspections, flows):
                self._published(self.sink.submit(alert))
        if flows is not None and self.flow_writer is not None:
            self.flows_logged += self.flow_writer(flows)

    def _analyse_logins(self) -> None:
        """Run the login analytics over the login records seen in traffic since the last run."""
        if self.inspection is None:
            return
        for alert in self.inspection.finish_capture():
            self._published(self.sink.submit(alert))

    def _published(self, alerts) -> None:
        if alerts and self.on_alerts is not None:
            self.on_alerts(alerts)

    def finish_alerts(self) -> None:
        """Close every open aggregate and publish the closing revisions."""
        if self.sink is not None:
            self._published(self.sink.flush(time.time()))

    def _wait_for_workers(self) -> None:
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
        while any(p.exitcode is None for p in self.processes.values()) and time.monotonic() < deadline:
            # Worker queues must be emptied or a worker blocks on exit.
            self._receive_discard()
        self._kill_workers()
        for process in self.processes.values():
            process.join(timeout=5)

    def _receive_discard(self) -> None:
        try:
            self.results.get(timeout=RESULT_POLL_S)
        except queue.Empty:
            pass

    def _check_workers(self) -> None:
        for worker_id, process in self.processes.items():
            if worker_id in self.done or worker_id in self.failures:
                continue
            if process.exitcode is not None:
                # Its last messages may still be in the queue.
                self._receive(block=False)
                if worker_id in self.done or worker_id in self.failures:
                    continue
                reason = f"exited with code {process.exitcode} without finishing"
                self.failures[worker_id] = reason
                log.error("worker %d (pid %s) %s; stopping the other workers", worker_id, process.pid, reason)
                self._stop_requested = True

    def _stop_workers(self) -> None:
        log.info("stopping %d workers: draining rings and flushing live flows", len(self.processes))
        self._stop_sent_at = time.monotonic()
        for process in self.processes.values():
            if process.exitcode is None and process.pid is not None:
                try:
                    os.kill(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def _kill_workers(self) -> None:
        for worker_id, process in self.processes.items():
            if process.exitcode is None and process.pid is not None:
                log.error("worker %d (pid %d) did not finish within %.0f s; killing it",
                          worker_id, process.pid, SHUTDOWN_TIMEOUT_S)
                self.failures.setdefault(worker_id, "killed after the shutdown timeout")
                process.kill()

    def _reload(self) -> None:
        if self.reload is None:
            return
        try:
            request = self.reload()
        except Exception as error:  # the running configuration stays in force
            log.error("reload failed, keeping the running configuration and model: %s", error)
            return
        needs_restart = reload_rules(self.flow_rules, self.options, request.options)
        if needs_restart:
            log.warning("changes to %s take effect after a restart", ", ".join(needs_restart))
        for worker_id, control in self.controls.items():
            if worker_id in self.done or worker_id in self.failures:
                continue
            control.send(request)
        log.info("reload sent to %d workers", len(self.controls))

    # --- statistics ---

    def _worker_rate(self, worker: dict) -> float:
        """Return the worker's analysed packets per second since its previous report."""
        sent_at, packets = worker.get("sent_at", 0.0), worker.get("analysed_packets", 0)
        previous = self._previous_reports.get(worker["worker"])
        if previous is not None and previous[0] == sent_at:
            return previous[2]
        rate = 0.0
        if previous is not None and sent_at > previous[0]:
            rate = round((packets - previous[1]) / (sent_at - previous[0]), 1)
        self._previous_reports[worker["worker"]] = (sent_at, packets, rate)
        return rate

    def _publish_stats(self, final: bool = False) -> None:
        stats = self.run_stats
        workers = [self.worker_stats[i] for i in sorted(self.worker_stats)]
        stats.workers = workers
        stats.packets = sum(w.get("analysed_packets", 0) for w in workers)
        stats.bytes = sum(w.get("analysed_bytes", 0) for w in workers)
        stats.flows = sum(w.get("flows", 0) for w in workers)
        previous_drops = stats.kernel_drops
        stats.kernel_packets = sum(w.get("kernel_packets", 0) for w in workers)
        stats.kernel_drops = sum(w.get("kernel_drops", 0) for w in workers)
        stats.kernel_freezes = sum(w.get("kernel_freezes", 0) for w in workers)
        firsts = [w["first_packet_ns"] for w in workers if w.get("first_packet_ns")]
        lasts = [w["last_packet_ns"] for w in workers if w.get("last_packet_ns")]
        stats.first_packet_time = min(firsts) / 1e9 if firsts else None
        stats.last_packet_time = max(lasts) / 1e9 if lasts else None
        anomalies: dict[str, int] = {}
        for worker in workers:
            for name, count in worker.get("anomalies", {}).items():
                anomalies[name] = anomalies.get(name, 0) + count
        stats.anomaly_counters = anomalies

        for worker in workers:
            worker["packets_per_s"] = self._worker_rate(worker)
        now = time.monotonic()
        then, packets_then = self._last_totals
        elapsed = now - then
        stats.packets_per_s = round((stats.packets - packets_then) / elapsed, 1) if elapsed > 0 else 0.0
        self._last_totals = (now, stats.packets)
        if self.sink is not None:
            stats.alerts = int(self.sink.counters.get("published", 0))
            try:
                self.sink.publish_stats(stats)
            except Exception:  # a stats write must not stop the capture
                log.exception("writing capture statistics failed")

        per_worker = ", ".join(
            f"w{w['worker']} {w.get('analysed_packets', 0)} pkts {w['packets_per_s']:.0f}/s "
            f"{w.get('kernel_drops', 0)} drops {w.get('read_gap_max_ms', 0):.0f} ms max read gap"
            for w in workers
        )
        log.info(
            "%s: %d packets (%.0f/s), %d flows, kernel %d packets %d drops %d freezes [%s]",
            self.settings.interface, stats.packets, stats.packets_per_s, stats.flows,
            stats.kernel_packets, stats.kernel_drops, stats.kernel_freezes, per_worker,
        )
        if stats.kernel_drops > previous_drops:
            log.warning(
                "%s: the kernel dropped %d packets since the last report (%d in total) because a ring "
                "was full; add workers, enlarge the ring (--block-count) or narrow --filter",
                self.settings.interface, stats.kernel_drops - previous_drops, stats.kernel_drops,
            )
        self._warn_on_read_gaps(workers)
        if final:
            log.info("capture on %s ended", self.settings.interface)

    def _warn_on_read_gaps(self, workers: list[dict]) -> None:
        """Log a WARNING when a worker's longest gap between ring reads grew past half of the ring's time.

        On a quiet link each ring block carries only one block timeout of
        traffic, so a worker that leaves its ring alone for longer than
        block count x block timeout loses packets at any packet rate.
        """
        ring = self.settings.ring
        ring_time_ms = ring.block_count * ring.block_timeout_ms
        for worker in workers:
            gap_ms = worker.get("read_gap_max_ms", 0.0)
            if gap_ms < ring_time_ms / 2 or gap_ms <= self._read_gap_warned_ms.get(worker["worker"], 0.0):
                continue
            self._read_gap_warned_ms[worker["worker"]] = gap_ms
            log.warning(
                "worker %d (pid %s) spent %.1f s between two ring reads, and on a quiet link its ring "
                "holds %.1f s (--block-count x --block-timeout); longer pauses drop packets",
                worker["worker"], worker.get("pid"), gap_ms / 1000, ring_time_ms / 1000,
            )

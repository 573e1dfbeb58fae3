"""The collector: merge several sensors' buses into one store and one bus.

An XSUB socket connects to every sensor's PUB endpoint and subscribes to
all alerts. An optional XPUB socket re-publishes what arrives and passes
the downstream subscriptions up to the sensors (an XSUB/XPUB proxy). Each alert
received is stored once in the merged store with a new collector seq, next
to the sensor's own sensor_id, stream id and seq (see store.py). Seqs are
tracked per (sensor_id, stream_id), so two sensors that share a sensor id,
or a sensor restarted with a new store, are kept apart. A seq gap in a
stream is filled from the replay socket that serves that stream, when one
was given. A malformed alert body is skipped, counted and logged at a
limited rate.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import zmq

from engine.alerts.bus import (
    SEND_HIGH_WATER_MARK,
    CurveClientKeys,
    MalformedAlert,
    ReplayDirectory,
    ReplayError,
    StreamKey,
    StreamPositions,
    apply_curve_client,
    apply_curve_server,
    bound_endpoint,
    count_malformed,
    decode_alert_body,
    log_new_stream,
)
from engine.alerts.config import check_endpoint
from engine.alerts.schema import TOPIC_PREFIX
from engine.alerts.store import AlertStore

logger = logging.getLogger(__name__)

POLL_INTERVAL_MS = 100
# While no message arrives, every replay socket is asked this often for
# publications after the last seq stored, so a stream whose live messages
# were all lost (the slow-joiner problem, or a sensor that stopped) is
# still collected.
IDLE_CHECK_S = 1.0


class Collector:
    """Receive from sensors, store and optionally re-publish; run() blocks until stopped."""

    def __init__(
        self,
        connect: list[str],
        store_path: str,
        bind: str | None = None,
        replay: list[str] | None = None,
        curve: CurveClientKeys | None = None,
        curve_server_secret: str | None = None,
        curve_allow_dir: str | None = None,
    ):
        if not connect:
            raise ValueError("no sensor endpoints; pass at least one --connect ENDPOINT")
        # Checked before any socket exists, so a bad endpoint leaks nothing.
        for endpoint in [*connect, *(replay or [])]:
            check_endpoint(endpoint)
        if bind is not None:
            check_endpoint(bind, bind=True)
        self.connect = list(connect)
        self.context = zmq.Context()

        self.store_path = store_path
        # Opened in run(), because an SQLite connection is used by the
        # thread that opened it only.
        self.store: AlertStore | None = None
        self.frontend = self.context.socket(zmq.XSUB)
        self.frontend.setsockopt(zmq.RCVHWM, SEND_HIGH_WATER_MARK)
        self.frontend.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            apply_curve_client(self.frontend, curve.client_secret_file, curve.server_public_file)
        for endpoint in connect:
            self.frontend.connect(endpoint)

        # XSUB takes subscriptions as messages: byte 1 then the prefix.
        self.frontend.send(b"\x01" + TOPIC_PREFIX.encode("ascii"))
        self.backend = None
        self.endpoint = None
        self._authenticator = None
        if bind is not None:
            self.backend = self.context.socket(zmq.XPUB)
            self.backend.setsockopt(zmq.SNDHWM, SEND_HIGH_WATER_MARK)
            self.backend.setsockopt(zmq.LINGER, 0)
            if curve_server_secret:
                self._authenticator = apply_curve_server(
                    self.context, [self.backend], curve_server_secret, curve_allow_dir
                )
            self.backend.bind(bind)
            self.endpoint = bound_endpoint(self.backend)
            logger.info("collector re-publishing on %s", self.endpoint)

        self.replay_endpoints = list(replay or [])
        self.curve = curve
        self.replays = ReplayDirectory(self.context, self.replay_endpoints, curve)
        self.counters = collections.Counter()
        # Highest sensor seq stored per stream, bounded by MAX_TRACKED_STREAMS.
        self.last_seq = StreamPositions(self.counters)
        self._stop = threading.Event()

    def _connect_replays(self) -> None:
        # A socket that fails now is asked again when a stream without a
        # known replay socket shows up.
        self.replays.refresh()

    def stop(self) -> None:
        self._stop.set()

    def run(self, idle_timeout_s: float | None = None) -> None:
        """Serve until stop() or, when set, until no message arrived for `idle_timeout_s`."""
        self.store = AlertStore(self.store_path)
        # A restarted collector resumes each sensor stream after its last stored seq.
        for key, sensor_seq in self.store.last_sensor_seqs().items():
            if key not in self.last_seq:
                self.last_seq.set(key, sensor_seq)
        self._connect_replays()
        try:
            self._serve(idle_timeout_s)
        finally:
            self.store.close()
            self.store = None
        logger.info("collector stopped: %s", dict(self.counters))

    def _serve(self, idle_timeout_s: float | None) -> None:
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        if self.backend is not None:
            poller.register(self.backend, zmq.POLLIN)
        last_message_at = time.monotonic()
        next_idle_check = last_message_at + IDLE_CHECK_S
        logger.info("collector started: %d sensor endpoints, %d replay sockets",
                    len(self.connect), len(self.replay_endpoints))
        while not self._stop.is_set():
            events = dict(poller.poll(POLL_INTERVAL_MS))
            if self.frontend in events:
                frames = self.frontend.recv_multipart()
                last_message_at = time.monotonic()
                next_idle_check = last_message_at + IDLE_CHECK_S
                self._handle(frames)
            elif self.replay_endpoints and time.monotonic() >= next_idle_check:
                if self._check_replays():
                    last_message_at = time.monotonic()
                next_idle_check = time.monotonic() + IDLE_CHECK_S
            if self.backend is not None and self.backend in events:
                # A downstream (un)subscription: pass it up to the sensors.
                self.frontend.send(self.backend.recv())
            if idle_timeout_s is not None and time.monotonic() - last_message_at >= idle_timeout_s:
                break

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self.counters["malformed"] += 1
            return
        topic_bytes, body = frames
        topic = topic_bytes.decode("ascii", "replace")
        if not topic.startswith(TOPIC_PREFIX):
            self._forward(frames)
            return
        try:
            alert = decode_alert_body(body)
        except MalformedAlert as error:
            count_malformed(self.counters, topic, error)
            return
        seq, key = alert.seq, (alert.sensor_id, alert.stream_id)
        last = self.last_seq.get(key)
        if last is None:
            last = self._first_position(key)
        if last is not None and seq > last + 1:
            self.counters["gaps"] += 1
            self._fill(key, last, seq - 1)
        self._store(key, seq, topic, body)
        self._forward(frames)

    def _check_replays(self) -> bool:
        """Fetch what each replay socket stored after the last seq collected; return True if anything was."""
        before = self.counters["replayed"]
        for endpoint in self.replay_endpoints:
            hello = self.replays.probe(endpoint)
            if hello is None:
                continue
            key = self.replays.stream_of(endpoint)
            last = self.last_seq.get(key)
            if last is None:
                last = self._first_position(key)
            if last is not None and hello["last_seq"] > last:
                self._fill(key, last, hello["last_seq"])
        return self.counters["replayed"] > before

    def _first_position(self, key: StreamKey) -> int | None:
        """Return the seq after which a stream first seen is collected, or None to start at its message."""
        other_streams = self.last_seq.other_streams(key)
        if other_streams:
            log_new_stream(key, other_streams)
            return 0
        if self.replays.client_for(key) is not None:
            # A new sensor with a replay socket: collect it from its first alert.
            return 0
        return None

    def _store(self, key: StreamKey, seq: int, topic: str, body: bytes) -> None:
        # The seq counts as collected even when its body is malformed, so
        # the idle check does not fetch the same body again.
        self.last_seq.set(key, max(seq, self.last_seq.get(key) or 0))
        try:
            collector_seq = self.store.append_received(topic, body, stream_id=key[1])
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            # Only replayed bodies get here undecoded; the live ones were checked.
            count_malformed(self.counters, topic, error)
            return
        if collector_seq is None:
            self.counters["duplicates_dropped"] += 1
        else:
            self.counters["stored"] += 1

    def _fill(self, key: StreamKey, since: int, until: int) -> None:
        sensor_id, stream_id = key
        client = self.replays.client_for(key)
        if client is None:
            self.counters["gaps_unfilled"] += until - since
            logger.warning("missed alerts %d..%d from sensor %s stream %s; no replay socket is known for it",
                           since + 1, until, sensor_id, stream_id or "(none)")
            return
        stored_to = since
        try:
            for seq, topic, body in client.fetch(since, until, [TOPIC_PREFIX], stream_id=stream_id):
                self._store(key, seq, topic, body)
                self._forward([topic.encode("ascii"), body])
                self.counters["replayed"] += 1
                stored_to = seq
        except ReplayError as error:
            self.counters["gaps_unfilled"] += until - stored_to
            logger.warning("filling alerts %d..%d from sensor %s stream %s failed: %s", stored_to + 1, until,
                           sensor_id, stream_id or "(none)", error)

    def _forward(self, frames: list[bytes]) -> None:
        if self.backend is not None:
            self.backend.send_multipart(frames)

    def close(self) -> None:
        self.replays.close()
        self.frontend.close()
        if self.backend is not None:
            self.backend.close()
        if self._authenticator is not None:
            self._authenticator.stop()
        self.context.term()

"""The collector: merge several sensors' buses into one store and one bus.

An XSUB socket connects to every sensor's PUB endpoint and subscribes to
all alerts. An optional XPUB socket re-publishes what arrives and passes
the downstream subscriptions up to the sensors (an XSUB/XPUB proxy). Each alert
received is stored once in the merged store with a new collector seq, next
to the sensor's own sensor_id and seq (see store.py). A seq gap from a
sensor is filled from that sensor's replay socket when one was given.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import msgpack
import zmq

from engine.alerts.bus import (
    SEND_HIGH_WATER_MARK,
    CurveClientKeys,
    ReplayClient,
    ReplayError,
    apply_curve_client,
    apply_curve_server,
    bound_endpoint,
)
from engine.alerts.config import check_endpoint
from engine.alerts.schema import TOPIC_PREFIX
from engine.alerts.store import AlertStore

logger = logging.getLogger(__name__)

POLL_INTERVAL_MS = 100


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
        self._replay_by_sensor: dict[str, ReplayClient] = {}
        # sensor_id -> highest sensor seq stored; one entry per sensor.
        self.last_seq: dict[str, int] = {}
        self.counters = collections.Counter()
        self._stop = threading.Event()

    def _connect_replays(self) -> None:
        for endpoint in self.replay_endpoints:
            client = ReplayClient(self.context, endpoint, self.curve)
            try:
                sensor_id = client.hello()["sensor_id"]
            except ReplayError as error:
                logger.warning("replay socket %s failed (%s); seq gaps from its sensor will not be filled",
                               endpoint, error)
                client.close()
                continue
            self._replay_by_sensor[sensor_id] = client

    def stop(self) -> None:
        self._stop.set()

    def run(self, idle_timeout_s: float | None = None) -> None:
        """Serve until stop() or, when set, until no message arrived for `idle_timeout_s`."""
        self.store = AlertStore(self.store_path)
        # A restarted collector resumes each sensor after its last stored seq.
        for sensor_id, sensor_seq in self.store.conn.execute(
            "SELECT sensor_id, MAX(sensor_seq) FROM alert_events WHERE sensor_seq IS NOT NULL GROUP BY sensor_id"
        ):
            self.last_seq.setdefault(sensor_id, sensor_seq)
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
        logger.info("collector started: %d sensor endpoints, %d replay sockets",
                    len(self.connect), len(self._replay_by_sensor))
        while not self._stop.is_set():
            events = dict(poller.poll(POLL_INTERVAL_MS))
            if self.frontend in events:
                frames = self.frontend.recv_multipart()
                last_message_at = time.monotonic()
                self._handle(frames)
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
            header = msgpack.unpackb(body, raw=False, strict_map_key=False)
            seq, sensor_id = int(header["seq"]), str(header["sensor_id"])
        except (ValueError, KeyError, TypeError, msgpack.ExtraData) as error:
            self.counters["malformed"] += 1
            if self.counters["malformed"] <= 10:
                logger.warning("skipped malformed message on topic %s: %s", topic, error)
            return
        last = self.last_seq.get(sensor_id)
        if last is None and sensor_id in self._replay_by_sensor:
            # A new sensor with a replay socket: collect it from its first alert.
            last = 0
        if last is not None and seq > last + 1:
            self.counters["gaps"] += 1
            self._fill(sensor_id, last, seq - 1)
        self._store(sensor_id, seq, topic, body)
        self._forward(frames)

    def _store(self, sensor_id: str, seq: int, topic: str, body: bytes) -> None:
        if self.store.append_received(topic, body) is None:
            self.counters["duplicates_dropped"] += 1
        else:
            self.counters["stored"] += 1
        self.last_seq[sensor_id] = max(seq, self.last_seq.get(sensor_id, 0))

    def _fill(self, sensor_id: str, since: int, until: int) -> None:
        client = self._replay_by_sensor.get(sensor_id)
        if client is None:
            self.counters["gaps_unfilled"] += until - since
            logger.warning("missed alerts %d..%d from sensor %s; no replay socket is known for it",
                           since + 1, until, sensor_id)
            return
        try:
            for seq, topic, body in client.fetch(since, until, [TOPIC_PREFIX]):
                self._store(sensor_id, seq, topic, body)
                self._forward([topic.encode("ascii"), body])
                self.counters["replayed"] += 1
        except ReplayError as error:
            self.counters["gaps_unfilled"] += until - since
            logger.warning("filling alerts %d..%d from sensor %s failed: %s", since + 1, until, sensor_id, error)

    def _forward(self, frames: list[bytes]) -> None:
        if self.backend is not None:
            self.backend.send_multipart(frames)

    def close(self) -> None:
        for client in self._replay_by_sensor.values():
            client.close()
        self.frontend.close()
        if self.backend is not None:
            self.backend.close()
        if self._authenticator is not None:
            self._authenticator.stop()
        self.context.term()

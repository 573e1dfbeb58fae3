"""The ZeroMQ alert bus: a PUB socket, a replay socket and a gap-filling subscriber.

Framing: every bus message has two frames, [topic, body]. The topic is
`alert.<severity>.<category>` for alerts and `stats` for capture
statistics; the body is msgpack. An alert body is Alert.to_dict() and so
carries seq, sensor_id and stream_id. Seqs count within one stream (one
store), so consumers track them per (sensor_id, stream_id). Subscribers filter by topic prefix, so
`alert.high.` receives high-severity alerts of every category.

Replay protocol (ROUTER socket; a client sends [empty frame, request] from a
DEALER or just [request] from a REQ socket). Requests and replies are msgpack
maps:
  {"op": "hello"}
      -> {"ok": true, "sensor_id": str, "stream_id": str, "last_seq": int}
  {"op": "since", "since": S, "until": U or nil, "limit": N, "topics": [prefix, ...]}
      -> {"ok": true, "sensor_id": str, "stream_id": str, "last_seq": int,
          "covered_to": C, "events": [[seq, topic, body], ...]}
      Returns publications with S < seq <= min(U, last_seq), oldest first, at
      most min(N, 1000). covered_to is the highest seq the reply covers,
      including seqs skipped by the topic filter, so the next page requests
      since C. Seqs belong to the stream named in the reply, and every
      event of a reply belongs to it, also a body stored before stream ids
      that has no stream_id of its own. A client checks the reply's
      stream_id, because the socket may serve a new store since its hello.
  anything else
      -> {"ok": false, "error": "..."}

Sensor stop: a sensor that shuts down normally sends one message on topic
`sensor.stopped`, body {"type": "sensor_stopped", "sensor_id": str,
"stream_id": str, "last_seq": int}, after its replay socket has closed. GapFillingSubscriber
subscribes to it, so a normal stop is not reported as a failed replay.

CURVE: a server given its secret certificate encrypts both sockets. With an
allowlist directory, only clients whose public certificate is in it can
connect (ZAP through zmq.auth's ThreadAuthenticator). Others get no data;
the server logs each rejected key (rate-limited) and the client sees the
handshake fail with ZAP status 400.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Iterator

import msgpack
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from engine.alerts.config import check_endpoint
from engine.alerts.schema import TOPIC_PREFIX, Alert, unpack_alert
from engine.alerts.store import MAX_PAGE_SIZE, MAX_SQLITE_INTEGER, AlertStore

logger = logging.getLogger(__name__)

# Messages queued per subscriber before PUB drops for that subscriber. The
# subscriber detects the drop as a seq gap and fills it through replay.
SEND_HIGH_WATER_MARK = 100_000
REPLAY_POLL_INTERVAL_MS = 100
REPLY_TIMEOUT_MS = 5_000
# Wait for a hello reply from a sensor that announced a stop. The idle
# check blocks the receive loop this long per stopped sensor, so the probe
# is best effort: a sensor that needs longer is found by its next live
# message instead.
STOPPED_PROBE_TIMEOUT_MS = 100
# Wait for a hello reply from a replay socket that failed before, long
# enough for a TCP and CURVE handshake over a slow link.
FAILING_PROBE_TIMEOUT_MS = 1_000
STOPPED_TOPIC = "sensor.stopped"
# Distinct rejected CURVE keys logged; past this, every 1000th rejection is.
# A client retries its handshake about every 100 ms, so each rejected key is
# logged once, not per attempt.
MAX_REJECTED_KEYS_LOGGED = 256
# Malformed messages logged: the first few, then every Nth, so a broken or
# hostile publisher cannot flood the log.
MALFORMED_LOGGED_FIRST = 10
MALFORMED_LOGGED_EVERY = 1000
# Sensor streams whose last seq a consumer keeps. Past this the stream
# updated least recently is forgotten (counter streams_evicted). A later
# message of a forgotten stream is treated as the first of a new stream.
MAX_TRACKED_STREAMS = 10_000

# (sensor_id, stream_id): the unit in which seqs count.
StreamKey = tuple[str, str]


class MalformedAlert(ValueError):
    """A bus or replay body that is not a usable alert record."""


def decode_alert_body(body: bytes) -> Alert:
    """Decode an alert body from the bus or replay; raise MalformedAlert naming what is wrong.

    Besides the record itself, seq must be an integer SQLite can store and
    sensor_id and stream_id must be strings, because consumers key their
    state on them.
    """
    try:
        alert = unpack_alert(body)
    except (ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException) as error:
        raise MalformedAlert(f"not an alert record ({type(error).__name__}: {error})") from error
    seq = alert.seq
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SQLITE_INTEGER:
        raise MalformedAlert(f"invalid seq {seq!r}; expected an integer from 1 to {MAX_SQLITE_INTEGER}")
    if not isinstance(alert.sensor_id, str):
        raise MalformedAlert(f"invalid sensor_id {alert.sensor_id!r}; expected a string")
    if not isinstance(alert.stream_id, str):
        raise MalformedAlert(f"invalid stream_id {alert.stream_id!r}; expected a string")
    return alert


def decode_alert_header(body: bytes) -> tuple[int, str, str]:
    """Return (seq, sensor_id, stream_id) of an alert body; raise MalformedAlert naming what is wrong.

    Checks only what gap filling needs, so it is cheaper than
    decode_alert_body(); the consumer decodes the record itself.
    """
    try:
        header = msgpack.unpackb(body, raw=False, strict_map_key=False)
        seq, sensor_id, stream_id = header["seq"], header.get("sensor_id", ""), header.get("stream_id", "")
    except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as error:
        raise MalformedAlert(f"not an alert record ({type(error).__name__}: {error})") from error
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SQLITE_INTEGER:
        raise MalformedAlert(f"invalid seq {seq!r}; expected an integer from 1 to {MAX_SQLITE_INTEGER}")
    if not isinstance(sensor_id, str) or not isinstance(stream_id, str):
        raise MalformedAlert(f"invalid sensor_id {sensor_id!r} or stream_id {stream_id!r}; expected strings")
    return seq, sensor_id, stream_id


def count_malformed(counters: collections.Counter, topic: str, error: Exception) -> None:
    """Count one skipped malformed message and log it, rate-limited."""
    counters["malformed"] += 1
    skipped = counters["malformed"]
    if skipped <= MALFORMED_LOGGED_FIRST or skipped % MALFORMED_LOGGED_EVERY == 0:
        logger.warning("skipped malformed message on topic %s: %s (%d skipped so far)", topic, error, skipped)


class StreamPositions:
    """The last seq handled per sensor stream, at most MAX_TRACKED_STREAMS of them.

    When full, the stream updated least recently is dropped and counted in
    counters["streams_evicted"].
    """

    def __init__(self, counters: collections.Counter, limit: int = MAX_TRACKED_STREAMS):
        self._last: collections.OrderedDict[StreamKey, int] = collections.OrderedDict()
        self._counters = counters
        self._limit = limit

    def get(self, key: StreamKey) -> int | None:
        return self._last.get(key)

    def set(self, key: StreamKey, seq: int) -> None:
        self._last[key] = seq
        self._last.move_to_end(key)
        while len(self._last) > self._limit:
            self._last.popitem(last=False)
            self._counters["streams_evicted"] += 1

    def other_streams(self, key: StreamKey) -> list[str]:
        """Return the other stream ids known for the sensor of `key`."""
        sensor_id, stream_id = key
        return [known[1] for known in self._last if known[0] == sensor_id and known[1] != stream_id]

    def items(self):
        return self._last.items()

    def __contains__(self, key: StreamKey) -> bool:
        return key in self._last

    def __len__(self) -> int:
        return len(self._last)


def log_new_stream(key: StreamKey, other_streams: list[str]) -> None:
    """Log that a known sensor publishes on another stream, which is read from seq 1."""
    sensor_id, stream_id = key
    logger.warning(
        "sensor %s publishes on a new alert stream %s (a new or another store; streams seen before: %s);"
        " reading that stream from seq 1", sensor_id, stream_id or "(none)",
        ", ".join(stream or "(none)" for stream in other_streams[:3]) + (" ..." if len(other_streams) > 3 else ""),
    )


def bound_endpoint(socket: zmq.Socket) -> str:
    """Return the endpoint a socket is bound to, with the real port after binding to port *."""
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


def apply_curve_server(
    context: zmq.Context, sockets: list[zmq.Socket], secret_file: str, allow_dir: str | None
) -> ThreadAuthenticator:
    """Make `sockets` CURVE servers with the key pair in `secret_file`; return the started authenticator."""
    public_key, secret_key = zmq.auth.load_certificate(secret_file)
    if secret_key is None:
        raise ValueError(
            f"{secret_file} has no secret key; pass the NAME.key_secret file from `wardwatch keys generate`"
        )
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    if allow_dir is not None:
        if not os.path.isdir(allow_dir):
            authenticator.stop()
            raise FileNotFoundError(f"CURVE allowlist directory {allow_dir} does not exist")
        try:
            allowlist = CurveAllowlist(allow_dir)
        except ValueError as error:
            authenticator.stop()
            raise ValueError(
                f"invalid CURVE allowlist {allow_dir}: {error}; keep only public certificates (NAME.key) there"
            ) from error
        authenticator.configure_curve_callback(domain="*", credentials_provider=allowlist)
    else:
        logger.warning(
            "CURVE client authentication is off: the traffic is encrypted, but any client with any key"
            " can connect and receive alerts; pass --curve-allow DIR with the allowed clients' public"
            " certificates to restrict it"
        )
        authenticator.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    for socket in sockets:
        socket.curve_secretkey = secret_key
        socket.curve_publickey = public_key
        socket.curve_server = True
    return authenticator


class CurveAllowlist:
    """ZAP credentials check against the public certificates in a directory; logs rejected keys.

    The directory is read once, when the sensor starts.
    """

    def __init__(self, allow_dir: str):
        self.allow_dir = allow_dir
        self.allowed = set(zmq.auth.load_certificates(allow_dir))
        self.rejected = 0
        # Bounded by MAX_REJECTED_KEYS_LOGGED.
        self._logged_keys: set[bytes] = set()
        if not self.allowed:
            logger.warning("CURVE allowlist %s has no public certificates; every client will be rejected", allow_dir)

    def callback(self, domain: str, client_key: bytes) -> bool:
        if client_key in self.allowed:
            return True
        self.rejected += 1
        first_time = client_key not in self._logged_keys and len(self._logged_keys) < MAX_REJECTED_KEYS_LOGGED
        if first_time:
            self._logged_keys.add(client_key)
        if first_time or self.rejected % 1000 == 0:
            # A public key identifies the client and is no secret.
            logger.warning(
                "rejected CURVE client with public key %s (%d rejected so far); to allow it, copy its"
                " NAME.key into %s and restart the sensor",
                client_key.decode("ascii", "replace"), self.rejected, self.allow_dir,
            )
        return False


def apply_curve_client(socket: zmq.Socket, client_secret_file: str, server_public_file: str) -> None:
    """Make `socket` a CURVE client with its own key pair and the server's public key."""
    client_public, client_secret = zmq.auth.load_certificate(client_secret_file)
    if client_secret is None:
        raise ValueError(
            f"{client_secret_file} has no secret key; pass the client's NAME.key_secret file"
        )
    server_public, _ = zmq.auth.load_certificate(server_public_file)
    socket.curve_secretkey = client_secret
    socket.curve_publickey = client_public
    socket.curve_serverkey = server_public


@dataclass
class CurveClientKeys:
    client_secret_file: str  # the client's NAME.key_secret
    server_public_file: str  # the server's NAME.key


class BusPublisher:
    """A bound PUB socket; send() is called from one thread only."""

    def __init__(self, context: zmq.Context, endpoint: str):
        self.socket = context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, SEND_HIGH_WATER_MARK)
        self.socket.setsockopt(zmq.LINGER, 1_000)
        self.requested_endpoint = endpoint

    def bind(self) -> str:
        try:
            self.socket.bind(self.requested_endpoint)
        except zmq.ZMQError as error:
            raise OSError(
                f"cannot bind the alert bus to {self.requested_endpoint}: {error};"
                " choose another port or endpoint"
            ) from error
        self.endpoint = bound_endpoint(self.socket)
        logger.info("alert bus publishing on %s", self.endpoint)
        return self.endpoint

    def send(self, topic: str, body: bytes) -> None:
        self.socket.send_multipart([topic.encode("ascii"), body], copy=False)

    def close(self) -> None:
        self.socket.close()


class ReplayServer:
    """A ROUTER socket serving replay requests from the store, in a thread with its own SQLite connection."""

    def __init__(self, context: zmq.Context, endpoint: str, store_path: str, sensor_id: str):
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.requested_endpoint = endpoint
        self.store_path = store_path
        self.sensor_id = sensor_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counters = collections.Counter()

    def bind(self) -> str:
        try:
            self.socket.bind(self.requested_endpoint)
        except zmq.ZMQError as error:
            raise OSError(
                f"cannot bind the replay socket to {self.requested_endpoint}: {error};"
                " choose another port or endpoint"
            ) from error
        self.endpoint = bound_endpoint(self.socket)
        return self.endpoint

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="wardwatch-replay", daemon=True)
        self._thread.start()
        logger.info("replay socket serving on %s", self.endpoint)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.socket.close()

    def _serve(self) -> None:
        # The socket is used only by this thread once serving starts; ZeroMQ
        # sockets are not thread-safe.
        store = AlertStore(self.store_path)
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(REPLAY_POLL_INTERVAL_MS):
                    continue
                frames = self.socket.recv_multipart()
                identity, envelope, payload = frames[0], frames[1:-1], frames[-1]
                try:
                    reply = self.handle_request(store, payload)
                except Exception as error:
                    # One bad request must not end the thread, which would
                    # leave every subscriber without gap filling.
                    self.counters["failed"] += 1
                    failed = self.counters["failed"]
                    # Log the first failures in full, then every 1000th, so
                    # a client repeating a bad request cannot flood the log.
                    if failed <= 10 or failed % 1000 == 0:
                        logger.exception("replay request failed (%d so far); the socket keeps serving", failed)
                    reply = {"ok": False, "error": f"replay request failed: {error}"}
                self.socket.send_multipart([identity, *envelope, msgpack.packb(reply, use_bin_type=True)])
        finally:
            store.close()

    def handle_request(self, store: AlertStore, payload: bytes) -> dict:
        self.counters["requests"] += 1
        try:
            request = msgpack.unpackb(payload, raw=False)
        except (ValueError, msgpack.ExtraData) as error:
            return self._reject(f"invalid request: not msgpack ({error})")
        if not isinstance(request, dict):
            return self._reject("invalid request: expected a msgpack map")
        op = request.get("op")
        last_seq = store.last_seq()

        if op == "hello":
            return {"ok": True, "sensor_id": self.sensor_id, "stream_id": store.stream_id, "last_seq": last_seq}
        if op != "since":
            return self._reject(f"invalid op {op!r}; expected 'hello' or 'since'")
        since, until = request.get("since"), request.get("until")
        limit = request.get("limit", MAX_PAGE_SIZE)
        topics = request.get("topics") or []
        if not isinstance(since, int) or not 0 <= since <= MAX_SQLITE_INTEGER:
            return self._reject(f"invalid since {since!r}; expected an integer from 0 to {MAX_SQLITE_INTEGER}")
        if until is not None and not isinstance(until, int):
            return self._reject(f"invalid until {until!r}; expected an integer or nil")
        if not isinstance(limit, int) or limit < 1:
            return self._reject(f"invalid limit {limit!r}; expected an integer >= 1")
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            return self._reject("invalid topics; expected a list of topic prefixes")

        upper = last_seq if until is None else min(until, last_seq)
        events = store.events_since(since, upper, limit, tuple(topics))
        if len(events) >= min(limit, MAX_PAGE_SIZE):
            covered_to = events[-1].seq
        else:
            covered_to = max(since, upper)
        self.counters["events_sent"] += len(events)
        return {
            "ok": True,
            "sensor_id": self.sensor_id,
            "stream_id": store.stream_id,
            "last_seq": last_seq,
            "covered_to": covered_to,
            "events": [[event.seq, event.topic, event.body] for event in events],
        }

    def _reject(self, message: str) -> dict:
        self.counters["rejected"] += 1
        logger.warning("replay request rejected: %s", message)
        return {"ok": False, "error": message}


class ReplayError(RuntimeError):
    """A replay request failed or timed out."""


class StreamChanged(ReplayError):
    """The replay socket serves another stream than the one requested (the sensor's store changed)."""


# Socket events watched on a replay client, to explain a request that got no reply.
_MONITORED_EVENTS = (
    zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def _close_monitored(socket: zmq.Socket, monitor: zmq.Socket) -> None:
    socket.disable_monitor()
    monitor.close()
    socket.close()


class ReplayClient:
    """A DEALER socket that sends replay requests and waits for replies."""

    def __init__(self, context: zmq.Context, endpoint: str, curve: CurveClientKeys | None = None,
                 timeout_ms: int = REPLY_TIMEOUT_MS):
        self.context = context
        self.endpoint = endpoint
        self.curve = curve
        self.timeout_ms = timeout_ms
        self._connect()

    def _connect(self) -> None:
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            apply_curve_client(self.socket, self.curve.client_secret_file, self.curve.server_public_file)
        # A unique inproc name, because pyzmq's get_monitor_socket() names it
        # after the file descriptor. The replacement socket after a timeout
        # can get the same descriptor while the old name is still bound.
        monitor_endpoint = f"inproc://wardwatch-replay-monitor-{uuid.uuid4().hex}"
        self.socket.monitor(monitor_endpoint, _MONITORED_EVENTS)
        self._monitor = self.context.socket(zmq.PAIR)
        self._monitor.setsockopt(zmq.LINGER, 0)
        self._monitor.connect(monitor_endpoint)
        # A monitored socket closed by the garbage collector, in whatever
        # order it picks, stopped every later socket of the context from
        # connecting (pyzmq 27.3, libzmq 4.3.5). The finalizer closes both
        # in order when a client is dropped without close().
        self._finalizer = weakref.finalize(self, _close_monitored, self.socket, self._monitor)
        # The latest connection state the monitor reported: "connected",
        # "disconnected", "rejected" (ZAP denied the key), "handshake failed".
        self.connection_state: str | None = None
        self.socket.connect(self.endpoint)

    def _read_monitor(self) -> None:
        while self._monitor.poll(0, zmq.POLLIN):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.connection_state = "rejected"
            elif event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                self.connection_state = "handshake failed"
            elif event == zmq.EVENT_DISCONNECTED:
                # A failed handshake is followed by a disconnect; keep its reason.
                if self.connection_state not in ("rejected", "handshake failed"):
                    self.connection_state = "disconnected"
            elif event in (zmq.EVENT_CONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED):
                self.connection_state = "connected"

    def _timeout_message(self) -> str:
        self._read_monitor()
        waited = f"replay request to {self.endpoint} got no reply in {self.timeout_ms} ms"
        if self.connection_state == "rejected":
            return (f"{waited}: the sensor rejected this client's CURVE key; add the client's public"
                    " certificate (NAME.key) to the sensor's --curve-allow directory, or pass the"
                    " --curve-secret of an allowed client")
        if self.connection_state == "handshake failed":
            if self.curve is None:
                return (f"{waited}: the security handshake failed; if the sensor uses CURVE, pass"
                        " --curve-secret and --curve-server-key")
            return (f"{waited}: the CURVE handshake failed; check that --curve-server-key is the sensor's"
                    " public certificate")
        if self.connection_state == "disconnected":
            return f"{waited}: the connection closed, so the sensor has stopped or restarted"
        if self.connection_state is None:
            return f"{waited}: no connection; check the endpoint and that the sensor runs"
        return f"{waited} (timed out); the sensor may be overloaded, or it is not a WardWatch replay socket"

    def request(self, request: dict, timeout_ms: int | None = None) -> dict:
        self.socket.send_multipart([b"", msgpack.packb(request, use_bin_type=True)])
        if not self.socket.poll(self.timeout_ms if timeout_ms is None else timeout_ms, zmq.POLLIN):
            message = self._timeout_message()
            # A late reply to this request would be read as the reply to the
            # next one, so the socket is replaced.
            self._close_sockets()
            self._connect()
            raise ReplayError(message)
        frames = self.socket.recv_multipart()
        reply = msgpack.unpackb(frames[-1], raw=False)
        if not reply.get("ok"):
            raise ReplayError(f"replay server at {self.endpoint} rejected the request: {reply.get('error')}")
        return reply

    def hello(self, timeout_ms: int | None = None) -> dict:
        return self.request({"op": "hello"}, timeout_ms)

    def fetch(self, since: int, until: int | None, topics: list[str],
              stream_id: str | None = None) -> Iterator[tuple[int, str, bytes]]:
        """Yield (seq, topic, body) for since < seq <= until, page by page.

        With `stream_id`, raise StreamChanged as soon as a reply comes from
        another stream, because its seqs would count in that other stream.
        """
        while until is None or since < until:
            reply = self.request(
                {"op": "since", "since": since, "until": until, "limit": MAX_PAGE_SIZE, "topics": topics}
            )
            served = str(reply.get("stream_id") or "")
            if stream_id is not None and served != stream_id:
                raise StreamChanged(
                    f"replay socket {self.endpoint} now serves stream {served or '(none)'} of sensor"
                    f" {reply.get('sensor_id')}, not stream {stream_id or '(none)'}"
                )
            for seq, topic, body in reply["events"]:
                yield seq, topic, body
            covered_to = reply["covered_to"]
            if covered_to <= since:
                return
            since = covered_to
            if until is None and since >= reply["last_seq"]:
                return

    def _close_sockets(self) -> None:
        self._finalizer()

    def close(self) -> None:
        self._close_sockets()


class ReplayDirectory:
    """The replay sockets of one consumer, found by the sensor stream each one serves now.

    Each endpoint's stream is learnt from its hello reply and learnt again
    by refresh(), because a restarted sensor may serve a new store on the
    same endpoint. Two sensors with the same sensor id differ in their
    stream ids.
    """

    def __init__(self, context: zmq.Context, endpoints: list[str], curve: CurveClientKeys | None = None):
        self.context = context
        self.curve = curve
        self.endpoints = list(endpoints)
        self._clients: dict[str, ReplayClient] = {}
        # Both bounded by the number of endpoints.
        self._stream_by_endpoint: dict[str, StreamKey] = {}
        self._failing: set[str] = set()

    def hello(self, endpoint: str, timeout_ms: int | None = None) -> dict:
        """Send hello to `endpoint`, record the stream it serves and return the reply; raise ReplayError."""
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = ReplayClient(self.context, endpoint, self.curve)
        reply = client.hello(timeout_ms)
        self._stream_by_endpoint[endpoint] = (str(reply["sensor_id"]), str(reply.get("stream_id") or ""))
        if endpoint in self._failing:
            self._failing.discard(endpoint)
            logger.warning("replay socket %s responds again", endpoint)
        return reply

    def refresh(self) -> None:
        """Send hello to every endpoint; a failure is logged once per outage."""
        for endpoint in self.endpoints:
            self.probe(endpoint)

    def probe(self, endpoint: str) -> dict | None:
        """Send hello to `endpoint` and return the reply, or None when it fails (logged once per outage).

        An endpoint that failed before gets FAILING_PROBE_TIMEOUT_MS rather
        than the full reply timeout, so a sensor that is down does not
        block its consumer for seconds on every probe.
        """
        timeout_ms = FAILING_PROBE_TIMEOUT_MS if endpoint in self._failing else None
        try:
            return self.hello(endpoint, timeout_ms)
        except ReplayError as error:
            self.note_failure(endpoint, error)
            return None

    def note_failure(self, endpoint: str, error: ReplayError) -> None:
        if endpoint not in self._failing:
            self._failing.add(endpoint)
            logger.warning("replay socket %s failed: %s; retrying later", endpoint, error)

    def stream_of(self, endpoint: str) -> StreamKey | None:
        return self._stream_by_endpoint.get(endpoint)

    def client_for(self, key: StreamKey, refresh: bool = True) -> ReplayClient | None:
        """Return the client whose socket serves stream `key`; with `refresh`, ask every socket again first if none does."""
        for attempt in range(2):
            for endpoint, served in self._stream_by_endpoint.items():
                if served == key:
                    return self._clients[endpoint]
            if attempt == 0 and refresh and self.endpoints:
                self.refresh()
        return None

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


@dataclass
class Received:
    seq: int | None
    sensor_id: str
    topic: str
    body: bytes
    replayed: bool  # True when it came from the replay socket, not the live bus
    stream_id: str = ""  # the sensor stream that seq counts in


class GapFillingSubscriber:
    """Subscribe to one or more buses and yield every alert once, in seq order per sensor stream.

    Seqs are tracked per (sensor_id, stream_id): every store is a stream of
    its own, so two sensors with one sensor id, or a sensor restarted with a
    new store, never hide each other's alerts. The first message of a new
    stream of a sensor already seen is logged, and that stream is read from
    seq 1 through replay.

    The subscription is made before the first replay request, so nothing
    published between the two is missed (the slow-joiner problem of PUB/SUB):
    whatever the replay covers is dropped when it also arrives live. A live
    seq beyond last+1 is a gap, filled from the stream's replay socket before
    the live message is yielded. While the bus is idle, each replay socket
    is asked every `idle_check_s` for publications after the last one seen,
    so losses at the end of a run are found too.

    Where to start: `positions` gives the last seq already handled per
    stream (a restarted consumer resumes after it). Otherwise `since` is the
    last seq handled in `since_stream`, or in whatever stream each replay
    socket serves when `since_stream` is None. A socket that serves another
    stream than `since_stream` is read from seq 1. A stream with no position
    and no `since` is read after the last seq its replay socket reported at
    start, or, without a replay socket, from its first live message.

    A `since` beyond a stream's last seq (its store was replaced, or the
    seq came from another sensor) cannot be served. The subscriber then
    follows that stream's live alerts from its next seq and records the
    stream's last seq in `since_ahead`. The replay socket of a stream that
    announced a normal stop is only probed while idle, briefly and without
    a log line, until the stream publishes again or the probe finds a new
    stream there.

    A live message without a usable seq, sensor_id or stream_id is
    skipped, counted in counters["malformed"] and logged at a limited rate.
    The rest of the body is the consumer's to decode (decode_alert_body).
    """

    def __init__(
        self,
        connect: list[str],
        topics: list[str] | None = None,
        replay: list[str] | None = None,
        since: int | None = None,
        curve: CurveClientKeys | None = None,
        idle_check_s: float = 1.0,
        context: zmq.Context | None = None,
        positions: dict[StreamKey, int] | None = None,
        since_stream: str | None = None,
    ):
        for endpoint in [*connect, *(replay or [])]:
            check_endpoint(endpoint)
        for topic in topics or []:
            if not topic.isascii():
                raise ValueError(f"invalid topic {topic!r}; topics are ASCII prefixes such as alert.high.")
        self.context = context or zmq.Context.instance()
        self.topics = list(topics) if topics else [TOPIC_PREFIX]
        self.curve = curve
        self.idle_check_s = idle_check_s
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, SEND_HIGH_WATER_MARK)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            apply_curve_client(self.socket, curve.client_secret_file, curve.server_public_file)
        for topic in [*self.topics, STOPPED_TOPIC]:
            self.socket.setsockopt(zmq.SUBSCRIBE, topic.encode("ascii"))
        for endpoint in connect:
            self.socket.connect(endpoint)
        self.replay_endpoints = list(replay or [])
        self.replays = ReplayDirectory(self.context, self.replay_endpoints, curve)
        self.counters = collections.Counter()
        # Highest seq yielded per stream, bounded by MAX_TRACKED_STREAMS.
        self.last_seq = StreamPositions(self.counters)
        for key, seq in (positions or {}).items():
            self.last_seq.set(key, seq)
        self._since = since
        self._since_stream = since_stream
        # Stream -> its last seq, for streams whose last seq was below
        # `since` at start; bounded by the number of replay endpoints.
        self.since_ahead: dict[StreamKey, int] = {}
        # Streams that announced a normal stop. Only tracked streams enter,
        # and _accept_stopped prunes evicted ones past MAX_TRACKED_STREAMS.
        self.stopped: set[StreamKey] = set()
        self._pending: collections.deque[Received] = collections.deque()
        self._started = False
        # Streams the replay sockets served at start; bounded by their number.
        self._streams_at_start: set[StreamKey] = set()

    def start(self) -> None:
        """Send hello to every replay socket and fetch what follows each stream's start; receive() calls it once."""
        if not self._started:
            self._start()

    def _start(self) -> None:
        self._started = True
        for endpoint in self.replay_endpoints:
            try:
                hello = self.replays.hello(endpoint)
            except ReplayError as error:
                # The error names the cause and the fix (see ReplayClient._timeout_message).
                raise ReplayError(f"replay socket {endpoint} failed: {error}") from error
            key = self.replays.stream_of(endpoint)
            self._streams_at_start.add(key)
            start = self._start_position(key, hello["last_seq"])
            if start is None:
                # Follow from now: a live message lost to the slow joiner
                # is then a gap that replay fills.
                self.last_seq.set(key, hello["last_seq"])
            else:
                self.last_seq.set(key, start)
                self._fill(key, None)

    def _start_position(self, key: StreamKey, last_seq: int) -> int | None:
        """Return the seq after which stream `key` is read at start, or None to follow it from its last seq."""
        sensor_id, stream_id = key
        known = self.last_seq.get(key)
        # Streams of the same sensor id that other replay sockets serve now
        # are not earlier streams of this one.
        earlier_streams = [other for other in self.last_seq.other_streams(key)
                           if (sensor_id, other) not in self._streams_at_start]
        if known is None and earlier_streams:
            log_new_stream(key, earlier_streams)
            return 0
        if known is None and self._since is not None:
            if self._since_stream is not None and self._since_stream != stream_id:
                logger.warning("since %d counts in stream %s, but sensor %s now serves stream %s;"
                               " reading that stream from seq 1", self._since, self._since_stream or "(none)",
                               sensor_id, stream_id or "(none)")
                return 0
            known = self._since
        if known is None:
            return None
        if known > last_seq:
            self.since_ahead[key] = last_seq
            logger.info("since %d is ahead of sensor %s stream %s, whose last seq is %d; following it from seq %d",
                        known, sensor_id, stream_id or "(none)", last_seq, last_seq + 1)
            return last_seq
        return known

    def _fill(self, key: StreamKey, until: int | None) -> None:
        """Queue replayed publications of stream `key` after its last seq, up to `until`."""
        sensor_id, stream_id = key
        since = self.last_seq.get(key) or 0
        client = self.replays.client_for(key)
        if client is None:
            if until is not None and until > since:
                self._count_unfilled(key, since, until, "no replay socket is known for it")
            return
        try:
            for seq, topic, body in client.fetch(since, until, self.topics, stream_id=stream_id):
                self._pending.append(Received(seq, sensor_id, topic, body, replayed=True, stream_id=stream_id))
                self.counters["replayed"] += 1
                self.last_seq.set(key, seq)
        except StreamChanged as error:
            if until is not None and until > (self.last_seq.get(key) or 0):
                self._count_unfilled(key, self.last_seq.get(key) or 0, until, str(error))
        if until is not None:
            self.last_seq.set(key, max(self.last_seq.get(key) or 0, until))

    def _count_unfilled(self, key: StreamKey, since: int, until: int, reason: str) -> None:
        self.counters["gaps_unfilled"] += until - since
        logger.warning("missed alerts %d..%d from sensor %s stream %s: %s", since + 1, until, key[0],
                       key[1] or "(none)", reason)
        self.last_seq.set(key, until)

    def _accept_stopped(self, body: bytes) -> None:
        try:
            notice = msgpack.unpackb(body, raw=False, strict_map_key=False)
            sensor_id, last_seq = str(notice["sensor_id"]), int(notice["last_seq"])
            stream_id = str(notice.get("stream_id") or "")
        except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as error:
            count_malformed(self.counters, STOPPED_TOPIC, error)
            return
        key = (sensor_id, stream_id)
        if key in self.last_seq:
            self.stopped.add(key)
            if len(self.stopped) > MAX_TRACKED_STREAMS:
                self.stopped = {stopped for stopped in self.stopped if stopped in self.last_seq}
        seen = self.last_seq.get(key)
        if seen is not None and last_seq > seen:
            # Its replay socket closed before this notice, so the rest cannot be fetched.
            self.counters["gaps_unfilled"] += last_seq - seen
            logger.warning(
                "sensor %s stopped at seq %d; alerts %d..%d were not received, read them from its store"
                " with `wardwatch alerts list`", sensor_id, last_seq, seen + 1, last_seq,
            )
            self.last_seq.set(key, last_seq)
        else:
            logger.info("sensor %s stopped normally at seq %d", sensor_id, last_seq)

    def _accept_live(self, topic: str, body: bytes) -> None:
        if topic == STOPPED_TOPIC:
            self._accept_stopped(body)
            return
        if not topic.startswith(TOPIC_PREFIX):
            self._pending.append(Received(None, "", topic, body, replayed=False))
            return
        try:
            seq, sensor_id, stream_id = decode_alert_header(body)
        except MalformedAlert as error:
            count_malformed(self.counters, topic, error)
            return
        key = (sensor_id, stream_id)
        last = self.last_seq.get(key)
        if last is not None and seq <= last:
            self.counters["duplicates_dropped"] += 1
            return
        self.stopped.discard(key)
        if last is None:
            last = self._first_position(key, seq)
            self.last_seq.set(key, last)
        if seq > last + 1:
            self.counters["gaps"] += 1
            self._fill(key, seq - 1)
        self.last_seq.set(key, seq)
        self._pending.append(Received(seq, sensor_id, topic, body, replayed=False, stream_id=stream_id))

    def _first_position(self, key: StreamKey, seq: int | None) -> int | None:
        """Return the seq after which a stream seen for the first time is read.

        `seq` is the stream's first live message, or None when an idle
        check found the stream; then None means: wait for a live message.
        """
        other_streams = self.last_seq.other_streams(key)
        if other_streams:
            log_new_stream(key, other_streams)
            return 0
        if self._since is not None:
            # The caller asked for everything after `since`, so a stream
            # that appears later is read from its start.
            return 0
        if key not in self._streams_at_start and self.replays.client_for(key, refresh=seq is not None):
            # The stream began after this subscriber started, so all of it is new.
            return 0
        # A stream that existed before the start, without --since: start at its first live message.
        return None if seq is None else seq - 1

    def _check_idle(self) -> None:
        for endpoint in self.replay_endpoints:
            stopped = self.replays.stream_of(endpoint) in self.stopped
            try:
                # A stopped sensor is only probed, briefly and without a
                # log line, to find it restarted (perhaps with a new store)
                # before it publishes live again.
                hello = self.replays.hello(endpoint, STOPPED_PROBE_TIMEOUT_MS if stopped else None)
            except ReplayError as error:
                if not stopped:
                    # Logged once per outage, because this runs every idle_check_s.
                    self.replays.note_failure(endpoint, error)
                continue
            key = self.replays.stream_of(endpoint)
            if key in self.stopped:
                continue
            last = self.last_seq.get(key)
            if last is None:
                last = self._first_position(key, None)
                if last is None:
                    continue
                self.last_seq.set(key, last)
            if hello["last_seq"] > last:
                self._fill(key, hello["last_seq"])

    def receive(self, timeout_s: float | None = None) -> Received | None:
        """Return the next alert or stats message, or None when `timeout_s` passes with nothing."""
        if not self._started:
            self._start()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        next_idle_check = time.monotonic() + self.idle_check_s
        while not self._pending:
            now = time.monotonic()
            wait_s = next_idle_check - now
            if deadline is not None:
                wait_s = min(wait_s, deadline - now)
            if self.socket.poll(max(0, int(wait_s * 1000)), zmq.POLLIN):
                frames = self.socket.recv_multipart()
                if len(frames) != 2:
                    count_malformed(self.counters, "?", ValueError(f"{len(frames)} frames; expected 2"))
                    continue
                self._accept_live(frames[0].decode("ascii", "replace"), frames[1])
                continue
            if time.monotonic() >= next_idle_check:
                self._check_idle()
                next_idle_check = time.monotonic() + self.idle_check_s
            if deadline is not None and time.monotonic() >= deadline and not self._pending:
                return None
        return self._pending.popleft()

    def close(self) -> None:
        self.replays.close()
        self.socket.close()

"""Notification actions: webhook POSTs and commands for external enforcers on a ZeroMQ PUB socket.

Command bus framing: two frames, [topic, body]. The topic is
`command.<command>` with command one of block, rate_limit, isolate, notify,
escalate or release; the body is a msgpack map:
  id          action record id (release carries the id it releases)
  command     as in the topic
  subject     IP address or MAC the command is about (None for notify)
  subject_type  "ip", "mac" or None
  timeout_s   seconds the enforcer should keep the measure (None: no expiry)
  alert_id, alert_seq, sensor_id   the alert that caused it
  rule, reason, actor, issued_at (wall-clock epoch seconds), dry_run (always false)
A release also carries released_command (the command it ends) and
ended_by (the operator who undid it, or "expiry").

The socket is an XPUB, so enforcers connect with plain SUB sockets as
before, and the responder learns which topic prefixes have a subscriber.
It uses that to keep a release pending until an enforcer can receive it.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import msgpack
import zmq

from engine.alerts.bus import bound_endpoint

log = logging.getLogger(__name__)

COMMAND_TOPIC_PREFIX = "command."
# Distinct subscribed topic prefixes remembered by a CommandPublisher.
MAX_SUBSCRIPTIONS = 1024


def post_webhook(url: str, payload: dict, timeout_s: float) -> int:
    """POST `payload` as JSON to `url`; return the HTTP status, or raise OSError on failure."""
    body = json.dumps(payload, sort_keys=True, default=str).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "wardwatch-respond"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except urllib.error.URLError as error:
        raise OSError(f"POST {url} failed: {error.reason}") from None
    except TimeoutError:
        raise OSError(f"POST {url} timed out after {timeout_s} s") from None


class CommandPublisher:
    """A bound XPUB socket for enforcer commands; used from the responder's thread only."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None):
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.socket = self.context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, 1_000)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as error:
            self.socket.close()
            raise OSError(f"cannot bind the command bus to {endpoint}: {error}; choose another endpoint") from None
        self.endpoint = bound_endpoint(self.socket)
        # Topic prefixes with at least one subscriber. XPUB passes on only
        # the first subscription and the last unsubscription of a prefix, so
        # a set is enough. Bounded by MAX_SUBSCRIPTIONS; a prefix beyond it
        # is not stored and counted in subscriptions_dropped, after which
        # has_subscriber() returns True for every topic rather than keep
        # commands pending for a subscriber it cannot see.
        self._prefixes: set[bytes] = set()
        self.subscriptions_dropped = 0
        log.info("enforcer commands publishing on %s", self.endpoint)

    def poll_subscriptions(self) -> None:
        """Read pending (un)subscription messages without blocking."""
        while True:
            try:
                message = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not message:
                continue
            prefix = message[1:]
            if message[0] == 1:
                if len(self._prefixes) >= MAX_SUBSCRIPTIONS and prefix not in self._prefixes:
                    self.subscriptions_dropped += 1
                    continue
                self._prefixes.add(prefix)
                log.info("an enforcer subscribed to %r on %s", prefix.decode("ascii", "replace"), self.endpoint)
            elif message[0] == 0:
                self._prefixes.discard(prefix)
                log.info("the last enforcer subscribed to %r on %s left", prefix.decode("ascii", "replace"),
                         self.endpoint)

    def has_subscriber(self, command: str) -> bool:
        """Return whether a connected subscriber would receive `command.<command>`."""
        self.poll_subscriptions()
        if self.subscriptions_dropped:
            return True
        topic = f"{COMMAND_TOPIC_PREFIX}{command}".encode("ascii")
        return any(topic.startswith(prefix) for prefix in self._prefixes)

    def send(self, command: str, body: dict) -> bool:
        """Publish one command; return whether a subscriber for its topic was connected.

        Without a subscriber ZeroMQ drops the message, as PUB does.
        """
        subscribed = self.has_subscriber(command)
        topic = f"{COMMAND_TOPIC_PREFIX}{command}".encode("ascii")
        self.socket.send_multipart([topic, msgpack.packb(body, use_bin_type=True)])
        return subscribed

    def close(self) -> None:
        self.socket.close()
        if self._own_context:
            self.context.term()

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
    """A bound PUB socket for enforcer commands; used from the responder's thread only."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None):
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 1_000)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as error:
            self.socket.close()
            raise OSError(f"cannot bind the command bus to {endpoint}: {error}; choose another endpoint") from None
        self.endpoint = bound_endpoint(self.socket)
        log.info("enforcer commands publishing on %s", self.endpoint)

    def send(self, command: str, body: dict) -> None:
        topic = f"{COMMAND_TOPIC_PREFIX}{command}".encode("ascii")
        self.socket.send_multipart([topic, msgpack.packb(body, use_bin_type=True)])

    def close(self) -> None:
        self.socket.close()
        if self._own_context:
            self.context.term()

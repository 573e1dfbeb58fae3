"""The responder's receive loop: alerts from the bus in, actions out; expiry and releases on every tick."""

from __future__ import annotations

import logging
import threading
import time

from engine.alerts.bus import GapFillingSubscriber
from engine.alerts.schema import TOPIC_PREFIX, unpack_alert
from engine.respond import positions
from engine.respond.responder import Responder

log = logging.getLogger(__name__)

# Maximum wait for a message before the expiry sweep runs again.
TICK_S = 0.5
# Undecodable bodies are logged once per this many occurrences.
LOG_EVERY_INVALID = 100


def run_responder(responder: Responder, subscriber: GapFillingSubscriber, stop: threading.Event | None = None,
                  idle_exit_s: float | None = None) -> None:
    """Handle alerts until `stop` is set or nothing arrives for `idle_exit_s` seconds.

    After each alert (handled or skipped as undecodable) its seq is stored
    as the position in its stream, so a restarted responder resumes after
    it. A crash before that write makes the restarted responder receive the
    alert again, and it skips every rule that has a stored action for it.
    NOTE: a crash between two actions of one rule therefore leaves that
    rule's later actions undone.
    """
    stop = stop or threading.Event()
    positions.ensure_schema(responder.conn)
    last_message = time.monotonic()
    log.info("responder started (%s), actor %s", "dry run" if responder.dry_run else "enforcing",
             responder.actor)
    while not stop.is_set():
        received = subscriber.receive(timeout_s=TICK_S)
        responder.expire_due()
        responder.send_pending_releases()
        if received is None:
            if idle_exit_s is not None and time.monotonic() - last_message >= idle_exit_s:
                log.info("no alert for %.1f s; stopping", idle_exit_s)
                break
            continue
        last_message = time.monotonic()
        if not received.topic.startswith(TOPIC_PREFIX):
            continue
        try:
            alert = unpack_alert(received.body)
        except (ValueError, TypeError, KeyError) as error:
            responder.counters["invalid_bodies"] += 1
            if responder.counters["invalid_bodies"] % LOG_EVERY_INVALID == 1:
                log.warning("skipped an undecodable alert body on %s (seq %s): %s; %d so far",
                            received.topic, received.seq, error, responder.counters["invalid_bodies"])
        else:
            responder.handle(alert)
        if received.seq is not None:
            positions.save_position(responder.conn, (received.sensor_id, received.stream_id), received.seq)
    log.info("responder stopped: %s", dict(responder.counters))

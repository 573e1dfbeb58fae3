"""AlertSink: the one way producers hand alerts to the store, the bus and the outputs.

Order of work for each submitted detection:
  validate -> suppression (on real addresses, so CIDR rules work)
  -> privacy (strip sensitive evidence, pseudonymise) -> aggregation
  -> for each publication: commit to SQLite (assigns seq) -> bus -> EVE -> CEF.
Persist before publish: a consumer can never see a seq that replay cannot
serve.

Used from one thread. The replay server runs in its own thread with its own
SQLite connection.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import sqlite3
import time
from typing import Any

import msgpack
import zmq

from engine.alerts.aggregate import Aggregator, Suppressor
from engine.alerts.bus import STOPPED_TOPIC, BusPublisher, ReplayServer, apply_curve_server
from engine.alerts.config import AlertConfig
from engine.alerts.outputs import EveWriter, SyslogSender
from engine.alerts.schema import (
    SENSITIVE_EVIDENCE_KEYS,
    SENSITIVE_EVIDENCE_PREFIX,
    STATS_TOPIC,
    Alert,
)
from engine.alerts.store import AlertStore, RunStats, write_run_stats
from engine.alerts.summary import AggregateFigures
from engine.privacy import Pseudonymizer
from engine.store import default_store_path

logger = logging.getLogger(__name__)


def strip_sensitive_evidence(evidence: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Return evidence without sensitive keys or bytes values (at any depth) and the number removed."""
    kept: dict[str, Any] = {}
    removed = 0
    for key, value in evidence.items():
        if key in SENSITIVE_EVIDENCE_KEYS or str(key).startswith(SENSITIVE_EVIDENCE_PREFIX):
            removed += 1
        elif isinstance(value, (bytes, bytearray, memoryview)):
            removed += 1
        elif isinstance(value, dict):
            kept[key], nested_removed = strip_sensitive_evidence(value)
            removed += nested_removed
        else:
            kept[key] = value
    return kept, removed


# Evidence keys whose string values are user names; they get text()
# pseudonyms. Addresses and MACs need no list, because every evidence string
# goes through the address scrub.
USER_EVIDENCE_KEYS = frozenset({
    "user", "users", "user_name", "user_names", "account", "account_name", "account_names",
    "target_user", "target_users", "principal", "client_principal",
})


def pseudonymize_alert(alert: Alert, pseudonymizer: Pseudonymizer) -> None:
    """Replace every address, MAC and user name in `alert` with its keyed pseudonym, in place.

    Covers the endpoints, the Community ID, evidence (values and map keys,
    at any depth), summary, recommended_action, aggregation_key, asset names
    and top-feature names. Text is scrubbed for IPv4, IPv6 and MAC forms,
    and the endpoints' user names are replaced where the text quotes them.
    """
    user_names = sorted(
        {endpoint.user for endpoint in (alert.src, alert.dst) if endpoint.user and len(endpoint.user) > 1},
        key=len, reverse=True,
    )

    def scrub(text: str | None) -> str | None:
        text = pseudonymizer.scrub_text(text)
        for name in user_names:
            if text and name in text:
                text = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", pseudonymizer.text(name, "user"), text)
        return text

    alert.summary = scrub(alert.summary) or ""
    alert.recommended_action = scrub(alert.recommended_action) or ""
    alert.aggregation_key = scrub(alert.aggregation_key)
    for endpoint in (alert.src, alert.dst):
        if endpoint.ip is not None:
            endpoint.ip = pseudonymizer.address_pseudonym(endpoint.ip) or pseudonymizer.ip(endpoint.ip)
        if endpoint.mac is not None:
            endpoint.mac = pseudonymizer.address_pseudonym(endpoint.mac) or pseudonymizer.mac(endpoint.mac)
        endpoint.user = pseudonymizer.text(endpoint.user, "user")
        endpoint.asset = scrub(endpoint.asset)
    # A Community ID is an unkeyed hash of the 5-tuple, so it would reveal
    # the addresses to anyone who hashes candidate tuples.
    alert.community_id = pseudonymizer.text(alert.community_id, "community_id")
    # Some producers derive a stable id from an unkeyed hash of addresses
    # (forecasts do), which would reveal them the same way.
    alert.id = pseudonymizer.hex_id(alert.id, "alert_id")
    for contribution in alert.top_features:
        contribution.name = scrub(contribution.name)
    alert.evidence = _pseudonymize_evidence(alert.evidence, pseudonymizer, scrub)


def _pseudonymize_evidence(value, pseudonymizer: Pseudonymizer, scrub, key=None):
    if key in USER_EVIDENCE_KEYS:
        return pseudonymizer.value(value, "user")
    if isinstance(value, str):
        whole = pseudonymizer.address_pseudonym(value.strip())
        return whole if whole is not None else scrub(value)
    if isinstance(value, (list, tuple)):
        return [_pseudonymize_evidence(item, pseudonymizer, scrub) for item in value]
    if isinstance(value, dict):
        return {
            (scrub(name) if isinstance(name, str) else name): _pseudonymize_evidence(item, pseudonymizer, scrub, name)
            for name, item in value.items()
        }
    return value


class AlertSink:
    """Aggregate, store, publish and export alerts; use as a context manager."""

    def __init__(self, store_path: str | os.PathLike | None = None, config: AlertConfig | None = None):
        self.config = config or AlertConfig()
        self.config.validate()
        self.store_path = os.fspath(store_path) if store_path is not None else default_store_path()
        if self.store_path == ":memory:" and self.config.replay_endpoint:
            # The replay thread opens its own connection, which would see a
            # second, empty in-memory database.
            raise ValueError("replay needs a store file; pass a store path or set replay_endpoint to None")
        self.counters: collections.Counter = collections.Counter()
        self.pseudonymizer = (
            Pseudonymizer.from_key_file(self.config.pseudonymize_key_file)
            if self.config.pseudonymize_key_file
            else None
        )
        self.suppressor = Suppressor(self.config.suppression)
        self.aggregator = Aggregator(self.config.aggregation, self.config.rate_limits)
        self.store: AlertStore | None = None
        self.context: zmq.Context | None = None
        self.publisher: BusPublisher | None = None
        self.replay: ReplayServer | None = None
        self._authenticator = None
        self.eve: EveWriter | None = None
        self.cef: SyslogSender | None = None
        self.bus_endpoint: str | None = None
        self.replay_endpoint: str | None = None

    def open(self) -> AlertSink:
        """Open the store, bind the sockets and open the outputs; raise on the first failure."""
        try:
            self._open()
        except BaseException:
            self.close(flush=False)
            raise
        return self

    def _open(self) -> None:
        config = self.config
        self.store = AlertStore(self.store_path)
        if config.bus_endpoint or config.replay_endpoint:
            self.context = zmq.Context()
            sockets = []
            if config.bus_endpoint:
                self.publisher = BusPublisher(self.context, config.bus_endpoint)
                sockets.append(self.publisher.socket)
            if config.replay_endpoint:
                self.replay = ReplayServer(self.context, config.replay_endpoint,
                                           self.store_path, config.sensor_id)
                sockets.append(self.replay.socket)
            if config.curve_server_secret:
                # Security options must be set before bind to take effect.
                self._authenticator = apply_curve_server(
                    self.context, sockets, config.curve_server_secret, config.curve_allow_dir
                )
            if self.publisher is not None:
                self.bus_endpoint = self.publisher.bind()
            if self.replay is not None:
                self.replay_endpoint = self.replay.bind()
                self.replay.start()
        if config.eve_path:
            self.eve = EveWriter(config.eve_path)
        if config.cef_target:
            self.cef = SyslogSender(config.cef_target, config.cef_format, config.cef_facility,
                                    hostname=config.sensor_id)

    def __enter__(self) -> AlertSink:
        return self.open()

    def __exit__(self, exc_type, exc, traceback):
        # On an exception the open aggregates are still closed and
        # published, so what was detected before the failure is not lost.
        self.close(flush=True)

    def submit(self, alert: Alert) -> list[Alert]:
        """Pass one detection through suppression, privacy and aggregation; return what was published."""
        alert.validate()
        self.counters["submitted"] += 1
        if self.suppressor.is_suppressed(alert):
            self.counters["suppressed"] += 1
            return []
        alert = self._apply_privacy(alert)
        return [self._publish_one(publication) for publication in self.aggregator.submit(alert)]

    def publish(self, alert: Alert) -> Alert:
        """Publish an alert as it is (no aggregation, no suppression); return it with its seq."""
        alert.validate()
        alert = self._apply_privacy(alert)
        figures = AggregateFigures()
        figures.fold(alert)
        sentence = figures.sentence(alert)
        if sentence is not None:
            alert.summary = sentence
        return self._publish_one(alert)

    def expire(self, now: float) -> list[Alert]:
        """Close aggregates that have been quiet for quiet_period_s at capture time `now`."""
        return [self._publish_one(publication) for publication in self.aggregator.expire(now)]

    def flush(self, now: float | None = None) -> list[Alert]:
        """Close every open aggregate (end of input); `now` first closes by capture time."""
        published = []
        if now is not None:
            published += self.expire(now)
        published += [self._publish_one(publication) for publication in self.aggregator.flush()]
        return published

    def publish_stats(self, stats: RunStats) -> None:
        """Write capture statistics to the runs table and send them on the `stats` topic."""
        write_run_stats(self.store.conn, stats)
        if self.publisher is not None:
            body = msgpack.packb(dict(vars(stats), type="stats"), use_bin_type=True)
            self.publisher.send(STATS_TOPIC, body)

    def _apply_privacy(self, alert: Alert) -> Alert:
        alert = alert.copy()
        if not self.config.include_evidence and alert.evidence:
            alert.evidence, removed = strip_sensitive_evidence(alert.evidence)
            self.counters["evidence_fields_removed"] += removed
        if self.pseudonymizer is not None:
            pseudonymize_alert(alert, self.pseudonymizer)
        return alert

    def _publish_one(self, alert: Alert) -> Alert:
        now = time.time()
        if not alert.created_at:
            alert.created_at = now
        alert.updated_at = now
        alert.sensor_id = self.config.sensor_id
        publication = self.store.append(alert)
        self.counters["published"] += 1
        if self.publisher is not None:
            self.publisher.send(publication.topic, publication.body)
        if self.eve is not None:
            self.eve.write(alert)
        if self.cef is not None:
            self.cef.send(alert)
        return alert

    def stats(self) -> dict[str, int]:
        """Return counters of the sink, the aggregator and the outputs, by name."""
        merged = collections.Counter(self.counters)
        for name, value in self.aggregator.counters.items():
            merged[f"aggregate_{name}"] += value
        merged["open_aggregates"] = len(self.aggregator)
        if self.cef is not None:
            for name, value in self.cef.counters.items():
                merged[f"cef_{name}"] += value
        return dict(merged)

    def close(self, flush: bool = True) -> None:
        """Publish the closing revisions (when `flush`), then close sockets, outputs and the store."""
        if flush and self.store is not None:
            try:
                self.flush()
            except (OSError, sqlite3.Error) as error:
                # A full or failing disk: the caller reports the error itself,
                # so one line here, not a traceback.
                logger.error("closing open aggregates failed: %s; %d stay unpublished", error, len(self.aggregator))
            except Exception:
                logger.exception("closing open aggregates failed; %d stay unpublished", len(self.aggregator))
        if self.replay is not None:
            self.replay.stop()
            self.replay = None
        if self.publisher is not None:
            if self.store is not None:
                # Sent after the replay socket closed: subscribers know that
                # what they missed is now only in the store.
                notice = {"type": "sensor_stopped", "sensor_id": self.config.sensor_id,
                          "stream_id": self.store.stream_id, "last_seq": self.store.last_seq()}
                self.publisher.send(STOPPED_TOPIC, msgpack.packb(notice, use_bin_type=True))
            self.publisher.close()
            self.publisher = None
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if self.context is not None:
            self.context.term()
            self.context = None
        if self.eve is not None:
            self.eve.close()
            self.eve = None
        if self.cef is not None:
            undelivered = self.cef.counters["dropped"]
            if undelivered:
                # Neither transport confirms delivery: UDP reports a closed
                # port only on some later send, and TCP hands a message to
                # the kernel even when the collector has closed without
                # reading. Messages counted as sent may be lost as well.
                hint = "listens there" if self.cef.transport == "udp" else "accepts connections and reads them"
                logger.warning(
                    "at least %d of %d CEF messages were not delivered to %s (%s confirms no delivery);"
                    " check that the syslog collector %s, and find the alerts in the store",
                    undelivered, undelivered + self.cef.counters["sent"], self.cef.target,
                    self.cef.transport.upper(), hint,
                )
            self.cef.close()
            self.cef = None
        if self.store is not None:
            self.store.close()
            self.store = None

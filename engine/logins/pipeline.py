"""From stored login records to published alerts: detection, learning, publication.

analyse() runs every rule on records just stored, with the stored records of
the preceding lookback window as history, then adds the new logons to the
baselines. publish_alerts() hands the alerts to the alert sink (store, bus,
outputs).

User names: unless the operator opts in with show_usernames, every name in
an alert's summary and evidence is a keyed pseudonym (HMAC-SHA256 through
engine.privacy.Pseudonymizer, domain "user"). Without a key file a random
key is made for the run, so names are hidden but pseudonyms differ between
runs. Names that are pseudonyms already, as `analyze` stores traffic
logins, are shown unchanged.
"""

from __future__ import annotations

import logging
import re
import secrets
import sqlite3
from dataclasses import dataclass

from engine.alerts.schema import Alert, attack_techniques
from engine.logins.baseline import learn_records, load_baselines, save_baselines
from engine.logins.detect import (
    AlertBuilder,
    DetectionConfig,
    detect_behaviour,
    detect_bruteforce,
    detect_success_after_failures,
)
from engine.logins.frame import LoginFrame
from engine.logins.records import LoginRecord
from engine.logins.storage import load_records
from engine.privacy import Pseudonymizer

log = logging.getLogger(__name__)


# The form of Pseudonymizer.text(): "p-" and 20 lowercase hex digits.
_PSEUDONYM = re.compile(r"p-[0-9a-f]{20}")


def is_pseudonym(name: str) -> bool:
    """Return True when `name` has the form of a keyed user pseudonym.

    A logged account that happens to have this form is shown as it is,
    which reveals nothing that a pseudonym would hide.
    """
    return _PSEUDONYM.fullmatch(name) is not None


@dataclass
class Privacy:
    """Pseudonymisation settings for user names in alerts."""

    pseudonymizer: Pseudonymizer
    show_usernames: bool = False
    key_file: str | None = None  # also passed to the alert sink, which then pseudonymises addresses

    @classmethod
    def create(cls, key_file: str | None, show_usernames: bool) -> Privacy:
        if key_file is not None:
            return cls(Pseudonymizer.from_key_file(key_file), show_usernames, key_file)
        if not show_usernames:
            log.warning(
                "no pseudonymization key file given; user names in alerts are hidden with a"
                " key made for this run only, so pseudonyms will differ between runs"
            )
        return cls(Pseudonymizer(secrets.token_bytes(32)), show_usernames, None)

    def display_user(self, name: str | None) -> str | None:
        # Names seen in traffic are stored already pseudonymised (see
        # engine.analyze.cli.InspectionStage), and hashing them again would
        # give one account two pseudonyms.
        if name is None or self.show_usernames or is_pseudonym(name):
            return name
        return self.pseudonymizer.text(name, "user")

    def builder(self, sensor_id: str = "") -> AlertBuilder:
        return AlertBuilder(self.display_user, sensor_id)


def analyse(conn: sqlite3.Connection, new_records: list[LoginRecord], config: DetectionConfig,
            builder: AlertBuilder, learn: bool = True) -> list[Alert]:
    """Run every rule on `new_records` (stored, with ids) and return the alerts."""
    if not new_records:
        return []
    new_records = sorted(new_records, key=lambda r: (r.ts, r.id))
    new_ids = {r.id for r in new_records}
    history = load_records(conn, new_records[0].ts - config.lookback_s, new_records[-1].ts)
    earlier = [r for r in history if r.id not in new_ids]
    frame = LoginFrame.from_records(earlier + new_records)
    frame.is_new[: len(earlier)] = False

    alerts = detect_bruteforce(frame, config, builder)
    alerts += detect_success_after_failures(frame, config, builder)
    users, sources = load_baselines(conn)
    alerts += detect_behaviour(new_records, earlier, users, config, builder)
    if learn:
        changed_users, changed_sources = learn_records(users, sources, new_records, config.site_utc_offset_s)
        save_baselines(
            conn,
            {name: users[name] for name in changed_users},
            {name: sources[name] for name in changed_sources},
        )
    alerts.sort(key=lambda a: a.first_seen)
    return alerts


def publish_alerts(store_path: str, alerts: list[Alert], privacy: Privacy, sensor_id: str = "logins",
                   bus_endpoint: str | None = None) -> list[Alert]:
    """Publish alerts through the alert sink (store, and bus when an endpoint is given); return them with seq."""
    from engine.alerts import AlertConfig, AlertSink

    config = AlertConfig(
        sensor_id=sensor_id,
        bus_endpoint=bus_endpoint,
        replay_endpoint=None,
        pseudonymize_key_file=privacy.key_file if not privacy.show_usernames else None,
    )
    published = []
    with AlertSink(store_path, config) as sink:
        for alert in alerts:
            _fit_technique(alert)
            if config.pseudonymize_key_file is None and not privacy.show_usernames:
                alert.dst.user = privacy.display_user(alert.dst.user)
            published.append(sink.publish(alert))
    return published


def _fit_technique(alert: Alert) -> None:
    # The sink accepts only ids in the shipped ATT&CK table. An id missing
    # there falls back to its parent technique, or to none, and the intended
    # id stays in the evidence.
    # NOTE: T1078.002, T1078.003 and T1213 are not in attack_techniques.tsv
    # yet, so privileged and EHR alerts carry T1078 or no technique until
    # those rows are added.
    known = attack_techniques()
    technique = alert.technique
    if technique is None or technique in known:
        return
    alert.evidence["attack_technique"] = technique
    parent = technique.split(".")[0]
    alert.technique = parent if parent in known else None
    if technique not in _reported_techniques:
        _reported_techniques.add(technique)
        log.warning("technique %s is not in the ATT&CK table; publishing with %s", technique, alert.technique)


_reported_techniques: set[str] = set()

"""One analysis pipeline for capture files and live capture.

Per batch, the pipeline decodes in place and updates the flow table, which
tags each packet with its flow. It then updates the window statistics, runs
the ARP rules and scores the flows that ended with the model (class
probabilities and anomaly score) and the threshold rules. Long flows are
scored before they end, from snapshots taken every `interim_interval_s` of
capture time. Everything before scoring runs in compiled kernels over the
whole batch, so Python handles only ended flows and detections.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field

import numpy as np

from engine.analyze.rules import FlowRules, RuleConfig, RuleHit
from engine.decode import anomaly_counts, decode_batch, new_anomaly_counters
from engine.features import WindowFeatures, flow_feature_matrix
from engine.features.window import DEFAULT_CAPACITY as WINDOW_DEFAULT_CAPACITY
from engine.flows import FlowTable
from engine.flows.layout import EXPIRATION_NAMES, FLOW_DTYPE
from engine.flows.records import address_text, mac_text
from engine.taxonomy import ATTACK_CLASSES, BENIGN

logger = logging.getLogger(__name__)


@dataclass
class AnalyzeOptions:
    idle_timeout_s: float = 120.0
    active_timeout_s: float = 1800.0
    flow_capacity: int = 1 << 20
    # Keys per window-statistics table. Larger tables cost more than their
    # memory: each new key touches fresh zeroed pages spread over the table,
    # which made the first pass over a capture 5x slower at 2^18 than at 2^16.
    window_capacity: int = WINDOW_DEFAULT_CAPACITY
    # Live flows older than this are scored every interim_interval_s of
    # capture time, so a long exfiltration is reported while it runs.
    interim_interval_s: float = 60.0
    # An interim snapshot can hold tens of thousands of live flows, and
    # scoring them all in one batch stalled a live worker for seconds while
    # its capture ring filled. So each batch computes features and model
    # scores for at most this many snapshot flows, and the verdicts on the
    # whole snapshot follow in the batch that scores its last flows.
    interim_flows_per_batch: int = 4096
    # Anomaly detections need the model's anomaly score above its threshold
    # and, as a guard against noise, at least this many packets in the flow.
    anomaly_min_packets: int = 3
    # A flood is many flows at one target in a short time. The model's flood
    # verdict is kept only when the batch has at least flood_min_flows flagged
    # flows at that destination, at flood_min_flows_per_s or faster, because
    # one web request or a slow IPsec keep-alive can look like a flood flow.
    flood_min_flows: int = 20
    flood_min_flows_per_s: float = 5.0
    # Likewise a model port scan verdict needs this many distinct ports of
    # one target from one source in the batch, and a host sweep this many
    # distinct targets of one source: one flow is no scan.
    scan_min_ports: int = 5
    sweep_min_hosts: int = 5
    # A model DNS-tunnel verdict needs this many queries from one client to
    # one resolver among the batch's flagged flows: one odd lookup is not a
    # tunnel.
    tunnel_min_queries: int = 10
    # A model C2-beacon verdict needs this many flagged connections from one
    # source to one destination, started at regular intervals: the
    # coefficient of variation (standard deviation / mean) of the gaps
    # between their start times at most beacon_max_interval_cv. Beacons with
    # +-50% uniform jitter have a CV near 0.29, while connections opened in
    # bursts, as a browser opens them, give a CV well above 0.5.
    beacon_min_connections: int = 4
    beacon_max_interval_cv: float = 0.5
    rules: RuleConfig = field(default_factory=RuleConfig)


@dataclass
class Detection:
    """One thing worth an alert, before aggregation: a scored flow or a rule hit."""

    category: str
    technique: str | None
    attack_class: str | None  # taxonomy key; None for an anomaly without a class
    origin: str  # "model", "anomaly" or "rule:<name>"
    src_ip: str | None
    dst_ip: str | None
    src_port: int | None
    dst_port: int | None
    protocol: str | None
    src_mac: str | None
    dst_mac: str | None
    first_seen: float
    last_seen: float
    flow_ids: list[int]
    community_id: str | None
    summary: str
    model_score: float | None = None
    anomaly_score: float | None = None
    top_features: list[tuple[str, float, float]] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    count: int = 1  # flows or events this detection stands for


_PROTOCOL_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}

# Flow ids kept per detection; the count gives the total.
MAX_FLOW_IDS = 32

# Responder ports where each service-bound attack class can happen. The
# model learns simulated traffic, where (for example) DICOM theft always
# runs over DICOM; on other networks a large HTTP download can look like it.
# A class listed here is reported only for flows to one of its ports;
# classes not listed (floods, scans, beacons) may use any port.
# NOTE: services on non-standard ports (HL7 on 6661, DICOM on 4242) are
# only covered where listed; protocol detection by the inspector would
# cover the rest.
CLASS_SERVICE_PORTS = {
    "ssh_bruteforce": (22,),
    "rdp_bruteforce": (3389,),
    "ftp_bruteforce": (21,),
    "password_spray": (88, 389, 445, 636, 3268),
    "smb_lateral": (139, 445),
    "ransomware": (139, 445),
    "dicom_exfil": (104, 4242, 11112),
    "hl7_unauthorized": (2575, 6661),
    "mqtt_wildcard": (1883, 8883),
    "mqtt_flood": (1883, 8883),
    "dns_tunnel": (53,),
}

# Responder ports where an attack class is never reported. Industrial
# polling protocols (ISO-TSAP/S7comm 102, Modbus/TCP 502, IEC 60870-5-104
# 2404, OPC UA 4840, DNP3 20000, EtherNet/IP 44818, BACnet/IP 47808) query
# their devices at a fixed interval, which the beacon class cannot tell
# from a C2 check-in.
CLASS_EXCLUDED_PORTS = {
    "c2_beacon": (102, 502, 2404, 4840, 20000, 44818, 47808),
}

# Network floods: a model verdict of one of these needs volume at the
# target too (AnalyzeOptions.flood_min_flows, flood_min_flows_per_s).
FLOOD_CLASSES = ("syn_flood", "udp_flood")

# Beacon tracking across batches, per (source, destination) address pair:
# the start times of the last MAX_BEACON_STARTS flagged connections. At
# most MAX_BEACON_KEYS pairs are kept; the least recently updated pair is
# evicted first (counter beacon_pairs_evicted), and its held connections
# are then never reported.
MAX_BEACON_KEYS = 65_536
MAX_BEACON_STARTS = 16


@dataclass
class _BeaconTrack:
    """Flagged connections of one source to one destination, held until they look periodic."""

    starts_ns: collections.deque = field(default_factory=lambda: collections.deque(maxlen=MAX_BEACON_STARTS))
    # Held connections not yet in a detection; added to the first one.
    held_flow_ids: list[int] = field(default_factory=list)
    held_count: int = 0
    held_first_seen_ns: int | None = None
    corroborated: bool = False


def interval_cv(starts_ns) -> float:
    """Return the coefficient of variation of the gaps between sorted start times (inf below 2 gaps)."""
    starts = np.sort(np.asarray(starts_ns, dtype=np.float64))
    gaps = np.diff(starts)
    if gaps.size < 2 or gaps.mean() <= 0:
        return np.inf
    return float(gaps.std() / gaps.mean())


_EVICTED = EXPIRATION_NAMES.index("evicted")


def _distinct_per_group(group_keys: np.ndarray, item_keys: np.ndarray) -> np.ndarray:
    """Return, per row, how many distinct item keys share the row's group key (uint8 key rows)."""
    width = group_keys.shape[1]
    distinct_pairs = np.unique(np.concatenate([group_keys, item_keys], axis=1), axis=0)
    # Both np.unique calls sort the same group keys, so the counts line up with row_group.
    _, items_per_group = np.unique(distinct_pairs[:, :width], axis=0, return_counts=True)
    _, row_group = np.unique(group_keys, axis=0, return_inverse=True)
    return items_per_group[row_group.ravel()]


@dataclass
class _PendingInterim:
    """An interim snapshot whose flows are being scored over several batches."""

    flows: np.ndarray
    scored_count: int = 0
    features: list = field(default_factory=list)
    probabilities: list = field(default_factory=list)
    anomaly_scores: list = field(default_factory=list)
    # Ids of flows that ended while the snapshot was pending. Their final
    # records are scored as they end, so their snapshot rows are dropped.
    # The list grows for ceil(flows / interim_flows_per_batch) batches at most.
    ended_flow_ids: list = field(default_factory=list)


class Pipeline:
    """Decode, track flows, compute features and detect, one batch at a time."""

    def __init__(self, model, options: AnalyzeOptions | None = None, inspector=None, keep_empty_flows: bool = False):
        self.options = options or AnalyzeOptions()
        if not self.options.interim_flows_per_batch >= 1:
            raise ValueError(
                f"invalid interim_flows_per_batch {self.options.interim_flows_per_batch!r}; expected an integer >= 1"
            )
        self.model = model
        # Protocol inspector (engine.inspect.Inspector) or None; its per-flow
        # results wait in _inspections until the caller drains them.
        self.inspector = inspector
        self._inspections: list = []
        # With keep_empty_flows, the ended TCP flows that carried no payload
        # wait here until drain_empty_flows(), because the inspector returns
        # no result for them. The caller drains after every batch, so this
        # contains at most the flows one batch ended.
        self.keep_empty_flows = keep_empty_flows
        self._empty_flows: list[np.ndarray] = []
        self.flow_table = FlowTable(
            capacity=self.options.flow_capacity,
            idle_timeout_s=self.options.idle_timeout_s,
            active_timeout_s=self.options.active_timeout_s,
        )
        self.windows = WindowFeatures(capacity=self.options.window_capacity)
        self.rules = FlowRules(self.options.rules)
        self.anomaly_counters = new_anomaly_counters()
        self.counters = collections.Counter()
        self.first_packet_ns: int | None = None
        self.last_packet_ns: int | None = None
        self._next_interim_ns: int | None = None
        self._pending_interim: _PendingInterim | None = None
        # Flow ids already reported from an interim snapshot, so the same
        # live flow is not reported again at every snapshot.
        self._interim_reported: collections.OrderedDict = collections.OrderedDict()
        # Flow ids counted by the last _model_detections call, for _interim.
        self._last_reported_flow_ids = np.empty(0, dtype=np.uint64)
        # (source address, destination address) -> _BeaconTrack, bounded by MAX_BEACON_KEYS.
        self._beacon_tracks: collections.OrderedDict = collections.OrderedDict()
        self.set_model(model)

    def set_model(self, model) -> None:
        """Score with `model` from the next batch on (None: rules only); flows and windows stay.

        A pending interim snapshot is dropped, because its scores came from
        the previous model. Its flows are in the next snapshot again.
        """
        self.model = model
        self._pending_interim = None
        self._class_names = list(model.class_names) if model is not None else []
        self._class_ports = {
            self._class_names.index(name): np.array(ports, dtype=np.uint16)
            for name, ports in CLASS_SERVICE_PORTS.items()
            if name in self._class_names
        }
        self._class_excluded_ports = {
            self._class_names.index(name): np.array(ports, dtype=np.uint16)
            for name, ports in CLASS_EXCLUDED_PORTS.items()
            if name in self._class_names
        }
        self._flood_classes = [self._class_names.index(name) for name in FLOOD_CLASSES if name in self._class_names]
        self._beacon_class = self._class_names.index("c2_beacon") if "c2_beacon" in self._class_names else -1
        self._port_scan_class = self._class_names.index("port_scan") if "port_scan" in self._class_names else -1
        self._host_sweep_class = self._class_names.index("host_sweep") if "host_sweep" in self._class_names else -1
        self._dns_tunnel_class = self._class_names.index("dns_tunnel") if "dns_tunnel" in self._class_names else -1
        # Per-class probability thresholds in class order; a class without
        # one (benign) never flags.
        self._class_thresholds = np.array(
            [model.thresholds.get(name, np.inf) for name in self._class_names] if model is not None else [],
            dtype=np.float64,
        )

    def process(self, packets: np.ndarray, data: np.ndarray) -> list[Detection]:
        """Run one batch through every stage; return its detections."""
        if packets.size == 0:
            return []
        decode_batch(packets, data, self.anomaly_counters)
        ended = self.flow_table.update(packets, data)
        self.windows.update(packets, data)
        if self.inspector is not None:
            self._inspections += self.inspector.process(packets, data)
            if ended.size:
                self._inspections += self.inspector.end_flows(ended["flow_id"])
        self._keep_empty(ended)
        self.counters["packets"] += int(packets.size)
        self.counters["bytes"] += int(packets["wirelen"].sum(dtype=np.uint64))
        timestamps = packets["ts_ns"]
        batch_last = int(timestamps.max())
        if self.first_packet_ns is None:
            self.first_packet_ns = int(timestamps.min())
        self.last_packet_ns = batch_last if self.last_packet_ns is None else max(self.last_packet_ns, batch_last)

        detections = [self._from_rule(hit) for hit in self.rules.on_packets(packets)]
        detections += self.score_flows(ended)
        detections += self._interim(batch_last)
        return detections

    def finish(self) -> list[Detection]:
        """Finish a pending interim snapshot, then flush live flows at end of input and score them."""
        detections = []
        while self._pending_interim is not None:
            detections += self._continue_interim()
        flushed = self.flow_table.flush()
        if self.inspector is not None:
            if flushed.size:
                self._inspections += self.inspector.end_flows(flushed["flow_id"])
            self._inspections += self.inspector.flush()
        self._keep_empty(flushed)
        return detections + self.score_flows(flushed)

    def drain_inspections(self) -> list:
        """Return the protocol inspection results gathered since the last call."""
        results, self._inspections = self._inspections, []
        return results

    def drain_empty_flows(self) -> np.ndarray:
        """Return the ended TCP flows without payload kept since the last call (keep_empty_flows only)."""
        if not self._empty_flows:
            return np.empty(0, dtype=FLOW_DTYPE)
        flows = np.concatenate(self._empty_flows) if len(self._empty_flows) > 1 else self._empty_flows[0]
        self._empty_flows = []
        return flows

    def _keep_empty(self, ended: np.ndarray) -> None:
        if not self.keep_empty_flows or not ended.size:
            return
        empty = ended[(ended["ip_proto"] == 6) & (ended["bidirectional_payload_bytes"] == 0)]
        if empty.size:
            self._empty_flows.append(empty)

    def score_flows(self, flows: np.ndarray, interim: bool = False) -> list[Detection]:
        """Score ended flows (or snapshots of live ones) with the model and the rules."""
        if flows.size == 0:
            return []
        if not interim:
            self.counters["flows"] += int(flows.size)
            if self._pending_interim is not None:
                self._pending_interim.ended_flow_ids.append(flows["flow_id"].copy())
        detections = []
        if not interim:
            detections += [self._from_rule(hit) for hit in self.rules.on_flows(flows)]
        if self.model is not None:
            if not interim:
                flows = self._drop_reported_at_interim(flows)
            detections += self._model_detections(flows)
        return detections

    def _drop_reported_at_interim(self, flows: np.ndarray) -> np.ndarray:
        """Return the ended flows that no interim detection has already counted.

        A flow reported while live keeps that detection: scoring it again at
        its end counted it twice in the alert (a SYN flood read as twice its
        flows). Its final record is not scored again.
        """
        if not self._interim_reported:
            return flows
        reported = np.fromiter(self._interim_reported, dtype=np.uint64, count=len(self._interim_reported))
        seen = np.isin(flows["flow_id"], reported)
        if not seen.any():
            return flows
        for flow_id in flows["flow_id"][seen].tolist():
            self._interim_reported.pop(flow_id, None)
        self.counters["flows_reported_at_interim"] += int(seen.sum())
        return flows[~seen]

    def _interim(self, now_ns: int) -> list[Detection]:
        if self._pending_interim is not None:
            return self._continue_interim()
        interval_ns = int(self.options.interim_interval_s * 1e9)
        if interval_ns <= 0:
            return []
        if self._next_interim_ns is None:
            self._next_interim_ns = now_ns + interval_ns
            return []
        if now_ns < self._next_interim_ns:
            return []
        self._next_interim_ns = now_ns + interval_ns
        if self.model is None:
            return []
        live = self.flow_table.active_snapshot(self.options.interim_interval_s)
        if live.size == 0:
            return []
        if self._interim_reported:
            reported = np.fromiter(self._interim_reported, dtype=np.uint64, count=len(self._interim_reported))
            live = live[~np.isin(live["flow_id"], reported)]
        self._pending_interim = _PendingInterim(live)
        self.counters["interim_snapshots"] += 1
        return self._continue_interim()

    def _continue_interim(self) -> list[Detection]:
        """Score the next interim_flows_per_batch flows of the pending snapshot.

        Returns the snapshot's detections once its last flows are scored,
        and an empty list before that.
        """
        pending = self._pending_interim
        start = pending.scored_count
        stop = min(start + self.options.interim_flows_per_batch, pending.flows.size)
        if stop > start:
            chunk = pending.flows[start:stop]
            # NOTE: window features are read when a flow's chunk is scored,
            # up to a few batches after the snapshot was taken.
            features = flow_feature_matrix(chunk, self.windows)
            pending.features.append(features)
            pending.probabilities.append(self.model.predict_proba(features))
            pending.anomaly_scores.append(self.model.anomaly_score(features))
            pending.scored_count = stop
        if stop < pending.flows.size:
            self.counters["interim_batches_deferred"] += 1
            return []

        self._pending_interim = None
        flows = pending.flows
        if flows.size == 0:
            return []
        features = np.concatenate(pending.features)
        probabilities = np.concatenate(pending.probabilities)
        anomaly = np.concatenate(pending.anomaly_scores)
        if pending.ended_flow_ids:
            live = ~np.isin(flows["flow_id"], np.concatenate(pending.ended_flow_ids))
            self.counters["interim_flows_ended_while_pending"] += int(flows.size - live.sum())
            flows, features = flows[live], features[live]
            probabilities, anomaly = probabilities[live], anomaly[live]
        self._last_reported_flow_ids = np.empty(0, dtype=np.uint64)
        detections = self._detections_from_scores(flows, features, probabilities, anomaly) if flows.size else []
        # Every flow a detection counts, not only the MAX_FLOW_IDS it lists.
        for flow_id in self._last_reported_flow_ids.tolist():
            self._interim_reported[flow_id] = True
        while len(self._interim_reported) > 65_536:
            self._interim_reported.popitem(last=False)
        self.counters["interim_flows_scored"] += int(flows.size)
        return detections

    def _model_detections(self, flows: np.ndarray) -> list[Detection]:
        X = flow_feature_matrix(flows, self.windows)
        return self._detections_from_scores(flows, X, self.model.predict_proba(X), self.model.anomaly_score(X))

    def _detections_from_scores(self, flows: np.ndarray, X: np.ndarray, proba: np.ndarray,
                                anomaly: np.ndarray) -> list[Detection]:
        """Turn the model scores of `flows` into detections: thresholds, corroboration, grouping."""
        best = np.argmax(proba, axis=1)
        flagged = proba[np.arange(best.size), best] >= self._class_thresholds[best]

        # NOTE: the shipped threshold keeps simulated benign traffic, day and
        # night, within 1%, but real traffic differs: 59 of 140 flows of a
        # real 15 s web-browsing capture pass it, mostly on packet-size
        # covariance features far outside the simulator's range.
        anomalous = (anomaly >= self.model.anomaly_threshold) & (
            flows["bidirectional_packets"] >= self.options.anomaly_min_packets
        )
        benign_index = self._class_names.index(BENIGN) if BENIGN in self._class_names else -1
        flagged &= best != benign_index
        flagged &= self._service_port_allowed(best, flows["dst_port"])
        flagged &= self._flood_corroborated(best, flagged, flows)
        flagged &= self._scan_corroborated(best, flagged, flows)
        flagged &= self._tunnel_corroborated(best, flagged, flows)
        beacon_allowed = self._beacon_corroborated(best, flagged, flows)
        # Held beacon connections are reported with their pair's detection
        # once corroborated, so they are not reported as anomalies meanwhile.
        anomalous &= beacon_allowed
        flagged &= beacon_allowed
        anomalous &= ~flagged
        # A flow pushed out of a full flow table is a fragment: its packets
        # before and after the eviction land in separate records, whose
        # features describe neither connection. Verdicts on it are dropped
        # and counted; the table's own counters already warn of the overload.
        evicted = flows["expiration_id"] == _EVICTED
        if evicted.any():
            self.counters["evicted_flows_not_reported"] += int((evicted & (flagged | anomalous)).sum())
            flagged &= ~evicted
            anomalous &= ~evicted

        rows = np.flatnonzero(flagged | anomalous)
        self._last_reported_flow_ids = flows["flow_id"][rows]
        if rows.size == 0:
            return []
        self.counters["model_detections"] += int(flagged.sum())
        self.counters["anomaly_detections"] += int(anomalous.sum())
        # One detection per (class, source, destination) in this batch, not
        # per flow: a flood or a scan flags thousands of flows, and Python
        # work per flow would cost more than the whole compiled pipeline.
        group_class = np.where(flagged[rows], best[rows], -1).astype(np.int16)
        keys = np.concatenate(
            [group_class.view(np.uint8).reshape(-1, 2), flows["src_addr"][rows], flows["dst_addr"][rows]], axis=1
        )
        _, group_of_row = np.unique(keys, axis=0, return_inverse=True)
        group_of_row = group_of_row.ravel()
        # Sorted once and split, so a batch with many groups costs
        # O(rows log rows) rather than a pass over all rows per group.
        order = np.argsort(group_of_row, kind="stable")
        bounds = np.flatnonzero(np.diff(group_of_row[order])) + 1
        groups = [rows[members] for members in np.split(order, bounds)]
        return self._group_detections(flows, X, groups, flagged, best, proba, anomaly)

    def _group_detection(self, flows, X, members, flagged, best, proba, anomaly) -> Detection:
        """Build one detection for flagged or anomalous flows of one class, source and destination."""
        return self._group_detections(flows, X, [members], flagged, best, proba, anomaly)[0]

    def _group_detections(self, flows, X, groups, flagged, best, proba, anomaly) -> list[Detection]:
        """Build one detection per group of flagged or anomalous flows (one class, source, destination).

        Each detection describes its group's most confident flow. The
        columns of those flows are read once for all groups: a flood of
        many sources makes thousands of groups, and reading fields row by
        row cost about 60 us per group.
        """
        firsts = np.array([members[0] for members in groups])
        is_model = flagged[firsts]
        classes = best[firsts]
        reps = np.array([
            members[np.argmax(proba[members, classes[i]] if is_model[i] else anomaly[members])]
            for i, members in enumerate(groups)
        ])
        tops: list = [None] * len(groups)
        for class_index in np.unique(classes[is_model]).tolist():
            where = np.flatnonzero(is_model & (classes == class_index))
            for i, top in zip(where.tolist(), self.model.top_features(X[reps[where]], class_index)):
                tops[i] = top
        where = np.flatnonzero(~is_model)
        for i, top in zip(where.tolist(), self._anomaly_features_rows(X[reps[where]])):
            tops[i] = top

        rep_flows = flows[reps]
        columns = {name: rep_flows[name].tolist() for name in (
            "ip_version", "ip_proto", "src_port", "dst_port", "flow_id", "bidirectional_packets",
            "bidirectional_bytes", "bidirectional_duration_ms", "src2dst_bytes", "dst2src_bytes",
        )}
        histories = rep_flows["history"].tolist()
        community_ids = rep_flows["community_id"].tolist()
        scores = proba[reps, classes].tolist()
        anomaly_scores = anomaly[reps].tolist()
        src_addresses = rep_flows["src_addr"].tobytes()
        dst_addresses = rep_flows["dst_addr"].tobytes()
        src_macs = rep_flows["src_mac"].tobytes()
        dst_macs = rep_flows["dst_mac"].tobytes()
        # Per-group time range and flow ids, over all members at once.
        members_all = np.concatenate(groups)
        sizes = [int(members.size) for members in groups]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        first_seen = (np.minimum.reduceat(flows["bidirectional_first_seen_ns"][members_all], starts) / 1e9).tolist()
        last_seen = (np.maximum.reduceat(flows["bidirectional_last_seen_ns"][members_all], starts) / 1e9).tolist()
        flow_ids = flows["flow_id"][members_all].tolist()

        detections = []
        for i, members in enumerate(groups):
            version = columns["ip_version"][i]
            src = address_text(src_addresses[16 * i:16 * i + 16], version)
            dst = address_text(dst_addresses[16 * i:16 * i + 16], version)
            proto = columns["ip_proto"][i]
            protocol = _PROTOCOL_NAMES.get(proto, str(proto))
            has_ports = proto in (6, 17)
            if is_model[i]:
                attack_class = self._class_names[classes[i]]
                info = ATTACK_CLASSES.get(attack_class)
                category = info.category if info else attack_class
                technique = info.technique if info else None
                origin, score = "model", scores[i]
                summary = f"the model classed this flow as {attack_class.replace('_', ' ')} ({score:.0%})"
            else:
                attack_class, category, technique, origin, score = None, "anomaly", None, "anomaly", None
                summary = "the flow is unlike the benign traffic the anomaly model learnt"
            port_text = f":{columns['dst_port'][i]}" if has_ports else ""
            detection = Detection(
                category=category,
                technique=technique,
                attack_class=attack_class,
                origin=origin,
                src_ip=src,
                dst_ip=dst,
                src_port=columns["src_port"][i] if has_ports else None,
                dst_port=columns["dst_port"][i] if has_ports else None,
                protocol=protocol,
                src_mac=mac_text(src_macs[6 * i:6 * i + 6]),
                dst_mac=mac_text(dst_macs[6 * i:6 * i + 6]),
                first_seen=first_seen[i],
                last_seen=last_seen[i],
                flow_ids=flow_ids[starts[i]:starts[i] + min(sizes[i], MAX_FLOW_IDS)],
                community_id=community_ids[i].decode("ascii") or None,
                summary=f"{src} -> {dst}{port_text}/{protocol}: {summary}",
                model_score=score,
                anomaly_score=anomaly_scores[i],
                top_features=tops[i],
                evidence={
                    "packets": columns["bidirectional_packets"][i],
                    "bytes": columns["bidirectional_bytes"][i],
                    "duration_ms": round(columns["bidirectional_duration_ms"][i], 3),
                    "src2dst_bytes": columns["src2dst_bytes"][i],
                    "dst2src_bytes": columns["dst2src_bytes"][i],
                    "history": histories[i].decode("ascii"),
                },
                count=sizes[i],
            )
            if sizes[i] > 1:
                detection.summary += f"; {sizes[i]} such flows in this batch"
            if is_model[i] and classes[i] == self._beacon_class:
                self._add_held_beacons(detection, rep_flows[i])
            detections.append(detection)
        return detections

    def _add_held_beacons(self, detection: Detection, flow) -> None:
        """Add the connections held before the pair's beacon verdict was corroborated to its detection."""
        track = self._beacon_tracks.get((flow["src_addr"].tobytes(), flow["dst_addr"].tobytes()))
        if track is None or track.held_count == 0:
            return
        detection.count += track.held_count
        detection.flow_ids = (track.held_flow_ids + detection.flow_ids)[:MAX_FLOW_IDS]
        detection.first_seen = min(detection.first_seen, track.held_first_seen_ns / 1e9)
        detection.summary += f"; {detection.count} connections at regular intervals"
        track.held_flow_ids, track.held_count, track.held_first_seen_ns = [], 0, None

    def _service_port_allowed(self, best: np.ndarray, dst_ports: np.ndarray) -> np.ndarray:
        """Return True per row unless the row's class is bound to other service ports or excluded from this one."""
        allowed = np.ones(best.size, dtype=bool)
        for class_index, ports in self._class_ports.items():
            rows = best == class_index
            if rows.any():
                allowed[rows] = np.isin(dst_ports[rows], ports)
        for class_index, ports in self._class_excluded_ports.items():
            rows = best == class_index
            if rows.any():
                allowed[rows] &= ~np.isin(dst_ports[rows], ports)
        return allowed

    def _flood_corroborated(self, best: np.ndarray, flagged: np.ndarray, flows: np.ndarray) -> np.ndarray:
        """Return False for flood-class rows whose destination got too few flagged flows, or too slowly."""
        allowed = np.ones(best.size, dtype=bool)
        for class_index in self._flood_classes:
            rows = np.flatnonzero(flagged & (best == class_index))
            if rows.size == 0:
                continue
            # Grouped by destination only: a spoofed flood uses a new source per flow.
            _, target, flow_counts = np.unique(
                flows["dst_addr"][rows], axis=0, return_inverse=True, return_counts=True
            )
            target = target.ravel()
            first_ns = np.full(flow_counts.size, np.iinfo(np.int64).max, dtype=np.int64)
            last_ns = np.zeros(flow_counts.size, dtype=np.int64)
            np.minimum.at(first_ns, target, flows["bidirectional_first_seen_ns"][rows].astype(np.int64))
            np.maximum.at(last_ns, target, flows["bidirectional_last_seen_ns"][rows].astype(np.int64))
            # At least one second, so a burst inside one second is rated by its count.
            span_s = np.maximum((last_ns - first_ns) / 1e9, 1.0)
            corroborated = (flow_counts >= self.options.flood_min_flows) & (
                flow_counts / span_s >= self.options.flood_min_flows_per_s
            )
            allowed[rows] = corroborated[target]
        self.counters["flood_flows_uncorroborated"] += int((~allowed).sum())
        return allowed

    def _tunnel_corroborated(self, best: np.ndarray, flagged: np.ndarray, flows: np.ndarray) -> np.ndarray:
        """Return False for DNS-tunnel rows whose client sent too few queries to that resolver."""
        allowed = np.ones(best.size, dtype=bool)
        if self._dns_tunnel_class < 0:
            return allowed
        rows = np.flatnonzero(flagged & (best == self._dns_tunnel_class))
        if rows.size == 0:
            return allowed
        pairs = np.concatenate([flows["src_addr"][rows], flows["dst_addr"][rows]], axis=1)
        _, pair = np.unique(pairs, axis=0, return_inverse=True)
        pair = pair.ravel()
        queries = np.zeros(int(pair.max()) + 1, dtype=np.int64)
        np.add.at(queries, pair, flows["src2dst_packets"][rows].astype(np.int64))
        allowed[rows] = queries[pair] >= self.options.tunnel_min_queries
        self.counters["tunnel_flows_uncorroborated"] += int((~allowed).sum())
        return allowed

    def _beacon_corroborated(self, best: np.ndarray, flagged: np.ndarray, flows: np.ndarray) -> np.ndarray:
        """Return False for C2-beacon rows until their source and destination have periodic connections.

        Connections held back here are added to the pair's first reported
        detection. After that, each new flagged connection of the pair is
        reported as it ends.
        """
        allowed = np.ones(best.size, dtype=bool)
        if self._beacon_class < 0:
            return allowed
        candidates = flagged & (best == self._beacon_class)
        # A TCP flow without its originator's SYN began before the capture
        # or is the remainder of a flow evicted from a full table. It is not
        # a connection start, so it cannot show a beacon's period: an MQTT
        # session cut into fragments looked like regular connections.
        midstream = candidates & (flows["ip_proto"] == 6) & (np.char.find(flows["history"], b"S") < 0)
        if midstream.any():
            allowed[midstream] = False
            self.counters["beacon_flows_midstream"] += int(midstream.sum())
            candidates &= ~midstream
        rows = np.flatnonzero(candidates)
        if rows.size == 0:
            return allowed
        pairs = np.concatenate([flows["src_addr"][rows], flows["dst_addr"][rows]], axis=1)
        _, pair_of_row = np.unique(pairs, axis=0, return_inverse=True)
        pair_of_row = pair_of_row.ravel()
        for pair in range(int(pair_of_row.max()) + 1):
            members = rows[pair_of_row == pair]
            track = self._beacon_track(flows["src_addr"][members[0]].tobytes(), flows["dst_addr"][members[0]].tobytes())
            track.starts_ns.extend(int(t) for t in np.sort(flows["bidirectional_first_seen_ns"][members]))
            if not track.corroborated:
                track.corroborated = (
                    len(track.starts_ns) >= self.options.beacon_min_connections
                    and interval_cv(track.starts_ns) <= self.options.beacon_max_interval_cv
                )
            if track.corroborated:
                continue
            allowed[members] = False
            track.held_count += int(members.size)
            room = MAX_FLOW_IDS - len(track.held_flow_ids)
            track.held_flow_ids += [int(i) for i in flows["flow_id"][members[:max(room, 0)]]]
            first_ns = int(flows["bidirectional_first_seen_ns"][members].min())
            track.held_first_seen_ns = first_ns if track.held_first_seen_ns is None else min(track.held_first_seen_ns, first_ns)
        self.counters["beacon_flows_held"] += int((~allowed).sum())
        return allowed

    def _beacon_track(self, src: bytes, dst: bytes) -> _BeaconTrack:
        key = (src, dst)
        track = self._beacon_tracks.get(key)
        if track is None:
            track = self._beacon_tracks[key] = _BeaconTrack()
            if len(self._beacon_tracks) > MAX_BEACON_KEYS:
                self._beacon_tracks.popitem(last=False)
                self.counters["beacon_pairs_evicted"] += 1
        else:
            self._beacon_tracks.move_to_end(key)
        return track

    def _scan_corroborated(self, best: np.ndarray, flagged: np.ndarray, flows: np.ndarray) -> np.ndarray:
        """Return False for port scan and host sweep rows whose source reached too few ports or hosts.

        A TCP flow whose initiator's first event is a reset is the reply to
        a connection attempt the capture missed. Its "initiator" is then the
        server and its destination ports are the client's ephemeral ports,
        so such flows never count towards a scan or sweep.
        """
        allowed = np.ones(best.size, dtype=bool)
        reply_first = (flows["ip_proto"] == 6) & np.char.startswith(flows["history"], b"R")
        scans = flagged & ((best == self._port_scan_class) | (best == self._host_sweep_class))
        allowed[scans & reply_first] = False
        self.counters["scan_flows_reply_first"] += int((scans & reply_first).sum())
        flagged = flagged & ~reply_first
        scan_rows = np.flatnonzero(flagged & (best == self._port_scan_class))
        if scan_rows.size:
            pair = np.concatenate([flows["src_addr"][scan_rows], flows["dst_addr"][scan_rows]], axis=1)
            ports = flows["dst_port"][scan_rows].astype(">u2").view(np.uint8).reshape(-1, 2)
            allowed[scan_rows] = _distinct_per_group(pair, ports) >= self.options.scan_min_ports
        sweep_rows = np.flatnonzero(flagged & (best == self._host_sweep_class))
        if sweep_rows.size:
            targets = flows["dst_addr"][sweep_rows]
            allowed[sweep_rows] = _distinct_per_group(flows["src_addr"][sweep_rows], targets) >= self.options.sweep_min_hosts
        self.counters["scan_flows_uncorroborated"] += int((~allowed).sum())
        return allowed

    def _anomaly_features_rows(self, rows: np.ndarray) -> list[list[tuple[str, float, float]]]:
        """Return, per row, the five features farthest from the benign medians.

        The isolation forest has no per-class contributions; the features
        farthest from the benign medians the model recorded explain a
        verdict best.
        """
        medians = getattr(self.model, "benign_medians", None)
        if medians is None or rows.shape[0] == 0:
            return [[] for _ in range(rows.shape[0])]
        names = self.model.feature_names
        distance = np.abs(rows - medians) / (np.abs(medians) + 1.0)
        order = np.argsort(-distance, axis=1, kind="stable")[:, :5]
        values = np.take_along_axis(rows, order, axis=1).tolist()
        distances = np.take_along_axis(distance, order, axis=1).tolist()
        return [
            [(names[j], value, far) for j, value, far in zip(columns, row_values, row_distances)]
            for columns, row_values, row_distances in zip(order.tolist(), values, distances)
        ]

    @staticmethod
    def _from_rule(hit: RuleHit) -> Detection:
        info = ATTACK_CLASSES[hit.attack_class]
        return Detection(
            category=info.category,
            technique=info.technique,
            attack_class=hit.attack_class,
            origin=f"rule:{hit.rule}",
            src_ip=hit.src_ip,
            dst_ip=hit.dst_ip,
            src_port=None,
            dst_port=hit.dst_port,
            protocol=hit.protocol,
            src_mac=hit.src_mac,
            dst_mac=None,
            first_seen=hit.first_seen,
            last_seen=hit.last_seen,
            flow_ids=hit.flow_ids,
            community_id=None,
            summary=hit.summary,
            evidence=dict(hit.evidence),
        )

    @property
    def anomalies(self) -> dict[str, int]:
        """Return the decoder's anomaly counters by name (nonzero only)."""
        return anomaly_counts(self.anomaly_counters)

    @property
    def stats(self) -> dict[str, int]:
        stats = dict(self.counters)
        stats.update({f"flow_{k}": v for k, v in self.flow_table.stats.items()})
        stats.update({f"window_{k}": v for k, v in self.windows.stats.items()})
        stats.update({f"rule_{k}": v for k, v in self.rules.stats.items()})
        stats["live_flows"] = self.flow_table.live_flows
        return stats

"""Threshold rules over ended flows and ARP packets.

The model learns from simulated hospital traffic. These rules catch the
classic shapes of an attack in any traffic, in the spirit of Zeek's scan and
brute-force policies. Each rule looks for one shape:

- a source that fails to connect to many ports or hosts (scan, sweep);
- many short logins from one source to one service (brute force);
- half-open connections piling up on one target (SYN flood);
- unsolicited UDP responses from amplifier ports (reflection);
- many large DNS queries from one client (tunnelling);
- unsolicited ARP replies, or replies that move an address to a new MAC.

Rules see ended flows in batches (numpy masks pick the candidate flows) and
keep per-key state in bounded tables: each table holds at most
`max_keys` keys and drops the least recently updated key when full
(counter: rule_state_evicted). Windows advance with capture time.

A window at or past its threshold is reported once per batch in which it
grew, each time with its running totals and evidence "window_start". The
alert sink keeps only the latest report of each window, so an alert states
the window's totals. A figure that may be below the true value (a distinct
set that reached its item cap, or a window opened after the table evicted
keys) is named in evidence "lower_bound".
"""

from __future__ import annotations

import collections
import ipaddress
from dataclasses import dataclass, field

import numpy as np

from engine.flows.layout import CONN_STATE_NAMES

# Connection states of a TCP attempt that got no service: no answer (S0),
# rejected (REJ), reset by the originator before an answer (RSTOS0), or the
# responder reset after only its SYN-ACK (RSTRH), or a lone SYN then FIN (SH).
# A midstream flow (OTH) counts only when the responder never sent anything.
_FAILED_STATES = {"S0", "REJ", "RSTOS0", "RSTRH", "SH"}
_OTH_ID = CONN_STATE_NAMES.index("OTH")
_FAILED_STATE_IDS = np.array(
    [i for i, name in enumerate(CONN_STATE_NAMES) if name in _FAILED_STATES], dtype=np.uint8
)
_S0_ID = CONN_STATE_NAMES.index("S0")

# Services whose repeated short sessions are login attempts.
AUTH_PORTS = {
    21: "ftp_bruteforce",
    22: "ssh_bruteforce",
    23: "ssh_bruteforce",  # telnet: no class of its own, password guessing all the same
    3389: "rdp_bruteforce",
    5900: "rdp_bruteforce",  # VNC, remote desktop too
    110: "ftp_bruteforce",
    143: "ftp_bruteforce",
}
_AUTH_PORT_ARRAY = np.array(sorted(AUTH_PORTS), dtype=np.uint16)

# UDP services that answer a small spoofed request with a large response,
# the reflectors of amplification attacks (DNS, NTP, SNMP, CLDAP, SSDP,
# chargen, QOTD, memcached).
AMPLIFIER_PORTS = np.array([17, 19, 53, 123, 161, 389, 1900, 11211], dtype=np.uint16)

# Distinct sources remembered per flood target; past this the count stops.
_MAX_FLOOD_SOURCES = 4096

ETHERTYPE_ARP = 0x0806
ARP_REQUEST = 1
ARP_REPLY = 2


@dataclass
class RuleConfig:
    # Port scan: distinct ports of one target that failed, within the window.
    scan_window_s: float = 300.0
    scan_ports_per_host: int = 15
    # Host sweep: distinct hosts that failed on one port (TCP/UDP) or were
    # asked for by ARP, within the window.
    sweep_hosts: int = 25
    arp_sweep_hosts: int = 64
    # Brute force: short sessions from one source to one login service.
    bruteforce_window_s: float = 300.0
    bruteforce_sessions: int = 10
    bruteforce_max_session_s: float = 30.0
    bruteforce_max_session_bytes: int = 20_000
    # SYN flood: half-open (S0) attempts at one target within the window.
    synflood_window_s: float = 10.0
    synflood_attempts: int = 500
    # DNS tunnelling: queries from one client whose mean payload is large.
    dns_window_s: float = 300.0
    dns_queries: int = 30
    dns_mean_query_bytes: float = 90.0
    # UDP reflection: responses from amplifier ports that one target never
    # asked for, from several reflectors, within the window.
    reflection_window_s: float = 60.0
    reflection_responses: int = 100
    reflection_sources: int = 5
    # ARP spoofing: unsolicited replies (no request from the receiver
    # for that address within arp_request_memory_s) that claim one address,
    # within the window.
    arp_window_s: float = 60.0
    arp_unsolicited_replies: int = 5
    arp_request_memory_s: float = 5.0
    max_keys: int = 65_536


@dataclass
class RuleHit:
    """One rule firing: the pipeline turns it into a detection."""

    attack_class: str
    rule: str
    src_ip: str | None
    dst_ip: str | None
    dst_port: int | None
    protocol: str
    first_seen: float
    last_seen: float
    flow_ids: list[int] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    summary: str = ""
    src_mac: str | None = None


class _WindowTable:
    """Per-key distinct-item sets over a capture-time window, bounded in keys and items.

    An entry's "reported" is the figure its latest report stated (0 before
    the first), so a rule reports the window again only when it grew.
    """

    def __init__(self, window_s: float, max_keys: int, max_items: int = 4096):
        self.window_s = window_s
        self.max_keys = max_keys
        self.max_items = max_items
        self.entries: collections.OrderedDict = collections.OrderedDict()
        self.evicted = 0

    def add(self, key, item, when: float, flow_id: int) -> dict:
        entry = self.entries.get(key)
        if entry is None or when - entry["start"] > self.window_s:
            # A key evicted earlier may come back here with its older
            # items lost, and the table cannot tell which keys those are.
            entry = {"start": when, "last": when, "items": set(), "flow_ids": [],
                     "window_start": when, "reported": 0, "after_eviction": self.evicted > 0}
            self.entries[key] = entry
            if len(self.entries) > self.max_keys:
                self.entries.popitem(last=False)
                self.evicted += 1
        self.entries.move_to_end(key)
        entry["last"] = max(entry["last"], when)
        entry["start"] = min(entry["start"], when)
        if len(entry["items"]) < self.max_items:
            entry["items"].add(item)
        if len(entry["flow_ids"]) < 64:
            entry["flow_ids"].append(flow_id)
        return entry

    def items_full(self, entry: dict) -> bool:
        """Return True when the entry's distinct-item set stopped growing at max_items."""
        return len(entry["items"]) >= self.max_items


def _window_evidence(entry: dict, counted: dict, window_s: float, capped: tuple[str, ...] = (), **other) -> dict:
    """Return a window report's evidence: its counted figures, `other`, window_s, window_start and lower bounds.

    `capped` names the counted figures whose distinct set is full. After an
    eviction every counted figure of the window may miss items.
    """
    evidence = dict(counted, **other, window_s=window_s, window_start=entry["window_start"])
    lower_bound = [name for name in counted if entry["after_eviction"] or name in capped]
    if lower_bound:
        evidence["lower_bound"] = lower_bound
    return evidence


def _address(raw: np.ndarray, version: int) -> str:
    raw = bytes(raw)
    if version == 4:
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw))


@dataclass
class _FlowView:
    """The fields of one flow record that the rules key on, as Python values."""

    src: str
    dst: str
    src_port: int
    dst_port: int
    when: float  # capture time of the flow's last packet, seconds
    flow_id: int
    protocol: str


def _flow_view(flow) -> _FlowView:
    version = int(flow["ip_version"])
    return _FlowView(
        _address(flow["src_addr"], version),
        _address(flow["dst_addr"], version),
        int(flow["src_port"]),
        int(flow["dst_port"]),
        flow["bidirectional_last_seen_ns"] / 1e9,
        int(flow["flow_id"]),
        _protocol_name(flow["ip_proto"]),
    )


def _protocol_name(proto: int) -> str:
    return {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}.get(int(proto), str(int(proto)))


class FlowRules:
    """Run the threshold rules on batches of ended flows and packets."""

    def __init__(self, config: RuleConfig | None = None):
        self.config = config or RuleConfig()
        c = self.config
        self.port_scan = _WindowTable(c.scan_window_s, c.max_keys)
        self.host_sweep = _WindowTable(c.scan_window_s, c.max_keys)
        self.arp_sweep = _WindowTable(c.scan_window_s, c.max_keys)
        self.bruteforce = _WindowTable(c.bruteforce_window_s, c.max_keys)
        self.synflood = _WindowTable(c.synflood_window_s, c.max_keys, max_items=1 << 16)
        self.dns = _WindowTable(c.dns_window_s, c.max_keys)
        self.reflection = _WindowTable(c.reflection_window_s, c.max_keys)
        self.arp_bindings: collections.OrderedDict = collections.OrderedDict()
        self.arp_unsolicited = _WindowTable(c.arp_window_s, c.max_keys)
        # (asker, asked-for address) -> time of the last ARP request.
        self.arp_requests: collections.OrderedDict = collections.OrderedDict()
        self.counters = collections.Counter()

    @property
    def stats(self) -> dict[str, int]:
        evicted = sum(
            t.evicted for t in (self.port_scan, self.host_sweep, self.arp_sweep,
                                self.bruteforce, self.synflood, self.dns, self.reflection,
                                self.arp_unsolicited)
        )
        return dict(self.counters, rule_state_evicted=evicted)

    def on_flows(self, flows: np.ndarray) -> list[RuleHit]:
        """Update the flow rules with ended flows; return the rules that fired."""
        if flows.size == 0:
            return []
        hits: list[RuleHit] = []
        hits += self._scan_rules(flows)
        hits += self._bruteforce_rule(flows)
        hits += self._synflood_rule(flows)
        hits += self._dns_rule(flows)
        hits += self._reflection_rule(flows)
        return hits

    def _scan_rules(self, flows):
        c = self.config
        failed = (
            np.isin(flows["conn_state"], _FAILED_STATE_IDS)
            | ((flows["conn_state"] == _OTH_ID) & (flows["dst2src_packets"] == 0))
        ) & (flows["ip_proto"] == 6)
        # A UDP probe that got no reply at all is a failed attempt too,
        # unless it comes from an amplifier port. Such a packet is a
        # reflected response, which the reflection rule counts.
        failed |= (
            (flows["ip_proto"] == 17)
            & (flows["dst2src_packets"] == 0)
            & (flows["src2dst_packets"] <= 2)
            & ~np.isin(flows["src_port"], AMPLIFIER_PORTS)
        )
        hits = []
        # Windows at or past their threshold that grew in this batch, each
        # reported once after the loop with its running totals. They are
        # keyed by rule key and window start, because a key's window can
        # expire and restart within one batch. Port scans map
        # ((source, target), start) -> (protocol, entry), and host sweeps
        # ((source, port), start) -> (protocol, entry).
        grown_scans = {}
        grown_sweeps = {}
        for row in np.flatnonzero(failed):
            view = _flow_view(flows[row])
            src, dst, port, when, flow_id = view.src, view.dst, view.dst_port, view.when, view.flow_id
            entry = self.port_scan.add((src, dst), port, when, flow_id)
            if len(entry["items"]) >= c.scan_ports_per_host and len(entry["items"]) > entry["reported"]:
                grown_scans[((src, dst), entry["window_start"])] = (view.protocol, entry)
            entry = self.host_sweep.add((src, port), dst, when, flow_id)
            if len(entry["items"]) >= c.sweep_hosts and len(entry["items"]) > entry["reported"]:
                grown_sweeps[((src, port), entry["window_start"])] = (view.protocol, entry)
        for ((src, dst), _), (protocol, entry) in grown_scans.items():
            entry["reported"] = len(entry["items"])
            capped = ("distinct_ports",) if self.port_scan.items_full(entry) else ()
            hits.append(RuleHit(
                "port_scan", "port_scan", src, dst, None, protocol,
                entry["start"], entry["last"], list(entry["flow_ids"]),
                _window_evidence(entry, {"distinct_ports": entry["reported"]}, c.scan_window_s, capped),
                f"{src} probed {entry['reported']} ports of {dst} without getting a service",
            ))
        for ((src, port), _), (protocol, entry) in grown_sweeps.items():
            entry["reported"] = len(entry["items"])
            capped = ("distinct_hosts",) if self.host_sweep.items_full(entry) else ()
            hits.append(RuleHit(
                "host_sweep", "host_sweep", src, None, port, protocol,
                entry["start"], entry["last"], list(entry["flow_ids"]),
                _window_evidence(entry, {"distinct_hosts": entry["reported"]}, c.scan_window_s, capped, port=port),
                f"{src} tried port {port} on {entry['reported']} hosts that did not answer",
            ))
        return hits

    def _bruteforce_rule(self, flows):
        c = self.config
        duration_s = flows["bidirectional_duration_ms"] / 1000.0
        total_bytes = flows["bidirectional_bytes"]
        # Only sessions the service replied to can be login attempts.
        replied = flows["dst2src_packets"] > 0
        candidate = (
            np.isin(flows["dst_port"], _AUTH_PORT_ARRAY)
            & (flows["ip_proto"] == 6)
            & replied
            & (duration_s <= c.bruteforce_max_session_s)
            & (total_bytes <= c.bruteforce_max_session_bytes)
            & ~np.isin(flows["conn_state"], _FAILED_STATE_IDS)
        )
        # ((source, target, port), window start) -> entry of windows at or
        # past the threshold that grew in this batch. A session is one client
        # port, so a flow record split by a timeout counts once.
        grown = {}
        for row in np.flatnonzero(candidate):
            view = _flow_view(flows[row])
            key = (view.src, view.dst, view.dst_port)
            entry = self.bruteforce.add(key, view.src_port, view.when, view.flow_id)
            if len(entry["items"]) >= c.bruteforce_sessions and len(entry["items"]) > entry["reported"]:
                grown[(key, entry["window_start"])] = entry
        hits = []
        for ((src, dst, port), _), entry in grown.items():
            entry["reported"] = len(entry["items"])
            capped = ("sessions",) if self.bruteforce.items_full(entry) else ()
            hits.append(RuleHit(
                AUTH_PORTS[port], "bruteforce", src, dst, port, "tcp",
                entry["start"], entry["last"], list(entry["flow_ids"]),
                _window_evidence(entry, {"sessions": entry["reported"]}, c.bruteforce_window_s, capped),
                f"{src} opened {entry['reported']} short login sessions to {dst} port {port}",
            ))
        return hits

    def _synflood_rule(self, flows):
        c = self.config
        half_open = (flows["conn_state"] == _S0_ID) & (flows["ip_proto"] == 6)
        rows = np.flatnonzero(half_open)
        if rows.size == 0:
            return []
        hits = []
        # Group by target first so the per-flow Python work is one add per target.
        targets = flows["dst_addr"][rows]
        ports = flows["dst_port"][rows]
        keys = np.concatenate([targets, ports.view(np.uint8).reshape(-1, 2)], axis=1)
        unique_keys, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        for group in range(unique_keys.shape[0]):
            members = rows[inverse.ravel() == group]
            first = flows[members[0]]
            version = int(first["ip_version"])
            dst = _address(first["dst_addr"], version)
            port = int(first["dst_port"])
            start = int(flows["bidirectional_first_seen_ns"][members].min()) / 1e9
            end = int(flows["bidirectional_last_seen_ns"][members].max()) / 1e9
            entry = self.synflood.add((dst, port), None, start, int(first["flow_id"]))
            entry.setdefault("attempts", 0)
            entry["attempts"] += int(counts[group])
            entry["last"] = max(entry["last"], end)
            sources = entry.setdefault("sources", set())
            room = _MAX_FLOOD_SOURCES - len(sources)
            if room > 0:
                distinct = np.unique(flows["src_addr"][members], axis=0)[:room]
                sources.update(_address(a, version) for a in distinct)
            # Each group is one key, so a grown window is reported here
            # once per batch with its running totals.
            if entry["attempts"] >= c.synflood_attempts and entry["attempts"] > entry["reported"]:
                entry["reported"] = entry["attempts"]
                src = next(iter(sources)) if len(sources) == 1 else None
                capped = ("distinct_sources",) if len(sources) >= _MAX_FLOOD_SOURCES else ()
                hits.append(RuleHit(
                    "syn_flood", "syn_flood", src, dst, port, "tcp",
                    entry["start"], entry["last"], list(entry["flow_ids"]),
                    _window_evidence(entry, {"half_open_attempts": entry["attempts"],
                                             "distinct_sources": len(sources)},
                                     c.synflood_window_s, capped),
                    f"{entry['attempts']} half-open connections to {dst} port {port} "
                    f"from {len(sources)} sources",
                ))
        return hits

    def _dns_rule(self, flows):
        c = self.config
        dns = (flows["dst_port"] == 53) & (flows["src2dst_packets"] > 0)
        # ((client, resolver), window start) -> (protocol, entry) of windows
        # at or past the thresholds that grew in this batch.
        grown = {}
        for row in np.flatnonzero(dns):
            flow = flows[row]
            view = _flow_view(flow)
            entry = self.dns.add((view.src, view.dst), None, view.when, view.flow_id)
            entry["queries"] = entry.get("queries", 0) + int(flow["src2dst_packets"])
            entry["query_bytes"] = entry.get("query_bytes", 0) + int(flow["src2dst_payload_bytes"])
            mean = entry["query_bytes"] / max(entry["queries"], 1)
            # A reported window is reported again as it grows, even after
            # small queries pulled its mean below the threshold, so the
            # alert's counts stay the window's.
            if entry["reported"] or (entry["queries"] >= c.dns_queries and mean >= c.dns_mean_query_bytes):
                grown[((view.src, view.dst), entry["window_start"])] = (view.protocol, entry)
        hits = []
        for ((src, dst), _), (protocol, entry) in grown.items():
            entry["reported"] = entry["queries"]
            mean = entry["query_bytes"] / entry["queries"]
            hits.append(RuleHit(
                "dns_tunnel", "dns_tunnel", src, dst, 53, protocol,
                entry["start"], entry["last"], list(entry["flow_ids"]),
                _window_evidence(entry, {"queries": entry["queries"]}, c.dns_window_s,
                                 mean_query_payload_bytes=round(mean, 1)),
                f"{src} sent {entry['queries']} DNS queries to {dst} with a mean payload of "
                f"{mean:.0f} bytes, the shape of data carried in query names",
            ))
        return hits

    def _reflection_rule(self, flows):
        c = self.config
        reflected = (
            (flows["ip_proto"] == 17)
            & (flows["dst2src_packets"] == 0)
            & np.isin(flows["src_port"], AMPLIFIER_PORTS)
        )
        # (target, window start) -> entry of windows at or past the
        # thresholds that grew in this batch.
        grown = {}
        for row in np.flatnonzero(reflected):
            flow = flows[row]
            view = _flow_view(flow)
            entry = self.reflection.add(view.dst, view.src, view.when, view.flow_id)
            entry["responses"] = entry.get("responses", 0) + int(flow["src2dst_packets"])
            entry["bytes"] = entry.get("bytes", 0) + int(flow["src2dst_bytes"])
            if (entry["responses"] >= c.reflection_responses and len(entry["items"]) >= c.reflection_sources
                    and entry["responses"] > entry["reported"]):
                grown[(view.dst, entry["window_start"])] = entry
        hits = []
        for (target, _), entry in grown.items():
            entry["reported"] = entry["responses"]
            capped = ("reflectors",) if self.reflection.items_full(entry) else ()
            hits.append(RuleHit(
                "udp_flood", "udp_reflection", None, target, None, "udp",
                entry["start"], entry["last"], list(entry["flow_ids"]),
                _window_evidence(entry, {"responses": entry["responses"], "bytes": entry["bytes"],
                                         "reflectors": len(entry["items"])},
                                 c.reflection_window_s, capped),
                f"{target} received {entry['responses']} unsolicited UDP responses "
                f"({entry['bytes']:,} bytes) from {len(entry['items'])} reflectors",
            ))
        return hits

    def on_packets(self, packets: np.ndarray) -> list[RuleHit]:
        """Update the ARP rules with one decoded batch; return the rules that fired."""
        arp = packets["ether_type"] == ETHERTYPE_ARP
        if not arp.any():
            return []
        c = self.config
        hits = []
        # Windows at or past their threshold that grew in this batch, each
        # reported once after the loops, keyed by rule key and window start.
        # ARP sweeps are keyed by the asker, unsolicited replies by
        # (claimed address, MAC).
        grown_sweeps = {}
        grown_spoofs = {}
        rows = np.flatnonzero(arp & (packets["arp_op"] == ARP_REQUEST))
        for row in rows:
            packet = packets[row]
            sender = _address(packet["src_addr"], 4)
            target = _address(packet["dst_addr"], 4)
            when = packet["ts_ns"] / 1e9
            if sender == target:
                continue  # gratuitous ARP announces the sender's own address
            self.arp_requests[(sender, target)] = when
            self.arp_requests.move_to_end((sender, target))
            if len(self.arp_requests) > c.max_keys:
                self.arp_requests.popitem(last=False)
            entry = self.arp_sweep.add(sender, target, when, 0)
            if len(entry["items"]) >= c.arp_sweep_hosts and len(entry["items"]) > entry["reported"]:
                grown_sweeps[(sender, entry["window_start"])] = entry
        for row in np.flatnonzero(arp & (packets["arp_op"] == ARP_REPLY)):
            packet = packets[row]
            sender = _address(packet["src_addr"], 4)
            mac = ":".join(f"{b:02x}" for b in bytes(packet["eth_src"]))
            previous = self.arp_bindings.get(sender)
            self.arp_bindings[sender] = mac
            self.arp_bindings.move_to_end(sender)
            if len(self.arp_bindings) > c.max_keys:
                self.arp_bindings.popitem(last=False)
            when = packet["ts_ns"] / 1e9
            receiver = _address(packet["dst_addr"], 4)
            asked_at = self.arp_requests.get((receiver, sender))
            if receiver != sender and (asked_at is None or when - asked_at > c.arp_request_memory_s):
                self.counters["arp_unsolicited_replies"] += 1
                entry = self.arp_unsolicited.add((sender, mac), receiver, when, 0)
                entry["replies"] = entry.get("replies", 0) + 1
                if entry["replies"] >= c.arp_unsolicited_replies and entry["replies"] > entry["reported"]:
                    grown_spoofs[((sender, mac), entry["window_start"])] = entry
            if previous is not None and previous != mac:
                self.counters["arp_binding_changes"] += 1
                hits.append(RuleHit(
                    "arp_spoof", "arp_binding_change", None, None, None, "arp", when, when, [],
                    {"claimed_address": sender, "previous_mac": previous, "new_mac": mac},
                    f"ARP replies moved {sender} from {previous} to {mac}",
                    src_mac=mac,
                ))
        for (sender, _), entry in grown_sweeps.items():
            entry["reported"] = len(entry["items"])
            capped = ("distinct_hosts",) if self.arp_sweep.items_full(entry) else ()
            hits.append(RuleHit(
                "host_sweep", "arp_sweep", sender, None, None, "arp",
                entry["start"], entry["last"], [],
                _window_evidence(entry, {"distinct_hosts": entry["reported"]}, c.scan_window_s, capped),
                f"{sender} asked ARP for {entry['reported']} addresses, the shape of a host sweep",
            ))
        for ((sender, mac), _), entry in grown_spoofs.items():
            entry["reported"] = entry["replies"]
            # The claimed address belongs to the victim, not the attacker,
            # so the attacker is named by its MAC only.
            capped = ("receivers",) if self.arp_unsolicited.items_full(entry) else ()
            hits.append(RuleHit(
                "arp_spoof", "arp_unsolicited_replies", None, None, None, "arp",
                entry["start"], entry["last"], [],
                _window_evidence(entry, {"unsolicited_replies": entry["replies"], "receivers": len(entry["items"])},
                                 c.arp_window_s, capped, claimed_address=sender, mac=mac),
                f"{mac} sent {entry['replies']} unsolicited ARP replies claiming {sender} "
                f"to {len(entry['items'])} hosts",
                src_mac=mac,
            ))
        return hits

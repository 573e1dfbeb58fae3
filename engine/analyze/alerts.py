"""Turn detections into alerts of the schema in engine.alerts.schema.

The summary of a detection's alert is worded here, from the alert's fields
and evidence figures, by the summary rules registered below for each
detection origin. The sink applies them after pseudonymisation and on every
revision of an aggregate, so a summary names the same pseudonyms as the
alert's src and dst and states the aggregate's current counts. The
pipeline's own Detection.summary is used only for an origin without a rule.
"""

from __future__ import annotations

from engine.alerts.schema import Alert, Contribution, Endpoint
from engine.alerts.summary import OriginFigures, SummaryRule, per_window, plural, register_summary_rule
from engine.analyze.actions import BASE_SEVERITY, RECOMMENDED_ACTIONS
from engine.analyze.pipeline import Detection
from engine.taxonomy import SEVERITIES, severity_rank


def severity_for(detection: Detection) -> str:
    """Return the alert severity: the category's base, one step lower for a weak model score."""
    base = BASE_SEVERITY.get(detection.category, "medium")
    rank = severity_rank(base)
    if detection.origin == "model" and detection.model_score is not None and detection.model_score < 0.8:
        rank = max(rank - 1, 0)
    return SEVERITIES[rank]


def alert_from_detection(detection: Detection, sensor_id: str = "") -> Alert:
    """Build the alert for one detection (before aggregation and privacy)."""
    evidence = dict(detection.evidence)
    evidence["origin"] = detection.origin
    if detection.attack_class:
        evidence["attack_class"] = detection.attack_class
    return Alert(
        category=detection.category,
        severity=severity_for(detection),
        summary=detection.summary,
        kind="detection",
        technique=detection.technique,
        sensor_id=sensor_id,
        first_seen=detection.first_seen,
        last_seen=detection.last_seen,
        src=Endpoint(ip=detection.src_ip, port=detection.src_port, mac=detection.src_mac),
        dst=Endpoint(ip=detection.dst_ip, port=detection.dst_port, mac=detection.dst_mac),
        protocol=detection.protocol,
        community_id=detection.community_id,
        flow_ids=list(detection.flow_ids),
        count=detection.count,
        model_class=detection.attack_class,
        model_score=detection.model_score,
        anomaly_score=detection.anomaly_score,
        top_features=[Contribution(name, value, contribution) for name, value, contribution in detection.top_features],
        recommended_action=RECOMMENDED_ACTIONS.get(detection.category, ""),
        evidence=evidence,
    )


# --- summary wording, per detection origin ------------------------------

def _host(endpoint) -> str:
    return endpoint.ip or endpoint.mac or "an unknown host"


def _flow_head(alert: Alert) -> str:
    """Return "SRC -> DST:PORT/PROTO", the flow part of a model or anomaly summary."""
    target = _host(alert.dst)
    if alert.dst.port is not None:
        # Brackets keep an IPv6 address apart from its port.
        target = f"[{target}]:{alert.dst.port}" if ":" in target else f"{target}:{alert.dst.port}"
    protocol = f"/{alert.protocol}" if alert.protocol else ""
    return f"{_host(alert.src)} -> {target}{protocol}"


def _class_text(attack_class: str | None) -> str:
    return (attack_class or "an attack").replace("_", " ")


def _model_flows(part: OriginFigures) -> str:
    if part.attack_class == "c2_beacon":
        # A beacon detection counts connections held until they looked periodic.
        return plural(part.count, "connection") + " at regular intervals"
    return "this flow" if part.count == 1 else plural(part.count, "flow")


def _model_sentence(alert: Alert, part: OriginFigures) -> str:
    score = f" ({alert.model_score:.0%})" if alert.model_score is not None else ""
    if part.count > 1 and score:
        score = f" (scores up to {alert.model_score:.0%})"
    return f"{_flow_head(alert)}: the model classed {_model_flows(part)} as {_class_text(part.attack_class)}{score}"


def _model_clause(part: OriginFigures) -> str:
    return f"the model classed {_model_flows(part)} as {_class_text(part.attack_class)}"


def _anomaly_sentence(alert: Alert, part: OriginFigures) -> str:
    flows = "the flow is" if part.count == 1 else plural(part.count, "flow") + " are"
    return f"{_flow_head(alert)}: {flows} unlike the benign traffic the anomaly model learnt"


def _anomaly_clause(part: OriginFigures) -> str:
    return f"{plural(part.count, 'flow')} unlike the benign traffic the anomaly model learnt"


def _rule_clause(noun: str, key: str, plural_noun: str | None = None):
    def clause(part: OriginFigures) -> str:
        rule_name = part.origin.partition(":")[2].replace("_", " ")
        return f"the {rule_name} rule counted {part.at_least(key)}{plural(part.total(key), noun, plural_noun)}"
    return clause


def _peak_per_window(part: OriginFigures, key: str, noun: str, plural_noun: str | None = None) -> str:
    """Return per_window()'s text for a max_keys figure, or "at least N ... in one window" for a lower bound."""
    if key not in part.lower_bounds:
        return per_window(part, key, noun, plural_noun)
    text = "at least " + plural(part.peak(key), noun, plural_noun)
    return text if part.detections == 1 else f"{text} in one window"


def _port_scan_sentence(alert: Alert, part: OriginFigures) -> str:
    ports = part.at_least("distinct_ports") + plural(part.total("distinct_ports"), "port")
    return f"{_host(alert.src)} probed {ports} of {_host(alert.dst)} without getting a service"


def _host_sweep_sentence(alert: Alert, part: OriginFigures) -> str:
    port = alert.evidence.get("port", alert.dst.port)
    hosts = part.at_least("distinct_hosts") + plural(part.total("distinct_hosts"), "host")
    return f"{_host(alert.src)} tried port {port} on {hosts} that did not answer"


def _arp_sweep_sentence(alert: Alert, part: OriginFigures) -> str:
    addresses = part.at_least("distinct_hosts") + plural(part.total("distinct_hosts"), "address", "addresses")
    return f"{_host(alert.src)} asked ARP for {addresses}, the shape of a host sweep"


def _bruteforce_sentence(alert: Alert, part: OriginFigures) -> str:
    sessions = part.at_least("sessions") + plural(part.total("sessions"), "short login session")
    return f"{_host(alert.src)} opened {sessions} to {_host(alert.dst)} port {alert.dst.port}"


def _syn_flood_sentence(alert: Alert, part: OriginFigures) -> str:
    attempts = part.at_least("half_open_attempts") + plural(part.total("half_open_attempts"), "half-open connection")
    sources = _peak_per_window(part, "distinct_sources", "source")
    return f"{attempts} to {_host(alert.dst)} port {alert.dst.port} from {sources}"


def _dns_tunnel_sentence(alert: Alert, part: OriginFigures) -> str:
    queries = part.at_least("queries") + plural(part.total("queries"), "DNS query", "DNS queries")
    mean_bytes = part.peak("mean_query_payload_bytes")
    return (f"{_host(alert.src)} sent {queries} to {_host(alert.dst)} with a mean payload of up to"
            f" {mean_bytes:.0f} bytes, the shape of data carried in query names")


def _reflection_sentence(alert: Alert, part: OriginFigures) -> str:
    responses = part.at_least("responses") + plural(part.total("responses"), "unsolicited UDP response")
    reflectors = _peak_per_window(part, "reflectors", "reflector")
    return (f"{_host(alert.dst)} received {responses} ({part.total('bytes'):,.0f} wire bytes)"
            f" from {reflectors}")


def _arp_unsolicited_sentence(alert: Alert, part: OriginFigures) -> str:
    sender = alert.evidence.get("mac") or _host(alert.src)
    replies = part.at_least("unsolicited_replies") + plural(
        part.total("unsolicited_replies"), "unsolicited ARP reply", "unsolicited ARP replies")
    claimed = alert.evidence.get("claimed_address", "an address")
    receivers = _peak_per_window(part, "receivers", "host")
    return f"{sender} sent {replies} claiming {claimed} to {receivers}"


def _arp_binding_sentence(alert: Alert, part: OriginFigures) -> str:
    evidence = alert.evidence
    text = (f"ARP replies moved {evidence.get('claimed_address', 'an address')} from"
            f" {evidence.get('previous_mac')} to {evidence.get('new_mac')}")
    if part.detections > 1:
        text += f" ({plural(part.detections, 'change')} in all)"
    return text


# The threshold rules report a growing window once per batch with its
# running totals (evidence "window_start"), so a folded figure is the
# window's total. "at least" marks a figure the rule named in evidence
# "lower_bound": a distinct set full at its item cap, or a window opened
# after its table evicted keys.
# NOTE: distinct figures (ports, hosts, sessions) add up across the
# windows of one alert, so an item seen in two windows counts twice.
_RULES = {
    "model": SummaryRule(_model_sentence, _model_clause),
    "anomaly": SummaryRule(_anomaly_sentence, _anomaly_clause),
    "rule:port_scan": SummaryRule(
        _port_scan_sentence, _rule_clause("port", "distinct_ports"), sum_keys=("distinct_ports",),
    ),
    "rule:host_sweep": SummaryRule(
        _host_sweep_sentence, _rule_clause("host", "distinct_hosts"), sum_keys=("distinct_hosts",),
    ),
    "rule:arp_sweep": SummaryRule(
        _arp_sweep_sentence, _rule_clause("address", "distinct_hosts", "addresses"), sum_keys=("distinct_hosts",),
    ),
    "rule:bruteforce": SummaryRule(
        _bruteforce_sentence, _rule_clause("login session", "sessions"), sum_keys=("sessions",),
    ),
    "rule:syn_flood": SummaryRule(
        _syn_flood_sentence, _rule_clause("half-open connection", "half_open_attempts"),
        sum_keys=("half_open_attempts",), max_keys=("distinct_sources",),
    ),
    "rule:dns_tunnel": SummaryRule(
        _dns_tunnel_sentence, _rule_clause("DNS query", "queries", "DNS queries"),
        sum_keys=("queries",), max_keys=("mean_query_payload_bytes",),
    ),
    "rule:udp_reflection": SummaryRule(
        _reflection_sentence, _rule_clause("unsolicited UDP response", "responses"),
        sum_keys=("responses", "bytes"), max_keys=("reflectors",),
    ),
    "rule:arp_unsolicited_replies": SummaryRule(
        _arp_unsolicited_sentence,
        _rule_clause("unsolicited ARP reply", "unsolicited_replies", "unsolicited ARP replies"),
        sum_keys=("unsolicited_replies",), max_keys=("receivers",),
    ),
    "rule:arp_binding_change": SummaryRule(
        _arp_binding_sentence, lambda part: plural(part.detections, "ARP binding change"),
    ),
}

for _origin, _rule in _RULES.items():
    register_summary_rule(_origin, _rule)

"""Summaries rebuilt on every revision from the aggregate's current figures."""

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import engine.analyze.alerts  # noqa: F401  (registers the detection summary rules)
from conftest import require_tool
from engine.alerts.aggregate import Aggregator
from engine.alerts.config import AggregationConfig, RateLimitConfig
from engine.alerts.schema import Alert, Endpoint, unpack_alert

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE = REPO_ROOT / "engine" / "data" / "sample.pcap"


def make_aggregator(update_interval_s=0.0):
    return Aggregator(AggregationConfig(update_interval_s=update_interval_s, quiet_period_s=300.0),
                      RateLimitConfig(per_category_per_minute=0, global_per_minute=0))


def scan_hit(t, ports, window_start=None, flow_ids=(), src="10.0.0.5"):
    # A port-scan rule detection: `ports` distinct ports in its window.
    evidence = {"distinct_ports": ports, "window_s": 300.0, "origin": "rule:port_scan", "attack_class": "port_scan"}
    if window_start is not None:
        evidence["window_start"] = window_start
    return Alert(category="scan", severity="medium", summary="raw rule text", technique="T1046",
                 first_seen=t, last_seen=t, src=Endpoint(src), dst=Endpoint("10.0.0.9"),
                 protocol="tcp", flow_ids=list(flow_ids), evidence=evidence)


def flood_hit(t, attempts, sources, window_start, lower_bound=None):
    # A SYN-flood rule report of the window that opened at `window_start`.
    evidence = {"half_open_attempts": attempts, "distinct_sources": sources, "window_s": 10.0,
                "window_start": window_start, "origin": "rule:syn_flood", "attack_class": "syn_flood"}
    if lower_bound:
        evidence["lower_bound"] = lower_bound
    return Alert(category="dos", severity="high", summary="raw rule text", technique="T1498.001",
                 first_seen=window_start, last_seen=t, dst=Endpoint("10.0.0.9", 80), protocol="tcp",
                 evidence=evidence)


def model_hit(t, flows, src="192.0.2.1", score=0.9):
    # A model detection grouping `flows` flagged flows of one source and target.
    return Alert(category="dos", severity="high", summary="raw model text", technique="T1498.001",
                 first_seen=t, last_seen=t, src=Endpoint(src, 40000), dst=Endpoint("10.0.0.9", 104),
                 protocol="tcp", count=flows, model_class="syn_flood", model_score=score,
                 evidence={"origin": "model", "attack_class": "syn_flood", "packets": 1})


def test_rule_figures_add_across_windows():
    aggregator = make_aggregator()
    first = aggregator.submit(scan_hit(10.0, 15))[0]
    update = aggregator.submit(scan_hit(200.0, 25))[0]
    assert first.summary == "10.0.0.5 probed 15 ports of 10.0.0.9 without getting a service"
    assert update.summary.startswith("10.0.0.5 probed 40 ports of 10.0.0.9")
    assert update.evidence["distinct_ports"] == 40
    assert update.revision == 2


def test_window_reports_replace_not_add():
    aggregator = make_aggregator()
    aggregator.submit(scan_hit(10.0, 15, window_start=10.0))
    # The same window reported again with its running total, then a new window.
    aggregator.submit(scan_hit(11.0, 31, window_start=10.0))
    update = aggregator.submit(scan_hit(200.0, 5, window_start=200.0))[0]
    assert "probed 36 ports" in update.summary
    assert update.evidence["distinct_ports"] == 36
    assert update.count == 2  # two windows; the repeat is no new detection


def test_window_repeats_keep_count_and_flow_ids():
    aggregator = make_aggregator()
    aggregator.submit(scan_hit(10.0, 15, window_start=10.0, flow_ids=[1, 2]))
    aggregator.submit(scan_hit(11.0, 20, window_start=10.0, flow_ids=[1, 2, 3]))
    update = aggregator.submit(scan_hit(12.0, 31, window_start=10.0, flow_ids=[1, 2, 3, 4]))[0]
    assert update.count == 1
    assert update.flow_ids == [1, 2, 3, 4]
    assert update.first_seen == 10.0
    assert update.last_seen == 12.0
    assert update.revision == 3
    assert update.summary == "10.0.0.5 probed 31 ports of 10.0.0.9 without getting a service"


def test_window_repeats_state_one_window():
    # Three reports of one flood window: its figures, not "up to ... per window".
    aggregator = make_aggregator()
    aggregator.submit(flood_hit(1.0, 500, 500, window_start=0.0))
    aggregator.submit(flood_hit(2.0, 650, 640, window_start=0.0))
    update = aggregator.submit(flood_hit(3.0, 700, 690, window_start=0.0))[0]
    assert update.summary == "700 half-open connections to 10.0.0.9 port 80 from 690 sources"
    assert update.count == 1


def test_lower_bound_says_at_least():
    aggregator = make_aggregator()
    aggregator.submit(flood_hit(1.0, 5000, 4096, window_start=0.0, lower_bound=["distinct_sources"]))
    update = aggregator.submit(flood_hit(12.0, 600, 600, window_start=11.0))[0]
    assert update.summary.startswith("5,600 half-open connections to 10.0.0.9 port 80 from at least 4,096 sources"
                                     " in one window")
    assert update.evidence["lower_bound"] == ["distinct_sources"]


def test_repeats_need_no_rate_token():
    # One new scan alert per minute: the second scanner's window goes to
    # the overflow alert, and its repeats stay there without adding to it.
    aggregator = Aggregator(AggregationConfig(update_interval_s=0.0, quiet_period_s=300.0),
                            RateLimitConfig(per_category_per_minute=1, global_per_minute=0))
    opened = aggregator.submit(scan_hit(10.0, 15, window_start=10.0))[0]
    overflow = aggregator.submit(scan_hit(10.5, 15, window_start=10.5, src="10.0.0.6"))[0]
    assert overflow.aggregation_key.endswith("*rate-limited*")
    update = aggregator.submit(scan_hit(11.0, 20, window_start=10.0))[0]
    assert update.id == opened.id
    assert update.evidence["distinct_ports"] == 20
    # A minute later a token is free again, but the window stays in the overflow alert.
    repeat = aggregator.submit(scan_hit(80.0, 25, window_start=10.5, src="10.0.0.6"))[0]
    assert repeat.id == overflow.id
    assert repeat.count == 1
    assert len(aggregator) == 2


def test_model_summary_counts_current_flows():
    aggregator = make_aggregator()
    first = aggregator.submit(model_hit(1.0, 10))[0]
    aggregator.submit(model_hit(2.0, 4000, src="192.0.2.2", score=1.0))
    closing = aggregator.flush()[0]
    assert first.summary == (
        "192.0.2.1 -> 10.0.0.9:104/tcp: the model classed 10 flows as syn flood (scores up to 90%); seen over 0 s"
    )
    assert closing.count == 4010
    assert closing.summary == (
        "192.0.2.1 -> 10.0.0.9:104/tcp: the model classed 4,010 flows as syn flood (scores up to 100%);"
        " 2 sources, seen over 1 s"
    )


def test_other_origin_becomes_clause():
    aggregator = make_aggregator()
    aggregator.submit(scan_hit(10.0, 15))
    model_scan = model_hit(11.0, 40)
    model_scan.category = "scan"
    model_scan.src = Endpoint("10.0.0.5", 40000)
    model_scan.evidence["attack_class"] = "port_scan"
    closing = aggregator.submit(model_scan)[0]
    assert closing.summary == (
        "10.0.0.5 probed 15 ports of 10.0.0.9 without getting a service;"
        " also the model classed 40 flows as port scan; seen over 1 s"
    )


def test_unregistered_origin_keeps_text():
    aggregator = make_aggregator()
    alert = Alert(category="mqtt_no_auth", severity="medium", summary="broker accepted a client",
                  first_seen=1.0, last_seen=1.0, src=Endpoint("10.0.0.1"), dst=Endpoint("10.0.0.2"))
    assert aggregator.submit(alert)[0].summary == "broker accepted a client"


@pytest.fixture(scope="module")
def sample_alerts(tmp_path_factory):
    if not SAMPLE.is_file():
        pytest.skip("the shipped sample capture is missing")
    store = tmp_path_factory.mktemp("summary") / "s.db"
    code = "import sys; from engine.cli import main; sys.exit(main())"
    subprocess.run([sys.executable, "-c", code, "analyze", str(SAMPLE), "--store", str(store), "--no-bus", "-q"],
                   cwd=REPO_ROOT, check=True, capture_output=True, timeout=300)
    with sqlite3.connect(store) as conn:
        return [unpack_alert(row[0]) for row in conn.execute("SELECT body FROM alert_events ORDER BY seq")]


def tshark_lines(display_filter, field):
    tshark = require_tool("tshark")
    output = subprocess.run([tshark, "-r", str(SAMPLE), "-Y", display_filter, "-T", "fields", "-e", field],
                            capture_output=True, text=True, check=True).stdout
    return [line for line in output.splitlines() if line]


def final_revision(alerts, category):
    closing = [a for a in alerts if a.category == category and a.state == "closed"]
    assert len(closing) == 1, [a.summary for a in closing]
    return closing[0]


def test_sample_revisions_restate_figures(sample_alerts):
    checked = 0
    for alert in sample_alerts:
        if alert.evidence.get("origin") != "model" or alert.count == 1 or "; also " in alert.summary:
            continue  # a folded rule detection is counted in its own clause, not in the flow count
        assert f" {alert.count:,} " in alert.summary, alert.summary
        checked += 1
    assert checked >= 2


def test_sample_flood_sources_match_tshark(sample_alerts):
    flood = final_revision(sample_alerts, "dos")
    sources = set(tshark_lines(
        "tcp.flags.syn==1 && tcp.flags.ack==0 && ip.dst==10.10.0.17 && tcp.dstport==104 && ip.src==192.0.2.0/24",
        "ip.src"))
    assert flood.distinct_sources == len(sources)
    assert f"{len(sources)} sources" in flood.summary


def test_sample_beacon_connections_match_tshark(sample_alerts):
    beacon = final_revision(sample_alerts, "c2")
    connections = tshark_lines("tcp.flags.syn==1 && tcp.flags.ack==0 && ip.src==10.40.0.11 && ip.dst==198.51.100.66",
                               "tcp.srcport")
    assert beacon.count == len(connections)
    assert f"{len(connections)} connections at regular intervals" in beacon.summary


def closed_scan_ports():
    """Return the ports the sample's scanner probed on its target that sent no SYN-ACK back, per tshark."""
    probed = set(tshark_lines("tcp.flags.syn==1 && tcp.flags.ack==0 && ip.src==10.40.0.11 && ip.dst==10.10.0.17",
                              "tcp.dstport"))
    answered = set(tshark_lines("tcp.flags.syn==1 && tcp.flags.ack==1 && ip.src==10.10.0.17 && ip.dst==10.40.0.11",
                                "tcp.srcport"))
    assert len(probed) == 40  # the sample's labels: a 40-port SYN scan
    return probed - answered


def test_sample_scan_ports_within_tshark(sample_alerts):
    scan = final_revision(sample_alerts, "scan")
    closed = closed_scan_ports()
    stated = int(scan.summary.split("probed ")[1].split(" ")[0])
    assert stated <= len(closed)
    assert scan.evidence["distinct_ports"] == stated


def test_sample_scan_states_every_port(sample_alerts):
    scan = final_revision(sample_alerts, "scan")
    closed = closed_scan_ports()
    assert f"probed {len(closed)} ports" in scan.summary


def test_sample_arp_replies_within_tshark(sample_alerts):
    spoof = final_revision(sample_alerts, "spoofing")
    replies = tshark_lines("arp.opcode==2 && arp.src.proto_ipv4==10.40.0.1", "eth.src")
    receivers = set(tshark_lines("arp.opcode==2 && arp.src.proto_ipv4==10.40.0.1", "arp.dst.proto_ipv4"))
    stated = int(spoof.summary.split(" sent ")[1].split(" ")[0])
    assert set(replies) == {"c8:f7:50:52:00:01"}
    assert spoof.summary.startswith("c8:f7:50:52:00:01 sent ")
    assert "claiming 10.40.0.1 to" in spoof.summary
    assert stated <= len(replies)
    assert spoof.evidence["receivers"] <= len(receivers)


def test_sample_arp_states_every_reply(sample_alerts):
    spoof = final_revision(sample_alerts, "spoofing")
    replies = tshark_lines("arp.opcode==2 && arp.src.proto_ipv4==10.40.0.1", "eth.src")
    assert f"sent {len(replies)} unsolicited ARP replies" in spoof.summary

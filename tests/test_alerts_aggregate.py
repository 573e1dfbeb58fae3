"""Aggregation, suppression and rate limits, in capture time."""

import pytest

from engine.alerts.aggregate import Aggregator, Suppressor
from engine.alerts.config import AggregationConfig, AlertConfig, RateLimitConfig, SuppressionRule
from engine.alerts.schema import Alert, Contribution, Endpoint


def detection(t, src="10.0.0.5", dst="10.0.0.20", category="bruteforce", severity="medium", **extra):
    return Alert(category=category, severity=severity, summary=f"{category} seen",
                 technique="T1110.001" if category == "bruteforce" else None,
                 first_seen=t, last_seen=t, src=Endpoint(src), dst=Endpoint(dst, 22), **extra)


def make_aggregator(update_interval_s=60.0, quiet_period_s=300.0, per_category=0, global_limit=0, **extra):
    return Aggregator(
        AggregationConfig(update_interval_s=update_interval_s, quiet_period_s=quiet_period_s, **extra),
        RateLimitConfig(per_category_per_minute=per_category, global_per_minute=global_limit),
    )


def test_first_detection_published():
    aggregator = make_aggregator()
    published = aggregator.submit(detection(100.0))
    assert len(published) == 1
    assert published[0].revision == 1
    assert published[0].count == 1
    assert published[0].state == "open"


def test_repeats_fold_until_interval():
    aggregator = make_aggregator(update_interval_s=60.0)
    aggregator.submit(detection(100.0))
    for t in range(101, 160):
        assert aggregator.submit(detection(float(t))) == []
    update = aggregator.submit(detection(160.0))
    assert len(update) == 1
    assert update[0].revision == 2
    assert update[0].count == 61
    assert update[0].first_seen == 100.0
    assert update[0].last_seen == 160.0


def test_severity_rise_published_at_once():
    aggregator = make_aggregator()
    first = aggregator.submit(detection(100.0))[0]
    update = aggregator.submit(detection(101.0, severity="critical"))
    assert len(update) == 1
    assert update[0].severity == "critical"
    assert update[0].id == first.id
    assert aggregator.submit(detection(102.0, severity="low")) == []


def test_close_after_quiet_period():
    aggregator = make_aggregator(quiet_period_s=300.0)
    first = aggregator.submit(detection(100.0))[0]
    aggregator.submit(detection(150.0))
    assert aggregator.expire(449.0) == []
    closing = aggregator.expire(450.0)
    assert len(closing) == 1
    assert closing[0].id == first.id
    assert closing[0].state == "closed"
    assert closing[0].count == 2
    assert closing[0].revision == 2
    assert len(aggregator) == 0


def test_new_detection_after_close_opens_new_alert():
    aggregator = make_aggregator(quiet_period_s=10.0)
    first = aggregator.submit(detection(100.0))[0]
    published = aggregator.submit(detection(200.0))
    assert [a.state for a in published] == ["closed", "open"]
    assert published[0].id == first.id
    assert published[1].id != first.id


def test_scan_keyed_by_source_counts_targets():
    aggregator = make_aggregator()
    aggregator.submit(detection(1.0, category="scan", dst="10.0.0.1"))
    for i in range(2, 40):
        aggregator.submit(detection(float(i), category="scan", dst=f"10.0.0.{i}"))
    aggregator.submit(detection(40.0, category="scan", dst="10.0.0.2"))
    closing = aggregator.flush()
    assert len(closing) == 1
    assert closing[0].count == 40
    assert closing[0].distinct_targets == 39
    assert closing[0].distinct_sources == 1


def test_dos_keyed_by_target_counts_sources():
    aggregator = make_aggregator()
    for i in range(50):
        aggregator.submit(detection(float(i), category="dos", src=f"198.51.100.{i}", dst="10.0.0.80"))
    closing = aggregator.flush()
    assert len(closing) == 1
    assert closing[0].distinct_sources == 50


def test_pair_keys_separate_targets():
    aggregator = make_aggregator()
    aggregator.submit(detection(1.0, dst="10.0.0.1"))
    aggregator.submit(detection(2.0, dst="10.0.0.2"))
    assert len(aggregator) == 2


def test_strongest_detection_explains():
    aggregator = make_aggregator()
    aggregator.submit(detection(1.0, model_score=0.7, top_features=[Contribution("a", 1.0, 0.1)]))
    aggregator.submit(detection(2.0, model_score=0.95, top_features=[Contribution("b", 2.0, 0.3)]))
    aggregator.submit(detection(3.0, model_score=0.8, top_features=[Contribution("c", 3.0, 0.2)]))
    closing = aggregator.flush()[0]
    assert closing.model_score == 0.95
    assert [c.name for c in closing.top_features] == ["b"]


def test_flow_ids_capped():
    aggregator = make_aggregator(max_flow_ids=4)
    for i in range(10):
        aggregator.submit(detection(float(i), flow_ids=[i]))
    assert aggregator.flush()[0].flow_ids == [0, 1, 2, 3]


def test_distinct_set_capped():
    aggregator = make_aggregator(max_distinct_addresses=8)
    for i in range(20):
        aggregator.submit(detection(float(i), category="scan", dst=f"10.0.1.{i}"))
    closing = aggregator.flush()[0]
    assert closing.distinct_targets == 8
    assert aggregator.counters["distinct_set_full"] == 12


def test_eviction_closes_oldest():
    aggregator = make_aggregator(max_open_aggregates=3)
    first = aggregator.submit(detection(1.0, src="10.0.0.1"))[0]
    aggregator.submit(detection(2.0, src="10.0.0.2"))
    aggregator.submit(detection(3.0, src="10.0.0.3"))
    published = aggregator.submit(detection(4.0, src="10.0.0.4"))
    assert [a.state for a in published] == ["closed", "open"]
    assert published[0].id == first.id
    assert aggregator.counters["aggregates_evicted"] == 1
    assert len(aggregator) == 3


def test_rate_limit_folds_into_overflow():
    aggregator = make_aggregator(per_category=5)
    published = []
    for i in range(20):
        published += aggregator.submit(detection(1.0, src=f"10.0.2.{i}"))
    opened = [a for a in published if a.revision == 1]
    assert len(opened) == 6  # five within the limit and one overflow alert
    overflow = opened[-1]
    assert overflow.src.ip is None
    assert "Rate limit" in overflow.summary
    assert aggregator.counters["rate_limited"] == 15
    closing = {a.id: a for a in aggregator.flush()}
    assert closing[overflow.id].count == 15
    assert closing[overflow.id].distinct_sources == 15


def test_rate_limit_refills_in_capture_time():
    aggregator = make_aggregator(per_category=60)
    for i in range(60):
        aggregator.submit(detection(0.0, src=f"10.0.3.{i}"))
    assert aggregator.counters["rate_limited"] == 0
    aggregator.submit(detection(0.0, src="10.0.4.1"))
    assert aggregator.counters["rate_limited"] == 1
    # 60 per minute refills one token per second of capture time.
    aggregator.submit(detection(1.0, src="10.0.4.2"))
    assert aggregator.counters["rate_limited"] == 1


def test_million_detection_flood_bounded():
    # 1M detections from 1000 sources to 1000 targets: 1M distinct keys in
    # 100 s of capture time.
    aggregator = make_aggregator(update_interval_s=60.0, per_category=60, global_limit=300)
    sources = [detection(0.0, src=f"10.{i // 250}.{i % 250}.1") for i in range(1000)]
    targets = [Endpoint(f"172.16.{i // 250}.{i % 250}", 22) for i in range(1000)]
    published = 0
    for i in range(1_000_000):
        alert = sources[i % 1000]
        alert.dst = targets[(i // 1000) % 1000]
        alert.first_seen = alert.last_seen = i * 1e-4
        published += len(aggregator.submit(alert))
    published += len(aggregator.flush())
    # At most 60 + 100 s x 1/s new alerts, each published when opened and
    # when closed, plus the overflow alert's few revisions.
    assert aggregator.counters["submitted"] == 1_000_000
    assert aggregator.counters["aggregates_opened"] <= 60 + 100 + 1
    assert published <= 2 * (60 + 100 + 1) + 5
    assert aggregator.counters["rate_limited"] > 999_000


def test_suppression_by_cidr_and_category():
    suppressor = Suppressor([
        SuppressionRule(category="scan", src="10.0.9.0/24"),
        SuppressionRule(dst="10.5.5.5"),
    ])
    assert suppressor.is_suppressed(detection(1.0, category="scan", src="10.0.9.77"))
    assert not suppressor.is_suppressed(detection(1.0, category="bruteforce", src="10.0.9.77"))
    assert not suppressor.is_suppressed(detection(1.0, category="scan", src="10.0.8.77"))
    assert suppressor.is_suppressed(detection(1.0, dst="10.5.5.5"))
    assert suppressor.suppressed == 2


@pytest.mark.parametrize("rule, message", [
    ({}, "set at least one"),
    ({"src": "10.0.0.0/33"}, "invalid suppression src"),
    ({"dst": "host.example"}, "invalid suppression dst"),
])
def test_suppression_rule_invalid(rule, message):
    with pytest.raises(ValueError, match=message):
        SuppressionRule(**rule)


def test_config_from_mapping():
    config = AlertConfig.from_mapping({
        "sensor_id": "icu-1",
        "aggregation": {"update_interval_s": 30, "key_modes": {"scan": "source", "spoofing": "target"}},
        "rate_limits": {"per_category_per_minute": 10},
        "suppression": [{"category": "scan", "src": "10.0.0.0/8"}],
    })
    assert config.aggregation.update_interval_s == 30
    assert config.aggregation.key_mode("spoofing") == "target"
    assert config.aggregation.key_mode("bruteforce") == "pair"
    assert config.rate_limits.per_category_per_minute == 10
    assert config.suppression[0].matches("scan", "10.1.1.1", None)


@pytest.mark.parametrize("mapping, message", [
    ({"aggregation": {"quiet_period_s": 0}}, "quiet_period_s"),
    ({"aggregation": {"key_modes": {"scan": "everyone"}}}, "invalid key mode"),
    ({"rate_limits": {"global_per_minute": -1}}, "global_per_minute"),
    ({"cef_target": "syslog.example:514"}, "invalid syslog target"),
    ({"cef_format": "json"}, "invalid cef_format"),
    ({"curve_allow_dir": "/tmp"}, "curve_allow_dir"),
])
def test_config_invalid(mapping, message):
    with pytest.raises(ValueError, match=message):
        AlertConfig.from_mapping(mapping)


def test_summary_counts_detections():
    aggregator = make_aggregator()
    aggregator.submit(detection(10.0, category="scan", dst="10.0.0.1"))
    aggregator.submit(detection(25.0, category="scan", dst="10.0.0.2"))
    closing = aggregator.flush()[0]
    assert closing.summary == "scan seen (2 detections, 1 source, 2 targets over 15 s)"

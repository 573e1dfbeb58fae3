"""Recurring campaign detection and the 24 h risk ranking on hand-made alert histories."""

import calendar

import pytest

from engine.predict.campaigns import episodes_of, find_campaigns, fit_period
from engine.predict.history import Event, event_from_alert, events_from_labels
from engine.predict.risk import forecast_risk
from engine.predict.stages import NextStageModel
from engine.alerts.schema import Alert, Endpoint

DAY = 86400.0
MIDNIGHT = float(calendar.timegm((2026, 3, 2, 0, 0, 0)))
SCANNER = "198.51.100.7"
PACS = "10.10.0.18"
# Offsets in seconds from 02:00 of each night's scan: the jitter the detector must absorb.
JITTER_S = (0.0, 300.0, -600.0, 120.0, -240.0, 500.0)


def scan(time, src=SCANNER, dst=PACS):
    return Event(time, time + 60, src, dst, "scan", "T1046", "recon", "high")


def nightly_scans(nights, skip=()):
    """Three scan alerts, five minutes apart, at about 02:00 each night."""
    events = []
    for night in range(nights):
        if night in skip:
            continue
        start = MIDNIGHT + night * DAY + 2 * 3600 + JITTER_S[night]
        events += [scan(start + minute * 300) for minute in range(3)]
    return events


def test_episodes_merge_close_alerts():
    episodes = episodes_of(nightly_scans(2))
    assert len(episodes) == 2
    assert episodes[0].alerts == 3
    assert episodes[0].start == MIDNIGHT + 2 * 3600
    assert episodes[0].targets[PACS] == 3


def test_fit_period_counts_missed_night():
    starts = [MIDNIGHT, MIDNIGHT + DAY, MIDNIGHT + 3 * DAY, MIDNIGHT + 4 * DAY]
    period, phase, spread, on_schedule, numbers = fit_period(starts)
    assert period == pytest.approx(DAY)
    assert phase == pytest.approx(MIDNIGHT)
    assert spread == pytest.approx(0.0, abs=1e-3)
    assert on_schedule == 4
    assert list(numbers) == [0, 1, 3, 4]


def test_fit_period_rejects_short_bursts():
    assert fit_period([0.0, 600.0, 1200.0, 1800.0]) is None


def test_nightly_scan_predicted():
    train = nightly_scans(5)
    [campaign] = find_campaigns(train, now=MIDNIGHT + 5 * DAY)
    assert campaign.group == "source"
    assert campaign.key == SCANNER
    assert campaign.period_name == "daily"
    assert campaign.period_s == pytest.approx(DAY, rel=0.01)
    assert campaign.target == PACS
    assert campaign.target_share == 1.0
    actual = MIDNIGHT + 5 * DAY + 2 * 3600 + JITTER_S[5]
    assert campaign.next_start <= actual <= campaign.next_end
    assert campaign.next_end - campaign.next_start <= 2 * 3600
    # Five of five episodes on schedule: (5 - 1) / 5.
    assert campaign.confidence == pytest.approx(0.8)


def test_missed_night_keeps_period():
    [campaign] = find_campaigns(nightly_scans(5, skip={2}), now=MIDNIGHT + 5 * DAY)
    assert campaign.period_s == pytest.approx(DAY, rel=0.01)
    assert campaign.episodes == 4
    assert campaign.next_start <= MIDNIGHT + 5 * DAY + 2 * 3600 + JITTER_S[5] <= campaign.next_end


def test_extra_episode_is_outlier():
    train = nightly_scans(5) + [scan(MIDNIGHT + 3 * DAY + 14 * 3600)]
    [campaign] = find_campaigns(sorted(train, key=lambda e: e.time), now=MIDNIGHT + 5 * DAY)
    assert campaign.episodes == 6
    assert campaign.on_schedule == 5
    assert campaign.next_start <= MIDNIGHT + 5 * DAY + 2 * 3600 + JITTER_S[5] <= campaign.next_end


def test_missed_windows_lower_confidence():
    train = nightly_scans(5)
    [fresh] = find_campaigns(train, now=MIDNIGHT + 5 * DAY)
    [stale] = find_campaigns(train, now=MIDNIGHT + 7 * DAY)
    assert stale.confidence == pytest.approx(fresh.confidence * 0.25)
    assert stale.next_start > MIDNIGHT + 7 * DAY


def test_irregular_source_not_a_campaign():
    # Gaps of 7, 12, 14.5, 18.5 and 9 hours: no day or median period fits three starts.
    hours = [0, 7, 19, 33.5, 52, 61]
    events = [scan(MIDNIGHT + h * 3600, src="198.51.100.99") for h in hours]
    assert find_campaigns(events) == []


def test_technique_campaign_across_sources():
    # A different source address each night, same technique and target.
    events = [scan(MIDNIGHT + night * DAY + 2 * 3600, src=f"198.51.100.{night + 10}") for night in range(4)]
    [campaign] = find_campaigns(events, now=MIDNIGHT + 4 * DAY)
    assert campaign.group == "technique"
    assert campaign.key == "T1046"
    assert len(campaign.sources) == 4


def test_forecast_alerts_skip_own_kind():
    forecast = Alert(category="scan", severity="medium", summary="x", kind="forecast")
    assert event_from_alert(forecast) is None
    detection = Alert(category="scan", severity="high", summary="x", src=Endpoint(ip=SCANNER), first_seen=5.0,
                      last_seen=6.0)
    assert event_from_alert(detection).stage == "recon"


def test_events_from_labels_split_destinations():
    records = [{"attack_class": "smb_lateral", "scenario": "smb_lateral", "occurrence": 0, "src": "10.40.0.13",
                "dst": ["10.40.0.81", "10.40.0.82"], "start": 10.0, "end": 20.0}]
    events = events_from_labels(records)
    assert [e.dst for e in events] == ["10.40.0.81", "10.40.0.82"]
    assert {e.stage for e in events} == {"lateral_movement"}
    assert {e.technique for e in events} == {"T1021.002"}


def test_risk_ranks_campaign_target_first():
    train = nightly_scans(5)
    # One old alert against another server, on the first day only.
    other = Event(MIDNIGHT + 10 * 3600, MIDNIGHT + 10 * 3600, "198.51.100.50", "10.10.0.20", "bruteforce",
                  "T1110.001", "credential_access", "high")
    events = sorted(train + [other], key=lambda e: e.time)
    now = MIDNIGHT + 5 * DAY
    campaigns = find_campaigns(events, now)
    risks = forecast_risk(events, campaigns, NextStageModel().fit(events), now)
    by_address = {risk.address: risk for risk in risks}
    assert risks[0].address in (PACS, SCANNER)
    # The PACS is in alerts on 5 of the 6 days from the first alert to now, and is the campaign's target.
    assert by_address[PACS].parts["base_rate"] == pytest.approx(5 / 6)
    assert by_address[PACS].parts["campaign"] == pytest.approx(0.8)
    assert any("target of recurring scan" in line for line in by_address[PACS].evidence)
    assert by_address["10.10.0.20"].risk == pytest.approx(1 / 6, abs=1e-4)
    assert by_address["10.10.0.20"].risk < by_address[PACS].risk

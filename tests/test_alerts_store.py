"""Alert store and sink: gap-free seq, persist before publish, privacy, run statistics."""

import sqlite3

import pytest

from engine.alerts.config import AlertConfig, SuppressionRule
from engine.alerts.schema import Alert, Endpoint, unpack_alert
from engine.alerts.sink import AlertSink
from engine.alerts.store import AlertStore, RunStats, read_run_stats, write_run_stats
from engine.privacy import Pseudonymizer, generate_key_file


def detection(t, src="10.0.0.5", dst="10.0.0.20", category="bruteforce", severity="medium", **extra):
    return Alert(category=category, severity=severity, summary="SSH password guessing",
                 technique="T1110.001", first_seen=t, last_seen=t,
                 src=Endpoint(src, 40000), dst=Endpoint(dst, 22), protocol="tcp", **extra)


def offline_config(**overrides):
    config = AlertConfig(sensor_id="ward-3", bus_endpoint=None, replay_endpoint=None)
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def test_seq_gap_free(tmp_path):
    with AlertStore(tmp_path / "s.db") as store:
        seqs = [store.append(detection(float(i), src=f"10.0.0.{i}")).seq for i in range(1, 50)]
        assert seqs == list(range(1, 50))
        assert store.last_seq() == 49


def test_failed_append_uses_no_seq(tmp_path):
    with AlertStore(tmp_path / "s.db") as store:
        store.append(detection(1.0))
        broken = detection(2.0)
        broken.evidence = {"value": object()}  # msgpack cannot encode it
        with pytest.raises(TypeError):
            store.append(broken)
        assert broken.seq is None
        assert store.append(detection(3.0)).seq == 2


def test_events_since_pages_and_topics(tmp_path):
    with AlertStore(tmp_path / "s.db") as store:
        for i in range(10):
            severity = "high" if i % 2 else "low"
            store.append(detection(float(i), src=f"10.0.0.{i}", severity=severity))
        assert [e.seq for e in store.events_since(3, 7)] == [4, 5, 6, 7]
        assert [e.seq for e in store.events_since(0, None, limit=3)] == [1, 2, 3]
        high = store.events_since(0, None, topic_prefixes=("alert.high.",))
        assert [e.seq for e in high] == [2, 4, 6, 8, 10]
        assert unpack_alert(high[0].body).seq == 2


def test_sink_persists_before_return(tmp_path):
    path = tmp_path / "s.db"
    with AlertSink(path, offline_config()) as sink:
        published = sink.submit(detection(5.0))
        # The row is committed, so a second connection reads it at once.
        other = sqlite3.connect(path)
        row = other.execute("SELECT seq, alert_id, topic FROM alert_events").fetchone()
        other.close()
    assert row == (1, published[0].id, "alert.medium.bruteforce")
    assert published[0].sensor_id == "ward-3"


def test_sink_closes_aggregates_on_exit(tmp_path):
    path = tmp_path / "s.db"
    with AlertSink(path, offline_config()) as sink:
        for t in range(5):
            sink.submit(detection(float(t)))
    with AlertStore(path) as store:
        alerts = store.list_alerts()
        assert len(alerts) == 1
        assert alerts[0].state == "closed"
        assert alerts[0].count == 5
        assert alerts[0].revision == 2
        assert store.last_seq() == 2


def test_sink_suppression_uses_real_address(tmp_path):
    key_file = generate_key_file(tmp_path / "p.key")
    config = offline_config(suppression=[SuppressionRule(src="10.0.0.0/24")],
                            pseudonymize_key_file=str(key_file))
    with AlertSink(tmp_path / "s.db", config) as sink:
        assert sink.submit(detection(1.0, src="10.0.0.9")) == []
        assert len(sink.submit(detection(1.0, src="10.0.1.9"))) == 1
        assert sink.stats()["suppressed"] == 1


def test_sink_strips_sensitive_evidence(tmp_path):
    evidence = {
        "payload": b"MSH|^~\\&|...",
        "hl7_pid": "PID|1||123456^^^HOSP||DOE^JANE",
        "sensitive.note": "x",
        "message_type": "ADT^A01",
        "nested": {"dicom_patient_name": "DOE^JANE", "sop_class": "1.2.840.10008.5.1.4.1.1.2", "raw": b"\x00"},
    }
    with AlertSink(tmp_path / "s.db", offline_config()) as sink:
        published = sink.publish(detection(1.0, evidence=evidence))
    assert published.evidence == {"message_type": "ADT^A01", "nested": {"sop_class": "1.2.840.10008.5.1.4.1.1.2"}}
    with AlertStore(tmp_path / "s.db") as store:
        stored = store.get_alert(published.id)
    assert "hl7_pid" not in stored.evidence
    assert b"DOE" not in store_bytes(tmp_path / "s.db")


def store_bytes(path):
    connection = sqlite3.connect(path)
    blobs = b"".join(row[0] for row in connection.execute("SELECT body FROM alert_events"))
    connection.close()
    return blobs


def test_sink_keeps_evidence_when_opted_in(tmp_path):
    with AlertSink(tmp_path / "s.db", offline_config(include_evidence=True)) as sink:
        published = sink.publish(detection(1.0, evidence={"hl7_pid": "PID|1||42"}))
    assert published.evidence == {"hl7_pid": "PID|1||42"}


def test_sink_pseudonymizes(tmp_path):
    key_file = generate_key_file(tmp_path / "p.key")
    pseudonymizer = Pseudonymizer.from_key_file(key_file)
    alert = detection(1.0, community_id="1:abc=")
    alert.src.user = "alice"
    alert.src.mac = "00:11:22:33:44:55"
    with AlertSink(tmp_path / "s.db", offline_config(pseudonymize_key_file=str(key_file))) as sink:
        published = sink.publish(alert)
    assert published.src.ip == pseudonymizer.ip("10.0.0.5")
    assert published.dst.ip == pseudonymizer.ip("10.0.0.20")
    assert published.src.user == pseudonymizer.text("alice", "user")
    assert published.src.mac == pseudonymizer.mac("00:11:22:33:44:55")
    assert published.community_id == pseudonymizer.text("1:abc=", "community_id")
    assert alert.src.ip == "10.0.0.5"  # the producer's object is left as it was
    assert b"10.0.0.5" not in store_bytes(tmp_path / "s.db")
    assert b"alice" not in store_bytes(tmp_path / "s.db")


def test_list_filters(tmp_path):
    path = tmp_path / "s.db"
    with AlertSink(path, offline_config()) as sink:
        sink.publish(detection(100.0, severity="low", src="10.0.0.1"))
        sink.publish(detection(200.0, severity="high", src="10.0.0.2"))
        sink.publish(detection(300.0, severity="critical", category="scan", src="10.0.0.3"))
    with AlertStore(path) as store:
        assert [a.src.ip for a in store.list_alerts()] == ["10.0.0.3", "10.0.0.2", "10.0.0.1"]
        assert [a.src.ip for a in store.list_alerts(severity="high")] == ["10.0.0.3", "10.0.0.2"]
        assert [a.src.ip for a in store.list_alerts(since=150.0)] == ["10.0.0.3", "10.0.0.2"]
        assert [a.src.ip for a in store.list_alerts(category="bruteforce")] == ["10.0.0.2", "10.0.0.1"]


def test_get_by_id_or_seq(tmp_path):
    path = tmp_path / "s.db"
    with AlertSink(path, offline_config()) as sink:
        first = sink.submit(detection(1.0))[0]
        sink.submit(detection(2.0, severity="high"))
    with AlertStore(path) as store:
        latest = store.get_alert(first.id)
        assert latest.revision == 3  # opened, severity rise, closed
        assert store.get_alert("1").revision == 1
        assert store.get_alert("2").severity == "high"
        assert store.get_alert("99") is None


def test_run_stats_round_trip(tmp_path):
    path = tmp_path / "s.db"
    with AlertStore(path) as store:
        stats = RunStats(sensor_id="ward-3", source="a.pcap")
        write_run_stats(store.conn, stats)
        stats.packets, stats.flows, stats.ended_at = 1200, 40, stats.started_at + 2.5
        stats.anomaly_counters = {"truncated_ip": 3}
        write_run_stats(store.conn, stats)
        loaded = read_run_stats(store.conn, stats.run_id)
    assert loaded == stats


def test_received_deduplicated(tmp_path):
    with AlertStore(tmp_path / "sensor.db") as sensor:
        publication = sensor.append(detection(1.0, sensor_id="ward-3"))
    with AlertStore(tmp_path / "merged.db") as merged:
        assert merged.append_received(publication.topic, publication.body) == 1
        assert merged.append_received(publication.topic, publication.body) is None
        rows = list(merged.iter_events())
    assert [(seq, sensor_id, sensor_seq) for seq, sensor_id, sensor_seq, _ in rows] == [(1, "ward-3", 1)]

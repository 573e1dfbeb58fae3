"""The alerts, keys and collect commands through Click's test runner."""

import json
import os
import stat

import zmq.auth
from click.testing import CliRunner

from engine.alerts.commands import EXIT_NOT_FOUND
from engine.alerts.config import AlertConfig
from engine.alerts.schema import Alert, Endpoint
from engine.alerts.sink import AlertSink
from engine.cli import main


def fill_store(path):
    config = AlertConfig(sensor_id="ward-3", bus_endpoint=None, replay_endpoint=None)
    with AlertSink(path, config) as sink:
        sink.publish(Alert("scan", "low", "Port scan", technique="T1046", first_seen=100.0, last_seen=100.0,
                           src=Endpoint("10.0.0.1"), dst=Endpoint("10.0.0.2", 22)))
        return sink.publish(Alert("bruteforce", "high", "SSH guessing", technique="T1110.001",
                                  first_seen=200.0, last_seen=250.0, src=Endpoint("10.0.0.7", 40000),
                                  dst=Endpoint("10.0.0.2", 22)))


def test_list_text_and_json(tmp_path):
    store = tmp_path / "s.db"
    fill_store(store)
    runner = CliRunner()
    text = runner.invoke(main, ["alerts", "list", "--store", str(store)])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert len(lines) == 2
    assert "bruteforce" in lines[0]
    assert "10.0.0.7:40000 -> 10.0.0.2:22" in lines[0]
    as_json = runner.invoke(main, ["alerts", "list", "--store", str(store), "--json", "--severity", "high"])
    records = [json.loads(line) for line in as_json.output.splitlines()]
    assert [r["category"] for r in records] == ["bruteforce"]


def test_list_since_iso_time(tmp_path):
    store = tmp_path / "s.db"
    fill_store(store)
    result = CliRunner().invoke(main, ["alerts", "list", "--store", str(store), "--since", "1970-01-01T00:03:00"])
    assert result.exit_code == 0
    assert len(result.output.splitlines()) == 1


def test_list_rejects_unknown_category_and_nan(tmp_path):
    store = tmp_path / "s.db"
    fill_store(store)
    runner = CliRunner()
    typo = runner.invoke(main, ["alerts", "list", "--store", str(store), "--category", "scna"])
    assert typo.exit_code == 2
    assert "'scna' is not one of" in typo.output
    nan = runner.invoke(main, ["alerts", "list", "--store", str(store), "--since", "nan"])
    assert nan.exit_code == 2
    assert "invalid time 'nan'" in nan.output
    scans = runner.invoke(main, ["alerts", "list", "--store", str(store), "--category", "scan"])
    assert scans.exit_code == 0, scans.output
    assert len(scans.output.splitlines()) == 1


def test_list_missing_store(tmp_path):
    result = CliRunner().invoke(main, ["alerts", "list", "--store", str(tmp_path / "none.db")])
    assert result.exit_code == 1
    assert "not found" in result.output


def test_show_by_id_and_seq(tmp_path):
    store = tmp_path / "s.db"
    alert = fill_store(store)
    by_id = CliRunner().invoke(main, ["alerts", "show", "--store", str(store), alert.id])
    assert json.loads(by_id.output)["seq"] == 2
    by_seq = CliRunner().invoke(main, ["alerts", "show", "--store", str(store), "1"])
    assert json.loads(by_seq.output)["category"] == "scan"
    missing = CliRunner().invoke(main, ["alerts", "show", "--store", str(store), "77"])
    assert missing.exit_code == EXIT_NOT_FOUND


def test_keys_generate(tmp_path):
    out = tmp_path / "keys"
    result = CliRunner().invoke(main, ["keys", "generate", "--out", str(out), "--name", "sensor1",
                                       "--pseudonymization-key"])
    assert result.exit_code == 0, result.output
    public, secret = zmq.auth.load_certificate(str(out / "sensor1.key_secret"))
    assert len(public) == 40
    assert len(secret) == 40
    assert zmq.auth.load_certificate(str(out / "sensor1.key"))[1] is None
    assert stat.S_IMODE(os.stat(out / "sensor1.key_secret").st_mode) == 0o600
    assert len((out / "pseudonymization.key").read_text().strip()) == 64
    again = CliRunner().invoke(main, ["keys", "generate", "--out", str(out), "--name", "sensor1"])
    assert again.exit_code == 1
    assert "already exists" in again.output


def test_keys_add_pseudonymization_key_only(tmp_path):
    # A key directory made for CURVE gets its pseudonymization key later,
    # and the certificates stay as they were.
    out = tmp_path / "keys"
    runner = CliRunner()
    assert runner.invoke(main, ["keys", "generate", "--out", str(out)]).exit_code == 0
    certificate = (out / "server.key_secret").read_bytes()
    added = runner.invoke(main, ["keys", "generate", "--out", str(out), "--pseudonymization-key", "--no-curve"])
    assert added.exit_code == 0, added.output
    assert len((out / "pseudonymization.key").read_text().strip()) == 64
    assert (out / "server.key_secret").read_bytes() == certificate
    assert sorted(path.name for path in out.iterdir()) == ["pseudonymization.key", "server.key", "server.key_secret"]
    nothing = runner.invoke(main, ["keys", "generate", "--out", str(out), "--no-curve"])
    assert nothing.exit_code == 2
    assert "--no-curve writes nothing without --pseudonymization-key" in nothing.output


def test_tail_since_needs_replay():
    result = CliRunner().invoke(main, ["alerts", "tail", "--connect", "tcp://127.0.0.1:1", "--since", "4"])
    assert result.exit_code == 2
    assert "--replay" in result.output


def test_sink_options_build_config(tmp_path):
    import click

    from engine.alerts.commands import alert_config_from_options, alert_sink_options

    key_file = tmp_path / "p.key"
    key_file.write_text("ab" * 32 + "\n")
    captured = {}

    @click.command()
    @alert_sink_options
    def producer(**options):
        captured["config"] = alert_config_from_options(options)

    result = CliRunner().invoke(producer, [
        "--sensor-id", "icu-2", "--no-bus", "--eve", str(tmp_path / "eve.json"),
        "--cef", "tcp://127.0.0.1:6514", "--cef-format", "rfc3164",
        "--pseudonymize", str(key_file), "--include-evidence",
    ])
    assert result.exit_code == 0, result.output
    config = captured["config"]
    assert config.sensor_id == "icu-2"
    assert config.bus_endpoint is None
    assert config.replay_endpoint is None
    assert config.eve_path == str(tmp_path / "eve.json")
    assert config.cef_target == "tcp://127.0.0.1:6514"
    assert config.cef_format == "rfc3164"
    assert config.pseudonymize_key_file == str(key_file)
    assert config.include_evidence is True


def test_sink_options_reject_bad_target():
    import click

    from engine.alerts.commands import alert_config_from_options, alert_sink_options

    @click.command()
    @alert_sink_options
    def producer(**options):
        alert_config_from_options(options)

    result = CliRunner().invoke(producer, ["--cef", "syslog.local:514"])
    assert result.exit_code == 2
    assert "invalid syslog target" in result.output


def test_line_brackets_ipv6_port():
    from engine.alerts.commands import format_alert_line

    alert = Alert("scan", "low", "Port scan", first_seen=0.0, last_seen=0.0,
                  src=Endpoint("2001:db8::5", 40000), dst=Endpoint("10.0.0.2", 22))
    assert "[2001:db8::5]:40000 -> 10.0.0.2:22" in format_alert_line(alert)

"""Text of `wardwatch predict` when a recurring campaign's alerts name no target."""

import calendar

from click.testing import CliRunner

from engine.alerts.schema import Alert, Endpoint
from engine.alerts.store import AlertStore
from engine.cli import main
from engine.predict.campaigns import find_campaigns
from engine.predict.history import Event

DAY = 86400.0
MIDNIGHT = float(calendar.timegm((2026, 3, 2, 0, 0, 0)))
SCANNER = "198.51.100.7"
PACS = "10.10.0.18"
# Offsets in seconds from 02:00 of each night's sweep.
JITTER_S = (0.0, 240.0, -300.0, 60.0, 180.0)


def nightly_events(dst, technique):
    # Event fields: time, end, src, dst, category, technique, stage, severity.
    return [Event(MIDNIGHT + night * DAY + 2 * 3600 + jitter, MIDNIGHT + night * DAY + 2 * 3600 + jitter + 90,
                  SCANNER, dst, "scan", technique, "recon", "high")
            for night, jitter in enumerate(JITTER_S)]


def test_describe_names_known_target():
    [campaign] = find_campaigns(nightly_events(PACS, "T1046"), now=MIDNIGHT + 5 * DAY)
    text = campaign.describe()
    assert text.startswith(f"scan (T1046) from source {SCANNER} recurs daily over 5 episodes")
    assert text.endswith(f"target {PACS} in 100% of them")


def test_describe_without_target_or_technique():
    [campaign] = find_campaigns(nightly_events(None, ""), now=MIDNIGHT + 5 * DAY)
    assert campaign.target == ""
    text = campaign.describe()
    assert text.startswith(f"scan from source {SCANNER} recurs daily")
    assert text.endswith("no destination address in its alerts, so the target is unknown")
    assert "  " not in text
    assert "0%" not in text
    assert "()" not in text


def test_cli_text_without_target(tmp_path):
    path = tmp_path / "alerts.db"
    with AlertStore(path) as store:
        for night, jitter_s in enumerate(JITTER_S):
            start = MIDNIGHT + night * DAY + 2 * 3600 + jitter_s
            # A broadcast sweep: the alert has a source but no destination address.
            store.append(Alert(category="scan", severity="high", summary="ARP sweep", technique="T1046",
                               sensor_id="s1", first_seen=start, last_seen=start + 90,
                               src=Endpoint(ip=SCANNER), dst=Endpoint(ip=None)))
    result = CliRunner().invoke(main, ["predict", "--store", str(path), "--now", str(MIDNIGHT + 5 * DAY)])
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if "recurs daily" in line]
    assert " -> unknown target: scan (T1046) from source" in line
    assert line.endswith("so the target is unknown")
    assert "?" not in line
    assert "  in" not in line

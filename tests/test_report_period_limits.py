"""`report --since` and `--until` out of the printable range are usage errors, not tracebacks."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.report.cli import MAX_PERIOD_DAYS

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "engine" / "data" / "sample.pcap"


def run_cli(*arguments):
    return CliRunner().invoke(main, [str(argument) for argument in arguments])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "ward.db"
    result = run_cli("analyze", "--no-bus", "-q", "--store", path, SAMPLE)
    assert result.exit_code == 0, result.output
    return path


# 400 nines overflow a float to infinity.
@pytest.mark.parametrize("since", ["99999999w", f"{MAX_PERIOD_DAYS + 1}d", "9" * 400 + "s"])
def test_since_too_long(store, since):
    result = run_cli("report", "--store", store, "--since", since)
    assert result.exit_code == 2, result.output
    assert f"invalid period '{since}'; expected at most {MAX_PERIOD_DAYS}d" in result.output
    assert "Traceback" not in result.output


def test_since_at_limit_renders_html(store, tmp_path):
    # The maximum period still prints every date of the HTML page.
    output = tmp_path / "report.html"
    result = run_cli("report", "--store", store, "--since", f"{MAX_PERIOD_DAYS}d", "-o", output)
    assert result.exit_code == 0, result.output
    assert output.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_until_before_1970(store):
    result = run_cli("report", "--store", store, "--until", "0001-01-02")
    assert result.exit_code == 2, result.output
    assert "invalid time '0001-01-02'; capture times start at 1970-01-01" in result.output


def test_until_at_epoch_with_maximum_period(store, tmp_path):
    output = tmp_path / "report.html"
    result = run_cli("report", "--store", store, "--until", "1970-01-01", "--since", f"{MAX_PERIOD_DAYS}d",
                     "-o", output)
    assert result.exit_code == 0, result.output

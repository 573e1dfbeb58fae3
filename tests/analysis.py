"""Helpers for tests that simulate a capture and read the alerts `analyze` stores."""

import json

from click.testing import CliRunner

from engine.cli import main


def analyze_alerts(store, capture) -> list[dict]:
    """Analyse one capture into `store` and return its alerts as `alerts list --json` prints them."""
    runner = CliRunner()
    result = runner.invoke(main, ["analyze", "-q", "--no-bus", "--store", str(store), str(capture)])
    assert result.exit_code == 0, result.output
    listed = runner.invoke(main, ["alerts", "list", "--store", str(store), "--json"])
    assert listed.exit_code == 0, listed.output
    return [json.loads(line) for line in listed.output.splitlines() if line.strip()]


def simulate(capture, *arguments) -> list[dict]:
    """Write a simulated capture with `wardwatch simulate ARGUMENTS`; return its labels."""
    result = CliRunner().invoke(main, ["simulate", *arguments, "-o", str(capture)])
    assert result.exit_code == 0, result.output
    labels_path = capture.with_name(capture.stem + ".labels.jsonl")
    return [json.loads(line) for line in labels_path.read_text().splitlines()]

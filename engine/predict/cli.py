"""`wardwatch predict`: recurring campaigns, next stages and 24 h asset risk; `predict evaluate`.

Exit codes: 0 success; 1 the store or label file is missing or invalid;
2 usage error (Click).
"""

from __future__ import annotations

import datetime
import json
import os

import click

from engine.alerts.commands import alert_config_from_options, alert_sink_options
from engine.store import default_store_path


# Shown where a campaign's alerts carry no destination address; forecast
# alert summaries use the same words.
UNKNOWN_TARGET = "unknown target"


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _load_events(store_path, labels_path):
    from engine.predict.history import events_from_labels, events_from_store
    from engine.simulate.labels import read_labels

    if labels_path is not None:
        try:
            return events_from_labels(read_labels(labels_path))
        except (OSError, ValueError, KeyError) as error:
            raise click.ClickException(f"cannot read labels {labels_path}: {error}") from None
    from engine.store import check_store_tables, open_store

    path = store_path or default_store_path()
    if not os.path.isfile(path):
        raise click.ClickException(f"store {path} not found; pass --store PATH or --labels FILE")
    # Only --publish writes, and it opens the store again through the sink.
    conn = open_store(path, read_only=True)
    try:
        missing = check_store_tables(conn, path, {"alerts": ("kind", "first_seen", "body")})
        if missing:
            raise click.ClickException(f"store {path} has no alerts table; run a sensor into it first")
        return events_from_store(conn)
    finally:
        conn.close()


# --now must leave room for the forecast horizon (at most 14 days) before
# the last date Python can print, 9999-12-31.
EARLIEST_TIME_S = 0.0
LATEST_TIME_S = datetime.datetime(9999, 12, 1, tzinfo=datetime.timezone.utc).timestamp()


def _parse_time(value):
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise click.BadParameter(f"invalid time {value!r}; expected epoch seconds or ISO 8601 (UTC)") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        seconds = moment.timestamp()
    if not EARLIEST_TIME_S <= seconds <= LATEST_TIME_S:
        raise click.BadParameter(
            f"invalid time {value!r}; expected a time from 1970-01-01 to 9999-12-01 UTC"
        )
    return seconds


def _source_options(function):
    function = click.option("--labels", "labels_path", type=click.Path(dir_okay=False), default=None,
                            help="Use a simulator label file as the history instead of the store.")(function)
    return click.option("--store", "store_path", type=click.Path(dir_okay=False), default=None,
                        help="SQLite store with the alert history (default: $WARDWATCH_STORE or ./wardwatch.db).")(function)


@click.group("predict", invoke_without_command=True)
@_source_options
@click.option("--now", "now_text", default=None,
              help="Reference time (epoch seconds or ISO 8601, UTC); default: the newest alert's time.")
@click.option("--horizon-h", type=click.FloatRange(min=1, max=24 * 14), default=24.0, show_default=True,
              help="Forecast horizon in hours.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.6, show_default=True,
              help="Confidence at or above which a prediction becomes a forecast alert.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Assets listed by risk.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
@click.option("--publish", is_flag=True, help="Publish forecast alerts to the store and the bus (see the sink options).")
@alert_sink_options
@click.pass_context
def predict(ctx, store_path, labels_path, now_text, horizon_h, min_confidence, top, as_json, publish, **sink_options):
    """Predict recurring attacks, next attack stages and per-asset risk from alert history."""
    if ctx.invoked_subcommand is not None:
        return
    from engine.predict.forecast import forecast_alerts
    from engine.predict.forecast import predict as run_predict

    events = _load_events(store_path, labels_path)
    if not events:
        raise click.ClickException("the history has no alerts with an attack stage; nothing to predict from")
    predictions = run_predict(events, _parse_time(now_text), horizon_h * 3600)
    alerts = forecast_alerts(predictions, events, min_confidence)
    if as_json:
        click.echo(json.dumps(_as_json(predictions, alerts, top), indent=2, sort_keys=True, default=str))
    else:
        _print_text(predictions, alerts, top)
    if publish and alerts:
        from engine.alerts.sink import AlertSink

        config = alert_config_from_options(sink_options)
        with AlertSink(store_path, config) as sink:
            for alert in alerts:
                sink.publish(alert)
        click.echo(f"published {len(alerts)} forecast alerts", err=True)


def _as_json(predictions, alerts, top):
    import dataclasses

    return {
        "now": predictions.now, "horizon_s": predictions.horizon_s, "events": predictions.events,
        "campaigns": [dataclasses.asdict(c) for c in predictions.campaigns],
        "next_stages": [dataclasses.asdict(s) for s in predictions.stages],
        "risk": [dataclasses.asdict(r) for r in predictions.risks[:top]],
        "forecast_alerts": [a.to_dict() for a in alerts],
    }


def _print_text(predictions, alerts, top):
    click.echo(f"history: {predictions.events} alerts up to {_utc(predictions.now)} UTC; "
               f"horizon {predictions.horizon_s / 3600:.0f} h")
    click.echo(f"\nrecurring campaigns ({len(predictions.campaigns)}):")
    for campaign in predictions.campaigns:
        click.echo(f"  [{campaign.confidence:.2f}] next {_utc(campaign.next_start)}..{_utc(campaign.next_end)} UTC"
                   f" -> {campaign.target or UNKNOWN_TARGET}: {campaign.describe()}")
    click.echo(f"\nnext stage of open attack threads ({len(predictions.stages)}):")
    for stage in predictions.stages:
        click.echo(f"  [{stage.probability:.2f}] {stage.source}: {stage.current_stage} -> {stage.next_stage}"
                   f" (from {stage.support} past transitions out of {stage.current_stage})")
    click.echo(f"\nasset risk, next {predictions.horizon_s / 3600:.0f} h (top {top}):")
    for risk in predictions.risks[:top]:
        click.echo(f"  {risk.risk:.2f} {risk.address}: {'; '.join(risk.evidence)}")
    click.echo(f"\nforecast alerts at the confidence threshold: {len(alerts)}")
    for alert in alerts:
        click.echo(f"  {alert.category}: {alert.summary}")


@predict.command("evaluate")
@_source_options
@click.option("--train-days", type=click.IntRange(min=1), required=True,
              help="Whole UTC days of history to train on; the following day is predicted.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
def evaluate_command(store_path, labels_path, train_days, as_json):
    """Train on the first days of the history and score the predictions for the next day."""
    import dataclasses

    from engine.predict.evaluate import evaluate

    events = _load_events(store_path, labels_path)
    try:
        result = evaluate(events, train_days)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        document = dataclasses.asdict(result)
        click.echo(json.dumps(document, indent=2, sort_keys=True, default=str))
        return
    click.echo(f"train: {result.train_events} alerts before {_utc(result.split)} UTC; "
               f"test: {result.test_events} alerts in the next 24 h")
    due = [check for check in result.campaigns if check.due]
    hits = sum(1 for check in due if check.in_window and check.target_correct)
    not_due = [check for check in result.campaigns if not check.due]
    absent = sum(1 for check in not_due if check.actual_start is None)
    click.echo(f"\nrecurring campaigns due in the test day: {hits} of {len(due)} predicted in window with the "
               f"right target; not due: {len(not_due)}, of which {absent} correctly absent")
    for check in result.campaigns:
        campaign = check.campaign
        actual = _utc(check.actual_start) if check.actual_start is not None else "did not occur"
        if check.due:
            verdict = (f"window {'hit' if check.in_window else 'miss'}, "
                       f"target {'hit' if check.target_correct else 'miss'}")
        else:
            verdict = "not due, " + ("correctly absent" if check.actual_start is None else "came early")
        click.echo(f"  {campaign.group} {campaign.key} {campaign.category}: predicted "
                   f"{_utc(campaign.next_start)}..{_utc(campaign.next_end)} -> {campaign.target or UNKNOWN_TARGET};"
                   f" actual {actual} -> {check.actual_target or '-'}; {verdict}"
                   f" (confidence {campaign.confidence:.2f})")
    click.echo(f"\nnext stage on {result.model.total} test transitions "
               f"({result.train_transitions} training transitions):")
    for name, scores in (("markov", result.model), (f"baseline ({result.baseline_stage})", result.baseline)):
        click.echo(f"  {name:<28} precision {scores.precision:.3f} recall {scores.recall:.3f} "
                   f"macro precision {scores.macro_precision:.3f} macro recall {scores.macro_recall:.3f}")

"""`wardwatch respond`: act on alerts from the bus; `respond list` and `respond undo ID`.

Exit codes: 0 success; 1 the responder or undo failed (invalid playbook,
store missing, nft failed); 2 usage error (Click); 3 no action with that ID;
4 the undo is recorded but the bus command's release was not published
within --wait-s (it stays pending for the responder to send).
"""

from __future__ import annotations

import json
import signal
import sys
import threading

import click

from engine.store import default_store_path, open_store

EXIT_NOT_FOUND = 3
EXIT_RELEASE_PENDING = 4
# How often `respond undo` rereads the store while it waits for the release.
RELEASE_POLL_S = 0.1


def _store_option(function):
    return click.option(
        "--store", "store_path", type=click.Path(dir_okay=False), default=None,
        help="SQLite store for action records (default: $WARDWATCH_STORE or ./wardwatch.db).",
    )(function)


@click.group("respond", invoke_without_command=True)
@click.option("--playbook", "playbook_path", type=click.Path(dir_okay=False), default=None,
              help="Playbook TOML file (see engine/data/playbook.example.toml).")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), default=None,
              help="TOML file listing life-critical assets by ip, mac, network or role.")
@click.option("--connect", multiple=True, help="Alert bus endpoint to subscribe to; repeat for several sensors.")
@click.option("--replay", multiple=True, help="A sensor's replay endpoint, to fill gaps; repeatable.")
@_store_option
@click.option("--apply", "apply_changes", is_flag=True,
              help="Make changes. Without it the responder only prints and records what it would do, "
                   "unless the playbook sets dry_run = false.")
@click.option("--dry-run", "force_dry_run", is_flag=True, help="Make no changes, even if the playbook sets dry_run = false.")
@click.option("--command-bind", default=None,
              help="PUB endpoint for enforcer commands (bus_command actions, escalations), e.g. tcp://0.0.0.0:5560.")
@click.option("--topic", "topics", multiple=True, help="Alert topic prefix to subscribe to (default: alert.).")
@click.option("--actor", default=None, help="Name recorded as who acted (default: wardwatch-respond/USER@HOST).")
@click.option("--idle-exit-s", type=click.FloatRange(min=0.1), default=None,
              help="Exit after this many seconds without an alert.")
@click.pass_context
def respond(ctx, playbook_path, policy_path, connect, replay, store_path, apply_changes, force_dry_run,
            command_bind, topics, actor, idle_exit_s):
    """Run response playbooks on alerts from the bus (dry run unless --apply)."""
    if ctx.invoked_subcommand is not None:
        return
    if playbook_path is None:
        raise click.UsageError("missing --playbook FILE")
    if not connect:
        raise click.UsageError("missing --connect ENDPOINT: the alert bus to subscribe to")
    if apply_changes and force_dry_run:
        raise click.UsageError("--apply and --dry-run contradict each other; pass one")

    from engine.alerts.bus import GapFillingSubscriber, ReplayError
    from engine.respond.actions import CommandPublisher
    from engine.respond.guards import load_policy
    from engine.respond.nft import NftError
    from engine.respond.playbook import PlaybookError, check_command_bus, load_playbook
    from engine.respond.responder import Responder
    from engine.respond.service import run_responder

    try:
        playbook = load_playbook(playbook_path)
        policy = load_policy(policy_path, playbook.life_critical_roles)
    except PlaybookError as error:
        raise click.ClickException(str(error)) from None
    dry_run = playbook.dry_run
    if apply_changes:
        dry_run = False
    if force_dry_run:
        dry_run = True
    try:
        check_command_bus(playbook, command_bind)
    except PlaybookError as error:
        if not dry_run:
            raise click.ClickException(str(error)) from None
        click.echo(f"respond: warning: {error}", err=True)

    commands = None
    try:
        conn = open_store(store_path or default_store_path())
        if command_bind:
            commands = CommandPublisher(command_bind)
        responder = Responder(playbook, conn, policy, dry_run=dry_run, commands=commands, actor=actor)
        responder.prepare()
    except (OSError, NftError) as error:
        if commands is not None:
            commands.close()
        raise click.ClickException(str(error)) from None

    from engine.respond.positions import load_positions

    try:
        resume_from = load_positions(conn)
        subscriber = GapFillingSubscriber(list(connect), topics=list(topics) or None, replay=list(replay),
                                          positions=resume_from)
    except ValueError as error:
        if commands is not None:
            commands.close()
        conn.close()
        raise click.BadParameter(str(error)) from error
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    mode = "DRY RUN: nothing will be changed" if dry_run else "ENFORCING"
    click.echo(f"respond: {mode}; playbook {playbook_path}, {len(playbook.rules)} rules", err=True)
    if resume_from:
        click.echo(f"respond: resuming {len(resume_from)} alert streams after the last seq handled in each"
                   + ("" if replay else "; without --replay, alerts published while stopped are missed"), err=True)
    try:
        run_responder(responder, subscriber, stop, idle_exit_s)
    except KeyboardInterrupt:
        pass
    except ReplayError as error:
        raise click.ClickException(str(error)) from None
    finally:
        subscriber.close()
        if commands is not None:
            commands.close()
        conn.close()
    counters = responder.counters
    click.echo(f"handled {counters['alerts']} alerts: {counters['status_applied']} applied, "
               f"{counters['status_dry_run']} dry-run, {counters['status_escalated']} escalated, "
               f"{counters['status_failed']} failed, {counters['status_skipped_rate_cap']} over the cap", err=True)


def _open_existing(store_path):
    import os

    from engine.respond import records

    path = store_path or default_store_path()
    if not os.path.isfile(path):
        raise click.ClickException(f"store {path} not found; pass --store PATH")
    conn = open_store(path)
    records.ensure_schema(conn)
    return conn


@respond.command("list")
@_store_option
@click.option("--status", default=None, help="Only actions with this status, e.g. applied or escalated.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many actions.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_command(store_path, status, limit, as_json):
    """List recorded response actions, newest first."""
    import datetime

    from engine.respond import records

    conn = _open_existing(store_path)
    try:
        for record in records.list_actions(conn, status, limit):
            if as_json:
                click.echo(json.dumps(record.to_dict(), sort_keys=True))
                continue
            created = datetime.datetime.fromtimestamp(record.created_at, tz=datetime.timezone.utc)
            expiry = "-"
            if record.expires_at is not None:
                ends = datetime.datetime.fromtimestamp(record.expires_at, tz=datetime.timezone.utc)
                # The time of day alone read as already past for a one-day block.
                expiry = f"{ends:%H:%M:%S}" if ends.date() == created.date() else f"{ends:%Y-%m-%d %H:%M:%S}"
            click.echo(f"{record.id} {created:%Y-%m-%d %H:%M:%S} {record.status:<17} {record.action:<11}"
                       f" {record.subject or '-':<20} until {expiry} by {record.actor}: {record.reason}"
                       + (f"; {record.detail['why']}" if record.detail.get("why") else ""))
    finally:
        conn.close()


@respond.command("undo")
@_store_option
@click.argument("action_id")
@click.option("--actor", default=None, help="Name recorded as who undid it (default: USER@HOST).")
@click.option("--nft-command", default=None,
              help="nft command prefix to use instead of the recorded one, e.g. 'ip netns exec fw nft'.")
@click.option("--wait-s", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="Seconds to wait for the running responder to publish a bus command's release.")
def undo_command(store_path, action_id, actor, nft_command, wait_s):
    """Revert an applied action: remove its nftables element or release its bus command, and mark it undone."""
    from engine.respond.nft import NftError
    from engine.respond.responder import default_actor, undo_action

    conn = _open_existing(store_path)
    try:
        record = undo_action(conn, action_id, actor or default_actor(),
                             nft_command=tuple(nft_command.split()) if nft_command else None)
        if "release" in record.detail:
            record = _wait_for_release(conn, record, wait_s)
    except LookupError as error:
        click.echo(str(error), err=True)
        sys.exit(EXIT_NOT_FOUND)
    except (ValueError, NftError) as error:
        raise click.ClickException(str(error)) from None
    finally:
        conn.close()

    prefix = f"undone {record.action} {record.subject or '-'} ({record.id})"
    release = record.detail.get("release")
    if release is None:
        click.echo(f"{prefix}: {record.detail.get('undo', 'recorded')}")
        return
    if release["state"] == "sent":
        click.echo(f"{prefix}: command.release published on the command bus by {release['sent_by']}")
        return
    if release["state"] == "lapsed":
        click.echo(f"{prefix}: release not needed, the measure's timeout had already passed")
        return
    click.echo(f"{prefix}: {_pending_release_message(record, release, wait_s)}", err=True)
    sys.exit(EXIT_RELEASE_PENDING)


def _wait_for_release(conn, record, wait_s):
    """Reread the record until its release leaves the pending state or `wait_s` passes."""
    import time

    from engine.respond import records

    deadline = time.monotonic() + wait_s
    while record.detail["release"]["state"] == "pending" and time.monotonic() < deadline:
        time.sleep(RELEASE_POLL_S)
        record = records.get_action(conn, record.id) or record
    return record


def _pending_release_message(record, release, wait_s):
    import datetime

    until = "its timeout"
    if record.expires_at is not None:
        expiry = datetime.datetime.fromtimestamp(record.expires_at, tz=datetime.timezone.utc)
        until = f"{expiry:%Y-%m-%d %H:%M:%S} UTC"
    if "waiting" in release:
        return (f"recorded, but command.release was not published: {release['waiting']}."
                f" The responder {release.get('waiting_in', '')} sends it when an enforcer subscribes;"
                f" otherwise the enforcer keeps the measure until {until}.")
    return (f"recorded, but no responder acknowledged the release within {wait_s:g} s; check that"
            f" `wardwatch respond --command-bind` runs on this store. The release stays pending and the"
            f" next responder with a command bus on this store publishes it; otherwise the enforcer keeps"
            f" the measure until {until}.")

"""`wardwatch assets`: update the asset inventory from captures and list it."""

from __future__ import annotations

import json
import logging
import os

import click

from engine.store import check_store_tables, default_store_path, open_store

log = logging.getLogger(__name__)


def _format_asset(asset: dict) -> str:
    attributes = asset["attributes"]
    lines = [f"{asset['ip']}  mac={asset['mac'] or '-'}  vendor={asset['vendor'] or '-'}"]
    for kind in ("role", "service", "ae_title", "hl7_application", "banner", "server_name", "hostname"):
        if attributes.get(kind):
            lines.append(f"    {kind}: {', '.join(attributes[kind])}")
    return "\n".join(lines)


def _list_assets(path: str, as_json: bool, show_alerts: bool) -> None:
    """Print the stored inventory without writing to the store, which may be on read-only media."""
    from engine.assets.inventory import READ_COLUMNS, Inventory

    conn = open_store(path, read_only=True)
    try:
        missing = check_store_tables(conn, path, READ_COLUMNS)
        assets = [] if missing else Inventory(conn, read_only=True).assets()
    finally:
        conn.close()
    if missing:
        click.echo(f"store {path} has no asset inventory yet; pass --pcap FILE or run `wardwatch analyze`", err=True)
    # As after inspecting captures, --show-alerts replaces the text listing,
    # and without captures there are no alerts to show.
    if as_json:
        click.echo(json.dumps(assets, indent=2, sort_keys=True))
    elif not show_alerts:
        for asset in assets:
            click.echo(_format_asset(asset))


@click.command("assets")
@click.option("--store", "store_path", type=click.Path(dir_okay=False), default=None,
              help="SQLite store (default: $WARDWATCH_STORE or wardwatch.db).")
@click.option("--pcap", "pcaps", type=click.Path(exists=True, dir_okay=False), multiple=True,
              help="Capture file to inspect into the inventory first; repeat for several.")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), default=None,
              help="Policy file (TOML) with zones and clinical assets, used for findings and policy alerts.")
@click.option("--show-alerts", is_flag=True, help="Print the findings and policy alerts of the inspected captures as JSON lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the inventory as JSON.")
def assets_command(store_path, pcaps, policy_path, show_alerts, as_json):
    """List hosts with MAC vendor, roles, services, AE titles, HL7 applications and banners."""
    from engine.assets.inventory import Inventory
    from engine.capture import CaptureError
    from engine.inspect.pipeline import analyse, iter_inspections
    from engine.policy.access import AccessMonitor
    from engine.policy.config import Policy, PolicyError, load_policy
    from engine.policy.zones import ZoneMap

    try:
        policy = load_policy(policy_path) if policy_path else Policy()
    except PolicyError as error:
        raise click.BadParameter(str(error), param_hint="--policy") from None
    path = store_path or default_store_path()
    if not pcaps:
        _list_assets(path, as_json, show_alerts)
        return
    # open_store raises StoreError with the path and the fix in its message,
    # which the `wardwatch` group prints as it is.
    conn = open_store(path)
    inventory = Inventory(conn)
    zones = ZoneMap(policy.zones)
    access = AccessMonitor(policy, zones, conn, roles_of=inventory.roles)
    for pcap in pcaps:
        try:
            output = analyse(iter_inspections(os.fspath(pcap)), zones, access, inventory)
        except (CaptureError, ValueError, OSError) as error:
            raise click.ClickException(f"cannot read capture {pcap}: {error}") from None
        log.info("%s: %d flows inspected, %d alerts, %d login events",
                 pcap, len(output.results), len(output.alerts), len(output.logins))
        if show_alerts:
            for alert in output.alerts:
                click.echo(json.dumps(alert.to_dict(), sort_keys=True, default=str))
    assets = inventory.assets()
    if as_json:
        click.echo(json.dumps(assets, indent=2, sort_keys=True))
    elif not show_alerts:
        for asset in assets:
            click.echo(_format_asset(asset))
    conn.close()

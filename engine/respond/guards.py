"""Safety guards between a matched rule and a change on the network.

Two kinds of host are escalated to a person instead of being blocked,
rate-limited or isolated:
  - life-critical assets (infusion pumps, patient monitors, ventilators),
    known from a policy file, from the asset inventory in the store or
    from the MAC vendor. No playbook setting lets a rule disrupt them.
  - clinical hosts (PACS, modalities, EHR and HL7 systems, IoMT devices),
    known from the inventory roles in clinical_roles of internal hosts,
    from the MAC vendor and from the playbook's clinical_hosts. A rule may
    act on them only with allow_clinical_subjects = true.
The allowlist skips a subject entirely, and a sliding one-minute window
caps how many actions are taken.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import re
import sqlite3
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from engine.alerts.schema import Alert, Endpoint
from engine.assets.inventory import vendor_roles
from engine.assets.oui import vendor_for_mac
from engine.respond.playbook import Playbook, PlaybookError, Rule, parse_allow_entry

log = logging.getLogger(__name__)

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def normalise_mac(mac: str | None) -> str | None:
    if not mac:
        return None
    mac = mac.lower().replace("-", ":")
    return mac if _MAC.match(mac) else None


@dataclass
class LifeCriticalAsset:
    name: str
    role: str
    ip: str | None = None
    mac: str | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


@dataclass
class LifeCriticalPolicy:
    """Life-critical assets from a policy file and inventory roles; the responder escalates instead of blocking them."""

    assets: list[LifeCriticalAsset] = field(default_factory=list)
    roles: tuple[str, ...] = ()  # inventory roles that make an asset life-critical

    def match(self, ip: str | None, mac: str | None, inventory_roles: set[str]) -> str | None:
        """Return why (ip, mac) is life-critical, or None if it is not."""
        mac = normalise_mac(mac)
        address = None
        if ip:
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                address = None
        for asset in self.assets:
            if ip and asset.ip == ip:
                return f"policy lists {ip} as {asset.role} {asset.name!r}"
            if mac and asset.mac == mac:
                return f"policy lists {mac} as {asset.role} {asset.name!r}"
            if address is not None and asset.network is not None and address in asset.network:
                return f"policy lists network {asset.network} as {asset.role} {asset.name!r}"
        critical_roles = inventory_roles.intersection(self.roles)
        if critical_roles:
            return f"asset inventory gives {ip or mac} the role {', '.join(sorted(critical_roles))}"
        return None


def load_policy(path: str | Path | None, roles: tuple[str, ...]) -> LifeCriticalPolicy:
    """Read a life-critical policy TOML file ([[asset]] tables and an optional roles list).

    With `path` None, only the inventory roles in `roles` apply.
    """
    policy = LifeCriticalPolicy(roles=tuple(roles))
    if path is None:
        return policy
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise PlaybookError(f"policy file {path} not found; pass --policy FILE listing life-critical assets") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        # TOML files are UTF-8, and tomllib raises UnicodeDecodeError on other bytes.
        raise PlaybookError(f"{path}: invalid TOML ({error})") from None
    unknown = sorted(set(data) - {"asset", "roles"})
    if unknown:
        raise PlaybookError(f"{path}: unknown key {unknown[0]!r}; expected [[asset]] tables and roles")
    if "roles" in data:
        extra = data["roles"]
        if not isinstance(extra, list) or not all(isinstance(role, str) for role in extra):
            raise PlaybookError(f"{path}: invalid roles {extra!r}; expected a list of role names")
        policy.roles = tuple(dict.fromkeys(policy.roles + tuple(extra)))
    for index, entry in enumerate(data.get("asset", [])):
        where = f"{path}: asset[{index}]"
        if not isinstance(entry, dict):
            raise PlaybookError(f"{where}: expected an [[asset]] table")
        unknown = sorted(set(entry) - {"name", "role", "ip", "mac", "network"})
        if unknown:
            raise PlaybookError(f"{where}: unknown key {unknown[0]!r}; expected name, role, ip, mac, network")
        asset = LifeCriticalAsset(name=str(entry.get("name", "")), role=str(entry.get("role", "life_critical")))
        if "ip" in entry:
            try:
                asset.ip = str(ipaddress.ip_address(entry["ip"]))
            except ValueError:
                raise PlaybookError(f"{where}: invalid ip {entry['ip']!r}; expected an IPv4 or IPv6 address") from None
        if "mac" in entry:
            asset.mac = normalise_mac(str(entry["mac"]))
            if asset.mac is None:
                raise PlaybookError(f"{where}: invalid mac {entry['mac']!r}; expected six hex octets such as "
                                    "00:1a:2b:3c:4d:5e")
        if "network" in entry:
            try:
                asset.network = ipaddress.ip_network(entry["network"], strict=False)
            except ValueError:
                raise PlaybookError(f"{where}: invalid network {entry['network']!r}; expected CIDR such as "
                                    "10.30.0.0/24") from None
        if asset.ip is None and asset.mac is None and asset.network is None:
            raise PlaybookError(f"{where}: set at least one of ip, mac, network")
        policy.assets.append(asset)
    return policy


class InventoryRoles:
    """Roles of an address from the asset inventory tables in the store, where they exist."""

    # Addresses whose roles are cached; the cache is cleared when full
    # (counter: cache_resets) and after refresh_interval_s so new inventory
    # rows are seen.
    MAX_CACHED = 65_536

    def __init__(self, conn: sqlite3.Connection | None, refresh_interval_s: float = 60.0):
        self.conn = conn
        self.refresh_interval_s = refresh_interval_s
        self._cache: dict[str, set[str]] = {}
        self._cached_at = 0.0
        self.cache_resets = 0
        self.available = conn is not None and self._has_inventory()

    def _has_inventory(self) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'asset_attributes'"
        ).fetchone()
        return row is not None

    def roles(self, ip: str | None, now: float) -> set[str]:
        if not ip or self.conn is None:
            return set()
        if not self.available:
            # The sensor may create the inventory after the responder starts.
            self.available = self._has_inventory()
            if not self.available:
                return set()
        if now - self._cached_at > self.refresh_interval_s or len(self._cache) >= self.MAX_CACHED:
            if len(self._cache) >= self.MAX_CACHED:
                self.cache_resets += 1
            self._cache.clear()
            self._cached_at = now
        cached = self._cache.get(ip)
        if cached is None:
            rows = self.conn.execute(
                "SELECT value FROM asset_attributes WHERE ip = ? AND kind = 'role'", (ip,)
            ).fetchall()
            cached = {row[0] for row in rows}
            self._cache[ip] = cached
        return cached


class AddressList:
    """A set of IP addresses, CIDR networks and MACs that a subject is looked up in."""

    def __init__(self, entries: tuple[str, ...], key: str = "address list"):
        self.networks = []
        self.macs = set()
        for entry in entries:
            entry = parse_allow_entry(entry, key, key)
            if ":" in entry and normalise_mac(entry) == entry:
                self.macs.add(entry)
            else:
                self.networks.append(ipaddress.ip_network(entry))

    def contains(self, subject: str | None) -> bool:
        if subject is None:
            return False
        mac = normalise_mac(subject)
        if mac is not None:
            return mac in self.macs
        try:
            address = ipaddress.ip_address(subject)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


class Allowlist(AddressList):
    """Addresses, networks and MACs that no action touches."""

    def __init__(self, entries: tuple[str, ...]):
        super().__init__(entries, "allowlist")


class SubjectGuard:
    """Pick the alert endpoint an action acts on and decide whether a disruptive action must be escalated."""

    def __init__(self, policy: LifeCriticalPolicy, playbook: Playbook):
        self.policy = policy
        self.clinical_roles = frozenset(playbook.clinical_roles)
        self.clinical_hosts = AddressList(playbook.clinical_hosts, "clinical_hosts")
        self.internal_networks = [ipaddress.ip_network(network) for network in playbook.internal_networks]

    def is_internal(self, ip: str | None) -> bool:
        if not ip:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.internal_networks)

    def endpoint_for(self, alert: Alert, subject: str) -> Endpoint | None:
        """Return the endpoint named by an action's subject, or None when "external" matches no single end.

        "external" is the one end outside internal_networks. When both ends
        are internal (a C-MOVE request from a workstation to the PACS) or
        both are outside, there is no end to block, and the caller
        escalates instead of guessing.
        """
        if subject == "src":
            return alert.src
        if subject == "dst":
            return alert.dst
        outside = [endpoint for endpoint in (alert.src, alert.dst)
                   if endpoint.ip and not self.is_internal(endpoint.ip)]
        return outside[0] if len(outside) == 1 else None

    def external_missing_reason(self, alert: Alert) -> str:
        """Return why an alert has no single external end, for the escalation record."""
        if not alert.src.ip and not alert.dst.ip:
            return "the alert carries no IP address, so there is no external end to act on"
        inside = [self.is_internal(endpoint.ip) for endpoint in (alert.src, alert.dst)]
        if all(inside):
            return (f"both ends ({alert.src.ip} and {alert.dst.ip}) are inside internal_networks, so there is"
                    " no external receiver to act on")
        return (f"neither end alone is outside internal_networks (src {alert.src.ip}, dst {alert.dst.ip}),"
                " so the external end is ambiguous")

    def vendor_roles(self, endpoint: Endpoint) -> tuple[str, set[str]]:
        """Return the MAC vendor of an internal endpoint and the roles it implies (pump, monitor, IoMT maker).

        This works without an asset inventory, as on a responder that runs
        on the firewall host with a store of its own. Frames of a host
        beyond the router carry the router's MAC, so external endpoints
        get no vendor roles.
        """
        if not endpoint.mac or (endpoint.ip and not self.is_internal(endpoint.ip)):
            return "", set()
        vendor = vendor_for_mac(endpoint.mac)
        return vendor, vendor_roles(vendor) if vendor else set()

    def escalation_reason(self, rule: Rule, action_type: str, endpoint: Endpoint, roles: set[str]) -> str | None:
        """Return why a disruptive action on `endpoint` is escalated instead, or None if it may proceed."""
        vendor, implied_roles = self.vendor_roles(endpoint)
        match = self.policy.match(endpoint.ip, endpoint.mac, roles)
        if match is None and implied_roles.intersection(self.policy.roles):
            match = _vendor_reason(vendor, endpoint.mac, implied_roles.intersection(self.policy.roles))
        if match is not None:
            return f"{action_type} not applied to a life-critical asset: {match}"
        if rule.allow_clinical_subjects:
            return None
        match = self.clinical_match(endpoint.ip, endpoint.mac, roles)
        if match is None and implied_roles.intersection(self.clinical_roles):
            match = _vendor_reason(vendor, endpoint.mac, implied_roles.intersection(self.clinical_roles))
        if match is not None:
            return (f"{action_type} not applied to a clinical host: {match}. Set allow_clinical_subjects = true"
                    f" on rule {rule.name!r} to let it act on clinical hosts")
        return None

    def clinical_match(self, ip: str | None, mac: str | None, roles: set[str]) -> str | None:
        """Return why (ip, mac) is a clinical host, or None if it is not."""
        if ip and self.clinical_hosts.contains(ip):
            return f"clinical_hosts lists {ip}"
        mac = normalise_mac(mac)
        if mac and self.clinical_hosts.contains(mac):
            return f"clinical_hosts lists {mac}"
        # The inventory tags any host that accepts a DICOM association as a
        # PACS, including an attacker's archive on the internet, so roles
        # count only inside internal_networks. An external clinical service
        # belongs in clinical_hosts.
        if ip and not self.is_internal(ip):
            return None
        clinical_roles = roles.intersection(self.clinical_roles)
        if clinical_roles:
            return f"asset inventory gives {ip or mac} the role {', '.join(sorted(clinical_roles))}"
        return None


def _vendor_reason(vendor: str, mac: str | None, roles: set[str]) -> str:
    return f"MAC {mac} belongs to {vendor}, which implies the role {', '.join(sorted(roles))}"


class ActionRateCap:
    """At most `per_minute` actions in any 60-second window of wall-clock time.

    The window keeps one timestamp per allowed action, so it contains at
    most `per_minute` entries. A refused action is counted in `refused`.
    """

    WINDOW_S = 60.0

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._times: collections.deque[float] = collections.deque(maxlen=per_minute)
        self.refused = 0

    def allow(self, now: float) -> bool:
        while self._times and now - self._times[0] >= self.WINDOW_S:
            self._times.popleft()
        if len(self._times) >= self.per_minute:
            self.refused += 1
            return False
        self._times.append(now)
        return True

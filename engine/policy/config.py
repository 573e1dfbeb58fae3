"""The policy file (TOML): zones, clinical assets and registered HL7 senders.

Example:

    learning_period_s = 86400        # learn peers for one day, then alert

    [zones]
    clinical = ["10.10.0.0/16"]
    it = ["10.20.0.0/16", "fd00:20::/32"]

    [[assets]]
    ip = "10.10.1.5"
    role = "pacs"                    # one of CLINICAL_ROLES
    allowed_peers = ["10.10.2.0/24"] # addresses or networks allowed to talk to it
    allowed_calling_ae = ["CT01"]    # calling AE titles it may accept
    allowed_move_destinations = ["WS01"]

    [hl7]
    registered_senders = ["10.10.4.2"]
    registered_applications = ["EPIC^HOSP"]   # MSH-3^MSH-4

Everything is checked when the file is loaded, and errors name the key and
the value, so a bad file stops the sensor before capture starts.
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

CLINICAL_ROLES = ("pacs", "modality", "infusion_pump", "patient_monitor", "hl7_engine", "iomt_device", "ehr")
DEFAULT_LEARNING_PERIOD_S = 7 * 86400.0
ASSET_KEYS = {"ip", "role", "allowed_peers", "allowed_calling_ae", "allowed_move_destinations"}
HL7_KEYS = {"registered_senders", "registered_applications"}


class PolicyError(ValueError):
    """The policy file is invalid."""


@dataclass
class ClinicalAsset:
    ip: str
    role: str
    allowed_peers: list[Network] = field(default_factory=list)
    allowed_calling_ae: list[str] = field(default_factory=list)
    allowed_move_destinations: list[str] = field(default_factory=list)


@dataclass
class Policy:
    zones: dict[str, list[Network]] = field(default_factory=dict)
    assets: dict[str, ClinicalAsset] = field(default_factory=dict)  # by IP
    registered_hl7_senders: list[Network] = field(default_factory=list)
    registered_hl7_applications: list[str] = field(default_factory=list)
    learning_period_s: float = DEFAULT_LEARNING_PERIOD_S


def _network(value, key: str) -> Network:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise PolicyError(f"invalid address or network {value!r} in {key}; expected e.g. 10.0.0.0/8 or 10.0.0.5") from None


def _string_list(table: dict, key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"invalid {where}.{key} {value!r}; expected a list of strings")
    return value


def _parse_asset(table, index: int) -> ClinicalAsset:
    where = f"assets[{index}]"
    if not isinstance(table, dict) or "ip" not in table:
        raise PolicyError(f"{where} has no ip; every [[assets]] entry needs its address")
    unknown = set(table) - ASSET_KEYS
    if unknown:
        raise PolicyError(f"unknown keys {sorted(unknown)} in {where}; expected {sorted(ASSET_KEYS)}")
    # ipaddress takes an integer as an address (5 is 0.0.0.5), so only text is accepted.
    if not isinstance(table["ip"], str):
        raise PolicyError(f"invalid {where}.ip {table['ip']!r}; expected an IPv4 or IPv6 address in quotes")
    try:
        ip = str(ipaddress.ip_address(table["ip"]))
    except ValueError:
        raise PolicyError(f"invalid {where}.ip {table['ip']!r}; expected an IPv4 or IPv6 address") from None
    role = table.get("role", "")
    if role not in CLINICAL_ROLES:
        raise PolicyError(f"invalid {where}.role {role!r}; expected one of {', '.join(CLINICAL_ROLES)}")
    peers = _string_list(table, "allowed_peers", where)
    return ClinicalAsset(
        ip=ip,
        role=role,
        allowed_peers=[_network(peer, f"{where}.allowed_peers") for peer in peers],
        allowed_calling_ae=_string_list(table, "allowed_calling_ae", where),
        allowed_move_destinations=_string_list(table, "allowed_move_destinations", where),
    )


def parse_policy(data: dict) -> Policy:
    """Build a Policy from parsed TOML, checking every key."""
    known = {"zones", "assets", "hl7", "learning_period_s"}
    unknown = set(data) - known
    if unknown:
        raise PolicyError(f"unknown policy keys {sorted(unknown)}; expected {sorted(known)}")
    policy = Policy()

    learning = data.get("learning_period_s", DEFAULT_LEARNING_PERIOD_S)
    if isinstance(learning, bool) or not isinstance(learning, (int, float)) or not 0 <= learning < math.inf:
        raise PolicyError(f"invalid learning_period_s {learning!r}; expected a finite number of seconds >= 0")
    policy.learning_period_s = float(learning)

    zones = data.get("zones", {})
    if not isinstance(zones, dict):
        raise PolicyError(f"invalid zones {zones!r}; expected a table of zone name = [networks]")
    for zone in zones:
        networks = _string_list(zones, zone, "zones")
        policy.zones[zone] = [_network(network, f"zones.{zone}") for network in networks]

    assets = data.get("assets", [])
    if not isinstance(assets, list):
        raise PolicyError("invalid assets; expected [[assets]] tables")
    for index, table in enumerate(assets):
        asset = _parse_asset(table, index)
        policy.assets[asset.ip] = asset

    hl7 = data.get("hl7", {})
    if not isinstance(hl7, dict):
        raise PolicyError(f"invalid hl7 {hl7!r}; expected an [hl7] table")
    unknown = set(hl7) - HL7_KEYS
    if unknown:
        raise PolicyError(f"unknown keys {sorted(unknown)} in [hl7]; expected {sorted(HL7_KEYS)}")
    senders = _string_list(hl7, "registered_senders", "hl7")
    policy.registered_hl7_senders = [_network(sender, "hl7.registered_senders") for sender in senders]
    policy.registered_hl7_applications = _string_list(hl7, "registered_applications", "hl7")
    return policy


def load_policy(path: str) -> Policy:
    """Read and check a policy file."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise PolicyError(f"policy file {path} not found") from None
    except OSError as error:
        raise PolicyError(f"cannot read policy file {path}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        # TOML is UTF-8, and tomllib raises UnicodeDecodeError on other bytes.
        raise PolicyError(f"policy file {path} is not valid TOML: {error}") from None
    return parse_policy(data)

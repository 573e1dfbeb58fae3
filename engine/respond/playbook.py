"""Response playbooks: TOML rules that map alerts to actions.

A rule matches an alert by kind, category, attack class, minimum severity
and the roles of its source or destination asset. Every matching rule
contributes its actions, in file order. The whole file is checked when it
is loaded, categories and attack classes against engine/taxonomy.py, so a
typo fails before the responder subscribes to anything. See
engine/data/playbook.example.toml for a commented example and
docs/respond.md for every key.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.alerts.schema import KINDS, Alert
from engine.taxonomy import ALERT_CATEGORIES, ATTACK_CLASSES, SEVERITIES, severity_rank

ACTION_TYPES = ("block", "rate_limit", "isolate", "webhook", "bus_command", "escalate")
# Actions that cut or slow a host's traffic. A life-critical subject turns
# these into an escalation; an allowlisted subject skips them.
DISRUPTIVE_ACTIONS = ("block", "rate_limit", "isolate")
# bus_command commands an external enforcer understands; all but "notify"
# are disruptive and follow the same guards as the local actions.
BUS_COMMANDS = ("block", "rate_limit", "isolate", "notify")
# "external" is the one end of the alert outside internal_networks: the
# receiving end of an exfiltration or the server of a C2 channel.
SUBJECTS = ("src", "dst", "external")
DEFAULT_KINDS = ("detection", "policy", "login", "finding")
# Hosts with these roles are escalated instead of disrupted, whatever the rule sets.
DEFAULT_LIFE_CRITICAL_ROLES = ("infusion_pump", "patient_monitor", "ventilator")
# Inventory roles (engine/assets/inventory.py) of hosts that patient care
# depends on: imaging, the EHR and HL7 feeds, and device telemetry. A
# disruptive action on one is escalated unless its rule sets
# allow_clinical_subjects = true. "lab" and "life_critical" are not
# inventory roles, but an alert endpoint's asset field may carry them.
# dicom_workstation and hl7_sender are left out because a compromised
# workstation earns them by sending one DICOM query or HL7 message.
# NOTE: modality, ehr and iomt_device are also inferred from what a host
# sends, so an attacker who speaks those protocols is escalated rather
# than blocked.
DEFAULT_CLINICAL_ROLES = ("pacs", "modality", "ehr", "hl7_engine", "iomt_device", "mqtt_broker", "lab",
                          "life_critical")
# Networks the "external" subject treats as inside the site: RFC 1918,
# shared address space (RFC 6598), link-local, and IPv6 unique-local and
# link-local. Documentation prefixes such as 198.51.100.0/24 count as
# external, because the simulator uses them for internet hosts.
DEFAULT_INTERNAL_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                             "169.254.0.0/16", "fc00::/7", "fe80::/10")
_ROLE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# nft object names: letters, digits and '_' (checked because they go into an nft script).
_NFT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
MAX_TIMEOUT_S = 30 * 86400


class PlaybookError(ValueError):
    """The playbook or the policy file is invalid; the message names the key and the file."""


@dataclass
class Action:
    type: str
    subject: str = "src"  # which end of the alert is acted on: src, dst or external
    timeout_s: int | None = None  # block, rate_limit, isolate and bus_command; None uses the default
    url: str | None = None  # webhook
    command: str = "block"  # bus_command
    timeout_request_s: float = 3.0  # webhook HTTP timeout


@dataclass
class Rule:
    name: str
    actions: list[Action]
    categories: tuple[str, ...] = ()  # empty matches every category
    attack_classes: tuple[str, ...] = ()  # keys of ATTACK_CLASSES; empty matches any alert
    min_severity: str = "high"
    kinds: tuple[str, ...] = DEFAULT_KINDS
    source_roles: tuple[str, ...] = ()  # empty matches any source; else one role must be present
    target_roles: tuple[str, ...] = ()
    # True lets this rule's disruptive actions act on clinical hosts;
    # life-critical hosts are escalated even then.
    allow_clinical_subjects: bool = False

    def matches(self, alert: Alert, source_roles: set[str], target_roles: set[str]) -> bool:
        if alert.kind not in self.kinds:
            return False
        if self.categories and alert.category not in self.categories:
            return False
        if self.attack_classes and alert_attack_class(alert) not in self.attack_classes:
            return False
        if severity_rank(alert.severity) < severity_rank(self.min_severity):
            return False
        if self.source_roles and not source_roles.intersection(self.source_roles):
            return False
        if self.target_roles and not target_roles.intersection(self.target_roles):
            return False
        return True


@dataclass
class NftablesSettings:
    command: tuple[str, ...] = ("nft",)  # argv prefix; e.g. ["ip", "netns", "exec", "fw", "nft"]
    family: str = "inet"  # table family for address sets: inet, ip or ip6
    table: str = "wardwatch"
    bridge_table: str = "wardwatch_l2"  # bridge-family table for isolation by MAC
    manage_ruleset: bool = True  # create the tables, sets and chains when absent
    rate_limit_packets_per_second: int = 50  # per rate-limited source address


@dataclass
class Playbook:
    rules: list[Rule]
    dry_run: bool = True
    max_actions_per_minute: int = 20
    default_timeout_s: int = 3600
    allowlist: tuple[str, ...] = ()  # addresses, CIDR networks or MACs never acted on
    life_critical_roles: tuple[str, ...] = DEFAULT_LIFE_CRITICAL_ROLES
    clinical_roles: tuple[str, ...] = DEFAULT_CLINICAL_ROLES
    clinical_hosts: tuple[str, ...] = ()  # addresses, CIDR networks or MACs treated as clinical
    internal_networks: tuple[str, ...] = DEFAULT_INTERNAL_NETWORKS  # CIDR networks inside the site
    escalation_webhook: str | None = None
    nftables: NftablesSettings = field(default_factory=NftablesSettings)
    path: str = ""

    def matching_rules(self, alert: Alert, source_roles: set[str], target_roles: set[str]) -> list[Rule]:
        return [rule for rule in self.rules if rule.matches(alert, source_roles, target_roles)]

    def bus_command_rules(self) -> list[str]:
        """Return the names of the rules with a bus_command action."""
        return [rule.name for rule in self.rules if any(action.type == "bus_command" for action in rule.actions)]


def alert_attack_class(alert: Alert) -> str | None:
    """Return the attack class of an alert: the model's class, else the one the rule engine put in evidence."""
    if alert.model_class:
        return alert.model_class
    value = alert.evidence.get("attack_class") if alert.evidence else None
    return value if isinstance(value, str) else None


def check_command_bus(playbook: Playbook, endpoint: str | None) -> None:
    """Raise PlaybookError if the playbook has bus_command actions but no command bus endpoint is set.

    Without the bus every such action would fail on every alert, so the
    responder checks this before it subscribes.
    """
    names = playbook.bus_command_rules()
    if names and not endpoint:
        raise PlaybookError(
            f"{playbook.path or '<playbook>'}: rule {names[0]!r} has a bus_command action but no command bus is"
            " configured; pass --command-bind ENDPOINT (e.g. tcp://127.0.0.1:5560) or remove the action")


def _string_list(value: Any, key: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PlaybookError(f"{where}: invalid {key} {value!r}; expected a string or a list of strings")
    return tuple(value)


def _checked_values(values: tuple[str, ...], valid: tuple[str, ...], key: str, where: str) -> tuple[str, ...]:
    for value in values:
        if value not in valid:
            hint = ""
            if key == "categories" and value in ATTACK_CLASSES:
                hint = (f" ({value!r} is an attack class: use attack_classes = [{value!r}] or its category"
                        f" {ATTACK_CLASSES[value].category!r})")
            elif key == "attack_classes" and value in ALERT_CATEGORIES:
                hint = f" ({value!r} is a category: use categories = [{value!r}])"
            raise PlaybookError(f"{where}: invalid {key} value {value!r}{hint}; expected one of {', '.join(valid)}")
    return values


def _role_names(value: Any, key: str, where: str) -> tuple[str, ...]:
    roles = _string_list(value, key, where)
    for role in roles:
        if not _ROLE_NAME.match(role):
            raise PlaybookError(f"{where}: invalid role {role!r} in {key}; expected lower-case letters, digits"
                                " and '_', such as pacs or infusion_pump")
    return roles


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise PlaybookError(f"{where}: expected a table, got {type(table).__name__} {table!r}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise PlaybookError(f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(allowed))}")


def _timeout(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TIMEOUT_S:
        raise PlaybookError(f"{where}: invalid timeout_s {value!r}; expected whole seconds from 1 to {MAX_TIMEOUT_S}")
    return value


def check_url(url: Any, where: str) -> str:
    """Return `url` if it is an http or https URL, else raise PlaybookError."""
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
        raise PlaybookError(f"{where}: invalid url {url!r}; expected http://HOST[:PORT]/PATH or https://...")
    return url


def parse_action(table: Any, where: str) -> Action:
    if not isinstance(table, dict):
        raise PlaybookError(f"{where}: expected a table such as {{ type = \"block\" }}")
    _check_keys(table, {"type", "subject", "timeout_s", "url", "command", "request_timeout_s"}, where)
    action_type = table.get("type")
    if action_type not in ACTION_TYPES:
        raise PlaybookError(f"{where}: invalid action type {action_type!r}; expected one of {', '.join(ACTION_TYPES)}")
    action = Action(action_type)
    subject = table.get("subject", "src")
    if subject not in SUBJECTS:
        raise PlaybookError(f"{where}: invalid subject {subject!r}; expected one of {', '.join(SUBJECTS)}")
    action.subject = subject
    isolates = action_type == "isolate" or (action_type == "bus_command" and table.get("command") == "isolate")
    if isolates and subject == "external":
        # Frames from a host beyond the router carry the router's MAC, so
        # isolating that MAC would cut off the whole site.
        raise PlaybookError(f"{where}: isolate cannot use subject = \"external\" because an external host's"
                            " frames carry the router's MAC; use block instead")
    if "timeout_s" in table:
        action.timeout_s = _timeout(table["timeout_s"], where)
    if action_type == "webhook":
        action.url = check_url(table.get("url"), where)
    elif "url" in table:
        raise PlaybookError(f"{where}: url is only valid for type = \"webhook\"")
    if "request_timeout_s" in table:
        value = table["request_timeout_s"]
        if not isinstance(value, (int, float)) or not 0 < value <= 60:
            raise PlaybookError(f"{where}: invalid request_timeout_s {value!r}; expected seconds in (0, 60]")
        action.timeout_request_s = float(value)
    if action_type == "bus_command":
        command = table.get("command", "block")
        if command not in BUS_COMMANDS:
            raise PlaybookError(f"{where}: invalid command {command!r}; expected one of {', '.join(BUS_COMMANDS)}")
        action.command = command
    return action


def parse_rule(table: Any, index: int, source: str) -> Rule:
    where = f"{source}: rules[{index}]"
    if not isinstance(table, dict):
        raise PlaybookError(f"{where}: expected a [[rules]] table")
    _check_keys(table, {"name", "categories", "attack_classes", "min_severity", "kinds", "source_roles",
                        "target_roles", "allow_clinical_subjects", "actions"}, where)
    name = table.get("name") or f"rule{index}"
    where = f"{source}: rule {name!r}"
    min_severity = table.get("min_severity", "high")
    if min_severity not in SEVERITIES:
        raise PlaybookError(f"{where}: invalid min_severity {min_severity!r}; expected one of {', '.join(SEVERITIES)}")
    kinds = _string_list(table.get("kinds", list(DEFAULT_KINDS)), "kinds", where)
    for kind in kinds:
        if kind not in KINDS:
            raise PlaybookError(f"{where}: invalid kind {kind!r}; expected one of {', '.join(KINDS)}")
    allow_clinical = table.get("allow_clinical_subjects", False)
    if not isinstance(allow_clinical, bool):
        raise PlaybookError(f"{where}: invalid allow_clinical_subjects {allow_clinical!r}; expected true or false")
    raw_actions = table.get("actions")
    if not isinstance(raw_actions, list) or not raw_actions:
        raise PlaybookError(f"{where}: missing actions; expected actions = [{{ type = \"block\" }}, ...]")
    actions = [parse_action(item, f"{where} action {number}") for number, item in enumerate(raw_actions)]
    return Rule(
        name=name,
        actions=actions,
        categories=_checked_values(_string_list(table.get("categories", []), "categories", where),
                                   ALERT_CATEGORIES, "categories", where),
        attack_classes=_checked_values(_string_list(table.get("attack_classes", []), "attack_classes", where),
                                       tuple(ATTACK_CLASSES), "attack_classes", where),
        min_severity=min_severity,
        kinds=kinds,
        source_roles=_role_names(table.get("source_roles", []), "source_roles", where),
        target_roles=_role_names(table.get("target_roles", []), "target_roles", where),
        allow_clinical_subjects=allow_clinical,
    )


def parse_allow_entry(entry: str, where: str, key: str = "allowlist") -> str:
    """Return a normalised address-list entry (CIDR network or lower-case MAC), or raise PlaybookError."""
    if re.match(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$", entry):
        return entry.lower().replace("-", ":")
    try:
        return str(ipaddress.ip_network(entry, strict=False))
    except ValueError:
        raise PlaybookError(f"{where}: invalid {key} entry {entry!r}; expected an IP address, a CIDR network"
                            " or a MAC address") from None


def _parse_network(entry: str, where: str, key: str) -> str:
    try:
        return str(ipaddress.ip_network(entry, strict=False))
    except ValueError:
        raise PlaybookError(f"{where}: invalid {key} entry {entry!r}; expected a CIDR network such as"
                            " 10.0.0.0/8") from None


def _parse_nftables(table: Any, where: str) -> NftablesSettings:
    if not isinstance(table, dict):
        raise PlaybookError(f"{where}: expected an [nftables] table")
    _check_keys(table, {"command", "family", "table", "bridge_table", "manage_ruleset",
                        "rate_limit_packets_per_second"}, where)
    settings = NftablesSettings()
    if "command" in table:
        settings.command = _string_list(table["command"], "command", where)
        if not settings.command:
            raise PlaybookError(f"{where}: command is empty; expected [\"nft\"] or a prefix ending in nft")
    settings.family = table.get("family", settings.family)
    if settings.family not in ("inet", "ip", "ip6"):
        raise PlaybookError(f"{where}: invalid family {settings.family!r}; expected inet, ip or ip6")
    for key in ("table", "bridge_table"):
        value = table.get(key, getattr(settings, key))
        if not isinstance(value, str) or not _NFT_NAME.match(value):
            raise PlaybookError(f"{where}: invalid {key} {value!r}; expected a letter then up to 31 letters,"
                                " digits or '_'")
        setattr(settings, key, value)
    settings.manage_ruleset = bool(table.get("manage_ruleset", True))
    rate = table.get("rate_limit_packets_per_second", settings.rate_limit_packets_per_second)
    if not isinstance(rate, int) or isinstance(rate, bool) or not 1 <= rate <= 1_000_000:
        raise PlaybookError(f"{where}: invalid rate_limit_packets_per_second {rate!r}; expected 1..1000000")
    settings.rate_limit_packets_per_second = rate
    return settings


def parse_playbook(data: dict[str, Any], source: str = "<playbook>") -> Playbook:
    """Build and check a Playbook from parsed TOML; raise PlaybookError naming the first bad key."""
    _check_keys(data, {"settings", "nftables", "rules"}, source)
    settings = data.get("settings", {})
    where = f"{source}: [settings]"
    _check_keys(settings, {"dry_run", "max_actions_per_minute", "default_timeout_s", "allowlist",
                           "life_critical_roles", "clinical_roles", "clinical_hosts", "internal_networks",
                           "escalation_webhook"}, where)

    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise PlaybookError(f"{source}: no rules; add at least one [[rules]] table")
    playbook = Playbook(rules=[parse_rule(table, index, source) for index, table in enumerate(raw_rules)],
                        path=source)
    # Action records name their rule, so `respond list` and an audit could
    # not distinguish two rules of one name.
    first_index: dict[str, int] = {}
    for index, rule in enumerate(playbook.rules):
        if rule.name in first_index:
            raise PlaybookError(
                f"{source}: duplicate rule name {rule.name!r} (rules[{first_index[rule.name]}] and rules[{index}]); "
                "give each rule its own name"
            )
        first_index[rule.name] = index
    dry_run = settings.get("dry_run", True)
    if not isinstance(dry_run, bool):
        raise PlaybookError(f"{where}: invalid dry_run {dry_run!r}; expected true or false")
    playbook.dry_run = dry_run

    cap = settings.get("max_actions_per_minute", playbook.max_actions_per_minute)
    if not isinstance(cap, int) or isinstance(cap, bool) or not 1 <= cap <= 10_000:
        raise PlaybookError(f"{where}: invalid max_actions_per_minute {cap!r}; expected 1..10000")
    playbook.max_actions_per_minute = cap
    if "default_timeout_s" in settings:
        playbook.default_timeout_s = _timeout(settings["default_timeout_s"], where)

    playbook.allowlist = tuple(
        parse_allow_entry(entry, where) for entry in _string_list(settings.get("allowlist", []), "allowlist", where)
    )
    if "life_critical_roles" in settings:
        playbook.life_critical_roles = _role_names(settings["life_critical_roles"], "life_critical_roles", where)
    if "clinical_roles" in settings:
        playbook.clinical_roles = _role_names(settings["clinical_roles"], "clinical_roles", where)
    playbook.clinical_hosts = tuple(
        parse_allow_entry(entry, where, "clinical_hosts")
        for entry in _string_list(settings.get("clinical_hosts", []), "clinical_hosts", where)
    )
    if "internal_networks" in settings:
        playbook.internal_networks = tuple(
            _parse_network(entry, where, "internal_networks")
            for entry in _string_list(settings["internal_networks"], "internal_networks", where)
        )
    if settings.get("escalation_webhook") is not None:
        playbook.escalation_webhook = check_url(settings["escalation_webhook"], where)
    if "nftables" in data:
        playbook.nftables = _parse_nftables(data["nftables"], f"{source}: [nftables]")
    return playbook


def load_playbook(path: str | Path) -> Playbook:
    """Read and check a playbook TOML file."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise PlaybookError(f"playbook {path} not found; pass --playbook FILE "
                            "(engine/data/playbook.example.toml is a starting point)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        # TOML files are UTF-8, and tomllib raises UnicodeDecodeError on other bytes.
        raise PlaybookError(f"{path}: invalid TOML ({error})") from None
    return parse_playbook(data, str(path))

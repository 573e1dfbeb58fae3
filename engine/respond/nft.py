"""nftables enforcement: address sets with per-element timeouts, driven through the `nft` tool.

The ruleset is created once from a text script (nft -f), because chains
and rules read best that way. Set elements are added and deleted through
the JSON API (nft -j -f -), so an address from an alert never becomes part
of a command line or a script. The kernel removes an element when its timeout
passes, so a block expires even if the responder is not running.

Ruleset (names from the [nftables] table of the playbook):
  table <family> <table>
    sets blocked_v4/v6, ratelimited_v4/v6 (flags timeout) and the dynamic
    meters rate_meter_v4/v6 that count packets per rate-limited source;
    chains input and forward at priority filter - 10 drop traffic from and
    to a blocked address, and drop a rate-limited source's packets above
    rate_limit_packets_per_second.
  table bridge <bridge_table>
    set isolated_mac (flags timeout); chain forward drops frames from and
    to an isolated MAC on any bridge of the host.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import subprocess

from engine.respond.playbook import NftablesSettings

log = logging.getLogger(__name__)

NFT_TIMEOUT_S = 10.0


class NftError(RuntimeError):
    """An nft command failed; the message has the command and nft's error output."""


def _ruleset_script(settings: NftablesSettings) -> str:
    rate = settings.rate_limit_packets_per_second
    lines = [f"table {settings.family} {settings.table} {{"]
    versions = {"inet": ("v4", "v6"), "ip": ("v4",), "ip6": ("v6",)}[settings.family]
    for version in versions:
        kind = "ipv4_addr" if version == "v4" else "ipv6_addr"
        lines += [
            f"  set blocked_{version} {{ type {kind}; flags timeout; }}",
            f"  set ratelimited_{version} {{ type {kind}; flags timeout; }}",
            # Meter entries of quiet sources disappear after a minute.
            f"  set rate_meter_{version} {{ type {kind}; flags dynamic,timeout; timeout 1m; }}",
        ]
    for hook in ("input", "forward"):
        lines.append(f"  chain {hook} {{ type filter hook {hook} priority filter - 10; policy accept;")
        for version in versions:
            match = "ip" if version == "v4" else "ip6"
            lines += [
                f"    {match} saddr @blocked_{version} drop",
                f"    {match} daddr @blocked_{version} drop",
                f"    {match} saddr @ratelimited_{version} update @rate_meter_{version}"
                f" {{ {match} saddr limit rate over {rate}/second }} drop",
            ]
        lines.append("  }")
    lines.append("}")
    lines += [
        f"table bridge {settings.bridge_table} {{",
        "  set isolated_mac { type ether_addr; flags timeout; }",
        "  chain forward { type filter hook forward priority filter - 10; policy accept;",
        "    ether saddr @isolated_mac drop",
        "    ether daddr @isolated_mac drop",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


class NftBackend:
    """Add and remove set elements; create the ruleset when the playbook lets it."""

    def __init__(self, settings: NftablesSettings):
        self.settings = settings
        self.commands_run = 0

    def _run(self, arguments: list[str], stdin: str | None = None) -> str:
        argv = list(self.settings.command) + arguments
        self.commands_run += 1
        try:
            completed = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=NFT_TIMEOUT_S,
                                       check=False)
        except FileNotFoundError:
            raise NftError(f"{argv[0]} not found; install nftables or set [nftables] command in the playbook") from None
        except subprocess.TimeoutExpired:
            raise NftError(f"{' '.join(argv)} timed out after {NFT_TIMEOUT_S:.0f} s") from None
        if completed.returncode != 0:
            raise NftError(f"{' '.join(argv)} failed with exit code {completed.returncode}: "
                           f"{completed.stderr.strip()}")
        return completed.stdout

    def table_exists(self) -> bool:
        try:
            self._run(["-j", "list", "table", self.settings.family, self.settings.table])
        except NftError as error:
            if "No such file or directory" in str(error):
                return False
            raise
        return True

    def ensure_ruleset(self) -> bool:
        """Create the tables, sets and chains unless the address table exists; return True if created."""
        if self.table_exists():
            return False
        if not self.settings.manage_ruleset:
            raise NftError(f"table {self.settings.family} {self.settings.table} does not exist and "
                           "manage_ruleset is false; create it or set manage_ruleset = true")
        self._run(["-f", "-"], stdin=_ruleset_script(self.settings))
        log.info("created nftables tables %s %s and bridge %s", self.settings.family, self.settings.table,
                 self.settings.bridge_table)
        return True

    def set_for(self, action: str, subject: str) -> tuple[str, str, str]:
        """Return (family, table, set) that enforces `action` on `subject`, or raise ValueError."""
        if action == "isolate":
            return "bridge", self.settings.bridge_table, "isolated_mac"
        address = ipaddress.ip_address(subject)
        version = "v4" if address.version == 4 else "v6"
        if (self.settings.family, version) in (("ip", "v6"), ("ip6", "v4")):
            raise ValueError(f"address {subject} does not fit table family {self.settings.family}; "
                             "use family = \"inet\"")
        prefix = {"block": "blocked", "rate_limit": "ratelimited"}[action]
        return self.settings.family, self.settings.table, f"{prefix}_{version}"

    def add_element(self, action: str, subject: str, timeout_s: float) -> dict:
        """Add `subject` to the set for `action` with a timeout; return where it went."""
        family, table, name = self.set_for(action, subject)
        element = {"elem": {"val": subject, "timeout": max(1, math.ceil(timeout_s))}}
        request = {"nftables": [{"add": {"element": {"family": family, "table": table, "name": name,
                                                     "elem": [element]}}}]}
        self._run(["-j", "-f", "-"], stdin=json.dumps(request))
        return {"family": family, "table": table, "set": name}

    def delete_element(self, family: str, table: str, name: str, subject: str) -> bool:
        """Remove `subject` from a set; return False if it was not there (already expired)."""
        request = {"nftables": [{"delete": {"element": {"family": family, "table": table, "name": name,
                                                        "elem": [subject]}}}]}
        try:
            self._run(["-j", "-f", "-"], stdin=json.dumps(request))
        except NftError as error:
            if "No such file or directory" in str(error):
                return False
            raise
        return True

    def list_elements(self, family: str, table: str, name: str) -> list[str]:
        """Return the values in a set."""
        output = json.loads(self._run(["-j", "list", "set", family, table, name]))
        values = []
        for item in output.get("nftables", []):
            for element in item.get("set", {}).get("elem", []):
                value = element["elem"]["val"] if isinstance(element, dict) and "elem" in element else element
                values.append(str(value))
        return values

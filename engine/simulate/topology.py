"""The simulated hospital: devices with addresses, MACs and roles.

The layout comes from topology.toml next to this module. Address and MAC
assignment is a pure function of the file and the scale, so two runs with the
same profile see the same hosts whatever the seed.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

TOPOLOGY_PATH = Path(__file__).with_name("topology.toml")

# Fixed external hosts, by name: address in the internet zone's prefix.
EXTERNAL_HOSTS = {
    "web_portal": "203.0.113.10",
    "web_news": "203.0.113.11",
    "web_vendor_updates": "203.0.113.12",
    "cloud_fhir": "203.0.113.20",
    "upstream_dns": "203.0.113.53",
    "remote_clinician": "203.0.113.77",
}

# Attacker-controlled external hosts; attack scenarios pick from these.
ATTACKER_HOSTS = {
    "scanner": "198.51.100.23",
    "c2_server": "198.51.100.66",
    "exfil_sink": "198.51.100.104",
    "bruteforcer": "198.51.100.145",
}


@dataclass(frozen=True)
class Device:
    name: str  # host name, e.g. "nurse-workstation-07"
    role: str  # key of [roles] in topology.toml, or "external"/"attacker"/"router"
    zone: str
    ip: str
    mac: bytes  # 6 bytes
    vendor: str

    @property
    def ip_bytes(self) -> bytes:
        return ipaddress.IPv4Address(self.ip).packed


@dataclass
class Topology:
    site: dict
    devices: list[Device]
    router: Device
    by_role: dict[str, list[Device]] = field(default_factory=dict)
    by_ip: dict[str, Device] = field(default_factory=dict)
    zone_subnets: dict[str, ipaddress.IPv4Network] = field(default_factory=dict)

    def role(self, name: str) -> list[Device]:
        """Return the devices of a role (an empty list if the profile has none)."""
        return self.by_role.get(name, [])

    def one(self, name: str) -> Device:
        """Return the first device of a role; raise KeyError naming the role if none exist."""
        devices = self.by_role.get(name)
        if not devices:
            raise KeyError(f"topology has no device with role {name!r}")
        return devices[0]

    def external(self, name: str) -> Device:
        return self.by_ip[EXTERNAL_HOSTS[name]]

    def attacker(self, name: str) -> Device:
        return self.by_ip[ATTACKER_HOSTS[name]]


def parse_mac_prefix(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"invalid OUI {text!r}: expected three hex bytes like 00:09:5C")
    return bytes(int(p, 16) for p in parts)


def make_mac(oui: bytes, role_index: int, device_index: int) -> bytes:
    # The low three bytes encode role and index, so MACs are unique across the site.
    return oui + bytes([0x40 | (role_index & 0x3F), (device_index >> 8) & 0xFF, device_index & 0xFF])


def load_topology(scale: float = 1.0, path: Path = TOPOLOGY_PATH) -> Topology:
    """Load the topology file and assign addresses for a device-count scale.

    `scale` multiplies every role's `count` (rounded, at least `min_count`,
    default 1). Raises ValueError when a zone runs out of addresses.
    """
    if scale <= 0:
        raise ValueError(f"invalid topology scale {scale}: expected a positive number")
    with open(path, "rb") as handle:
        config = tomllib.load(handle)

    zone_subnets = {
        name: ipaddress.IPv4Network(zone["subnet"]) for name, zone in config["zones"].items()
    }
    # Hosts start at .10 in each zone; .1 is the gateway.
    next_host = {name: 10 for name in zone_subnets}
    devices: list[Device] = []

    for role_index, (role, spec) in enumerate(config["roles"].items()):
        zone = spec["zone"]
        if zone not in zone_subnets:
            raise ValueError(f"role {role!r} names unknown zone {zone!r} in {path}")
        count = max(int(spec.get("min_count", 1)), round(spec["count"] * scale))
        oui = parse_mac_prefix(spec["oui"])
        subnet = zone_subnets[zone]
        for index in range(count):
            offset = next_host[zone]
            next_host[zone] += 1
            if offset >= subnet.num_addresses - 1:
                raise ValueError(f"zone {zone!r} ({subnet}) has no address left for {role} #{index + 1}")
            devices.append(
                Device(
                    name=f"{role.replace('_', '-')}-{index + 1:02d}",
                    role=role,
                    zone=zone,
                    ip=str(subnet.network_address + offset),
                    mac=make_mac(oui, role_index, index),
                    vendor=spec["vendor"],
                )
            )

    router_oui = parse_mac_prefix(config["router"]["mac_oui"])
    router = Device(config["router"]["name"], "router", "servers", "10.99.0.1",
                    make_mac(router_oui, 0x3F, 1), "Fortinet")
    # External and attacker hosts sit behind the firewall, so their frames carry its MAC.
    for name, ip in EXTERNAL_HOSTS.items():
        devices.append(Device(name.replace("_", "-"), "external", "internet", ip, router.mac, "external"))
    for name, ip in ATTACKER_HOSTS.items():
        devices.append(Device(name.replace("_", "-"), "attacker", "attacker", ip, router.mac, "external"))

    topology = Topology(site=config["site"], devices=devices, router=router, zone_subnets=zone_subnets)
    for device in devices:
        topology.by_role.setdefault(device.role, []).append(device)
        topology.by_ip[device.ip] = device
    return topology

"""Network zones: which side of the site an address is on.

Addresses in a zone listed in the policy file get that zone's name. Other
site-local addresses (RFC 1918, RFC 6598 shared space, RFC 4193 unique
local, loopback, link-local) are "internal". Everything else is "internet",
documentation ranges included, so test traffic to them counts as leaving.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from engine.policy.config import Network

INTERNAL = "internal"
INTERNET = "internet"
SITE_LOCAL_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8",
    "169.254.0.0/16", "fc00::/7", "fe80::/10", "::1/128",
))


class ZoneMap:
    def __init__(self, zones: dict[str, list[Network]] | None = None):
        self.zones = zones or {}
        self.zone_of = lru_cache(maxsize=65536)(self._zone_of)

    def _zone_of(self, ip: str) -> str:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return INTERNET
        for name, networks in self.zones.items():
            if any(address in network for network in networks):
                return name
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if any(address in network for network in SITE_LOCAL_NETWORKS):
            return INTERNAL
        return INTERNET

    def crosses(self, a: str, b: str) -> bool:
        """Return True when two addresses are in different zones."""
        return self.zone_of(a) != self.zone_of(b)

    def leaves_site(self, a: str, b: str) -> bool:
        """Return True when either address is on the internet."""
        return self.zone_of(a) == INTERNET or self.zone_of(b) == INTERNET

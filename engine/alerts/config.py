"""Configuration of the alert sink: aggregation, suppression, rate limits, bus and outputs.

Every value is checked in validate(), which AlertSink calls before it opens
anything, so a bad configuration fails before capture starts.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

# Aggregation key modes. "source" keys on the source address (one attacker,
# many targets: scans, sprays), "target" on the destination address (one
# victim, many sources: floods with spoofed sources), and "pair" on both.
KEY_MODES = ("source", "target", "pair")
DEFAULT_KEY_MODES = {"scan": "source", "dos": "target", "anomaly": "source"}

DEFAULT_BUS_ENDPOINT = "tcp://127.0.0.1:5556"
DEFAULT_REPLAY_ENDPOINT = "tcp://127.0.0.1:5557"
CEF_FORMATS = ("rfc5424", "rfc3164")


@dataclass
class SuppressionRule:
    """Drop detections that match every field given (None matches anything)."""

    category: str | None = None
    src: str | None = None  # address or CIDR network of the source
    dst: str | None = None  # address or CIDR network of the destination

    def __post_init__(self):
        self._src_network = _parse_network(self.src, "src")
        self._dst_network = _parse_network(self.dst, "dst")
        if self.category is None and self.src is None and self.dst is None:
            raise ValueError("invalid suppression rule: set at least one of category, src, dst")

    def matches(self, category: str, src_ip: str | None, dst_ip: str | None) -> bool:
        if self.category is not None and self.category != category:
            return False
        if self._src_network is not None and not _address_in(src_ip, self._src_network):
            return False
        if self._dst_network is not None and not _address_in(dst_ip, self._dst_network):
            return False
        return True


def _parse_network(value, name):
    if value is None:
        return None
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"invalid suppression {name} {value!r}; expected an IP address or CIDR network"
        ) from None


def _address_in(address, network) -> bool:
    if address is None:
        return False
    try:
        return ipaddress.ip_address(address) in network
    except ValueError:
        return False


@dataclass
class AggregationConfig:
    # Capture-time seconds between re-publications of a growing aggregate; a
    # severity rise is published at once.
    update_interval_s: float = 60.0
    # Capture-time seconds without a new detection after which an aggregate
    # closes and its final revision is published.
    quiet_period_s: float = 300.0
    # Open aggregates kept at once. Past this the least recently updated one
    # is closed early (counter: aggregates_evicted).
    max_open_aggregates: int = 10_000
    # Distinct addresses remembered per aggregate for distinct_sources and
    # distinct_targets; past this the counts stop growing (counter:
    # distinct_set_full).
    max_distinct_addresses: int = 1_024
    # Flow ids kept on an aggregated alert; later ones are dropped.
    max_flow_ids: int = 32
    key_modes: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_KEY_MODES))

    def key_mode(self, category: str) -> str:
        return self.key_modes.get(category, "pair")


@dataclass
class RateLimitConfig:
    # New alerts (first publications) per capture-time minute, per category
    # and over all categories; 0 disables a limit. A detection that would
    # open an aggregate past the limit folds into the category's single
    # overflow alert instead (counter: rate_limited).
    per_category_per_minute: int = 60
    global_per_minute: int = 300


@dataclass
class AlertConfig:
    sensor_id: str = "sensor"
    # PUB endpoint to bind; None disables the bus.
    bus_endpoint: str | None = DEFAULT_BUS_ENDPOINT
    # ROUTER endpoint that serves replay requests; None disables replay.
    replay_endpoint: str | None = DEFAULT_REPLAY_ENDPOINT
    # CURVE: the server's secret certificate (zmq.auth format, NAME.key_secret)
    # turns on encryption. curve_allow_dir contains the public certificates
    # of the clients allowed to connect. Without it, any client that has the
    # server's public key may connect.
    curve_server_secret: str | None = None
    curve_allow_dir: str | None = None
    eve_path: str | None = None
    cef_target: str | None = None  # udp://HOST:PORT or tcp://HOST:PORT
    cef_format: str = "rfc5424"
    cef_facility: int = 16  # syslog facility local0
    pseudonymize_key_file: str | None = None
    include_evidence: bool = False
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    suppression: list[SuppressionRule] = field(default_factory=list)
    rate_limits: RateLimitConfig = field(default_factory=RateLimitConfig)

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting."""
        aggregation = self.aggregation
        if aggregation.update_interval_s < 0:
            raise ValueError(f"invalid update_interval_s {aggregation.update_interval_s}; expected >= 0")
        if aggregation.quiet_period_s <= 0:
            raise ValueError(f"invalid quiet_period_s {aggregation.quiet_period_s}; expected > 0")
        for name in ("max_open_aggregates", "max_distinct_addresses", "max_flow_ids"):
            if getattr(aggregation, name) < 1:
                raise ValueError(f"invalid {name} {getattr(aggregation, name)}; expected >= 1")
        for category, mode in aggregation.key_modes.items():
            if mode not in KEY_MODES:
                raise ValueError(
                    f"invalid key mode {mode!r} for category {category!r};"
                    f" expected one of {', '.join(KEY_MODES)}"
                )
        for name in ("per_category_per_minute", "global_per_minute"):
            if getattr(self.rate_limits, name) < 0:
                raise ValueError(f"invalid {name} {getattr(self.rate_limits, name)}; expected >= 0 (0 disables)")
        if self.cef_format not in CEF_FORMATS:
            raise ValueError(f"invalid cef_format {self.cef_format!r}; expected one of {', '.join(CEF_FORMATS)}")
        if not 0 <= self.cef_facility <= 23:
            raise ValueError(f"invalid cef_facility {self.cef_facility}; expected 0..23")
        if self.cef_target is not None:
            parse_syslog_target(self.cef_target)
        if self.curve_allow_dir is not None and self.curve_server_secret is None:
            raise ValueError("curve_allow_dir is set without curve_server_secret; set both to use CURVE")
        if not self.sensor_id:
            raise ValueError("sensor_id is empty; set a name that identifies this sensor")
        for endpoint in (self.bus_endpoint, self.replay_endpoint):
            if endpoint is not None:
                check_endpoint(endpoint, bind=True)
        if not isinstance(self.sensor_id, str) or not _is_utf8_text(self.sensor_id):
            raise ValueError(f"invalid sensor_id {self.sensor_id!r}; expected text that is valid UTF-8")

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> AlertConfig:
        """Build a config from a parsed TOML table (the [alerts] section)."""
        data = dict(data)
        aggregation = AggregationConfig(**data.pop("aggregation", {}))
        rate_limits = RateLimitConfig(**data.pop("rate_limits", {}))
        suppression = [SuppressionRule(**rule) for rule in data.pop("suppression", [])]
        config = cls(aggregation=aggregation, rate_limits=rate_limits, suppression=suppression, **data)
        config.validate()
        return config


# tcp://HOST:PORT, where HOST is a name, an IPv4 address, a bracketed IPv6
# address or * (bind on every interface), and PORT is digits or * (bind to
# any free port).
_TCP_ENDPOINT = re.compile(r"tcp://(\*|\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]*]+):(\*|[0-9]{1,5})")


def check_endpoint(endpoint: str, bind: bool = False) -> str:
    """Return `endpoint` unchanged, or raise ValueError unless ZeroMQ can use it as intended.

    Accepted: tcp://HOST:PORT with PORT from 1 to 65535 (or * for any free
    port when binding), ipc://PATH and inproc://NAME. libzmq itself accepts
    some ports above 65535 without an error, so the alerts would go to a
    port that no subscriber expects. NOTE: ZeroMQ's source-address form
    tcp://SOURCE;HOST:PORT is rejected too.
    """
    expected = "expected tcp://HOST:PORT (PORT 1-65535), ipc://PATH or inproc://NAME"
    if not isinstance(endpoint, str):
        raise ValueError(f"invalid endpoint {endpoint!r}; {expected}")
    if endpoint.startswith(("ipc://", "inproc://")) and endpoint.partition("://")[2]:
        return endpoint
    match = _TCP_ENDPOINT.fullmatch(endpoint)
    if match is None:
        raise ValueError(f"invalid endpoint {endpoint!r}; {expected}")
    host, port = match.groups()
    if port == "*" or host == "*":
        if not bind:
            raise ValueError(f"invalid endpoint {endpoint!r}: * is for binding; name the host and port to connect to")
    if port != "*" and not 1 <= int(port) <= 65535:
        raise ValueError(f"invalid port {port} in endpoint {endpoint!r}; {expected}")
    return endpoint


def _is_utf8_text(text: str) -> bool:
    # Command-line bytes that are not UTF-8 arrive as lone surrogates, which
    # msgpack and SQLite reject when the first alert is written.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_syslog_target(target: str) -> tuple[str, str, int]:
    """Split udp://HOST:PORT or tcp://HOST:PORT into (transport, host, port)."""
    transport, separator, rest = target.partition("://")
    host, _, port_text = rest.rpartition(":")
    if not separator or transport not in ("udp", "tcp") or not host or not port_text.isdigit():
        raise ValueError(
            f"invalid syslog target {target!r}; expected udp://HOST:PORT or tcp://HOST:PORT"
        )
    port = int(port_text)
    if not 0 < port <= 65535:
        raise ValueError(f"invalid syslog port {port} in {target!r}; expected 1..65535")
    return transport, host.strip("[]"), port

"""Profiles, attack specifications and the time-window generation loop."""

from __future__ import annotations

import calendar
import logging
import re
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from engine.simulate import attacks as attack_module
from engine.simulate.benign import ACTIVITIES, BenignState, mqtt_telemetry, rhythm
from engine.simulate.labels import Label
from engine.simulate.session import PortAllocator, SimContext
from engine.simulate.synthetic import make_patients
from engine.simulate.topology import Device, load_topology
from engine.simulate.writer import PacketBuffer, pcap_file_header

log = logging.getLogger(__name__)

# Monday 2026-03-02 07:00 in Baghdad (UTC+3), the start of a day shift.
BASE_START_UTC = calendar.timegm((2026, 3, 2, 4, 0, 0))
WEEK_S = 7 * 86400


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    scale: float  # device-count multiplier on topology.toml counts
    activity_rate: float  # multiplier on the per-hour session rates in benign.ACTIVITIES
    duration_s: float  # default capture length
    window_s: float  # generation and flush window
    telemetry_interval_s: float  # MQTT publish interval of each bedside device
    image_bytes: int  # pixel data per DICOM image
    images_per_study: tuple[int, int]  # (min, max) images in a stored or retrieved study
    attacks: tuple[str, ...] = ()  # default attack specifications
    every_activity: bool = False  # run each benign activity at least once per window


PROFILES = {
    "small": Profile(
        "small", "about 25 devices, a few thousand packets per 2 minutes, every protocol", 0.05, 0.6,
        120, 60, 15, 8192, (2, 5),
        ("port_scan@20s", "ssh_bruteforce@35s:intensity=0.3", "dicom_exfil@50s:intensity=0.5",
         "dns_tunnel@65s:intensity=0.2", "c2_beacon@10s:interval=10,beacons=10", "arp_spoof@90s:intensity=0.5"),
        every_activity=True,
    ),
    "hospital": Profile(
        "hospital", "300 devices, about 5000 packets/s on average during the day shift", 1.0, 4.0,
        600, 30, 5, 524288, (20, 120),
        ("port_scan@60s", "ssh_bruteforce@150s", "password_spray@200s", "dicom_exfil@260s",
         "dns_tunnel@320s", "c2_beacon@30s:interval=30,beacons=18", "smb_lateral@400s", "ransomware@480s",
         "syn_flood@540s:duration=15"),
    ),
    "week": Profile(
        "week", "300 devices for 7 days at a low rate, with attacks recurring each night", 1.0, 0.15,
        WEEK_S, 600, 120, 65536, (2, 10),
        ("ssh_bruteforce@16h:every=1d,count=7,intensity=0.5", "dns_tunnel@18h:every=1d,count=7,intensity=0.3",
         "c2_beacon@15h:every=1d,count=7,interval=120,beacons=15", "port_scan@2d17h",
         "password_spray@3d17h30m", "dicom_exfil@5d19h"),
    ),
}

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float:
    """Parse "90", "90s", "5m", "2h", "1d" or combinations like "2d17h30m" into seconds."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None or not any(match.groups()):
        raise ValueError(f"invalid duration {text!r}: expected a number with an optional unit, like 90s, 10m, 2h or 1d3h")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


@dataclass
class AttackSpec:
    name: str
    offset_s: float | None  # from capture start; None spreads attacks over the capture
    intensity: float = 1.0
    every_s: float | None = None
    count: int = 1
    jitter_s: float = 0.0
    params: dict = field(default_factory=dict)


def parse_attack(text: str) -> AttackSpec:
    """Parse NAME[@OFFSET][:key=value,...], for example "ssh_bruteforce@2h:intensity=2,every=1d,count=3"."""
    head, _, options = text.partition(":")
    name, _, offset = head.partition("@")
    name = name.strip()
    if name not in attack_module.SCENARIOS:
        raise ValueError(f"unknown attack {name!r}; expected one of {', '.join(sorted(attack_module.SCENARIOS))}")
    spec = AttackSpec(name, parse_duration(offset) if offset else None)
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"invalid attack option {item!r} in {text!r}: expected key=value")
        if key == "intensity":
            spec.intensity = float(value)
            if spec.intensity <= 0:
                raise ValueError(f"invalid intensity {value!r} in {text!r}: expected a positive number")
        elif key == "every":
            spec.every_s = parse_duration(value)
            spec.jitter_s = min(900.0, spec.every_s * 0.05)
        elif key == "count":
            spec.count = int(value)
            if spec.count < 1:
                raise ValueError(f"invalid count {value!r} in {text!r}: expected 1 or more")
        elif key == "jitter":
            spec.jitter_s = parse_duration(value)
        elif key == "src" or key in attack_module.SCENARIO_OPTIONS.get(name, ()):
            spec.params[key] = value
        else:
            allowed = ("intensity", "every", "count", "jitter", "src") + attack_module.SCENARIO_OPTIONS.get(name, ())
            raise ValueError(f"unknown option {key!r} for attack {name}; expected one of {', '.join(allowed)}")
    if spec.count > 1 and spec.every_s is None:
        raise ValueError(f"attack {text!r} sets count={spec.count} without every=: give the repeat interval")
    return spec


@dataclass
class SimulationResult:
    packets: int
    bytes: int
    start: float
    end: float
    labels: list[Label]
    message_counts: dict[str, int]
    flows: int
    devices: int


def start_epoch(seed: int) -> float:
    """Capture start for a seed: a Monday 07:00 Baghdad time, a different week per seed."""
    return float(BASE_START_UTC + (seed % 52) * WEEK_S)


def choose_attackers(ctx: SimContext, rng: np.random.Generator) -> dict[str, Device]:
    """Pick the run's compromised hosts: one nurse workstation and one reading workstation."""
    topology = ctx.topology
    nurses = topology.role("nurse_workstation")
    readers = topology.role("reading_workstation")
    return {
        "compromised": nurses[int(rng.integers(len(nurses)))],
        "compromised_reader": readers[int(rng.integers(len(readers)))],
        "external": topology.attacker("bruteforcer"),
        "scanner": topology.attacker("scanner"),
    }


def _attacker_for(spec: AttackSpec, ctx: SimContext, attackers: dict[str, Device]) -> Device:
    source = spec.params.pop("src", None)
    if source is None:
        return attackers["compromised_reader"] if spec.name == "dicom_exfil" else attackers["compromised"]
    if source in attackers:
        return attackers[source]
    if source in ctx.topology.by_ip:
        return ctx.topology.by_ip[source]
    for device in ctx.topology.devices:
        if device.name == source:
            return device
    raise ValueError(f"unknown attack source {source!r}: expected compromised, external, scanner, "
                     "a device name or an address from the topology")


def schedule_attacks(specs: list[AttackSpec], start: float, duration: float,
                     rng: np.random.Generator) -> list[tuple[float, int, AttackSpec]]:
    """Return (start time, occurrence, spec) for every attack run, in time order."""
    runs = []
    for index, spec in enumerate(specs):
        offset = spec.offset_s
        if offset is None:
            offset = duration * (0.1 + 0.8 * index / max(1, len(specs)))
        for occurrence in range(spec.count):
            at = offset + occurrence * (spec.every_s or 0.0)
            if occurrence and spec.jitter_s:
                at += float(rng.uniform(-spec.jitter_s, spec.jitter_s))
            if at < duration:
                runs.append((start + at, occurrence, spec))
    runs.sort(key=lambda run: (run[0], run[2].name))
    return runs


def simulate(out: BinaryIO, profile: Profile, duration_s: float, seed: int,
             attack_specs: list[AttackSpec]) -> SimulationResult:
    """Write a pcap of `duration_s` seconds to `out` and return what was generated."""
    if duration_s <= 0:
        raise ValueError(f"invalid duration {duration_s} s: expected a positive number")
    topology = load_topology(profile.scale)
    start = start_epoch(seed)
    buffer = PacketBuffer()
    ctx = SimContext(topology, buffer, seed, start, start + duration_s, PortAllocator(seed))
    state = BenignState(make_patients(ctx.rng("patients"), 400), image_bytes=profile.image_bytes,
                        images_per_study=profile.images_per_study)
    attackers = choose_attackers(ctx, ctx.rng("attackers"))
    runs = schedule_attacks(attack_specs, start, duration_s, ctx.rng("schedule"))
    utc_offset_h = float(topology.site.get("utc_offset_h", 0))
    telemetry = topology.role("bedside_monitor") + topology.role("infusion_pump")
    labels: list[Label] = []

    out.write(pcap_file_header())
    window_index = 0
    window_start = start
    next_run = 0
    while window_start < start + duration_s:
        window_end = min(window_start + profile.window_s, start + duration_s)
        length = window_end - window_start
        level = rhythm((window_start + window_end) / 2, utc_offset_h)

        for name, (per_hour, follows_rhythm, function) in ACTIVITIES.items():
            rng = ctx.rng("activity", name, window_index)
            rate = per_hour * profile.activity_rate * profile.scale * (level if follows_rhythm else 1.0)
            sessions = rng.poisson(rate * length / 3600)
            if profile.every_activity:
                sessions = max(1, sessions)
            times = np.sort(rng.uniform(window_start, window_end, size=sessions))
            for t in times.tolist():
                function(ctx, state, rng, t)

        rng = ctx.rng("telemetry", window_index)
        for device in telemetry:
            interval = profile.telemetry_interval_s * (1.0 if device.role == "bedside_monitor" else 3.0)
            mqtt_telemetry(ctx, state, rng, window_start + float(rng.uniform(0, min(5.0, length / 4))), device,
                           window_end, interval)

        while next_run < len(runs) and runs[next_run][0] < window_end:
            at, occurrence, spec = runs[next_run]
            next_run += 1
            params = dict(spec.params)
            attacker = _attacker_for(AttackSpec(spec.name, spec.offset_s, params=params), ctx, attackers)
            params.pop("src", None)
            rng = ctx.rng("attack", spec.name, occurrence, int(spec.offset_s or 0))
            scenario = attack_module.SCENARIOS[spec.name]
            produced = scenario(ctx, state, rng, at, spec.intensity, attacker, params)
            for label in produced:
                label.occurrence = occurrence
            labels.extend(produced)
            log.info("attack %s (occurrence %d) at %.0f s from %s: %d label records", spec.name, occurrence,
                     at - start, attacker.ip, len(produced))

        buffer.flush(out, before=window_end)
        window_start = window_end
        window_index += 1

    buffer.flush(out)
    return SimulationResult(
        packets=buffer.packets_written, bytes=buffer.bytes_written + 24, start=start, end=start + duration_s,
        labels=labels, message_counts=dict(ctx.message_counts), flows=ctx.flows_opened,
        devices=sum(1 for d in topology.devices if d.role not in ("external", "attacker")),
    )

"""Ground-truth label records, one JSON object per line (see docs/simulate.md)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import IO

from engine.taxonomy import ATTACK_CLASSES

LABEL_FORMAT_VERSION = 1


@dataclass
class Label:
    """One attack flow set or time range.

    A flow belongs to the label when its 5-tuple is in `flows` (or matches
    `selector`) and its packets lie within [start, end]. ICMP flows use
    the ICMP type as sport and the code as dport, as Community ID does.
    """

    attack_class: str  # key of engine.taxonomy.ATTACK_CLASSES
    scenario: str  # scenario name as given on the command line, e.g. "port_scan"
    src: str  # attacker address, or a CIDR for spoofed sources
    dst: str | list[str] | None
    start: float  # epoch seconds of the first attack packet
    end: float  # epoch seconds of the last attack packet
    dst_ports: list[int] = field(default_factory=list)
    flows: list[dict] = field(default_factory=list)  # {src, sport, dst, dport, proto}
    selector: dict | None = None  # for floods and ARP: fields every attack packet matches
    occurrence: int = 0  # 0 for the first run of a recurring attack, 1 for the next, ...
    details: dict = field(default_factory=dict)  # scenario-specific facts (AE titles, user counts)

    def __post_init__(self):
        if self.attack_class not in ATTACK_CLASSES:
            raise ValueError(f"unknown attack class {self.attack_class!r}; "
                             f"expected one of {', '.join(sorted(ATTACK_CLASSES))}")

    def to_record(self) -> dict:
        row = ATTACK_CLASSES[self.attack_class]
        return {
            "version": LABEL_FORMAT_VERSION,
            "attack_class": self.attack_class,
            "technique": row.technique,
            "category": row.category,
            "stage": row.stage,
            "scenario": self.scenario,
            "occurrence": self.occurrence,
            "src": self.src,
            "dst": self.dst,
            "dst_ports": sorted(set(self.dst_ports)),
            # Widened to whole microseconds, the capture's timestamp resolution.
            "start": math.floor(self.start * 1e6) / 1e6,
            "end": math.ceil(self.end * 1e6) / 1e6,
            "flows": self.flows,
            "selector": self.selector,
            "details": self.details,
        }


def write_labels(labels: list[Label], handle: IO[str]) -> None:
    for label in sorted(labels, key=lambda item: (item.start, item.attack_class)):
        handle.write(json.dumps(label.to_record(), sort_keys=True, separators=(",", ":")) + "\n")


def read_labels(path) -> list[dict]:
    """Read a labels file; raise ValueError naming the line that is not a JSON object."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: invalid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object")
            records.append(record)
    return records

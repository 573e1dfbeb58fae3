"""Regenerate engine/data/sample.pcap and sample.labels.jsonl, the shipped sample.

Run from the repository root: `python tools/make_sample.py`. The output is
byte-identical for the settings below, so a changed sample in a diff means
the simulator's output changed.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from engine.simulate.generator import PROFILES, parse_attack, simulate  # noqa: E402
from engine.simulate.labels import write_labels  # noqa: E402

SAMPLE_SEED = 7
SAMPLE_PROFILE = "small"
SAMPLE_DURATION_S = 300
SAMPLE_ATTACKS = (
    "c2_beacon@20s:interval=15,beacons=16",
    "port_scan@40s",
    "ssh_bruteforce@70s:intensity=0.4",
    "password_spray@100s:intensity=0.5",
    "hl7_unauthorized@125s",
    "dicom_exfil@150s:intensity=0.7",
    "smb_lateral@180s:intensity=0.4",
    "dns_tunnel@210s:intensity=0.3",
    "arp_spoof@240s:intensity=0.5",
    "syn_flood@265s:duration=3,intensity=0.5",
)
PCAP_PATH = REPO_ROOT / "engine" / "data" / "sample.pcap"
LABELS_PATH = REPO_ROOT / "engine" / "data" / "sample.labels.jsonl"


def main() -> int:
    specs = [parse_attack(text) for text in SAMPLE_ATTACKS]
    with open(PCAP_PATH, "wb") as out:
        result = simulate(out, PROFILES[SAMPLE_PROFILE], SAMPLE_DURATION_S, SAMPLE_SEED, specs)
    with open(LABELS_PATH, "w", encoding="utf-8") as handle:
        write_labels(result.labels, handle)
    print(f"wrote {result.packets} packets ({result.bytes / 1e6:.1f} MB) to {PCAP_PATH.relative_to(REPO_ROOT)}")
    print(f"wrote {len(result.labels)} label records to {LABELS_PATH.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

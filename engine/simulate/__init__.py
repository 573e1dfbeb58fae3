"""Synthetic hospital network traffic with ground-truth attack labels.

`simulate()` writes a pcap for a profile, duration, seed and attack list and
returns the labels; `wardwatch simulate` is its command line. The layers:
topology (devices from topology.toml), protocols (byte builders per
protocol), session (TCP/UDP conversations), benign and attacks (the conversations), writer (vectorised pcap output) and generator (the time-window loop).
"""

from engine.simulate.generator import PROFILES, AttackSpec, SimulationResult, parse_attack, simulate
from engine.simulate.labels import Label, read_labels, write_labels

__all__ = ["PROFILES", "AttackSpec", "Label", "SimulationResult", "parse_attack", "read_labels", "simulate",
           "write_labels"]

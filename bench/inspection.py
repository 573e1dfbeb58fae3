"""Cost of application-layer inspection in the packet pipeline.

Times three passes over the same in-memory batches of a mix of shared
captures (web browsing, TLS, DNS, HL7, MQTT, LDAP, Telnet, RDP, FTP, SMB):
decode and flow table; the same plus the compiled stream capture; the same
plus the protocol parsers. It prints packets per second for each and their
ratio to the first. The target is inspection costing at most 30% of
throughput (ratio >= 0.70).

    python bench/inspection.py [--repeat 5] [--pcaps DIR]
"""

from __future__ import annotations

import os
import sys

# This script shares its name with the standard library's inspect module,
# which NumPy imports. Replace the script's folder on sys.path with the
# repository root before anything imports it.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from engine.capture import open_capture  # noqa: E402
from engine.decode import decode_batch, new_anomaly_counters  # noqa: E402
from engine.flows.table import FlowTable  # noqa: E402
from engine.inspect.inspector import Inspector  # noqa: E402

MIX = [
    "ppp-example-web-browsing.pcap",
    "sv-community-id-ipv6.pcap",
    "ndpi-dns-exfiltration.pcap",
    "ndpi-hl7.pcap",
    "zeek-mqtt.pcap",
    "sv-mqtt5-pub-jpeg.pcap",
    "zeek-ldap-simpleauth.pcap",
    "sv-telnet.pcap",
    "sv-rdp-003.pcap",
    "zeek-ftp-bruteforce.pcap",
    "sv-dcerpc-zerologon.pcap",
    "cl-asyncrat.pcap",
]


def load_batches(directory: Path):
    batches = []
    next_start_ns = 1_700_000_000 * 1_000_000_000
    for name in MIX:
        path = directory / name
        if not path.is_file():
            print(f"skipping {name}: not found in {directory}", file=sys.stderr)
            continue
        with open_capture(path) as reader:
            captured = list(reader)
        # Shift each capture to start one second after the previous one ends.
        # The flow table then gets one continuous timeline instead of jumps of
        # years, which would expire every flow at once.
        first = min(int(b.packets["ts_ns"].min()) for b in captured if b.count)
        shift = next_start_ns - first
        for batch in captured:
            batch.packets["ts_ns"] += shift
        next_start_ns = max(int(b.packets["ts_ns"].max()) for b in captured if b.count) + 1_000_000_000
        batches.extend(captured)
    return batches


def run(batches, variant: str, inspector: Inspector) -> tuple[float, int, int]:
    """Time one pass; variant is "base", "capture" (stream table only) or "inspect" (table and parsers).

    The inspector is made once per variant and reused by every pass, as a
    running sensor keeps it, and each pass ends by flushing it. The flow
    table is made anew for each pass, outside the timed part, because a
    replay of the same timestamps would run its clock backwards.
    """
    flows = FlowTable(capacity=1 << 16)
    counters = new_anomaly_counters()
    results = 0
    packets = 0
    start = time.perf_counter()
    for batch in batches:
        decode_batch(batch.packets, batch.data, counters)
        ended = flows.update(batch.packets, batch.data)
        packets += batch.count
        if variant == "capture":
            inspector.table.update(batch.packets, batch.data)
            if len(ended):
                inspector.table.end_flows(np.ascontiguousarray(ended["flow_id"]))
            results += len(inspector.table.take_ready())
        elif variant == "inspect":
            results += len(inspector.process(batch.packets, batch.data))
            if len(ended):
                results += len(inspector.end_flows(ended["flow_id"]))
    ended = flows.flush()
    if variant == "capture":
        inspector.table.end_all()
        results += len(inspector.table.take_ready())
    elif variant == "inspect":
        results += len(inspector.end_flows(ended["flow_id"]))
        results += len(inspector.flush())
    return time.perf_counter() - start, packets, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per variant; the fastest counts")
    parser.add_argument("--pcaps", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared" / "pcaps",
                        help="folder with the shared captures")
    args = parser.parse_args()
    batches = load_batches(args.pcaps)
    if not batches:
        sys.exit(f"no captures found in {args.pcaps}")
    best = {}
    inspectors = {variant: Inspector() for variant in ("base", "capture", "inspect")}
    for _ in range(args.repeat):
        for variant in ("base", "capture", "inspect"):
            elapsed, packets, results = run(batches, variant, inspectors[variant])
            if elapsed < best.get(variant, (float("inf"),))[0]:
                best[variant] = (elapsed, packets, results)
    rates = {variant: best[variant][1] / best[variant][0] for variant in best}
    flows_inspected = best["inspect"][2]
    parse_us = (best["inspect"][0] - best["capture"][0]) / max(flows_inspected, 1) * 1e6
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"packets per run: {best['base'][1]}, flows inspected: {flows_inspected} (fastest of {args.repeat} runs)")
    print(f"decode + flows:                      {rates['base']:12,.0f} packets/s")
    print(f"decode + flows + stream capture:     {rates['capture']:12,.0f} packets/s  "
          f"ratio {rates['capture'] / rates['base']:.2f}")
    print(f"decode + flows + capture + parsers:  {rates['inspect']:12,.0f} packets/s  "
          f"ratio {rates['inspect'] / rates['base']:.2f}  (target >= 0.70)")
    print(f"parsing and result records:          {parse_us:12.1f} us per inspected flow")


if __name__ == "__main__":
    main()

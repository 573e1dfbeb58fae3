"""Cost of application-layer inspection in the packet pipeline.

Times three passes over the same in-memory batches of a mix of shared
captures (web browsing, TLS, DNS, HL7, MQTT, LDAP, Telnet, RDP, FTP, SMB):
decode and flow table; the same plus the compiled stream capture; the same
plus the protocol parsers. It prints packets per second for each and their
ratio to the first. The target is inspection costing at most 30% of
throughput (ratio >= 0.70).

Passes are timed in CPU time of this thread, not wall-clock time: on a
shared machine a pass of a few milliseconds is often descheduled, and the
longer passes (with inspection) more often, which skews the ratios.

    python bench/inspection.py [--repeat 5] [--pcaps DIR] [--capture FILE ...]

--capture replaces the mix with the given files, e.g. engine/data/sample.pcap
or the output of `wardwatch simulate --profile hospital`.
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
import statistics  # noqa: E402
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


def load_batches(paths: list[Path]):
    batches = []
    next_start_ns = 1_700_000_000 * 1_000_000_000
    for path in paths:
        name = path.name
        directory = path.parent
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
    start = time.thread_time()
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
    return time.thread_time() - start, packets, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds of the three passes; rates come from the fastest, ratios from the median")
    parser.add_argument("--pcaps", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared" / "pcaps",
                        help="folder with the shared captures")
    parser.add_argument("--capture", type=Path, action="append", default=[],
                        help="capture file to time instead of the shared mix (repeatable)")
    args = parser.parse_args()
    paths = args.capture or [args.pcaps / name for name in MIX]
    batches = load_batches(paths)
    if not batches:
        sys.exit(f"no captures found: {', '.join(str(p) for p in paths)}")

    best = {}
    # Ratio to the base pass of the same round, per round, for the median.
    round_ratios: dict[str, list[float]] = {"capture": [], "inspect": []}
    inspectors = {variant: Inspector() for variant in ("base", "capture", "inspect")}
    for _ in range(args.repeat):
        elapsed_by_variant = {}
        for variant in ("base", "capture", "inspect"):
            elapsed, packets, results = run(batches, variant, inspectors[variant])
            elapsed_by_variant[variant] = elapsed
            if elapsed < best.get(variant, (float("inf"),))[0]:
                best[variant] = (elapsed, packets, results)
        for variant in round_ratios:
            round_ratios[variant].append(elapsed_by_variant["base"] / max(elapsed_by_variant[variant], 1e-9))

    rates = {variant: best[variant][1] / best[variant][0] for variant in best}
    medians = {variant: statistics.median(values) for variant, values in round_ratios.items()}
    flows_inspected = best["inspect"][2]
    parse_us = (best["inspect"][0] - best["capture"][0]) / max(flows_inspected, 1) * 1e6

    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"packets per run: {best['base'][1]}, flows inspected: {flows_inspected}, {args.repeat} runs; "
          "rates of the fastest run, ratios as median of the runs (same round) and fastest")
    print(f"decode + flows:                      {rates['base']:12,.0f} packets/s")
    print(f"decode + flows + stream capture:     {rates['capture']:12,.0f} packets/s  "
          f"ratio {medians['capture']:.2f} (fastest {rates['capture'] / rates['base']:.2f})")
    print(f"decode + flows + capture + parsers:  {rates['inspect']:12,.0f} packets/s  "
          f"ratio {medians['inspect']:.2f} (fastest {rates['inspect'] / rates['base']:.2f})  (target >= 0.70)")
    print(f"parsing and result records:          {parse_us:12.1f} us per inspected flow")


if __name__ == "__main__":
    main()

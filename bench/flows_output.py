"""Benchmark writing flow records: the per-flow reference path against the columnar one.

    python bench/flows_output.py                   # 400,000 packets over 200,000 flows
    python bench/flows_output.py --flows 50000     # quicker

It writes a capture with bench/core.py's mix generator (fixed seed), runs
the flow table over it once, and then times, on the same FLOW_DTYPE rows:

- reference dicts: the per-flow flows_to_records kept in
  tests/test_flows_records.py (one dict per flow built row by row);
- dicts: engine.flows.flows_to_records, which builds the same dicts from
  columns;
- json.dumps: FlowWriter.write on those dicts, one json.dumps per record;
- columnar JSON lines / CSV: FlowWriter.write_flows, which formats each
  column once and joins the lines without a dict per flow.

The "read, decode, flows" row times collecting the flows alone, and the
`wardwatch flows` row the whole command (read, decode, flows, JSON lines to
/dev/null) in a child process. Times are CPU seconds (user + system) of the
best of --repeats runs, because other jobs on a shared machine stretch
wall-clock times but not CPU times. Everything runs on one core.
"""

from __future__ import annotations

import os
import sys

# Python puts this script's folder first on the import path, and bench/
# contains scripts named like standard modules (inspect.py), which would
# shadow them for NumPy. Import from the repository root instead.
_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
_REPO_ROOT = os.path.dirname(_BENCH_DIR)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH_DIR]
sys.path.insert(0, _REPO_ROOT)

import argparse  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO_ROOT = Path(_REPO_ROOT)


def load_core_helpers():
    """Import bench/core.py by path, since bench/ is not a package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_core", REPO_ROOT / "bench" / "core.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def collect_flows(path: Path) -> np.ndarray:
    """Run the flow table over a capture and return every flow it ends or flushes."""
    from engine.capture import open_capture
    from engine.decode import decode_batch, new_anomaly_counters
    from engine.flows import FlowTable

    table = FlowTable()
    counters = new_anomaly_counters()
    parts = []
    with open_capture(str(path)) as reader:
        for batch in reader:
            decode_batch(batch.packets, batch.data, counters)
            parts.append(table.update(batch.packets, batch.data).copy())
    parts.append(table.flush())
    return np.concatenate(parts)


def best_of(repeats: int, function) -> float:
    """Return the smallest CPU time of `repeats` calls, in seconds."""
    times = []
    for _ in range(repeats):
        started = time.process_time()
        function()
        times.append(time.process_time() - started)
    return min(times)


def time_cli(path: Path, repeats: int) -> float:
    """Return the smallest CPU seconds of `wardwatch flows PATH` with its JSON lines sent to /dev/null."""
    command = [sys.executable, "-m", "engine", "flows", str(path)]
    times = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(os.devnull, "w") as sink:
            subprocess.run(command, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.DEVNULL, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=200_000, help="distinct flows in the capture (default 200,000)")
    parser.add_argument("--packets", type=int, default=400_000, help="packets in the capture (default 400,000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path; the best is reported")
    parser.add_argument("--workdir", type=Path, help="where to write the capture (default: a temporary directory)")
    parser.add_argument("--no-cli", action="store_true", help="skip the whole-command timing")
    options = parser.parse_args()

    from engine.flows import flows_to_records
    from engine.flows.cli import FlowWriter
    from tests.test_flows_records import reference_flows_to_records

    core = load_core_helpers()
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="wardwatch-bench-flows-"))
    workdir.mkdir(parents=True, exist_ok=True)
    capture = workdir / f"flows-{options.packets}p-{options.flows}f.pcap"
    if not capture.exists():
        core.make_mix_capture(capture, options.packets, flows=options.flows)
    flows = collect_flows(capture)
    count = len(flows)

    records = flows_to_records(flows)

    def write_dicts():
        FlowWriter(io.StringIO(), "jsonl").write(records)

    def write_columnar(output_format):
        FlowWriter(io.StringIO(), output_format).write_flows(flows)

    rows = [
        ("read, decode, flows", best_of(options.repeats, lambda: collect_flows(capture))),
        ("reference dicts (per flow)", best_of(options.repeats, lambda: reference_flows_to_records(flows))),
        ("dicts from columns", best_of(options.repeats, lambda: flows_to_records(flows))),
        ("json.dumps per dict", best_of(options.repeats, write_dicts)),
        ("columnar JSON lines", best_of(options.repeats, lambda: write_columnar("jsonl"))),
        ("columnar CSV", best_of(options.repeats, lambda: write_columnar("csv"))),
    ]
    old_total = rows[1][1] + rows[3][1]

    print(f"flows_output: {count} flows from {capture.name}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC;"
          f" {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{'path':<34} {'CPU s':>9} {'flows/s':>12} {'vs old JSON':>12}")
    print(f"{'old JSON (reference + dumps)':<34} {old_total:9.3f} {count / old_total:12,.0f} {1.0:11.2f}x")
    for name, seconds in rows:
        print(f"{name:<34} {seconds:9.3f} {count / seconds:12,.0f} {old_total / seconds:11.2f}x")

    if not options.no_cli:
        seconds = time_cli(capture, options.repeats)
        print(f"{'wardwatch flows (whole command)':<34} {seconds:9.3f} {count / seconds:12,.0f}"
              f"   ({options.packets / seconds:,.0f} packets per CPU second)")
        print(f"{'  estimate with the old output':<34} {rows[0][1] + old_total:9.3f}"
              f" {count / (rows[0][1] + old_total):12,.0f}"
              f"   ({options.packets / (rows[0][1] + old_total):,.0f} packets per CPU second)")


if __name__ == "__main__":
    main()

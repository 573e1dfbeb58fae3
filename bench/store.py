"""Benchmark what store safety adds: the capture digest of `analyze` and the read-only open.

Run: python bench/store.py [--capture FILE] [--repeat N]

The capture digest (SHA-256 of the whole file, taken before `analyze`
reads it) is timed against `analyze` of the same capture in one process,
so the ratio is the share of the run that the duplicate check adds. The
default capture is the shipped sample. The file is read once before
timing, so both runs read it from the page cache.

The read-only open with its table check (what `alerts list` does before
its query) is timed against the writer's open with schema creation.
"""

import os
import sys

# Put the repository root in place of bench/ at the front of the import path:
# bench/ has modules named like standard ones (inspect.py) that would shadow them.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from click.testing import CliRunner  # noqa: E402

from engine.alerts.store import READ_COLUMNS, AlertStore  # noqa: E402
from engine.analyze.capture_log import file_sha256  # noqa: E402
from engine.cli import main  # noqa: E402
from engine.store import check_store_tables, open_store  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent / "engine" / "data" / "sample.pcap"


def best_of(repeat: int, function) -> float:
    """Return the shortest wall-clock time of `repeat` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capture", default=str(SAMPLE), help="Capture file to hash and analyse.")
    parser.add_argument("--repeat", type=int, default=3, help="Runs per measurement; the best is kept.")
    arguments = parser.parse_args()

    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()},"
          f" {os.cpu_count()} cores, Python {platform.python_version()}")
    size_bytes = os.path.getsize(arguments.capture)
    file_sha256(arguments.capture)  # warm the page cache

    with tempfile.TemporaryDirectory() as directory:
        runner = CliRunner()
        counter = iter(range(1_000_000))

        def analyse():
            store = Path(directory) / f"run-{next(counter)}.db"
            result = runner.invoke(main, ["analyze", "--no-bus", "-q", "--store", str(store), arguments.capture])
            if result.exit_code != 0:
                raise SystemExit(f"analyze failed: {result.output}")

        analyse()  # first run pays imports and Numba cache loading
        analyse_s = best_of(arguments.repeat, analyse)
        digest_s = best_of(arguments.repeat, lambda: file_sha256(arguments.capture))
        print(f"capture {arguments.capture}: {size_bytes:,} bytes")
        print(f"  analyze              {analyse_s * 1000:9.1f} ms")
        print(f"  SHA-256 digest       {digest_s * 1000:9.1f} ms  ({size_bytes / digest_s / 1e6:,.0f} MB/s)"
              f"  ratio to analyze {digest_s / analyse_s:.3f}")

        store = Path(directory) / "run-0.db"

        def open_for_writing():
            AlertStore(store).close()

        def open_read_only():
            conn = open_store(store, read_only=True)
            check_store_tables(conn, store, READ_COLUMNS)
            conn.close()

        write_s = best_of(arguments.repeat * 100, open_for_writing)
        read_s = best_of(arguments.repeat * 100, open_read_only)
        print("store open, best of", arguments.repeat * 100)
        print(f"  writer open + schema {write_s * 1e6:9.0f} us")
        print(f"  read-only + check    {read_s * 1e6:9.0f} us  ratio to writer {read_s / write_s:.2f}")


if __name__ == "__main__":
    main_benchmark()

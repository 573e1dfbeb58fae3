"""Benchmark the compiled scorer and the window-feature update against peers.

    python bench/model.py [--rows 100000] [--packets 1000000]

Scorer: rows/s on one thread for the WardWatch kernel, LightGBM's own
predict (num_threads=1), and treelite and lleaves compiled from the same
booster when those packages are installed (each is skipped with a message
otherwise). The model is trained here on synthetic rows of the
feature matrix's width (8 classes, 100 rounds, 31 leaves). Window features:
packets/s of WindowFeatures.update on one core, for a small key space
(tables in cache) and a large one (200 x 50 hosts with random source
ports, so the socket table overflows and evicts).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from engine.decode.layout import empty_packets  # noqa: E402
from engine.detect import scorer  # noqa: E402
from engine.detect.trees import trees_from_lightgbm  # noqa: E402
from engine.features import FEATURE_NAMES, WindowFeatures  # noqa: E402

CLASSES = 8


def best_rate(function, items, repeats=3):
    function()  # warm up: CPU caches and page faults of the tables
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = max(best, items / (time.perf_counter() - start))
    return best


def synthetic_booster(lightgbm, rows=20_000):
    rng = np.random.default_rng(0)
    X = rng.lognormal(2.0, 1.0, size=(rows, len(FEATURE_NAMES))).astype(np.float32)
    y = rng.integers(0, CLASSES, size=rows)
    for c in range(CLASSES):
        X[y == c, c * 3] *= 10.0
    params = {"objective": "multiclass", "num_class": CLASSES, "num_leaves": 31, "verbose": -1,
              "seed": 0, "num_threads": 2}
    return lightgbm.train(params, lightgbm.Dataset(X, y), num_boost_round=100)


def bench_scorer(rows: int) -> None:
    import lightgbm

    booster = synthetic_booster(lightgbm)
    trees, outputs = trees_from_lightgbm(booster)
    rng = np.random.default_rng(1)
    X = rng.lognormal(2.0, 1.0, size=(rows, len(FEATURE_NAMES))).astype(np.float32)
    X64 = X.astype(np.float64)
    print(f"scorer: {trees.tree_root.size} trees, {trees.feature.size} internal nodes, {outputs} classes, {rows} rows")

    def ours():
        raw = scorer.raw_scores(X, trees.tree_root, trees.tree_class, trees.feature, trees.threshold,
                                trees.left, trees.right, trees.decision_flags, trees.leaf_value, outputs)
        scorer.softmax_rows(raw)

    results = {"wardwatch": best_rate(ours, rows)}
    results["lightgbm"] = best_rate(lambda: booster.predict(X64, num_threads=1), rows)

    try:
        import treelite
        import tl2cgen

        with tempfile.TemporaryDirectory() as temporary:
            model = treelite.frontend.from_lightgbm(booster)
            library = os.path.join(temporary, "model.so")
            tl2cgen.export_lib(model, toolchain="gcc", libpath=library, params={"parallel_comp": 8}, nthread=1)
            predictor = tl2cgen.Predictor(library, nthread=1)
            matrix = tl2cgen.DMatrix(X64)
            results["treelite"] = best_rate(lambda: predictor.predict(matrix), rows)
    except ImportError as error:
        print(f"  treelite skipped: {error} (pip install treelite tl2cgen)")

    try:
        import lleaves

        with tempfile.TemporaryDirectory() as temporary:
            model_path = os.path.join(temporary, "model.txt")
            booster.save_model(model_path)
            compiled = lleaves.Model(model_file=model_path)
            compiled.compile(cache=os.path.join(temporary, "lleaves.o"))
            results["lleaves"] = best_rate(lambda: compiled.predict(X64, n_jobs=1), rows)
    except ImportError as error:
        print(f"  lleaves skipped: {error} (pip install lleaves)")
    except AttributeError as error:
        # lleaves 1.3.0 calls llvmlite's legacy pass manager, which
        # llvmlite 0.45 and later removed.
        print(f"  lleaves skipped: does not work with the installed llvmlite: {error}")

    for name, rate in results.items():
        print(f"  {name:10s} {rate:14,.0f} rows/s   ratio to wardwatch {results['wardwatch'] / rate:6.2f}")


def synthetic_packets(count: int, hosts: int, servers: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    packets = empty_packets(count)
    packets["ts_ns"] = 1_700_000_000 * 10**9 + np.cumsum(rng.integers(100, 2_000, count))
    packets["wirelen"] = rng.integers(60, 1_500, count)
    packets["ip_version"] = 4
    packets["ip_proto"] = 6
    packets["src_addr"][:, 0] = 10
    packets["src_addr"][:, 3] = rng.integers(0, hosts, count)
    packets["dst_addr"][:, 0] = 10
    packets["dst_addr"][:, 2] = 1
    packets["dst_addr"][:, 3] = rng.integers(0, servers, count)
    packets["src_port"] = rng.integers(1_024, 1_100, count)
    packets["dst_port"] = rng.choice([22, 80, 443, 104, 2575], count)
    packets["tcp_flags"] = 0x10
    return packets


def bench_windows(count: int) -> None:
    for label, hosts, servers in (("small key space (4 x 4 hosts)", 4, 4), ("large key space (200 x 50 hosts)", 200, 50)):
        packets = synthetic_packets(count, hosts, servers)
        # One table for all runs, as in a running sensor: later runs find
        # their keys present, and table allocation is not timed.
        windows = WindowFeatures()

        def update():
            windows.update(packets)

        rate = best_rate(update, count, repeats=3)
        print(f"window update, {label}: {rate:,.0f} packets/s")


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark the scorer and the window features")
    parser.add_argument("--rows", type=int, default=100_000, help="rows to score per run")
    parser.add_argument("--packets", type=int, default=1_000_000, help="packets per window-update run")
    args = parser.parse_args()
    # The large key space overflows the socket table on purpose; its
    # eviction warnings would bury the numbers.
    logging.getLogger("engine.features.window").setLevel(logging.ERROR)
    bench_scorer(args.rows)
    bench_windows(args.packets)
    return 0


if __name__ == "__main__":
    sys.exit(main())

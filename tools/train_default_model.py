"""Train the shipped model: engine/models/default.ww and default.metrics.json.

Simulates labelled captures with fixed seeds, trains on some, chooses
thresholds on a held-out seed, and measures on seeds never used for
either. Run from the repository root:

    python tools/train_default_model.py [--workdir DIR]

Needs LightGBM and the simulator (`wardwatch simulate`). It also runs the
leave-one-class-out check: for each class in LEAVE_OUT_CLASSES, a model is
trained without it and the share of its test flows that the anomaly score
flags is reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from engine.detect.dataset import load_dataset  # noqa: E402
from engine.detect.model import default_model_path, save_model  # noqa: E402
from engine.detect.training import evaluate, train_model  # noqa: E402

TRAIN_SEEDS = (101, 102, 103, 104, 105, 106, 107, 108)
VALIDATION_SEEDS = (201,)
TEST_SEEDS = (301, 302)
PROFILE = "small"
# One hour of the small profile gives about 2000 benign flows; every
# scenario runs once, spread over the hour.
DURATION = "60m"
MODEL_SEED = 0
MAX_TRAIN_ROWS_PER_CLASS = 5000
LEAVE_OUT_CLASSES = ("port_scan", "host_sweep", "ssh_bruteforce", "password_spray", "syn_flood")

log = logging.getLogger("train_default_model")


def simulate(workdir: Path, seed: int) -> tuple[Path, Path]:
    capture = workdir / f"sim-{PROFILE}-{DURATION}-{seed}.pcap"
    labels = workdir / f"sim-{PROFILE}-{DURATION}-{seed}.labels.jsonl"
    if not capture.is_file() or not labels.is_file():
        subprocess.run(
            [sys.executable, "-c", "from engine.cli import main; main()", "simulate",
             "--profile", PROFILE, "--duration", DURATION, "--attack", "all", "--seed", str(seed),
             "-o", str(capture), "--labels", str(labels)],
            check=True, cwd=REPO_ROOT,
        )
    return capture, labels


def dataset(workdir: Path, seeds) -> tuple[np.ndarray, np.ndarray]:
    pairs = [simulate(workdir, seed) for seed in seeds]
    return load_dataset([c for c, _ in pairs], [l for _, l in pairs])


def leave_one_class_out(X_train, y_train, X_valid, y_valid, X_test, y_test, left_out: str) -> dict:
    keep_train = y_train != left_out
    keep_valid = y_valid != left_out
    model = train_model(X_train[keep_train], y_train[keep_train], X_valid[keep_valid], y_valid[keep_valid],
                        seed=MODEL_SEED, max_train_rows_per_class=MAX_TRAIN_ROWS_PER_CLASS)
    unseen = y_test == left_out
    if not unseen.any():
        return {"class": left_out, "test_flows": 0}
    flagged = model.anomaly_score(X_test[unseen]) > model.anomaly_threshold
    _, classified = model.detect(X_test[unseen])
    return {
        "class": left_out,
        "test_flows": int(unseen.sum()),
        "anomaly_flagged_share": round(float(flagged.mean()), 6),
        "classifier_or_anomaly_flagged_share": round(float((flagged | classified).mean()), 6),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where simulated captures are kept (default: a temporary directory)")
    parser.add_argument("--output", type=Path, default=default_model_path(), help="model file to write")
    parser.add_argument("--skip-leave-out", action="store_true", help="skip the leave-one-class-out runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory() as temporary:
        workdir = args.workdir or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        X_train, y_train = dataset(workdir, TRAIN_SEEDS)
        X_valid, y_valid = dataset(workdir, VALIDATION_SEEDS)
        X_test, y_test = dataset(workdir, TEST_SEEDS)

        model = train_model(
            X_train, y_train, X_valid, y_valid, seed=MODEL_SEED,
            max_train_rows_per_class=MAX_TRAIN_ROWS_PER_CLASS,
            metadata_extra={"profile": PROFILE, "duration": DURATION, "train_seeds": TRAIN_SEEDS,
                            "validation_seeds": VALIDATION_SEEDS, "test_seeds": TEST_SEEDS},
        )
        test_metrics = evaluate(model, X_test, y_test)
        anomaly_benign = model.anomaly_score(X_test[y_test == "benign"]) > model.anomaly_threshold
        test_metrics["anomaly_benign_fpr"] = round(float(anomaly_benign.mean()), 6)
        model.metadata["test_metrics"] = test_metrics
        args.output.parent.mkdir(parents=True, exist_ok=True)
        save_model(args.output, model.metadata, model.classifier, model.anomaly)

        report = {"validation": model.metadata["validation_metrics"], "test": test_metrics,
                  "training": model.metadata["training"]}
        if not args.skip_leave_out:
            report["leave_one_class_out"] = [
                leave_one_class_out(X_train, y_train, X_valid, y_valid, X_test, y_test, name)
                for name in LEAVE_OUT_CLASSES
            ]
    metrics_path = args.output.with_name(args.output.stem + ".metrics.json")
    metrics_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(report["test"], indent=2))
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes) and {metrics_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

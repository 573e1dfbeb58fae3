"""Whole-pipeline throughput and alert latency, against decode+flows alone.

    python bench/pipeline.py [--packets 500000] [--workdir DIR]

Writes the two captures of bench/core.py (64-byte packets, and a realistic
size mix with about 20k flows), then times on one core, each in its own
process:

  read+decode+flows       the core engine alone
  + features + rules      the pipeline without the model
  + model                 the pipeline as `wardwatch analyze` runs it
  + inspection            the same with protocol inspection

and prints packets/s and the ratio to read+decode+flows, so the cost of
features, scoring and inspection is visible. Alert latency is measured on
the shipped sample capture: from the start of processing the batch whose
packets raised an alert to the alert arriving at a ZeroMQ subscriber on
loopback (store commit included). In a live sensor the wait for a batch to
fill adds to this; `wardwatch run` bounds it with its batch timeout.
"""

import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, REPO_ROOT)
sys.path.insert(1, BENCH_DIR)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

MODES = ("core", "features_rules", "model", "model_inspect")
MODE_LABELS = {
    "core": "read+decode+flows",
    "features_rules": "+ window features + rules",
    "model": "+ model (analyze pipeline)",
    "model_inspect": "+ protocol inspection",
}


def run_mode(path: str, mode: str) -> dict:
    """Time one pipeline variant over a capture (runs in a child process)."""
    from engine.capture import open_capture
    from engine.decode import decode_batch, new_anomaly_counters
    from engine.flows import FlowTable

    if mode == "core":
        counters = new_anomaly_counters()
        table = FlowTable()
        packets = 0
        start = time.perf_counter()
        with open_capture(path) as reader:
            for batch in reader:
                decode_batch(batch.packets, batch.data, counters)
                table.update(batch.packets, batch.data)
                packets += batch.count
        table.flush()
        return {"packets": packets, "seconds": time.perf_counter() - start}

    from engine.analyze.pipeline import Pipeline
    from engine.detect import load_model

    model = load_model() if mode in ("model", "model_inspect") else None
    inspector = None
    if mode == "model_inspect":
        from engine.inspect.inspector import Inspector

        inspector = Inspector()
    pipeline = Pipeline(model, inspector=inspector)
    # Warm caches and first-call setup outside the timed part.
    with open_capture(path, batch_size=256) as reader:
        warm = next(iter(reader), None)
    if warm is not None:
        Pipeline(model).process(warm.packets, warm.data)
    detections = 0
    start = time.perf_counter()
    with open_capture(path) as reader:
        for batch in reader:
            detections += len(pipeline.process(batch.packets, batch.data))
            pipeline.drain_inspections()
    detections += len(pipeline.finish())
    pipeline.drain_inspections()
    return {"packets": pipeline.counters["packets"], "seconds": time.perf_counter() - start,
            "detections": detections}


def measure(path: Path, mode: str, repeat: int) -> dict:
    """Run one mode `repeat` times in fresh processes pinned to one core; keep the median."""
    command = [sys.executable, __file__, "--child", str(path), mode]
    if shutil.which("taskset"):
        command = ["taskset", "-c", "0"] + command
    runs = []
    for _ in range(repeat):
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(output.strip().splitlines()[-1]))
    runs.sort(key=lambda r: r["packets"] / r["seconds"])
    return runs[len(runs) // 2]


def measure_latency(capture: Path) -> list[float]:
    """Return per-alert latencies in ms: batch start to receipt on a loopback subscriber."""
    import zmq

    from engine.alerts import AlertConfig, AlertSink
    from engine.alerts.schema import unpack_alert
    from engine.analyze.alerts import alert_from_detection
    from engine.analyze.pipeline import Pipeline
    from engine.capture import open_capture
    from engine.detect import load_model

    received: dict[int, float] = {}
    workdir = Path(tempfile.mkdtemp(prefix="ww-latency-"))
    config = AlertConfig(sensor_id="bench", bus_endpoint="tcp://127.0.0.1:*", replay_endpoint=None)
    sent: dict[int, float] = {}
    with AlertSink(workdir / "latency.db", config) as sink:
        context = zmq.Context.instance()
        subscriber = context.socket(zmq.SUB)
        subscriber.setsockopt(zmq.SUBSCRIBE, b"alert.")
        subscriber.connect(sink.bus_endpoint)
        stop = threading.Event()

        def listen():
            while not stop.is_set():
                if subscriber.poll(100):
                    topic, body = subscriber.recv_multipart()
                    received[unpack_alert(body).seq] = time.perf_counter()

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        time.sleep(0.5)  # let the subscription reach the publisher
        pipeline = Pipeline(load_model())
        with open_capture(capture, batch_size=1024) as reader:
            for batch in reader:
                batch_start = time.perf_counter()
                for detection in pipeline.process(batch.packets, batch.data):
                    for alert in sink.submit(alert_from_detection(detection, "bench")):
                        sent[alert.seq] = batch_start
        time.sleep(0.5)
        stop.set()
        listener.join()
        subscriber.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return sorted((received[seq] - sent[seq]) * 1000 for seq in sent if seq in received)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=500_000, help="packets per generated capture")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (the median is shown)")
    parser.add_argument("--workdir", type=Path, help="where to write the captures (default: a temporary directory)")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_mode(*args.child)))
        return

    import core  # bench/core.py: the capture generators

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ww-pipeline-"))
    workdir.mkdir(parents=True, exist_ok=True)
    captures = {"64-byte packets": workdir / "tiny.pcap", "size mix, ~20k flows": workdir / "mix.pcap"}
    if not captures["64-byte packets"].exists():
        core.make_tiny_capture(captures["64-byte packets"], args.packets)
    if not captures["size mix, ~20k flows"].exists():
        core.make_mix_capture(captures["size mix, ~20k flows"], args.packets)

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, one core per run, "
          f"median of {args.repeat}")
    for title, path in captures.items():
        print(f"\n{title} ({args.packets:,} packets)")
        baseline = None
        for mode in MODES:
            result = measure(path, mode, args.repeat)
            rate = result["packets"] / result["seconds"]
            baseline = baseline or rate
            print(f"  {MODE_LABELS[mode]:30} {rate / 1e6:8.2f} Mpps  {rate / baseline:5.2f}x")

    sample = Path(REPO_ROOT) / "engine" / "data" / "sample.pcap"
    latencies = measure_latency(sample)
    if latencies:
        print(f"\nalert latency on {sample.name}, batch start to subscriber receipt "
              f"({len(latencies)} alerts): median {statistics.median(latencies):.1f} ms, "
              f"max {latencies[-1]:.1f} ms")


if __name__ == "__main__":
    main()

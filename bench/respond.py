"""Benchmark alert-to-block latency: from AlertSink.publish() to the address being in the nftables set.

    sudo python bench/respond.py               # 50 alerts
    sudo python bench/respond.py --alerts 200

The sensor side (an AlertSink with its ZeroMQ bus and replay socket on
loopback) and the responder (GapFillingSubscriber, playbook, guards, nft
-j -f through `ip netns exec`) run in one process, in two threads. Every
nft command runs inside a network namespace that the script creates and
deletes, so the host's ruleset is not touched. Each alert has a new
source address, so each one causes one nft call.

The latency of one alert is the wall-clock time from the call to
publish() until the responder's nft call has returned, i.e. until the
kernel has committed the set element. Publishing is paced (one alert at
a time, waiting for its block), so the numbers are per-alert latency, not
throughput under load. For comparison the report prints a bare
`ip netns exec NS nft -j -f -` add on its own, and the ratio to a
published figure of 300-500 ms for alert-to-block in Suricata-to-nftables
setups (taken as given, not measured here).

Needs root, ip and nft.
"""

from __future__ import annotations

import os
import sys

_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH_DIR]
sys.path.insert(0, os.path.dirname(_BENCH_DIR))

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

from engine.alerts.bus import GapFillingSubscriber  # noqa: E402
from engine.alerts.config import AlertConfig  # noqa: E402
from engine.alerts.schema import Alert, Endpoint  # noqa: E402
from engine.alerts.sink import AlertSink  # noqa: E402
from engine.respond.playbook import parse_playbook  # noqa: E402
from engine.respond.responder import Responder  # noqa: E402
from engine.respond.service import run_responder  # noqa: E402
from engine.store import open_store  # noqa: E402

ANCHOR_MS = (300.0, 500.0)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def bare_nft_add_ms(namespace: str, rounds: int) -> list[float]:
    """Time `nft -j -f -` adding one element, as the responder does, without bus or store."""
    times = []
    for index in range(rounds):
        request = {"nftables": [{"add": {"element": {
            "family": "inet", "table": "wardwatch", "name": "blocked_v4",
            "elem": [{"elem": {"val": f"203.0.113.{index % 250 + 1}", "timeout": 60}}]}}}]}
        began = time.perf_counter()
        subprocess.run(["ip", "netns", "exec", namespace, "nft", "-j", "-f", "-"], input=json.dumps(request),
                       text=True, check=True, capture_output=True)
        times.append((time.perf_counter() - began) * 1000)
    return times


def measure(namespace: str, workdir: str, count: int) -> list[float]:
    playbook = parse_playbook({
        "settings": {"dry_run": False, "max_actions_per_minute": 10_000},
        "nftables": {"command": ["ip", "netns", "exec", namespace, "nft"]},
        "rules": [{"name": "block-bruteforce", "categories": ["bruteforce"],
                   "actions": [{"type": "block", "timeout_s": 60}]}],
    }, "bench")
    config = AlertConfig(sensor_id="bench", bus_endpoint="tcp://127.0.0.1:*", replay_endpoint="tcp://127.0.0.1:*")
    sink = AlertSink(os.path.join(workdir, "sensor.db"), config).open()
    blocked_at: dict[str, float] = {}
    blocked = threading.Condition()
    stop = threading.Event()
    ready = threading.Event()

    def serve():
        conn = open_store(os.path.join(workdir, "responder.db"))
        subscriber = GapFillingSubscriber([sink.bus_endpoint], replay=[sink.replay_endpoint], since=0)
        responder = Responder(playbook, conn, dry_run=False, actor="bench")
        responder.prepare()
        add_element = responder.nft.add_element

        def timed_add(action, subject, timeout_s):
            result = add_element(action, subject, timeout_s)
            with blocked:
                blocked_at[subject] = time.perf_counter()
                blocked.notify_all()
            return result

        responder.nft.add_element = timed_add
        ready.set()
        try:
            run_responder(responder, subscriber, stop)
        finally:
            subscriber.close()
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(30)
    latencies = []
    try:
        # The first alert also pays for the subscriber's first replay request; it is not counted.
        for index in range(count + 1):
            address = f"198.51.{100 + index // 250}.{index % 250 + 1}"
            alert = Alert(category="bruteforce", severity="high", summary="bench", technique="T1110.001",
                          src=Endpoint(ip=address), dst=Endpoint(ip="10.10.0.16", port=22))
            began = time.perf_counter()
            sink.publish(alert)
            with blocked:
                if not blocked.wait_for(lambda: address in blocked_at, timeout=10):
                    raise RuntimeError(f"{address} was not blocked within 10 s")
            if index:
                latencies.append((blocked_at[address] - began) * 1000)
    finally:
        stop.set()
        thread.join(timeout=10)
        sink.close(flush=False)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=50, help="alerts to time (default 50)")
    arguments = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
        sys.exit("bench/respond.py needs root, ip and nft (it creates its own network namespace)")

    namespace = f"wwbench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            latencies = measure(namespace, workdir, arguments.alerts)
            bare = bare_nft_add_ms(namespace, arguments.alerts)
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], check=False)

    median = statistics.median(latencies)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} "
          f"{platform.python_version()}, nft via ip netns exec")
    print(f"alerts timed: {len(latencies)}")
    print(f"alert-to-block latency ms: median {median:.1f}, p95 {percentile(latencies, 0.95):.1f}, "
          f"max {max(latencies):.1f}")
    print(f"bare nft add ms:           median {statistics.median(bare):.1f}, p95 {percentile(bare, 0.95):.1f}")
    print(f"ratio to the 300-500 ms anchor: {median / ANCHOR_MS[0]:.3f} to {median / ANCHOR_MS[1]:.3f} "
          "(below 1 is faster)")


if __name__ == "__main__":
    main()

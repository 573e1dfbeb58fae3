"""Benchmark the alert path: submit + persist + publish throughput, and bus latency.

Run: python bench/alerts.py [--alerts N]

Throughput is compared in one run against two peers that do one part of the
work each: a bare SQLite insert of the same msgpack body (WAL,
synchronous=NORMAL, one transaction per alert, like the store) and a bare
ZeroMQ PUB send. The ratios show what the schema, privacy and aggregation
layers add. Latency is from just before AlertSink.publish() to the moment a
SUB socket on loopback has the message, measured in one process with one
clock, with alerts paced 1 ms apart.
"""

import os
import sys

# Import this checkout's engine package even where it is not installed.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import msgpack  # noqa: E402
import zmq  # noqa: E402

from engine.alerts.config import AlertConfig  # noqa: E402
from engine.alerts.schema import Alert, Endpoint, pack_alert  # noqa: E402
from engine.alerts.sink import AlertSink  # noqa: E402
from engine.store import open_store  # noqa: E402


def make_alert(i: int, capture_time_s: float | None = None) -> Alert:
    # The submit run gives every alert one capture time, so no aggregate
    # reaches its quiet period and closes during the measurement.
    t = float(i) if capture_time_s is None else capture_time_s
    return Alert(category="bruteforce", severity="high", summary="SSH password guessing",
                 technique="T1110.001", first_seen=t, last_seen=t,
                 src=Endpoint(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 40000),
                 dst=Endpoint("10.9.0.1", 22), protocol="tcp")


def bench_sink(directory: str, count: int, submit: bool) -> float:
    config = AlertConfig(bus_endpoint="tcp://127.0.0.1:*", replay_endpoint="tcp://127.0.0.1:*")
    # No rate limit, so every distinct source becomes a new alert.
    config.rate_limits.per_category_per_minute = 0
    config.rate_limits.global_per_minute = 0
    config.aggregation.max_open_aggregates = count + 1
    alerts = [make_alert(i, 0.0 if submit else None) for i in range(count)]
    with AlertSink(os.path.join(directory, f"sink-{submit}.db"), config) as sink:
        start = time.perf_counter()
        for alert in alerts:
            if submit:
                sink.submit(alert)
            else:
                sink.publish(alert)
        elapsed = time.perf_counter() - start
        sink.aggregator.flush()  # closing publications are not part of the measurement
    return count / elapsed


def bench_bare_sqlite(directory: str, count: int) -> float:
    conn = open_store(os.path.join(directory, "bare.db"))
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, body BLOB)")
    bodies = [pack_alert(make_alert(i)) for i in range(count)]
    start = time.perf_counter()
    for body in bodies:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events (body) VALUES (?)", (body,))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return count / elapsed


def bench_bare_zmq(count: int) -> float:
    context = zmq.Context()
    socket = context.socket(zmq.PUB)
    socket.bind("tcp://127.0.0.1:*")
    bodies = [pack_alert(make_alert(i)) for i in range(count)]
    start = time.perf_counter()
    for body in bodies:
        socket.send_multipart([b"alert.high.bruteforce", body])
    elapsed = time.perf_counter() - start
    socket.close(linger=0)
    context.term()
    return count / elapsed


def bench_latency(directory: str, count: int) -> list[float]:
    config = AlertConfig(bus_endpoint="tcp://127.0.0.1:*", replay_endpoint=None)
    sent_at: dict[int, float] = {}
    received_at: dict[int, float] = {}
    with AlertSink(os.path.join(directory, "latency.db"), config) as sink:
        context = zmq.Context()
        subscriber = context.socket(zmq.SUB)
        subscriber.setsockopt(zmq.SUBSCRIBE, b"alert.")
        subscriber.connect(sink.bus_endpoint)
        done = threading.Event()

        def receive():
            while not done.is_set():
                if subscriber.poll(100):
                    _, body = subscriber.recv_multipart()
                    received_at[msgpack.unpackb(body)["seq"]] = time.perf_counter()

        thread = threading.Thread(target=receive)
        thread.start()
        time.sleep(0.5)  # let the subscription reach the publisher
        for i in range(count):
            before = time.perf_counter()
            published = sink.publish(make_alert(i))
            sent_at[published.seq] = before
            time.sleep(0.001)
        time.sleep(0.5)
        done.set()
        thread.join()
        subscriber.close(linger=0)
        context.term()
    return [(received_at[seq] - sent_at[seq]) * 1e3 for seq in sent_at if seq in received_at]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=5_000, help="alerts per throughput run")
    parser.add_argument("--latency-samples", type=int, default=2_000)
    arguments = parser.parse_args()
    count = arguments.alerts
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, pyzmq {zmq.__version__}"
          f" (libzmq {zmq.zmq_version()}), {count} alerts")
    with tempfile.TemporaryDirectory() as directory:
        bare_sqlite = bench_bare_sqlite(directory, count)
        bare_zmq = bench_bare_zmq(count)
        publish_rate = bench_sink(directory, count, submit=False)
        submit_rate = bench_sink(directory, count, submit=True)
        latencies_ms = sorted(bench_latency(directory, arguments.latency_samples))
    print(f"{'path':<44} {'alerts/s':>10} {'vs bare SQLite':>15}")
    for name, rate in (
        ("bare SQLite insert+commit (peer)", bare_sqlite),
        ("bare ZeroMQ PUB send (peer)", bare_zmq),
        ("AlertSink.publish: persist+publish", publish_rate),
        ("AlertSink.submit: aggregate+persist+publish", submit_rate),
    ):
        print(f"{name:<44} {rate:>10.0f} {rate / bare_sqlite:>14.2f}x")
    p99 = latencies_ms[min(len(latencies_ms) - 1, int(len(latencies_ms) * 0.99))]
    print(f"publish-to-receive latency on loopback over {len(latencies_ms)} alerts:"
          f" median {statistics.median(latencies_ms):.3f} ms, p99 {p99:.3f} ms,"
          f" max {latencies_ms[-1]:.3f} ms")


if __name__ == "__main__":
    main()

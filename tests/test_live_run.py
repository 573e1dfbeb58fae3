"""`wardwatch run` on a veth pair in a network namespace made by the test, fed by tcpreplay.

The sample capture is replayed into one veth end and `wardwatch run`
captures on the other. The flows and alerts it writes are compared with
the analysis of the same file: `wardwatch flows` for the flow records,
and the pipeline of `wardwatch analyze` (rules only, as the run here) for
the alerts. All traffic stays inside the namespace, which is deleted after
each test.
"""

import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time

import dpkt
import msgpack
import pytest

from conftest import REPO_ROOT, require_root, require_tool

SAMPLE_CAPTURE = REPO_ROOT / "engine" / "data" / "sample.pcap"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


@pytest.fixture
def veth_namespace():
    """A new network namespace holding a veth pair (replay end, capture end), both up."""
    require_root()
    require_tool("ip")
    require_tool("tcpreplay")
    token = secrets.token_hex(3)
    namespace, send, capture = f"wwrun-{token}", f"wwr{token}", f"wwk{token}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        for command in (
            ["ip", "-n", namespace, "link", "add", send, "type", "veth", "peer", "name", capture],
            ["ip", "-n", namespace, "link", "set", send, "up"],
            ["ip", "-n", namespace, "link", "set", capture, "up"],
            ["ip", "netns", "exec", namespace, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"],
        ):
            subprocess.run(command, check=True)
        yield namespace, send, capture
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)


@pytest.fixture
def sample(tmp_path):
    """A private copy of the sample capture (another process may rewrite the shipped one)."""
    copy = tmp_path / "sample.pcap"
    if SAMPLE_CAPTURE.is_file():
        shutil.copyfile(SAMPLE_CAPTURE, copy)
    else:
        subprocess.run(
            [sys.executable, "-c", "from engine.cli import main; main()", "simulate", "--duration", "60s",
             "-o", str(copy)],
            check=True, cwd=REPO_ROOT, capture_output=True,
        )
        if not copy.is_file():
            pytest.skip("no sample capture and `wardwatch simulate` wrote none")
    return copy


class LiveRunProcess:
    """`wardwatch -v run` inside the namespace, with its output in files."""

    def __init__(self, veth, tmp_path, workers, *extra, model=False):
        namespace, _send, capture = veth
        self.store = tmp_path / "live.db"
        self.flow_log = tmp_path / "live-flows.jsonl"
        self.stdout_path = tmp_path / "run.out"
        self.stderr_path = tmp_path / "run.err"
        command = [
            "ip", "netns", "exec", namespace, sys.executable, "-c",
            "from engine.cli import main; main()",
            "-v", "run", "--interface", capture, "--workers", str(workers),
            "--store", str(self.store), "--flow-log", str(self.flow_log), "--stats-interval", "0.5",
            "--quiet", *extra,
        ]
        if not model:
            command.append("--no-model")
        if "--bus" not in extra:
            command.append("--no-bus")
        self.workers = workers
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
            stdout=open(self.stdout_path, "w"), stderr=open(self.stderr_path, "w"),
        )

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for(self, pattern: str, count: int = 1, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(re.findall(pattern, self.stderr())) >= count:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {count} x {pattern!r} in the output of wardwatch run:\n{self.stderr()}")

    def wait_until_capturing(self) -> None:
        self.wait_for(r"capturing on", count=self.workers)

    def stop(self, signum=signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"wardwatch run did not stop:\n{self.stderr()}") from None

    def summary(self) -> str:
        return self.stdout_path.read_text()


def replay(veth, capture_file, *options):
    namespace, send, _capture = veth
    return subprocess.Popen(
        ["ip", "netns", "exec", namespace, "tcpreplay", "-q", *options, "-i", send, str(capture_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def flow_keys(path):
    """Flow records reduced to what does not depend on timing: 5-tuple, counts and TCP history."""
    keys = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            flow = json.loads(line)
            keys.append((
                flow["src_ip"], flow["dst_ip"], flow["src_port"], flow["dst_port"], flow["ip_proto"],
                flow["src2dst_packets"], flow["dst2src_packets"], flow["src2dst_bytes"], flow["dst2src_bytes"],
                flow["history"], flow["conn_state"],
            ))
    return sorted(keys)


def file_flows(capture_file, output):
    subprocess.run(
        [sys.executable, "-c", "from engine.cli import main; main()", "flows", str(capture_file), "-o", str(output)],
        check=True, cwd=REPO_ROOT, capture_output=True,
    )
    return flow_keys(output)


def file_alerts(capture_file, store_path):
    """Alerts of the analyze pipeline (rules only, no inspection) over a file, stored as analyze does."""
    from engine.alerts import AlertSink
    from engine.alerts.config import AlertConfig
    from engine.analyze.alerts import alert_from_detection
    from engine.analyze.pipeline import Pipeline
    from engine.capture import open_capture

    config = AlertConfig()
    config.bus_endpoint = None
    config.replay_endpoint = None
    pipeline = Pipeline(None)
    with AlertSink(store_path, config) as sink, open_capture(capture_file) as reader:
        for batch in reader:
            for detection in pipeline.process(batch.packets, batch.data):
                sink.submit(alert_from_detection(detection, config.sensor_id))
            sink.expire(pipeline.last_packet_ns / 1e9)
        for detection in pipeline.finish():
            sink.submit(alert_from_detection(detection, config.sensor_id))
    return store_alerts(store_path)


def store_alerts(store_path):
    with sqlite3.connect(store_path) as connection:
        rows = connection.execute("SELECT category, src_ip, dst_ip FROM alerts").fetchall()
    return sorted(rows, key=repr)


def store_run(store_path):
    with sqlite3.connect(store_path) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT * FROM runs")]


def count_packets(capture_file):
    with open(capture_file, "rb") as handle:
        return sum(1 for _ in dpkt.pcap.Reader(handle))


def write_pcap_prefix(source, target, count):
    """Copy the file header and the first `count` records of a classic pcap file byte for byte."""
    data = source.read_bytes()
    byte_order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    position = 24  # the pcap file header
    for _ in range(count):
        # Record header: seconds, fraction, caplen, wire length (4 bytes each).
        caplen = struct.unpack_from(byte_order + "I", data, position + 8)[0]
        position += 16 + caplen
    target.write_bytes(data[:position])


def test_run_matches_file_analysis(veth_namespace, sample, tmp_path):
    import zmq

    bus = f"ipc://{tmp_path}/bus.sock"
    # Rules only, as file_alerts: the model and inspection are compared in
    # the test below, on the very packets the run captured.
    run = LiveRunProcess(veth_namespace, tmp_path, 2, "--bus", bus, "--replay-bind", f"ipc://{tmp_path}/replay.sock",
                         "--no-inspect")
    context = zmq.Context()
    subscriber = context.socket(zmq.SUB)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"stats")
    try:
        run.wait_until_capturing()
        subscriber.connect(bus)
        replayer = replay(veth_namespace, sample, "--topspeed")
        assert replayer.wait(timeout=60) == 0, replayer.stderr.read()
        total = count_packets(sample)
        run.wait_for(rf"wwk\w+: {total} packets", timeout_s=30)
        assert run.stop() == 0, run.stderr()

        stats_messages = []
        while subscriber.poll(200):
            topic, body = subscriber.recv_multipart()
            stats_messages.append(msgpack.unpackb(body, raw=False))
    finally:
        run.stop()
        subscriber.close(linger=0)
        context.term()

    assert flow_keys(run.flow_log) == file_flows(sample, tmp_path / "file-flows.jsonl")
    expected_alerts = file_alerts(sample, tmp_path / "file.db")
    assert expected_alerts, "the sample capture should raise rule alerts"
    assert store_alerts(run.store) == expected_alerts

    [row] = store_run(run.store)
    assert row["source"] == f"live:{veth_namespace[2]}"
    assert row["packets"] == total
    assert row["ended_at"] is not None

    assert stats_messages, "no stats message on the bus"
    last = stats_messages[-1]
    assert last["type"] == "stats"
    assert last["interface"] == veth_namespace[2]
    assert last["kernel_packets"] == total
    assert last["kernel_drops"] == 0
    assert len(last["workers"]) == 2
    assert sum(worker["analysed_packets"] for worker in last["workers"]) == total
    # Both workers got a share: the fanout spreads the flows.
    assert all(worker["analysed_packets"] > 0 for worker in last["workers"])
    assert f"kernel packets {total:,}  drops 0" in run.summary()


def test_run_matches_analyze_with_model(veth_namespace, sample, tmp_path):
    """Live and file mode score the same packets alike: tcpdump records what `run` captured."""
    require_tool("tcpdump")
    from engine.detect import default_model_path

    if not default_model_path().is_file():
        pytest.skip(f"the shipped model {default_model_path()} is missing")
    namespace, _send, capture = veth_namespace
    recorded = tmp_path / "recorded.pcap"
    tcpdump = subprocess.Popen(
        ["ip", "netns", "exec", namespace, "tcpdump", "-i", capture, "-s", "0", "-U", "-n",
         "--time-stamp-precision=nano", "-w", str(recorded)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    # Window features are read at the end of each batch, so scores depend
    # on where batches end: a long batch timeout gives live mode the same
    # 8192-packet batches as the file reader for a replay at top speed.
    run = LiveRunProcess(veth_namespace, tmp_path, 1, "--batch-timeout", "3000", model=True)
    try:
        assert "listening on" in tcpdump.stderr.readline()
        run.wait_until_capturing()
        replayer = replay(veth_namespace, sample, "--topspeed")
        assert replayer.wait(timeout=60) == 0
        total = count_packets(sample)
        run.wait_for(rf"wwk\w+: {total} packets", timeout_s=30)
        assert run.stop() == 0, run.stderr()
    finally:
        run.stop()
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.wait(timeout=30)

    assert count_packets(recorded) == total
    analyze_store = tmp_path / "analyze.db"
    subprocess.run(
        [sys.executable, "-c", "from engine.cli import main; main()", "analyze", str(recorded), "--no-bus",
         "--store", str(analyze_store), "--quiet"],
        check=True, cwd=REPO_ROOT, capture_output=True,
    )
    expected = store_alerts(analyze_store)
    assert any(category not in ("scan", "dos", "bruteforce", "tunneling", "spoofing")
               for category, _src, _dst in expected), "the model should raise alerts of its own"
    assert store_alerts(run.store) == expected
    assert flow_keys(run.flow_log) == file_flows(recorded, tmp_path / "recorded-flows.jsonl")


def test_sigterm_mid_replay_keeps_live_flows(veth_namespace, sample, tmp_path):
    run = LiveRunProcess(veth_namespace, tmp_path, 1)
    total = count_packets(sample)
    try:
        run.wait_until_capturing()
        # About four seconds of replay; the stop lands in the middle.
        replayer = replay(veth_namespace, sample, f"--pps={max(total // 4, 1)}")
        run.wait_for(r"wwk\w+: [1-9]\d* packets", timeout_s=30)
        assert run.stop() == 0, run.stderr()
    finally:
        run.stop()
        replayer.kill()
        replayer.wait()

    [row] = store_run(run.store)
    captured = row["packets"]
    assert 0 < captured < total, f"the stop did not land mid-replay: {captured} of {total} packets"
    # Every packet the kernel accepted was analysed: none was left in the ring.
    assert f"kernel packets {captured:,}  drops 0" in run.summary()

    # One worker receives the replay in order, so it captured a prefix of
    # the file. Its flows must be exactly the flows of that prefix, the
    # ones still live at the stop included.
    prefix = tmp_path / "prefix.pcap"
    write_pcap_prefix(sample, prefix, captured)
    expected = file_flows(prefix, tmp_path / "prefix-flows.jsonl")
    assert flow_keys(run.flow_log) == expected
    live_at_stop = sum(1 for line in open(run.flow_log) if json.loads(line)["expiration"] == "flushed")
    assert live_at_stop > 0
    assert row["flows"] == len(expected)


def test_sighup_reloads_rules(veth_namespace, sample, tmp_path):
    config = tmp_path / "wardwatch.toml"
    config.write_text("")
    run = LiveRunProcess(veth_namespace, tmp_path, 2, "--config", str(config))
    try:
        run.wait_until_capturing()
        config.write_text("[rules\n")
        run.process.send_signal(signal.SIGHUP)
        run.wait_for(r"reload failed, keeping the running configuration")

        # With this threshold the sample's 15-port scan no longer counts.
        config.write_text("[rules]\nscan_ports_per_host = 1000\n")
        run.process.send_signal(signal.SIGHUP)
        run.wait_for(r"reloaded the configuration and the model", count=2)
        assert run.process.poll() is None

        replayer = replay(veth_namespace, sample, "--topspeed")
        assert replayer.wait(timeout=60) == 0
        total = count_packets(sample)
        run.wait_for(rf"wwk\w+: {total} packets", timeout_s=30)
        assert run.stop() == 0, run.stderr()
    finally:
        run.stop()

    categories = [category for category, _src, _dst in store_alerts(run.store)]
    assert "scan" not in categories
    assert "bruteforce" in categories
    assert flow_keys(run.flow_log) == file_flows(sample, tmp_path / "file-flows.jsonl")


def test_run_rejects_missing_interface(tmp_path):
    require_root()
    result = subprocess.run(
        [sys.executable, "-c", "from engine.cli import main; main()", "run", "--interface", "wwnosuchif0",
         "--no-model", "--no-bus", "--store", str(tmp_path / "x.db")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "interface 'wwnosuchif0' not found" in result.stderr


def test_run_rejects_invalid_filter(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "from engine.cli import main; main()", "run", "--interface", "lo",
         "--filter", "not portx 22", "--no-model", "--no-bus", "--store", str(tmp_path / "x.db")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "invalid capture filter 'not portx 22'" in result.stderr

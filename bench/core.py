"""Benchmark the core path (read, decode, flows) against dpkt, NFStream and tshark.

    python bench/core.py                  # default sizes, a few minutes on 2 cores
    python bench/core.py --packets 200000 # quicker

It writes its own captures into a temporary directory (or --workdir), from a
fixed random seed, so every run measures the same bytes:

- tiny: Ethernet/IPv4/UDP frames of exactly 64 bytes over 1024 flows;
- mix: Ethernet/IPv4/TCP frames of 64 to 1514 bytes (about half small, a
  quarter near 576, a quarter full-size) over about 20,000 flows, each
  opened by a SYN from its client.

Every tool runs alone on one core in a child process. Rates are packets per
second of wall-clock time. Peak memory is measured for the WardWatch
pipeline on the mix capture and on one four times as long with the same
flows, sampled after every batch. It is reported in two parts: anonymous
(RssAnon: heap, packet arrays, flow table) and file-backed (RssFile: the
mapped capture and shared libraries). Neither should grow with capture
length.

NFStream is optional: install it with `pip install nfstream` (in this
environment, or in another one passed as --nfstream-python) or it is skipped
with a message. tshark is skipped when it is not installed.
"""

from __future__ import annotations

import os
import sys

# Python puts this script's folder first on the import path, and bench/
# contains scripts named like standard modules (inspect.py), which would
# shadow them for NumPy. Import from the repository root instead.
_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH_DIR]

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = 20240601
# Classic pcap, little-endian, version 2.4, snaplen 65535, LINKTYPE_ETHERNET.
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
ETH_HEADER = bytes.fromhex("020000000001" "020000000002" "0800")
START_TS_US = 1_700_000_000_000_000
# Packets encoded per array operation, so generation memory stays near 100 MB.
CHUNK_PACKETS = 1 << 17


# ---------------------------------------------------------------- captures

def ipv4_checksums(headers: np.ndarray) -> np.ndarray:
    """One's-complement checksums of IPv4 headers (rows of 20 bytes, checksum zeroed)."""
    words = headers[:, 0::2].astype(np.uint32) << 8 | headers[:, 1::2].astype(np.uint32)
    total = words.sum(axis=1)
    while (total >> 16).any():
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF).astype(np.uint16)


def encode_records(frame_lengths: np.ndarray, ts_us: np.ndarray, src_ip: np.ndarray, dst_ip: np.ndarray,
                   src_port: np.ndarray, dst_port: np.ndarray, proto: int,
                   tcp_flags: np.ndarray | None) -> bytes:
    """Return pcap records of Ethernet/IPv4/UDP-or-TCP frames, built with array operations."""
    n = len(frame_lengths)
    l4_len = 8 if proto == 17 else 20
    header_len = 14 + 20 + l4_len
    record_lengths = 16 + frame_lengths.astype(np.int64)
    record_starts = np.concatenate([[0], np.cumsum(record_lengths)[:-1]])
    buffer = np.zeros(int(record_lengths.sum()), dtype=np.uint8)

    record_headers = np.zeros((n, 4), dtype="<u4")
    record_headers[:, 0] = ts_us // 1_000_000
    record_headers[:, 1] = ts_us % 1_000_000
    record_headers[:, 2] = frame_lengths
    record_headers[:, 3] = frame_lengths
    headers = np.zeros((n, 16 + header_len), dtype=np.uint8)
    headers[:, :16] = record_headers.view(np.uint8).reshape(n, 16)
    headers[:, 16:30] = np.frombuffer(ETH_HEADER, np.uint8)

    ip = np.zeros((n, 20), dtype=np.uint8)
    ip_len = frame_lengths - 14
    ip[:, 0] = 0x45
    ip[:, 2] = ip_len >> 8
    ip[:, 3] = ip_len & 0xFF
    ip[:, 6] = 0x40  # don't fragment
    ip[:, 8] = 64
    ip[:, 9] = proto
    ip[:, 12:16] = src_ip.astype(">u4").view(np.uint8).reshape(n, 4)
    ip[:, 16:20] = dst_ip.astype(">u4").view(np.uint8).reshape(n, 4)
    checksum = ipv4_checksums(ip)
    ip[:, 10] = checksum >> 8
    ip[:, 11] = checksum & 0xFF
    headers[:, 30:50] = ip

    l4 = np.zeros((n, l4_len), dtype=np.uint8)
    l4[:, 0:2] = src_port.astype(">u2").view(np.uint8).reshape(n, 2)
    l4[:, 2:4] = dst_port.astype(">u2").view(np.uint8).reshape(n, 2)
    if proto == 17:
        udp_len = ip_len - 20
        l4[:, 4] = udp_len >> 8
        l4[:, 5] = udp_len & 0xFF
    else:
        l4[:, 12] = 5 << 4  # data offset: 20 bytes
        l4[:, 13] = tcp_flags
        l4[:, 14] = 0xFF  # window
    headers[:, 50:] = l4

    index = record_starts[:, None] + np.arange(16 + header_len)
    buffer[index] = headers
    return buffer.tobytes()


def write_capture(path: Path, packets: int, make_chunk) -> None:
    """Write a pcap of `packets` records; make_chunk(start, count) returns encode_records arguments."""
    with open(path, "wb") as handle:
        handle.write(PCAP_HEADER)
        for start in range(0, packets, CHUNK_PACKETS):
            count = min(CHUNK_PACKETS, packets - start)
            handle.write(encode_records(*make_chunk(start, count)))


def make_tiny_capture(path: Path, packets: int) -> None:
    def chunk(start, count):
        rng = np.random.default_rng([SEED, start])
        flow = rng.integers(0, 1024, count)
        ts_us = START_TS_US + np.arange(start, start + count, dtype=np.int64)
        return (np.full(count, 64, dtype=np.int64), ts_us, 0x0A000000 + flow, np.full(count, 0x0A640001),
                10000 + flow, np.full(count, 5000), 17, None)

    write_capture(path, packets, chunk)


def make_mix_capture(path: Path, packets: int, flows: int = 20_000) -> None:
    # Flows are drawn at random per packet, so a flow's first packet is the
    # first draw of its number; seen[] carries that across chunks.
    seen = np.zeros(flows, dtype=bool)

    def chunk(start, count):
        rng = np.random.default_rng([SEED + 1, start])
        flow = rng.integers(0, flows, count)
        from_server = rng.random(count) < 0.45
        unique_flows, first_in_chunk = np.unique(flow, return_index=True)
        new = ~seen[unique_flows]
        first = first_in_chunk[new]
        seen[unique_flows] = True
        # The first packet of every flow is the client's SYN.
        from_server[first] = False
        kind = rng.random(count)
        lengths = np.where(kind < 0.5, rng.integers(64, 128, count),
                           np.where(kind < 0.75, rng.integers(500, 600, count), 1514)).astype(np.int64)
        lengths[first] = 54
        flags = np.full(count, 0x18, dtype=np.uint8)  # PSH ACK
        flags[first] = 0x02
        client_ip = 0x0A000000 + (flow % 4000)
        server_ip = 0xC0A80000 + (flow // 4000) * 7 + 1
        client_port = 20000 + flow % 40000
        server_port = np.where(flow % 3 == 0, 443, np.where(flow % 3 == 1, 2575, 104))
        ts_us = START_TS_US + 2 * np.arange(start, start + count, dtype=np.int64)
        return (lengths, ts_us,
                np.where(from_server, server_ip, client_ip), np.where(from_server, client_ip, server_ip),
                np.where(from_server, server_port, client_port), np.where(from_server, client_port, server_port),
                6, flags)

    write_capture(path, packets, chunk)


# ---------------------------------------------------------------- measured runs (child processes)

def proc_status_kib(field: str) -> int:
    """Read one kB field of /proc/self/status (RssAnon, VmHWM, ...)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def run_wardwatch(path: str, mode: str) -> dict:
    sys.path.insert(0, str(REPO_ROOT))
    from engine.capture import open_capture
    from engine.decode import decode_batch, new_anomaly_counters
    from engine.flows import FlowTable

    counters = new_anomaly_counters()
    result = {"packets": 0}
    if mode in ("read_decode", "read_decode_flows"):
        table = FlowTable() if mode == "read_decode_flows" else None
        peak_anon = 0
        peak_file = 0
        flows = 0
        start = time.perf_counter()
        with open_capture(path, batch_size=65536) as reader:
            for batch in reader:
                decode_batch(batch.packets, batch.data, counters)
                if table is not None:
                    flows += len(table.update(batch.packets, batch.data))
                result["packets"] += batch.count
                peak_anon = max(peak_anon, proc_status_kib("RssAnon"))
                peak_file = max(peak_file, proc_status_kib("RssFile"))
        if table is not None:
            flows += len(table.flush())
        result["seconds"] = time.perf_counter() - start
        result["flows"] = flows
        result["peak_anon_kib"] = peak_anon
        result["peak_file_kib"] = peak_file
        return result

    # Kernel-only modes: read every batch first, then time one stage.
    with open_capture(path, batch_size=65536) as reader:
        batches = list(reader)
    for batch in batches:
        decode_batch(batch.packets, batch.data, counters)
    result["packets"] = sum(b.count for b in batches)
    if mode == "decode_kernel":
        start = time.perf_counter()
        for batch in batches:
            decode_batch(batch.packets, batch.data, counters)
        result["seconds"] = time.perf_counter() - start
    elif mode == "flows_kernel":
        table = FlowTable()
        start = time.perf_counter()
        for batch in batches:
            table.update(batch.packets, batch.data)
        table.flush()
        result["seconds"] = time.perf_counter() - start
    return result


def run_dpkt(path: str) -> dict:
    import dpkt

    packets = 0
    ports = 0
    start = time.perf_counter()
    with open(path, "rb") as handle:
        for _ts, frame in dpkt.pcap.Reader(handle):
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            if isinstance(ip, dpkt.ip.IP):
                l4 = ip.data
                if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                    ports += l4.sport ^ l4.dport
            packets += 1
    return {"packets": packets, "seconds": time.perf_counter() - start}


def run_nfstream(path: str) -> dict:
    from nfstream import NFStreamer

    start = time.perf_counter()
    streamer = NFStreamer(source=path, statistical_analysis=True, n_dissections=0, n_meters=1,
                          idle_timeout=120, active_timeout=1800)
    packets = 0
    flows = 0
    for flow in streamer:
        packets += flow.bidirectional_packets
        flows += 1
    return {"packets": packets, "flows": flows, "seconds": time.perf_counter() - start}


def child_main(tool: str, path: str, mode: str) -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if tool == "wardwatch":
        result = run_wardwatch(path, mode)
    elif tool == "dpkt":
        result = run_dpkt(path)
    else:
        result = run_nfstream(path)
    # VmHWM, not ru_maxrss: after fork and exec, ru_maxrss still counts the
    # parent's memory, which contains the generated captures.
    result["max_rss_kib"] = proc_status_kib("VmHWM")
    print(json.dumps(result))


def measure(tool: str, path: Path, mode: str = "", python: str | None = None) -> dict | None:
    command = [python or sys.executable, __file__, "--child", tool, str(path), mode]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        print(f"  {tool} {mode} failed: {completed.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(completed.stdout.strip().splitlines()[-1])


def measure_tshark(path: Path, packets: int) -> dict | None:
    tshark = shutil.which("tshark")
    if tshark is None:
        return None
    start = time.perf_counter()
    completed = subprocess.run(
        ["taskset", "-c", "0", tshark, "-n", "-q", "-r", str(path), "-z", "conv,tcp"]
        if shutil.which("taskset") else [tshark, "-n", "-q", "-r", str(path), "-z", "conv,tcp"],
        capture_output=True, text=True,
    )
    if completed.returncode != 0:
        return None
    return {"packets": packets, "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------- report

def rate(result: dict | None) -> float | None:
    if not result or not result.get("seconds"):
        return None
    return result["packets"] / result["seconds"]


def print_table(title: str, rows: list[tuple[str, dict | None]], baseline: str) -> None:
    rates = {name: rate(result) for name, result in rows}
    base = rates.get(baseline)
    print(f"\n{title}")
    print(f"  {'run':<34} {'packets/s':>14} {'vs ' + baseline:>16}")
    for name, result in rows:
        r = rates[name]
        if r is None:
            print(f"  {name:<34} {'skipped':>14}")
            continue
        ratio = f"{r / base:,.1f}x" if base else "-"
        print(f"  {name:<34} {r:>14,.0f} {ratio:>16}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=500_000, help="packets per capture (default 500,000; the long capture has 4 times as many)")
    parser.add_argument("--workdir", type=Path, help="where to write the captures (default: a temporary directory)")
    parser.add_argument("--nfstream-python", help="Python interpreter with nfstream installed")
    parser.add_argument("--child", nargs=3, metavar=("TOOL", "PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(*args.child)
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="wardwatch-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tiny, mix, mix4 = workdir / "tiny.pcap", workdir / "mix.pcap", workdir / "mix4x.pcap"
    started = time.perf_counter()
    make_tiny_capture(tiny, args.packets)
    make_mix_capture(mix, args.packets)
    make_mix_capture(mix4, 4 * args.packets)
    print(f"captures written in {time.perf_counter() - started:.1f} s to {workdir}")
    print(f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; python {platform.python_version()}; each run pinned to one core")

    nfstream_python = args.nfstream_python or sys.executable
    for name, path in (("tiny (64-byte frames)", tiny), ("mix (64-1514 bytes, ~20k flows)", mix)):
        rows = [
            ("wardwatch decode kernel", measure("wardwatch", path, "decode_kernel")),
            ("wardwatch flows kernel", measure("wardwatch", path, "flows_kernel")),
            ("wardwatch read+decode", measure("wardwatch", path, "read_decode")),
            ("wardwatch read+decode+flows", measure("wardwatch", path, "read_decode_flows")),
            ("dpkt read+decode loop", measure("dpkt", path)),
        ]
        nfstream = measure("nfstream", path, "", nfstream_python)
        if nfstream is None:
            print("  NFStream skipped: pip install nfstream, or pass --nfstream-python")
        rows.append(("nfstream (1 meter, statistics on)", nfstream))
        packets = rows[0][1]["packets"] if rows[0][1] else args.packets
        rows.append(("tshark -q -z conv,tcp", measure_tshark(path, packets)))
        print_table(name, rows, "dpkt read+decode loop")

    print("\npeak memory of wardwatch read+decode+flows (same ~20k flows):")
    for label, path in (("1x", mix), ("4x", mix4)):
        result = measure("wardwatch", path, "read_decode_flows")
        if result:
            print(f"  {label}: {result['packets']:,} packets, {result['flows']:,} flows, "
                  f"peak anonymous {result['peak_anon_kib'] / 1024:,.1f} MiB, "
                  f"peak file-backed {result['peak_file_kib'] / 1024:,.1f} MiB, "
                  f"max RSS (VmHWM) {result['max_rss_kib'] / 1024:,.1f} MiB")
    if not args.workdir:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()

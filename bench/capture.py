"""Capture reader throughput against dpkt, tshark and capinfos.

    python bench/capture.py [--packets 5000000] [--peer-packets 300000]

Writes a classic pcap and a pcapng file of 64-byte UDP frames to a
temporary directory and reads them with engine.capture from the mapped
file. dpkt, tshark and our gzip stream path read a smaller file of the same
frames, because the first two are orders of magnitude slower. capinfos
reads the large pcap. Every rate is packets per second over the whole
read, so files of different sizes compare. The last column is our
mapped-pcap rate divided by each reader's rate.
"""

import argparse
import gzip
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.capture import open_capture  # noqa: E402

FRAME_LENGTH = 64
WRITE_CHUNK = 1_000_000  # records built in memory per write


def udp_frame() -> np.ndarray:
    """Return one 64-byte Ethernet/IPv4/UDP frame (checksums are not checked by readers)."""
    ethernet = bytes.fromhex("020000000002" "020000000001" "0800")
    ipv4 = bytes.fromhex("4500" "0032" "0001" "0000" "4011" "0000" "0a000001" "0a000002")
    udp = bytes.fromhex("d431" "0035" "001e" "0000")
    payload = bytes(FRAME_LENGTH - len(ethernet) - len(ipv4) - len(udp))
    return np.frombuffer(ethernet + ipv4 + udp + payload, dtype=np.uint8)


def write_pcap(path: Path, count: int) -> None:
    record = np.dtype(
        [("sec", "<u4"), ("usec", "<u4"), ("caplen", "<u4"), ("wirelen", "<u4"), ("frame", "u1", FRAME_LENGTH)]
    )
    with open(path, "wb") as handle:
        # magic, version 2.4, thiszone, sigfigs, snaplen, Ethernet
        handle.write(np.array([0xA1B2C3D4], "<u4").tobytes())
        handle.write(np.array([2, 4], "<u2").tobytes())
        handle.write(np.array([0, 0, 262144, 1], "<u4").tobytes())
        for start in range(0, count, WRITE_CHUNK):
            index = np.arange(start, min(count, start + WRITE_CHUNK), dtype=np.uint64)
            records = np.zeros(index.shape[0], dtype=record)
            records["sec"] = 1_700_000_000 + index // 1_000_000
            records["usec"] = index % 1_000_000
            records["caplen"] = FRAME_LENGTH
            records["wirelen"] = FRAME_LENGTH
            records["frame"] = udp_frame()
            records.tofile(handle)


def write_pcapng(path: Path, count: int) -> None:
    epb = np.dtype(
        [
            ("type", "<u4"), ("length", "<u4"), ("interface", "<u4"), ("ts_high", "<u4"), ("ts_low", "<u4"),
            ("caplen", "<u4"), ("wirelen", "<u4"), ("frame", "u1", FRAME_LENGTH), ("trailer", "<u4"),
        ]
    )
    with open(path, "wb") as handle:
        # Section Header Block: type, length 28, byte-order magic, version 1.0, section length -1, length
        handle.write(np.array([0x0A0D0D0A, 28, 0x1A2B3C4D], "<u4").tobytes())
        handle.write(np.array([1, 0], "<u2").tobytes())
        handle.write(np.array([-1], "<i8").tobytes())
        handle.write(np.array([28], "<u4").tobytes())
        # Interface Description Block: type, length 20, Ethernet, reserved, snaplen, length
        handle.write(np.array([1, 20], "<u4").tobytes())
        handle.write(np.array([1, 0], "<u2").tobytes())
        handle.write(np.array([262144, 20], "<u4").tobytes())
        for start in range(0, count, WRITE_CHUNK):
            index = np.arange(start, min(count, start + WRITE_CHUNK), dtype=np.uint64)
            ts_us = 1_700_000_000_000_000 + index
            blocks = np.zeros(index.shape[0], dtype=epb)
            blocks["type"] = 6
            blocks["length"] = epb.itemsize
            blocks["ts_high"] = ts_us >> 32
            blocks["ts_low"] = ts_us & 0xFFFFFFFF
            blocks["caplen"] = FRAME_LENGTH
            blocks["wirelen"] = FRAME_LENGTH
            blocks["frame"] = udp_frame()
            blocks["trailer"] = epb.itemsize
            blocks.tofile(handle)


def best_of(runs: int, function):
    """Return (best seconds, result) of `runs` calls."""
    best = None
    result = None
    for _ in range(runs):
        start = time.perf_counter()
        result = function()
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    return best, result


def read_with_engine(path: Path) -> int:
    total = 0
    with open_capture(path) as reader:
        for batch in reader:
            total += batch.count
    return total


def read_with_dpkt(path: Path) -> int:
    import dpkt

    total = 0
    with open(path, "rb") as handle:
        for _ts, _data in dpkt.pcap.Reader(handle):
            total += 1
    return total


def read_with_tshark(path: Path) -> int:
    output = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number"],
        capture_output=True, check=True,
    ).stdout
    return output.count(b"\n")


def read_with_capinfos(path: Path) -> int:
    output = subprocess.run(["capinfos", "-c", "-M", str(path)], capture_output=True, text=True, check=True).stdout
    return int(output.strip().splitlines()[-1].split(":")[-1].strip())


def report(name: str, seconds: float, packets: int, file_bytes: int, reference_rate: float | None) -> float:
    rate = packets / seconds
    ratio = f"{reference_rate / rate:9.1f}x" if reference_rate else "          "
    print(f"{name:34s} {packets:>10d} pkts {seconds:8.3f} s {rate / 1e6:8.2f} Mpps "
          f"{file_bytes / seconds / 1e6:9.1f} MB/s {ratio}")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=5_000_000, help="packets in the large file")
    parser.add_argument("--peer-packets", type=int, default=300_000, help="packets in the file the peers read")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per reader; the best is kept")
    arguments = parser.parse_args()

    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, python {platform.python_version()}")
    print(f"{'reader':34s} {'packets':>15s} {'time':>10s} {'rate':>13s} {'throughput':>14s} {'ours/peer':>10s}")
    with tempfile.TemporaryDirectory(prefix="ww-bench-capture-") as directory:
        directory = Path(directory)
        large_pcap = directory / "large.pcap"
        large_pcapng = directory / "large.pcapng"
        small_pcap = directory / "small.pcap"
        small_gzip = directory / "small.pcap.gz"
        write_pcap(large_pcap, arguments.packets)
        write_pcapng(large_pcapng, arguments.packets)
        write_pcap(small_pcap, arguments.peer_packets)
        small_gzip.write_bytes(gzip.compress(small_pcap.read_bytes(), compresslevel=1))

        seconds, packets = best_of(arguments.runs, lambda: read_with_engine(large_pcap))
        ours = report("wardwatch pcap (mmap)", seconds, packets, large_pcap.stat().st_size, None)
        seconds, packets = best_of(arguments.runs, lambda: read_with_engine(large_pcapng))
        report("wardwatch pcapng (mmap)", seconds, packets, large_pcapng.stat().st_size, ours)
        seconds, packets = best_of(arguments.runs, lambda: read_with_engine(small_gzip))
        report("wardwatch pcap.gz (stream)", seconds, packets, small_pcap.stat().st_size, ours)

        seconds, packets = best_of(1, lambda: read_with_dpkt(small_pcap))
        report("dpkt.pcap.Reader", seconds, packets, small_pcap.stat().st_size, ours)
        if shutil.which("capinfos"):
            seconds, packets = best_of(1, lambda: read_with_capinfos(large_pcap))
            report("capinfos -c", seconds, packets, large_pcap.stat().st_size, ours)
        if shutil.which("tshark"):
            seconds, packets = best_of(1, lambda: read_with_tshark(small_pcap))
            report("tshark -T fields -e frame.number", seconds, packets, small_pcap.stat().st_size, ours)


if __name__ == "__main__":
    main()

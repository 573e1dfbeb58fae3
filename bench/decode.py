"""Benchmark the L2-L4 decoder against dpkt's Ethernet parser.

    python bench/decode.py [--batch 8192] [--packets 262144] [--repeat 20]

Both decode the same 64-byte Ethernet/IPv4/TCP frames (20-byte IPv4 and TCP
headers without options, 10 payload bytes) with varying addresses and ports.
The decoder runs on whole batches; dpkt parses each frame with
Ethernet(frame) in a Python loop, the usual way Python tools decode. The last
line decodes a real mixed capture when ../shared/pcaps is present. Results
are single-core packets per second (best of the timed runs) and the ratio
decoder/dpkt.
"""

import argparse
import os
import platform
import struct
import sys
import time
from pathlib import Path

import dpkt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.decode import decode_batch, new_anomaly_counters  # noqa: E402
from engine.decode.batches import build_batch  # noqa: E402

SHARED_CAPTURE = (Path(__file__).resolve().parent.parent.parent
                  / "shared" / "pcaps" / "ppp-example-web-browsing.pcap")


def make_frames(count, seed=1):
    """Return `count` distinct 64-byte Ethernet/IPv4/TCP frames."""
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        src_port, dst_port = (int(v) for v in rng.integers(1024, 65535, size=2))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 50, index & 0xFFFF, 0x4000, 64, 6, 0,
                         struct.pack("!I", 0x0A000000 | (index & 0xFFFF)),
                         struct.pack("!I", 0x0A010000 | int(rng.integers(0, 65536))))
        tcp = struct.pack("!HHIIBBHHH", src_port, dst_port, index, 0, 0x50, 0x18, 65535, 0, 0)
        frame = b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\x08\x00" + ip + tcp + bytes(10)
        assert len(frame) == 64
        frames.append(frame)
    return frames


def time_decoder(packets, data, repeat):
    counters = new_anomaly_counters()
    decode_batch(packets, data, counters)  # warm caches
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        decode_batch(packets, data, counters)
        best = min(best, time.perf_counter() - start)
    return len(packets) / best


def time_dpkt(frames, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for frame in frames:
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            tcp = ip.data
            _ = (ip.src, ip.dst, tcp.sport, tcp.dport, tcp.flags)
        best = min(best, time.perf_counter() - start)
    return len(frames) / best


def bench_capture(repeat):
    if not SHARED_CAPTURE.is_file():
        return None
    frames = []
    link_types = []
    with open(SHARED_CAPTURE, "rb") as handle:
        reader = dpkt.pcap.Reader(handle)
        for _, frame in reader:
            frames.append(frame)
            link_types.append(reader.datalink())
    packets, data = build_batch(frames, link_types)
    decoder_pps = time_decoder(packets, data, repeat)
    dpkt_pps = time_dpkt_generic(frames, max(1, repeat // 4))
    return len(frames), decoder_pps, dpkt_pps


def time_dpkt_generic(frames, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for frame in frames:
            dpkt.ethernet.Ethernet(frame)
        best = min(best, time.perf_counter() - start)
    return len(frames) / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8192,
                        help="frames per batch, as the capture reader makes them (default 8192)")
    parser.add_argument("--packets", type=int, default=262144,
                        help="frames in the large batch that does not fit the CPU caches "
                             "(default 262144)")
    parser.add_argument("--repeat", type=int, default=20,
                        help="timed runs; the best is reported (default 20)")
    args = parser.parse_args()

    frames = make_frames(args.packets)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')} {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, dpkt {dpkt.__version__}")
    dpkt_pps = time_dpkt(frames[:50_000], max(1, args.repeat // 4))
    print(f"dpkt Ethernet() loop, 64-byte Ethernet/IPv4/TCP: {dpkt_pps / 1e6:.3f} Mpps")

    # A batch the reader has just filled is in cache; a huge batch is not.
    for label, count, repeat in (("batch in cache", args.batch, args.repeat * 10),
                                 ("batch streamed from memory", args.packets, args.repeat)):
        packets, data = build_batch(frames[:count])
        decoder_pps = time_decoder(packets, data, repeat)
        print(f"decoder, {label}, {count} frames: {decoder_pps / 1e6:.1f} Mpps, "
              f"ratio to dpkt {decoder_pps / dpkt_pps:.0f}x")

    result = bench_capture(args.repeat)
    if result is not None:
        count, capture_pps, capture_dpkt_pps = result
        print(f"{SHARED_CAPTURE.name}, {count} frames: decoder {capture_pps / 1e6:.1f} Mpps, "
              f"dpkt Ethernet() {capture_dpkt_pps / 1e6:.3f} Mpps, "
              f"ratio {capture_pps / capture_dpkt_pps:.0f}x")


if __name__ == "__main__":
    main()

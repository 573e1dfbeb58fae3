"""Benchmark the simulator: pcap writer throughput and end-to-end generation rate.

Run: python bench/simulate.py [--packets N] [--hospital-seconds S]

1. Writer: the same TCP packets (a bulk transfer plus small request/response
   messages, checksums included) written by WardWatch's vectorised writer
   and by dpkt building and serialising each packet (dpkt.pcap.Writer), the
   usual way to script captures in Python. Reported as packets/s and ratio.
2. Generation: `simulate()` end to end for the small and hospital profiles,
   in packets per CPU second (process time, so other load on a shared
   machine does not count) and per wall second.
"""

from __future__ import annotations

import os
import sys

# Import this checkout's engine package even where it is not installed.
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))

import argparse  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import dpkt  # noqa: E402
import numpy as np  # noqa: E402

from engine.simulate.generator import PROFILES, simulate  # noqa: E402
from engine.simulate.session import CLIENT, SERVER, MSS, PortAllocator, SimContext, TcpSession  # noqa: E402
from engine.simulate.topology import load_topology  # noqa: E402
from engine.simulate.writer import PacketBuffer, pcap_file_header  # noqa: E402


def fill_buffer(target_packets: int, seed: int = 1) -> tuple[SimContext, list[tuple]]:
    """Fill a packet buffer with TCP sessions; also return the packet list for the dpkt peer."""
    topology = load_topology(0.05)
    ctx = SimContext(topology, PacketBuffer(), seed, 1.7e9, 1.7e9 + 3600, PortAllocator(seed))
    rng = np.random.default_rng(seed)
    client = topology.role("reading_workstation")[0]
    server = topology.one("pacs")
    t = ctx.start
    while len(ctx.buffer.c_time) < target_packets:
        session = TcpSession(ctx, client, server, 104, t, rng).open()
        session.send(CLIENT, rng.bytes(MSS * 40))  # bulk: 40 full segments
        for _ in range(20):
            session.send(CLIENT, rng.bytes(int(rng.integers(40, 400))))
            session.send(SERVER, rng.bytes(int(rng.integers(40, 1200))))
        session.close()
        t = session.t + 0.01
    return ctx, []


def bench_writer(packets: int) -> dict:
    ctx, _ = fill_buffer(packets)
    count = len(ctx.buffer.c_time)

    # Peer input: the same packets as (time, src, dst, sport, dport, flags, seq, ack, payload) tuples.
    flows = ctx.buffer.flows.compact()
    payloads = ctx.buffer.payloads
    peer_rows = []
    for i in range(count):
        flow = ctx.buffer.c_flow[i]
        reverse = ctx.buffer.c_dir[i] == 1
        payload = payloads[ctx.buffer.c_payload[i]]
        offset, length = ctx.buffer.c_offset[i], ctx.buffer.c_length[i]
        if length >= 0:
            payload = payload[offset:offset + length]
        src = int(flows["server_ip" if reverse else "client_ip"][flow])
        dst = int(flows["client_ip" if reverse else "server_ip"][flow])
        sport = int(flows["dport" if reverse else "sport"][flow])
        dport = int(flows["sport" if reverse else "dport"][flow])
        peer_rows.append((ctx.buffer.c_time[i], src.to_bytes(4, "big"), dst.to_bytes(4, "big"), sport, dport,
                          ctx.buffer.c_flags[i], ctx.buffer.c_seq[i], ctx.buffer.c_ack[i], payload))

    out = io.BytesIO()
    out.write(pcap_file_header())
    began = time.perf_counter()
    cpu = time.process_time()
    ctx.buffer.flush(out)
    ours_cpu = time.process_time() - cpu
    ours_wall = time.perf_counter() - began

    peer_out = io.BytesIO()
    began = time.perf_counter()
    cpu = time.process_time()
    writer = dpkt.pcap.Writer(peer_out)
    mac_a, mac_b = b"\x00\x09\x5c\x00\x00\x01", b"\x00\x1d\x4a\x00\x00\x02"
    for ts, src, dst, sport, dport, flags, seq, ack, payload in peer_rows:
        tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=64240, data=payload)
        ip = dpkt.ip.IP(src=src, dst=dst, p=6, ttl=64, data=tcp)
        ip.len = 20 + len(tcp)
        writer.writepkt(dpkt.ethernet.Ethernet(src=mac_a, dst=mac_b, data=ip), ts=ts)
    peer_cpu = time.process_time() - cpu
    peer_wall = time.perf_counter() - began
    return {"packets": count, "ours_cpu": ours_cpu, "ours_wall": ours_wall, "peer_cpu": peer_cpu,
            "peer_wall": peer_wall, "bytes": len(out.getvalue())}


def bench_generation(profile_name: str, duration_s: float) -> dict:
    out = io.BytesIO()
    began = time.perf_counter()
    cpu = time.process_time()
    result = simulate(out, PROFILES[profile_name], duration_s, 1, [])
    return {"packets": result.packets, "cpu": time.process_time() - cpu, "wall": time.perf_counter() - began,
            "bytes": result.bytes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000, help="packets in the writer benchmark")
    parser.add_argument("--hospital-seconds", type=float, default=30.0,
                        help="simulated seconds of the hospital profile")
    args = parser.parse_args()

    # Warm-up: first-call setup (imports, caches) outside the timed part.
    simulate(io.BytesIO(), PROFILES["small"], 5, 1, [])

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"dpkt {dpkt.__version__}, numpy {np.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    writer = bench_writer(args.packets)
    ours = writer["packets"] / writer["ours_cpu"]
    peer = writer["packets"] / writer["peer_cpu"]
    print(f"writer, {writer['packets']} TCP packets ({writer['bytes'] / 1e6:.0f} MB):")
    print(f"  wardwatch vectorised writer  {ours:12,.0f} packets/CPU-s  ({writer['packets'] / writer['ours_wall']:,.0f}/wall-s)")
    print(f"  dpkt per-packet build+write  {peer:12,.0f} packets/CPU-s  ({writer['packets'] / writer['peer_wall']:,.0f}/wall-s)")
    print(f"  ratio wardwatch/dpkt         {ours / peer:12.1f}x")

    for name, seconds in (("small", 120.0), ("hospital", args.hospital_seconds)):
        run = bench_generation(name, seconds)
        print(f"generation, profile {name}, {seconds:.0f} s simulated: {run['packets']} packets, "
              f"{run['bytes'] / 1e6:.0f} MB, {run['packets'] / run['cpu']:,.0f} packets/CPU-s "
              f"({run['packets'] / run['wall']:,.0f}/wall-s), {run['packets'] / seconds:,.0f} packets per simulated s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

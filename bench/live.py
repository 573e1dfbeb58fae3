"""Live capture throughput and memory: `wardwatch run` on a veth pair fed by tcpreplay.

    python bench/live.py [--capture FILE] [--rates 2000,5000,10000] [--soak-s 120] [--soak-pps 2000]

Needs root, ip and tcpreplay. The bench makes its own network namespace
with a veth pair (deleted at the end) and sends traffic only inside it.
It reports, for 1 and 2 workers:
  * the file rate: the same pipeline over the capture file in this process;
  * the highest tcpreplay rate (of --rates, and top speed) that `wardwatch
    run` captured with zero kernel drops, as a ratio of the file rate;
  * peak and final resident memory of all run processes over a soak replay
    that loops the capture with new addresses each loop (a flow flood),
    and the seconds into the soak at which the kernel counted drops.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

SAMPLE_CAPTURE = REPO_ROOT / "engine" / "data" / "sample.pcap"
STATS_PATTERN = re.compile(r"wbc\w+: (\d+) packets")
RSS_SAMPLE_INTERVAL_S = 30.0
SUMMARY_PATTERN = re.compile(r"packets ([\d,]+) .*kernel packets ([\d,]+)\s+drops ([\d,]+)")
KERNEL_DROPS_PATTERN = re.compile(r"kernel \d+ packets (\d+) drops")
READ_GAP_PATTERN = re.compile(r"(\d+) ms max read gap")


def file_rate(capture: Path, use_model: bool) -> float:
    """Return packets/s of reader plus pipeline over `capture` (best of three, after a warm-up)."""
    from engine.analyze.pipeline import Pipeline
    from engine.capture import open_capture
    from engine.detect import load_model

    model = load_model() if use_model else None
    best = 0.0
    for attempt in range(4):
        pipeline = Pipeline(model)
        started = time.perf_counter()
        with open_capture(capture) as reader:
            for batch in reader:
                pipeline.process(batch.packets, batch.data)
        pipeline.finish()
        elapsed = time.perf_counter() - started
        if attempt > 0:
            best = max(best, pipeline.counters["packets"] / elapsed)
    return best


def write_looped_capture(source: Path, target: Path, loops: int, spacing_s: float | None = None) -> None:
    """Write `source` (classic pcap) `loops` times.

    Without `spacing_s` each loop keeps its timing and starts after the
    previous one. With it, packet i is stamped start + i * spacing_s, the
    timing a top-speed replay of the same loops gives the live capture.
    """
    import dpkt

    with open(source, "rb") as handle:
        reader = dpkt.pcap.Reader(handle)
        records = list(reader)
        link_type = reader.datalink()
    start = records[0][0]
    span = records[-1][0] - start + 1.0
    with open(target, "wb") as handle:
        writer = dpkt.pcap.Writer(handle, snaplen=65535, linktype=link_type, nano=True)
        index = 0
        for loop in range(loops):
            for timestamp, frame in records:
                if spacing_s is None:
                    writer.writepkt(frame, timestamp + loop * span)
                else:
                    writer.writepkt(frame, start + index * spacing_s)
                index += 1


class Namespace:
    def __init__(self):
        token = secrets.token_hex(3)
        self.name, self.send, self.capture = f"wwbench-{token}", f"wbs{token}", f"wbc{token}"

    def __enter__(self):
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        for command in (
            ["ip", "-n", self.name, "link", "add", self.send, "type", "veth", "peer", "name", self.capture],
            ["ip", "-n", self.name, "link", "set", self.send, "up"],
            ["ip", "-n", self.name, "link", "set", self.capture, "up"],
            ["ip", "netns", "exec", self.name, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"],
        ):
            subprocess.run(command, check=True)
        return self

    def __exit__(self, *exc_info):
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def process_tree_rss_kib(pid: int) -> int:
    """Return the summed VmRSS of `pid` and its children, KiB."""
    total = 0
    pids = [pid]
    children_path = Path(f"/proc/{pid}/task/{pid}/children")
    if children_path.exists():
        pids += [int(p) for p in children_path.read_text().split()]
    for process_id in pids:
        try:
            for line in Path(f"/proc/{process_id}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def live_trial(namespace: Namespace, capture: Path, workers: int, use_model: bool, replay_options: list[str],
               workdir: Path, sample_rss: bool = False) -> dict:
    """Run `wardwatch run` while tcpreplay sends `capture`; return counts, seconds and memory."""
    stderr_path = workdir / f"run-{workers}.err"
    command = [
        "ip", "netns", "exec", namespace.name, sys.executable, "-c", "from engine.cli import main; main()",
        "-v", "run", "--interface", namespace.capture, "--workers", str(workers), "--no-bus",
        "--store", str(workdir / f"bench-{workers}.db"), "--stats-interval", "0.2", "--quiet",
    ]
    if not use_model:
        command.append("--no-model")
    with open(stderr_path, "w") as stderr:
        run = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
                               env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
        deadline = time.monotonic() + 60
        while stderr_path.read_text().count("capturing on") < workers:
            if time.monotonic() > deadline or run.poll() is not None:
                run.kill()
                raise RuntimeError(f"wardwatch run did not start:\n{stderr_path.read_text()}")
            time.sleep(0.05)
        peak_rss = first_rss = process_tree_rss_kib(run.pid)
        started = time.monotonic()
        replay = subprocess.Popen(
            ["ip", "netns", "exec", namespace.name, "tcpreplay", "-q", *replay_options, "-i", namespace.send,
             str(capture)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        timeline = []
        # (seconds since the replay started, kernel drops so far) at each
        # growth of the drop count, so a stall can be matched with the log.
        drop_timeline = []
        while replay.poll() is None:
            time.sleep(0.5)
            if sample_rss:
                drop_counts = KERNEL_DROPS_PATTERN.findall(stderr_path.read_text())
                drops_so_far = int(drop_counts[-1]) if drop_counts else 0
                if drops_so_far > (drop_timeline[-1][1] if drop_timeline else 0):
                    drop_timeline.append((round(time.monotonic() - started, 1), drops_so_far))
                rss = process_tree_rss_kib(run.pid)
                peak_rss = max(peak_rss, rss)
                elapsed = time.monotonic() - started
                if not timeline or elapsed - timeline[-1][0] >= RSS_SAMPLE_INTERVAL_S:
                    timeline.append((round(elapsed), round(rss / 1024)))
        replay_s = time.monotonic() - started
        sent = int(re.search(r"Actual: (\d+) packets", replay.stdout.read()).group(1))
        final_rss = process_tree_rss_kib(run.pid)
        # The workers may still be reading what the rings buffered: wait for
        # the statistics line that counts every packet sent.
        caught_up_s = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            counts = [int(n) for n in STATS_PATTERN.findall(stderr_path.read_text())]
            if counts and counts[-1] >= sent:
                caught_up_s = time.monotonic() - started
                break
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=300)
    # Each worker reports its longest gap since it started, so the largest
    # number in the log is the longest gap of the trial.
    read_gaps_ms = [int(gap) for gap in READ_GAP_PATTERN.findall(stderr_path.read_text())]
    match = SUMMARY_PATTERN.search(output)
    if match is None:
        raise RuntimeError(f"no summary from wardwatch run:\n{output}\n{stderr_path.read_text()}")
    analysed, kernel_packets, drops = (int(group.replace(",", "")) for group in match.groups())
    return {
        "workers": workers, "replay": " ".join(replay_options), "sent": sent, "analysed": analysed,
        "kernel_packets": kernel_packets, "drops": drops, "replay_s": round(replay_s, 2),
        "sent_pps": round(sent / replay_s),
        # End to end: from the first packet sent to the last one analysed.
        "analysed_pps": round(sent / caught_up_s) if caught_up_s else None,
        "first_rss_mib": round(first_rss / 1024, 1),
        "peak_rss_mib": round(peak_rss / 1024, 1), "final_rss_mib": round(final_rss / 1024, 1),
        "rss_timeline_s_mib": timeline,
        "drop_timeline_s": drop_timeline,
        "read_gap_max_ms": max(read_gaps_ms, default=None),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", type=Path, default=SAMPLE_CAPTURE)
    parser.add_argument("--rates", default="2000,5000,10000,20000",
                        help="tcpreplay packets/s to try, comma-separated, lowest first")
    parser.add_argument("--trial-s", type=float, default=8.0, help="seconds of replay per rate")
    parser.add_argument("--soak-s", type=float, default=120.0, help="seconds of the memory soak replay")
    parser.add_argument("--soak-pps", type=int, default=2000, help="tcpreplay packets/s of the soak replay")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--no-model", action="store_true", help="run the rules only")
    parser.add_argument("--soak-only", action="store_true", help="skip the rate trials")
    arguments = parser.parse_args()

    if os.geteuid() != 0 or not shutil.which("tcpreplay") or not shutil.which("ip"):
        print("skipped: needs root, ip and tcpreplay")
        return 0
    from engine.detect import default_model_path

    use_model = not arguments.no_model and default_model_path().is_file()
    capture_copy = Path(tempfile.mkdtemp(prefix="wardwatch-bench-")) / "capture.pcap"
    shutil.copyfile(arguments.capture, capture_copy)
    workdir = capture_copy.parent
    packets_in_file = sum(1 for _ in __import__("dpkt").pcap.Reader(open(capture_copy, "rb")))

    topspeed_loops = max(1, int(arguments.trial_s * 20000 / packets_in_file))
    # The file side reads the same loops the top-speed replay sends, so both
    # pay the same per-flow and end-of-input work.
    looped = workdir / "looped.pcap"
    write_looped_capture(capture_copy, looped, topspeed_loops)
    rate = file_rate(looped, use_model)
    print(f"file rate (reader + pipeline over {topspeed_loops} loops, model={'yes' if use_model else 'no'}): "
          f"{rate:,.0f} packets/s")
    # A top-speed replay squeezes the loops into seconds, so flows never
    # go idle and far fewer are scored. Compare it with a file of the same
    # timing: 13 microseconds is about the spacing tcpreplay reached on the
    # 2-core development machine.
    squeezed = workdir / "looped-top-speed.pcap"
    write_looped_capture(capture_copy, squeezed, topspeed_loops, spacing_s=13e-6)
    top_speed_rate = file_rate(squeezed, use_model)
    print(f"file rate with top-speed timing: {top_speed_rate:,.0f} packets/s")
    results = {"file_pps": round(rate), "file_top_speed_pps": round(top_speed_rate), "model": use_model,
               "trials": [], "soak": []}
    with Namespace() as namespace:
        for workers in (int(w) for w in arguments.workers.split(",")):
            if arguments.soak_only:
                break
            best_zero_drop = 0
            for pps in [int(r) for r in arguments.rates.split(",")] + ["topspeed"]:
                if pps == "topspeed":
                    options = ["--topspeed", f"--loop={topspeed_loops}"]
                else:
                    loops = max(1, round(arguments.trial_s * pps / packets_in_file))
                    options = [f"--pps={pps}", f"--loop={loops}"]
                trial = live_trial(namespace, capture_copy, workers, use_model, options, workdir)
                results["trials"].append(trial)
                zero = trial["drops"] == 0 and trial["analysed"] == trial["sent"]
                print(f"workers {workers} {trial['replay']:>24}: sent {trial['sent']:,} at {trial['sent_pps']:,}/s, "
                      f"analysed {trial['analysed']:,} ({trial['analysed_pps'] or 0:,}/s end to end), "
                      f"drops {trial['drops']:,}{'' if zero else '  <- loss'}")
                if pps == "topspeed":
                    print(f"workers {workers} top speed: {(trial['analysed_pps'] or 0) / top_speed_rate:.2f} x "
                          "the file rate with top-speed timing")
                elif zero and trial["analysed_pps"]:
                    best_zero_drop = max(best_zero_drop, trial["analysed_pps"])
            print(f"workers {workers}: highest paced rate with zero drops {best_zero_drop:,} packets/s = "
                  f"{best_zero_drop / rate:.2f} x the file rate")
        for workers in (int(w) for w in arguments.workers.split(",")):
            soak_pps = arguments.soak_pps
            loops = max(1, round(arguments.soak_s * soak_pps / packets_in_file))
            soak = live_trial(namespace, capture_copy, workers, use_model,
                              [f"--pps={soak_pps}", f"--loop={loops}", "--unique-ip"], workdir, sample_rss=True)
            results["soak"].append(soak)
            print(f"soak workers {workers}: {soak['sent']:,} packets in {soak['replay_s']} s at {soak_pps}/s, "
                  f"drops {soak['drops']}, longest gap between ring reads {soak['read_gap_max_ms']} ms, "
                  f"RSS at start {soak['first_rss_mib']} MiB, peak {soak['peak_rss_mib']} MiB, "
                  f"end {soak['final_rss_mib']} MiB")
            print(f"  RSS (seconds, MiB): {soak['rss_timeline_s_mib']}")
            print(f"  kernel drops (seconds, drops so far): {soak['drop_timeline_s']}")
    print(json.dumps(results))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Auth-log lines per second: parsed, parsed and scored, and stored, on one core.

    python bench/logins.py [--lines 1000000] [--repeat 3]

Input: the loghub OpenSSH sample (../shared/logs/loghub-openssh-2k.log)
repeated to --lines lines; without it, lines from tools/gen_auth_logs.py's
attack day. Stages, each timed separately, best of --repeat runs:
  regex      a Python `re` match per line, the usual way log tools parse (the peer)
  scan       the compiled scanner only (engine.logins.authlog.scan_auth_log)
  scored     scan + LoginFrame + brute force, spraying and success-after-failures
  stored     ingest into a SQLite store (records and checkpoint), no rules
Ratios are against the regex peer.

With --fp-seeds N it also generates N synthetic hospitals
(tools/gen_auth_logs.py, seeds 1..N), learns each from its first month,
and reports the alerts raised on the normal second month (false positives,
per user-day and per record) and how many planted attacks were reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.logins import storage  # noqa: E402
from engine.logins.authlog import scan_auth_log  # noqa: E402
from engine.logins.detect import AlertBuilder, DetectionConfig, detect_bruteforce, detect_success_after_failures  # noqa: E402
from engine.logins.ingest import IngestOptions, ingest_file  # noqa: E402
from engine.logins.baseline import rebuild_baselines  # noqa: E402
from engine.logins.detect import load_config  # noqa: E402
from engine.logins.ehr import ColumnMapping  # noqa: E402
from engine.logins.pipeline import analyse  # noqa: E402
from engine.privacy import Pseudonymizer  # noqa: E402
from engine.store import open_store  # noqa: E402

SAMPLE = REPO.parent / "shared" / "logs" / "loghub-openssh-2k.log"

# The regex peer: what a per-line Python parser of the same sshd messages looks like.
PEER = re.compile(
    rb"^(\w{3} [ \d]\d \d\d:\d\d:\d\d) (\S+) sshd\[(\d+)\]: (?:message repeated (\d+) times: \[ )?"
    rb"(Failed|Accepted) (\S+) for (?:invalid user )?(.*?) from (\S+) port (\d+)"
)


def peer_parse(data: bytes) -> int:
    events = 0
    for line in data.split(b"\n"):
        match = PEER.match(line)
        if match:
            datetime.strptime(match.group(1).decode(), "%b %d %H:%M:%S")
            events += 1
    return events


def build_input(lines: int) -> bytes:
    if SAMPLE.is_file():
        sample = SAMPLE.read_bytes()
        if not sample.endswith(b"\n"):
            sample += b"\n"
    else:
        import importlib.util

        spec = importlib.util.spec_from_file_location("gen", REPO / "tools" / "gen_auth_logs.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with tempfile.TemporaryDirectory() as directory:
            module.generate(Path(directory), train_days=1, test_days=1)
            sample = (Path(directory) / "attack" / "auth.log").read_bytes()
    per_copy = sample.count(b"\n")
    return sample * max(1, lines // per_copy)


def load_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_auth_logs", REPO / "tools" / "gen_auth_logs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def false_positive_run(seed: int) -> dict:
    """Learn one synthetic hospital's first month, then count alerts on the normal month and the attack day."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory)
        planted = load_generator().generate(out, seed=seed)
        summary = json.loads((out / "planted.json").read_text())
        conn = open_store(out / "store.db")
        storage.ensure_schema(conn)
        config = load_config(out / "config.toml")
        pseudonymizer = Pseudonymizer(bytes(32))
        ehr = IngestOptions(format="ehr", mapping=ColumnMapping.load(out / "mapping.toml"), pseudonymizer=pseudonymizer)
        builder = AlertBuilder(lambda name: name)

        def read(phase):
            records = []
            for name in ("auth.log", "windows.jsonl"):
                records += ingest_file(conn, str(out / phase / name), IngestOptions()).records
            return records + ingest_file(conn, str(out / phase / "ehr.csv"), ehr).records

        read("train")
        rebuild_baselines(conn, None, None)
        test_records = read("test")
        test_alerts = analyse(conn, test_records, config, builder)
        attack_alerts = analyse(conn, read("attack"), config, builder)
        conn.close()
    reported = sum(
        1 for p in planted
        if any(a.evidence["rule"] == p["rule"] and a.dst.user == p.get("user", a.dst.user)
               and a.src.ip == p.get("source", a.src.ip) for a in attack_alerts)
    )
    return {"records": len(test_records), "user_days": summary["users"] * summary["test_days"],
            "false_positives": len(test_alerts), "planted": len(planted), "reported": reported}


def best_time(function, repeat: int) -> tuple[float, object]:
    best = float("inf")
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="input lines (default 1000000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per stage; the best is kept (default 3)")
    parser.add_argument("--fp-seeds", type=int, default=0,
                        help="synthetic hospitals to measure the false-positive rate on (default 0: skip)")
    arguments = parser.parse_args()

    data = build_input(arguments.lines)
    lines = data.count(b"\n")
    config = DetectionConfig()
    builder = AlertBuilder(lambda name: name)

    def scan():
        return scan_auth_log(data, year=2016)

    def scored():
        frame = scan_auth_log(data, year=2016).frame()
        return detect_bruteforce(frame, config, builder) + detect_success_after_failures(frame, config, builder)

    def stored():
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "auth.log")
            with open(path, "wb") as handle:
                handle.write(data)
            conn = open_store(os.path.join(directory, "store.db"))
            storage.ensure_schema(conn)
            result = ingest_file(conn, path, IngestOptions(year=2016))
            conn.close()
            return len(result.records)

    peer_s, peer_events = best_time(lambda: peer_parse(data), arguments.repeat)
    scan_s, scan_result = best_time(scan, arguments.repeat)
    scored_s, alerts = best_time(scored, arguments.repeat)
    stored_s, stored_records = best_time(stored, 1)

    print(f"# bench/logins.py  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  {platform.processor() or platform.machine()}"
          f"  cpus={os.cpu_count()}  python {platform.python_version()}")
    print(f"# input: {lines} lines ({len(data) / 1e6:.1f} MB), {'loghub OpenSSH sample' if SAMPLE.is_file() else 'synthetic'}"
          f" repeated; {len(scan_result.events)} events, {len(alerts)} alerts")
    print(f"{'stage':<8} {'seconds':>8} {'lines/s':>12} {'vs regex':>9}")
    for name, seconds in (("regex", peer_s), ("scan", scan_s), ("scored", scored_s), ("stored", stored_s)):
        print(f"{name:<8} {seconds:8.3f} {lines / seconds:12,.0f} {peer_s / seconds:8.1f}x")
    print(f"# regex peer found {peer_events} Failed/Accepted lines; the store kept {stored_records} records")

    if arguments.fp_seeds:
        print(f"{'seed':<5} {'records':>8} {'user-days':>9} {'false pos.':>10} {'planted found':>13}")
        totals = {"records": 0, "user_days": 0, "false_positives": 0, "planted": 0, "reported": 0}
        for seed in range(1, arguments.fp_seeds + 1):
            run = false_positive_run(seed)
            for key in totals:
                totals[key] += run[key]
            print(f"{seed:<5} {run['records']:>8} {run['user_days']:>9} {run['false_positives']:>10}"
                  f" {run['reported']:>6}/{run['planted']}")
        print(f"# false positives: {totals['false_positives']} in {totals['user_days']} user-days"
              f" ({totals['false_positives'] / totals['user_days']:.4f} per user-day),"
              f" {totals['false_positives'] / totals['records']:.6f} per record;"
              f" planted attacks reported: {totals['reported']}/{totals['planted']}")


if __name__ == "__main__":
    main()

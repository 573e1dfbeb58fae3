"""Benchmark `wardwatch report` on a store the size of a 10-minute hospital-profile capture.

Run: python bench/report.py [--alerts N] [--assets N] [--repeat N]

The store is seeded through the real store APIs (AlertStore.append,
write_run_stats, the inventory and responder tables). The default size is
an estimate for `wardwatch simulate --profile hospital` (300 devices, ten
minutes, nine attacks) analysed with aggregation on: 5,000 alerts, 600
findings, 300 assets, 200 response actions and 20 forecasts. That is
above what the aggregated attacks of that profile produce, so the
measured time is an upper bound for it; --alerts scales it.

Each output is timed in one process against the gathering step alone, so
the ratios show what rendering, charts and the Arabic font subset add. The
last line times the whole command in a new process, imports included,
against the 10 s target.
"""

import os
import sys

# Put the repository root in place of bench/ at the front of the import path:
# bench/ has modules named like standard ones (inspect.py) that would shadow them.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from engine.alerts.schema import Alert, Endpoint  # noqa: E402
from engine.alerts.store import AlertStore, RunStats, write_run_stats  # noqa: E402
from engine.assets.inventory import ROLES, ensure_schema as ensure_inventory_schema  # noqa: E402
from engine.report.gather import gather_report  # noqa: E402
from engine.report.render import render_html  # noqa: E402
from engine.respond.records import ActionRecord, ensure_schema as ensure_actions_schema, insert_action  # noqa: E402
from engine.store import open_store  # noqa: E402

CAPTURE_START = 1_767_258_000.0  # 2026-01-01 09:00 UTC, a day shift
CAPTURE_LENGTH_S = 600.0
TARGET_S = 10.0
CATEGORIES = [("scan", "medium"), ("bruteforce", "high"), ("lateral_movement", "high"), ("ransomware", "critical"),
              ("exfiltration", "high"), ("dos", "high"), ("tunneling", "high"), ("c2", "high"), ("anomaly", "low")]
FINDINGS = [("weak_tls", "medium"), ("smbv1", "high"), ("cleartext_patient_data", "high"), ("mqtt_no_auth", "medium")]


def address(index: int) -> str:
    return f"10.{20 + index // 250}.{index % 250 // 50}.{index % 50 + 1}"


def seed_store(path: str, alerts: int, findings: int, assets: int, actions: int, forecasts: int) -> None:
    rng = random.Random(7)
    alert_ids = []
    with AlertStore(path) as store:
        store.conn.execute("PRAGMA synchronous=OFF")  # seeding speed only; the report reads
        for index in range(alerts + findings + forecasts):
            if index < alerts:
                category, severity = rng.choice(CATEGORIES)
                kind = "detection"
            elif index < alerts + findings:
                category, severity = rng.choice(FINDINGS)
                kind = "finding"
            else:
                category, severity, kind = "lateral_movement", "medium", "forecast"
            first = CAPTURE_START + rng.uniform(0, CAPTURE_LENGTH_S)
            last = min(first + rng.uniform(0, 120), CAPTURE_START + CAPTURE_LENGTH_S)
            if kind == "forecast":
                first, last = CAPTURE_START + CAPTURE_LENGTH_S, CAPTURE_START + CAPTURE_LENGTH_S + 86_400
            alert = Alert(category=category, severity=severity, kind=kind, summary=f"{category} seen",
                          first_seen=first, last_seen=last, count=rng.randint(1, 50),
                          src=Endpoint(ip=address(rng.randrange(assets))), dst=Endpoint(ip=address(rng.randrange(assets))),
                          evidence={"forecast": "next_stage", "confidence": 0.7} if kind == "forecast" else {},
                          recommended_action="Patch it." if kind == "finding" else "")
            store.append(alert)
            alert_ids.append(alert.id)
        write_run_stats(store.conn, RunStats(
            sensor_id="bench", source="hospital.pcap", packets=3_000_000, bytes=2_400_000_000, flows=180_000,
            alerts=alerts, first_packet_time=CAPTURE_START, last_packet_time=CAPTURE_START + CAPTURE_LENGTH_S,
            anomaly_counters={"truncated_ipv4": 12, "bad_tcp_header_length": 3}))

    conn = open_store(path)
    ensure_inventory_schema(conn)
    ensure_actions_schema(conn)
    conn.execute("BEGIN")
    for index in range(assets):
        ip = address(index)
        conn.execute("INSERT INTO assets (ip, mac, vendor, first_seen, last_seen, updated_at) VALUES (?, '', '', ?, ?, ?)",
                     (ip, CAPTURE_START, CAPTURE_START + CAPTURE_LENGTH_S, CAPTURE_START))
        conn.execute("INSERT INTO asset_attributes (ip, kind, value, first_seen, last_seen) VALUES (?, 'role', ?, ?, ?)",
                     (ip, ROLES[index % len(ROLES)], CAPTURE_START, CAPTURE_START))
    for index in range(actions):
        insert_action(conn, ActionRecord(actor="bench", rule="bench", action="block", subject=address(index),
                                         status=rng.choice(["applied", "dry_run", "escalated"]), dry_run=False,
                                         reason="bench", alert_id=alert_ids[index]))
    conn.execute("COMMIT")
    conn.close()


def best_of(repeat: int, function) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=5_000)
    parser.add_argument("--findings", type=int, default=600)
    parser.add_argument("--assets", type=int, default=300)
    parser.add_argument("--actions", type=int, default=200)
    parser.add_argument("--forecasts", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "wardwatch.db")
        started = time.perf_counter()
        seed_store(path, arguments.alerts, arguments.findings, arguments.assets, arguments.actions, arguments.forecasts)
        print(f"seeded {arguments.alerts:,} alerts, {arguments.findings:,} findings, {arguments.assets} assets, "
              f"{arguments.actions} actions in {time.perf_counter() - started:.1f} s")
        print(f"date {datetime.date.today()}, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, Python {platform.python_version()}")

        conn = open_store(path)
        report = gather_report(conn, 7 * 86_400)
        render_html(report, "ar")  # warm imports (matplotlib, fontTools) once, as one command would
        rows = [
            ("gather (SQL to data)", lambda: gather_report(conn, 7 * 86_400)),
            ("json", lambda: json.dumps(gather_report(conn, 7 * 86_400), ensure_ascii=False)),
            ("html en", lambda: render_html(gather_report(conn, 7 * 86_400), "en")),
            ("html ar (font subset)", lambda: render_html(gather_report(conn, 7 * 86_400), "ar")),
        ]
        baseline = None
        print(f"{'output':<24}{'best of ' + str(arguments.repeat):>12}{'vs gather':>12}")
        for name, function in rows:
            seconds = best_of(arguments.repeat, function)
            baseline = baseline or seconds
            print(f"{name:<24}{seconds:>10.3f} s{seconds / baseline:>11.1f}x")
        conn.close()

        for language in ("en", "ar"):
            output = os.path.join(directory, f"report-{language}.html")
            command = [sys.executable, "-c", "from engine.cli import main; main()", "report", "--store", path,
                       "--lang", language, "-o", output]
            started = time.perf_counter()
            subprocess.run(command, check=True)
            seconds = time.perf_counter() - started
            verdict = "within" if seconds < TARGET_S else "OVER"
            print(f"wardwatch report --lang {language}: {seconds:.2f} s in a new process "
                  f"({verdict} the {TARGET_S:.0f} s target), {os.path.getsize(output):,} bytes")


if __name__ == "__main__":
    main()

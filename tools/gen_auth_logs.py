"""Write synthetic hospital login logs: a month to learn from, a month of normal use, an attack day.

    python tools/gen_auth_logs.py --out DIR [--seed 7] [--train-days 28] [--test-days 30]

For each phase (train, test, attack) it writes three files:
  DIR/PHASE/auth.log       OpenSSH and sudo lines in RFC 3339 syslog form
  DIR/PHASE/windows.jsonl  Winlogbeat-shaped Security events
  DIR/PHASE/ehr.csv        EHR audit rows
and once: DIR/mapping.toml (the EHR column mapping), DIR/config.toml (the
[logins] change windows) and DIR/planted.json (each planted attack, with the
rule that should report it and the account or source it involves).

The hospital: clinicians in four departments work fixed shifts at their own
workstations, log on to Windows at shift start and again during the shift,
and open 10 to 24 of their own department's patient records a day
(emergency staff open any department's). Administrators reach Linux servers
over SSH from their admin workstations in office hours, and use sudo and
their "adm-" Windows accounts only inside the Tuesday and Thursday evening
change windows. One contractor account is active for three days and then
falls silent. Typing mistakes give single failed logons. Normal use never
repeats a failure five times, never uses another department's records,
and no patient shares a surname with any staff member.

All times are UTC; the first day is Monday 2026-10-05.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

START = datetime(2026, 10, 5, tzinfo=timezone.utc)
DEPARTMENTS = ("cardiology", "oncology", "pediatrics", "emergency")
DEPARTMENT_CODES = {"cardiology": "CAR", "oncology": "ONC", "pediatrics": "PED", "emergency": "EMR"}
STAFF_SURNAMES = (
    "Abbott", "Baker", "Carter", "Dalton", "Ellis", "Fischer", "Garcia", "Hughes", "Ibarra", "Jensen",
    "Keller", "Larsen", "Moreau", "Nakamura", "Okafor", "Perez", "Quinn", "Rossi", "Schmidt", "Tanaka",
)
PATIENT_SURNAMES = (
    "Adams", "Brooks", "Chen", "Diaz", "Evans", "Foster", "Gray", "Hill", "Irwin", "James", "Kim",
    "Lopez", "Murphy", "Nguyen", "Owens", "Patel", "Reed", "Silva", "Turner", "Usman", "Vargas",
    "Walsh", "Young", "Zhou",
)
SHIFTS = {"day": 7, "evening": 15, "night": 23}  # start hour; shifts last 8 hours
SERVERS = ("pacs-db1", "ehr-app1", "lab-srv2")
CHANGE_WINDOWS = ("Tue,Thu 18:00-22:00",)
PATIENTS_PER_DEPARTMENT = 200
ATTACK_DAY_HOUR = 10


class Writer:
    """Collects the lines of one phase and writes them in time order."""

    def __init__(self):
        self.syslog: list[tuple[float, str]] = []
        self.windows: list[tuple[float, str]] = []
        self.ehr: list[tuple[float, list[str]]] = []
        self.pid = 4000

    def next_pid(self) -> int:
        self.pid += 1
        return self.pid

    def sshd(self, when: datetime, server: str, message: str, pid: int) -> None:
        self.syslog.append((when.timestamp(), f"{_rfc3339(when)} {server} sshd[{pid}]: {message}"))

    def sudo(self, when: datetime, server: str, user: str, target: str, command: str) -> None:
        line = f"{_rfc3339(when)} {server} sudo: {user} : TTY=pts/0 ; PWD=/home/{user} ; USER={target} ; COMMAND={command}"
        self.syslog.append((when.timestamp(), line))

    def windows_event(self, when: datetime, event_id: int, computer: str, data: dict) -> None:
        document = {
            "@timestamp": when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "event": {"code": str(event_id), "provider": "Microsoft-Windows-Security-Auditing"},
            "winlog": {"event_id": event_id, "computer_name": computer, "channel": "Security", "event_data": data},
        }
        self.windows.append((when.timestamp(), json.dumps(document, sort_keys=True)))

    def ehr_row(self, when: datetime, user: dict, action: str, patient: dict | None) -> None:
        row = [
            when.strftime("%Y-%m-%d %H:%M:%S"),
            user["name"],
            user["role"],
            user["department"],
            user["surname"],
            action,
            patient["mrn"] if patient else "",
            patient["department"] if patient else "",
            patient["surname"] if patient else "",
            user["workstations"][0],
        ]
        self.ehr.append((when.timestamp(), row))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "auth.log", "w", encoding="utf-8") as handle:
            for _, line in sorted(self.syslog, key=lambda item: item[0]):
                handle.write(line + "\n")
        with open(directory / "windows.jsonl", "w", encoding="utf-8") as handle:
            for _, line in sorted(self.windows, key=lambda item: item[0]):
                handle.write(line + "\n")
        with open(directory / "ehr.csv", "w", encoding="utf-8", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["AccessTime", "UserID", "Role", "UserDept", "UserLastName", "Action",
                          "PatientMRN", "PatientDept", "PatientLastName", "Terminal"])
            for _, row in sorted(self.ehr, key=lambda item: item[0]):
                out.writerow(row)


def _rfc3339(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "+00:00"


def build_hospital(rng: random.Random) -> dict:
    clinicians = []
    surnames = list(STAFF_SURNAMES)
    rng.shuffle(surnames)
    for index in range(16):
        department = DEPARTMENTS[index % 4]
        code = DEPARTMENT_CODES[department]
        surname = surnames[index]
        if department == "emergency":
            role = "emergency"
        elif index % 3 == 0:
            role = "physician"
        else:
            role = "nurse"
        workstations = [f"WS-{code}-{index:02d}"]
        if role == "physician":
            workstations.append(f"WS-{code}-{index + 50:02d}")
        clinicians.append({
            "name": f"{surname[0].lower()}{surname.lower()}{index:02d}",
            "surname": surname,
            "department": department,
            "role": role,
            "shift": ("day", "evening", "night")[(index // 4) % 3] if role != "physician" else "day",
            "days_off": {index % 7, (index + 3) % 7},
            "workstations": workstations,
        })
    admins = [
        {"name": "tadmin", "ip": "10.10.0.11"},
        {"name": "rops", "ip": "10.10.0.12"},
        {"name": "kbackup", "ip": "10.10.0.13"},
    ]
    patients = {
        department: [
            {"mrn": f"MRN{d:01d}{i:05d}", "department": department, "surname": rng.choice(PATIENT_SURNAMES)}
            for i in range(PATIENTS_PER_DEPARTMENT)
        ]
        for d, department in enumerate(DEPARTMENTS)
    }
    return {"clinicians": clinicians, "admins": admins, "patients": patients,
            "contractor": {"name": "contractor1", "ip": "10.10.0.50"}}


def _logon_windows(writer: Writer, when: datetime, user: str, workstation: str, logon_type: int = 2,
                   ip: str = "127.0.0.1", computer: str | None = None) -> None:
    writer.windows_event(when, 4624, computer or f"{workstation}.hospital.local", {
        "TargetUserName": user, "TargetDomainName": "HOSPITAL", "LogonType": str(logon_type),
        "WorkstationName": workstation, "IpAddress": ip, "IpPort": "0",
        "AuthenticationPackageName": "Kerberos", "LogonProcessName": "User32",
    })


def _failed_windows(writer: Writer, when: datetime, user: str, workstation: str) -> None:
    writer.windows_event(when, 4625, f"{workstation}.hospital.local", {
        "TargetUserName": user, "TargetDomainName": "HOSPITAL", "LogonType": "2", "Status": "0xc000006d",
        "SubStatus": "0xc000006a", "WorkstationName": workstation, "IpAddress": "127.0.0.1", "IpPort": "0",
    })


def _logoff_windows(writer: Writer, when: datetime, user: str, workstation: str) -> None:
    writer.windows_event(when, 4634, f"{workstation}.hospital.local", {
        "TargetUserName": user, "TargetDomainName": "HOSPITAL", "LogonType": "2",
    })


def clinician_day(writer: Writer, rng: random.Random, day: datetime, user: dict, patients: dict) -> None:
    if day.weekday() in user["days_off"]:
        return
    shift_start = day + timedelta(hours=SHIFTS[user["shift"]])
    workstation = user["workstations"][0]
    logon = shift_start + timedelta(minutes=rng.randint(-20, 20))
    if rng.random() < 0.05:  # a typing mistake
        _failed_windows(writer, logon - timedelta(seconds=20), user["name"], workstation)
    _logon_windows(writer, logon, user["name"], workstation)
    writer.ehr_row(logon + timedelta(minutes=2), user, "LOGIN", None)
    # Re-logons after the screen locked, at least two hours apart.
    for hour in sorted(rng.sample(range(2, 7), 2)):
        second_station = user["workstations"][-1] if rng.random() < 0.5 else workstation
        _logon_windows(writer, shift_start + timedelta(hours=hour, minutes=rng.randint(0, 50)),
                       user["name"], second_station)
    _logoff_windows(writer, shift_start + timedelta(hours=8, minutes=rng.randint(0, 20)), user["name"], workstation)

    pool = patients[user["department"]]
    if user["role"] == "emergency":
        pool = [p for department in DEPARTMENTS for p in patients[department]]
    for patient in rng.sample(pool, rng.randint(10, 24)):
        for _ in range(rng.randint(1, 3)):
            when = shift_start + timedelta(minutes=rng.randint(10, 460))
            writer.ehr_row(when, user, rng.choice(("VIEW", "VIEW", "UPDATE", "PRINT")), patient)


def admin_day(writer: Writer, rng: random.Random, day: datetime, admin: dict) -> None:
    if day.weekday() >= 5:
        return
    for _ in range(rng.randint(2, 4)):
        when = day + timedelta(hours=rng.randint(8, 16), minutes=rng.randint(0, 59), seconds=rng.randint(0, 59))
        server = rng.choice(SERVERS)
        pid = writer.next_pid()
        if rng.random() < 0.05:
            writer.sshd(when - timedelta(seconds=5), server,
                        f"Failed password for {admin['name']} from {admin['ip']} port {rng.randint(40000, 60000)} ssh2", pid)
        writer.sshd(when, server, f"Accepted publickey for {admin['name']} from {admin['ip']}"
                    f" port {rng.randint(40000, 60000)} ssh2: ED25519 SHA256:synthetic", pid)
    if day.weekday() in (1, 3):  # Tuesday and Thursday change windows, 18:00-22:00
        when = day + timedelta(hours=rng.randint(18, 20), minutes=rng.randint(0, 59))
        server = rng.choice(SERVERS)
        pid = writer.next_pid()
        writer.sshd(when, server, f"Accepted publickey for {admin['name']} from {admin['ip']}"
                    f" port {rng.randint(40000, 60000)} ssh2: ED25519 SHA256:synthetic", pid)
        writer.sudo(when + timedelta(minutes=3), server, admin["name"], "root", "/usr/bin/apt-get upgrade")
        _logon_windows(writer, when + timedelta(minutes=10), f"adm-{admin['name']}", "ADMIN-WS", logon_type=10,
                       ip=admin["ip"], computer="DC1.hospital.local")
        writer.windows_event(when + timedelta(minutes=10), 4672, "DC1.hospital.local", {
            "SubjectUserName": f"adm-{admin['name']}", "SubjectDomainName": "HOSPITAL",
            "PrivilegeList": "SeBackupPrivilege SeDebugPrivilege",
        })


def contractor_day(writer: Writer, rng: random.Random, day: datetime, contractor: dict) -> None:
    for hour in (9, 13):
        when = day + timedelta(hours=hour, minutes=rng.randint(0, 40))
        writer.sshd(when, "lab-srv2", f"Accepted password for {contractor['name']} from {contractor['ip']}"
                    f" port {rng.randint(40000, 60000)} ssh2", writer.next_pid())


def normal_phase(rng: random.Random, hospital: dict, first_day: int, days: int, writer: Writer) -> None:
    for offset in range(first_day, first_day + days):
        day = START + timedelta(days=offset)
        for user in hospital["clinicians"]:
            clinician_day(writer, rng, day, user, hospital["patients"])
        for admin in hospital["admins"]:
            admin_day(writer, rng, day, admin)
        if offset < 3:
            contractor_day(writer, rng, day, hospital["contractor"])


def attack_phase(rng: random.Random, hospital: dict, day_index: int, writer: Writer) -> list[dict]:
    """Write the planted attacks of one day; return what each should trigger."""
    day = START + timedelta(days=day_index)
    at = day + timedelta(hours=ATTACK_DAY_HOUR)
    clinicians = hospital["clinicians"]
    planted = []

    # Brute force: one source, 40 root passwords in two minutes.
    pid = writer.next_pid()
    for i in range(40):
        writer.sshd(at + timedelta(seconds=3 * i), "ehr-app1",
                    f"Failed password for root from 203.0.113.50 port {50000 + i} ssh2", pid)
    planted.append({"rule": "brute_force_source", "source": "203.0.113.50"})

    # Distributed brute force on one account: four sources, five tries each.
    for s in range(4):
        for i in range(5):
            writer.sshd(at + timedelta(minutes=20, seconds=10 * i + s), "pacs-db1",
                        f"Failed password for svc-backup from 192.0.2.{10 + s} port {41000 + i} ssh2", writer.next_pid())
    planted.append({"rule": "brute_force_account", "user": "svc-backup"})

    # Password spraying: one source, twelve accounts, one try each, 90 s apart.
    for i in range(12):
        name = clinicians[i]["name"]
        writer.sshd(at + timedelta(minutes=40, seconds=90 * i), "ehr-app1",
                    f"Failed password for {name} from 198.51.100.23 port {42000 + i} ssh2", writer.next_pid())
    planted.append({"rule": "password_spray", "source": "198.51.100.23"})

    # Success after failures: eight wrong passwords, then the right one.
    pid = writer.next_pid()
    for i in range(8):
        writer.sshd(at + timedelta(hours=2, seconds=10 * i), "lab-srv2",
                    f"Failed password for tadmin from 203.0.113.77 port {43000 + i} ssh2", pid)
    writer.sshd(at + timedelta(hours=2, seconds=90), "lab-srv2",
                "Accepted password for tadmin from 203.0.113.77 port 43100 ssh2", pid)
    planted.append({"rule": "success_after_failures", "user": "tadmin"})

    # Unusual hour: a day-shift nurse logs on at 03:10 at her own workstation.
    day_nurse = next(c for c in clinicians if c["shift"] == "day" and c["role"] == "nurse")
    _logon_windows(writer, day + timedelta(hours=3, minutes=10), day_nurse["name"], day_nurse["workstations"][0])
    planted.append({"rule": "unusual_hour", "user": day_nurse["name"]})

    # New source: an administrator arrives from an unknown address.
    writer.sshd(at + timedelta(hours=1), "pacs-db1",
                "Accepted publickey for rops from 10.99.1.50 port 45000 ssh2: ED25519 SHA256:synthetic", writer.next_pid())
    planted.append({"rule": "new_source", "user": "rops"})

    # Concurrent sessions: one account on two workstations a minute apart.
    doubled = next(c for c in clinicians if c["shift"] == "day" and c["role"] == "physician")
    _logon_windows(writer, at + timedelta(minutes=5), doubled["name"], doubled["workstations"][0])
    _logon_windows(writer, at + timedelta(minutes=6), doubled["name"], "WS-ONC-77")
    planted.append({"rule": "concurrent_sessions", "user": doubled["name"]})

    # Dormant account: the contractor returns after eight weeks.
    writer.sshd(at + timedelta(hours=3), "lab-srv2",
                f"Accepted password for contractor1 from {hospital['contractor']['ip']} port 46000 ssh2", writer.next_pid())
    planted.append({"rule": "dormant_account", "user": "contractor1"})

    # Privileged use outside the change windows: sudo to root at 03:00.
    writer.sudo(day + timedelta(hours=3), "ehr-app1", "kbackup", "root", "/bin/bash")
    planted.append({"rule": "privileged_outside_window", "user": "kbackup"})

    # EHR: 120 patients in one day, far above the usual 10 to 24.
    snooper = next(c for c in clinicians if c["department"] == "oncology" and c["role"] != "emergency")
    shift_start = day + timedelta(hours=SHIFTS[snooper["shift"]])
    for i, patient in enumerate(hospital["patients"]["oncology"][:120]):
        writer.ehr_row(shift_start + timedelta(minutes=10, seconds=20 * i), snooper, "VIEW", patient)
    planted.append({"rule": "ehr_volume", "user": snooper["name"]})

    # EHR: a cardiology nurse opens six oncology records.
    wanderer = next(c for c in clinicians if c["department"] == "cardiology" and c["role"] == "nurse")
    shift_start = day + timedelta(hours=SHIFTS[wanderer["shift"]])
    for i, patient in enumerate(hospital["patients"]["oncology"][150:156]):
        writer.ehr_row(shift_start + timedelta(minutes=30 + i), wanderer, "VIEW", patient)
    planted.append({"rule": "ehr_out_of_department", "user": wanderer["name"]})

    # EHR: a pediatrics nurse opens the record of a patient with her surname.
    relative = next(c for c in clinicians if c["department"] == "pediatrics")
    shift_start = day + timedelta(hours=SHIFTS[relative["shift"]])
    patient = {"mrn": "MRN900001", "department": "pediatrics", "surname": relative["surname"].upper()}
    writer.ehr_row(shift_start + timedelta(minutes=45), relative, "VIEW", patient)
    planted.append({"rule": "ehr_same_surname", "user": relative["name"]})
    return planted


MAPPING_TOML = """\
# Column mapping of the synthetic EHR audit log (tools/gen_auth_logs.py).
format = "csv"
service = "ehr"

[columns]
time = "AccessTime"
user = "UserID"
role = "Role"
department = "UserDept"
user_surname = "UserLastName"
action = "Action"
patient = "PatientMRN"
patient_department = "PatientDept"
patient_surname = "PatientLastName"
workstation = "Terminal"

[time]
format = "%Y-%m-%d %H:%M:%S"
utc_offset_min = 0

[actions]
logon = ["LOGIN"]
logoff = ["LOGOUT"]
"""


def generate(out: Path, seed: int = 7, train_days: int = 28, test_days: int = 30) -> list[dict]:
    """Write every phase under `out`; return the planted attacks."""
    rng = random.Random(seed)
    hospital = build_hospital(rng)
    out.mkdir(parents=True, exist_ok=True)

    train = Writer()
    normal_phase(rng, hospital, 0, train_days, train)
    train.save(out / "train")
    test = Writer()
    test.pid = train.pid
    normal_phase(rng, hospital, train_days, test_days, test)
    test.save(out / "test")
    attack = Writer()
    attack.pid = test.pid
    planted = attack_phase(rng, hospital, train_days + test_days, attack)
    attack.save(out / "attack")

    (out / "mapping.toml").write_text(MAPPING_TOML, encoding="utf-8")
    windows = ", ".join(json.dumps(w) for w in CHANGE_WINDOWS)
    (out / "config.toml").write_text(f"[logins]\nchange_windows = [{windows}]\n", encoding="utf-8")
    summary = {
        "seed": seed,
        "start": START.isoformat(),
        "train_days": train_days,
        "test_days": test_days,
        "test_start": (START + timedelta(days=train_days)).isoformat(),
        "attack_day": (START + timedelta(days=train_days + test_days)).isoformat(),
        "users": len(hospital["clinicians"]) + 2 * len(hospital["admins"]) + 1,
        "planted": planted,
    }
    (out / "planted.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--train-days", type=int, default=28, help="days of the learning month (default 28)")
    parser.add_argument("--test-days", type=int, default=30, help="days of the normal month checked for alerts (default 30)")
    arguments = parser.parse_args()
    planted = generate(arguments.out, arguments.seed, arguments.train_days, arguments.test_days)
    print(f"wrote {arguments.out}: {len(planted)} planted attacks")


if __name__ == "__main__":
    main()

"""Checkpointed reading into the store: re-runs, rotation, truncation, Windows and EHR readers."""

import json
import logging
import os
from datetime import datetime, timezone

import pytest

from engine.logins import storage
from engine.logins.ehr import ColumnMapping, parse_ehr_audit
from engine.logins.ingest import IngestOptions, detect_format, ingest_file, ingest_records
from engine.logins.records import LoginRecord
from engine.logins.windows import parse_windows_events
from engine.privacy import Pseudonymizer
from engine.store import open_store

KEY = bytes(range(32))


def failed_line(second: int, user: str = "root", source: str = "192.0.2.1") -> bytes:
    return (f"2026-03-01T10:00:{second:02d}Z srv sshd[{100 + second}]: Failed password for {user}"
            f" from {source} port {40000 + second} ssh2\n").encode()


@pytest.fixture
def conn(tmp_path):
    connection = open_store(tmp_path / "store.db")
    storage.ensure_schema(connection)
    yield connection
    connection.close()


def stored_lines(conn) -> list[int]:
    return [row[0] for row in conn.execute("SELECT line_no FROM login_records ORDER BY ts, line_no")]


def test_rerun_reads_only_new_lines(conn, tmp_path):
    log = tmp_path / "auth.log"
    log.write_bytes(failed_line(1) + failed_line(2))
    first = ingest_file(conn, str(log), IngestOptions())
    assert len(first.records) == 2
    again = ingest_file(conn, str(log), IngestOptions())
    assert again.records == []
    assert again.lines == 0
    with open(log, "ab") as handle:
        handle.write(failed_line(3))
    third = ingest_file(conn, str(log), IngestOptions())
    assert [r.line_no for r in third.records] == [3]
    assert stored_lines(conn) == [1, 2, 3]


def test_partial_line_waits_for_newline(conn, tmp_path):
    log = tmp_path / "auth.log"
    line = failed_line(1)
    log.write_bytes(line + line[:20])
    options = IngestOptions(final=False)
    assert len(ingest_file(conn, str(log), options).records) == 1
    with open(log, "ab") as handle:
        handle.write(line[20:])
    second = ingest_file(conn, str(log), options)
    assert [r.line_no for r in second.records] == [2]
    assert second.malformed == 0


def test_rotation_by_rename_is_followed(conn, tmp_path):
    log = tmp_path / "auth.log"
    log.write_bytes(failed_line(1) + failed_line(2))
    assert len(ingest_file(conn, str(log), IngestOptions()).records) == 2
    # Lines written after the last read, then logrotate renames the file
    # and the daemon starts a new one.
    with open(log, "ab") as handle:
        handle.write(failed_line(3))
    os.rename(log, tmp_path / "auth.log.1")
    log.write_bytes(failed_line(4, user="bob"))
    result = ingest_file(conn, str(log), IngestOptions())
    assert result.rotated_from == str(tmp_path / "auth.log.1")
    assert [(r.line_no, r.user) for r in result.records] == [(3, "root"), (1, "bob")]
    # Appending to the new file is read from where the last run stopped.
    with open(log, "ab") as handle:
        handle.write(failed_line(5, user="carol"))
    result = ingest_file(conn, str(log), IngestOptions())
    assert [(r.line_no, r.user) for r in result.records] == [(2, "carol")]
    assert conn.execute("SELECT COUNT(*) FROM login_records").fetchone()[0] == 5
    assert ingest_file(conn, str(log), IngestOptions()).records == []


def test_rotated_file_gone_reads_new_file(conn, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="engine.logins.ingest")
    log = tmp_path / "auth.log"
    log.write_bytes(failed_line(1))
    ingest_file(conn, str(log), IngestOptions())
    os.remove(log)
    log.write_bytes(failed_line(2, user="bob"))
    result = ingest_file(conn, str(log), IngestOptions())
    assert [r.user for r in result.records] == ["bob"]
    # The file system may give the new file the freed inode. Then only the
    # first-line hash distinguishes the two files.
    assert "rotated" in caplog.text or "replaced" in caplog.text


def test_truncated_file_is_read_again(conn, tmp_path):
    log = tmp_path / "auth.log"
    log.write_bytes(failed_line(1) + failed_line(2))
    ingest_file(conn, str(log), IngestOptions())
    # copytruncate: same inode, new content.
    with open(log, "wb") as handle:
        handle.write(failed_line(9, user="dave"))
    result = ingest_file(conn, str(log), IngestOptions())
    assert [r.user for r in result.records] == ["dave"]


def test_malformed_lines_reported_with_numbers(conn, tmp_path):
    log = tmp_path / "auth.log"
    log.write_bytes(failed_line(1) + b"\x00\xffjunk\n" + failed_line(2) + b"Dec 40 00:00:00 bad\n")
    result = ingest_file(conn, str(log), IngestOptions(format="syslog"))
    assert result.malformed == 2
    assert [line for _, line in result.malformed_lines] == [2, 4]
    assert [r.line_no for r in result.records] == [1, 3]


def test_same_line_never_stored_twice(conn, tmp_path):
    log = tmp_path / "auth.log"
    log.write_bytes(failed_line(1))
    ingest_file(conn, str(log), IngestOptions())
    conn.execute("DELETE FROM login_checkpoints")
    again = ingest_file(conn, str(log), IngestOptions())
    assert again.records == []
    assert conn.execute("SELECT COUNT(*) FROM login_records").fetchone()[0] == 1


def test_detect_format():
    assert detect_format(b"Dec 10 06:55:46 LabSZ sshd[1]: x") == "syslog"
    assert detect_format(b'{"winlog": {"event_id": 4624}}') == "windows"
    assert detect_format(b'[{"Id": 4624}]') == "windows"
    assert detect_format(b'{"__REALTIME_TIMESTAMP": "1", "MESSAGE": "x"}') == "journald-json"
    assert detect_format(b"__CURSOR=s=1\n__REALTIME_TIMESTAMP=1\n") == "journald"


WINLOGBEAT_4625 = {
    "@timestamp": "2026-02-03T04:05:06.789Z",
    "winlog": {
        "event_id": 4625,
        "computer_name": "DC1.hospital.local",
        "event_data": {
            "TargetUserName": "jdoe", "TargetDomainName": "HOSPITAL", "LogonType": "3",
            "Status": "0xc000006d", "IpAddress": "::ffff:10.1.2.3", "IpPort": "51234",
            "WorkstationName": "WS-01", "AuthenticationPackageName": "NTLM",
        },
    },
}
# Get-WinEvent | ConvertTo-Json: Properties in event schema order (4624
# version 2: index 5 TargetUserName, 6 TargetDomainName, 8 LogonType,
# 11 WorkstationName, 18 IpAddress, 19 IpPort).
POWERSHELL_4624 = {
    "Id": 4624,
    "TimeCreated": "/Date(1770091506000)/",
    "MachineName": "WS-02.hospital.local",
    "Properties": [{"Value": v} for v in [
        "S-1-5-18", "WS-02$", "HOSPITAL", "0x3e7", "S-1-5-21-1", "asmith", "HOSPITAL", "0x1234",
        10, "User32", "Negotiate", "WS-02", "{0}", "-", "-", 0, "0x1", "C:\\Windows\\winlogon.exe",
        "10.1.2.4", "3389",
    ]],
}


def test_windows_both_shapes():
    data = (json.dumps(WINLOGBEAT_4625) + "\n" + json.dumps(POWERSHELL_4624) + "\n").encode()
    result = parse_windows_events(data, origin="w")
    failure, success = result.records
    assert (failure.outcome, failure.user, failure.domain, failure.src_ip, failure.src_port) == (
        "failure", "jdoe", "HOSPITAL", "10.1.2.3", 51234)
    assert (failure.logon_type, failure.method, failure.src_host, failure.event_id) == (3, "ntlm", "WS-01", 4625)
    assert failure.ts == 1770091506.789
    assert (success.outcome, success.user, success.logon_type, success.src_ip, success.dst_host) == (
        "success", "asmith", 10, "10.1.2.4", "WS-02.hospital.local")
    assert success.ts == 1770091506.0


def test_windows_array_and_kerberos_status():
    events = [
        {"Id": 4768, "TimeCreated": "2026-02-03T04:05:06.1234567+00:00", "MachineName": "DC1",
         "Properties": [{"Value": v} for v in ["bob", "HOSPITAL", "S-1", "krbtgt", "S-2", "0x40810010", "0x6",
                                               "0x12", "2", "::ffff:10.0.0.9", "50000"]]},
        {"Id": 4672, "TimeCreated": "2026-02-03T04:05:07Z", "MachineName": "DC1",
         "Properties": [{"Value": v} for v in ["S-1", "adm-bob", "HOSPITAL", "0x1", "SeDebugPrivilege"]]},
        {"Id": 1102, "TimeCreated": "2026-02-03T04:05:08Z"},
        {"no": "id"},
    ]
    result = parse_windows_events(json.dumps(events, indent=2).encode())
    tgt, privileged = result.records
    assert (tgt.outcome, tgt.action, tgt.user, tgt.src_ip, tgt.method) == (
        "failure", "kerberos_tgt", "bob", "10.0.0.9", "kerberos")
    assert tgt.ts == pytest.approx(1770091506.123456)
    assert (privileged.action, privileged.user, privileged.privileged) == ("privileged_logon", "adm-bob", True)
    assert result.ignored == 1
    assert result.malformed == 1
    assert result.malformed_lines == [4]


def test_windows_malformed_line_numbers():
    data = b'{"winlog": {"event_id": 4624}}\nnot json\n' + json.dumps(WINLOGBEAT_4625).encode() + b"\n"
    result = parse_windows_events(data)
    assert result.malformed_lines == [1, 2]
    assert len(result.records) == 1


MAPPING = """
format = "csv"
service = "epic"
[columns]
time = "When"
user = "Who"
action = "What"
patient = "MRN"
department = "Dept"
patient_department = "PatDept"
user_surname = "UserLast"
patient_surname = "PatLast"
workstation = "Term"
[time]
format = "%d/%m/%Y %H:%M"
utc_offset_min = 60
[actions]
logon = ["SIGNIN"]
"""


def test_ehr_mapping_hashes_patient_data(tmp_path):
    mapping_path = tmp_path / "mapping.toml"
    mapping_path.write_text(MAPPING)
    mapping = ColumnMapping.load(mapping_path)
    data = (
        "When,Who,What,MRN,Dept,PatDept,UserLast,PatLast,Term\n"
        "03/02/2026 10:15,nurse1,View Chart,MRN123,cardiology,oncology,Müller,MÜLLER ,WS-9\n"
        "03/02/2026 10:16,nurse1,SIGNIN,,cardiology,,Müller,,WS-9\n"
        "bad date,nurse1,View Chart,MRN124,cardiology,oncology,Müller,Smith,WS-9\n"
        "too,few,columns\n"
    ).encode()
    pseudonymizer = Pseudonymizer(KEY)
    result = parse_ehr_audit(data, mapping, pseudonymizer, origin="e")
    view, signin = result.records
    assert view.action == "record_view_chart"
    assert view.service == "epic"
    assert view.patient_ref == pseudonymizer.text("MRN123", "patient")
    assert "MRN123" not in json.dumps([r.to_dict() for r in result.records])
    assert "Müller" not in json.dumps([r.to_dict() for r in result.records])
    # Case and spacing differ, the comparison form does not.
    assert view.user_surname_key == view.patient_surname_key
    # 10:15 at UTC+1 is 09:15 UTC.
    assert view.ts == 1770110100.0
    assert (signin.outcome, signin.action, signin.src_host) == ("success", "logon", "WS-9")
    assert result.malformed_lines == [4, 5]


def test_ehr_mapping_errors(tmp_path):
    with pytest.raises(ValueError, match="missing user"):
        ColumnMapping(columns={"action": "a", "patient": "p", "time": "t"})
    with pytest.raises(ValueError, match="unknown column mapping keys"):
        ColumnMapping(columns={"user": "u", "action": "a", "patient": "p", "time": "t", "colour": "c"})
    mapping = ColumnMapping(columns={"user": "u", "action": "a", "patient": "p", "time": "t"})
    with pytest.raises(ValueError, match="header lacks mapped columns"):
        parse_ehr_audit(b"u,a,x\n", mapping, Pseudonymizer(KEY))


def test_ehr_resumes_with_saved_header(conn, tmp_path):
    mapping = ColumnMapping(columns={"user": "u", "action": "a", "patient": "p", "time": "t"}, time_format="epoch")
    options = IngestOptions(format="ehr", mapping=mapping, pseudonymizer=Pseudonymizer(KEY))
    log = tmp_path / "audit.csv"
    log.write_text("t,u,a,p\n1700000000,n1,VIEW,P1\n")
    assert [r.line_no for r in ingest_file(conn, str(log), options).records] == [2]
    with open(log, "a") as handle:
        handle.write("1700000060,n1,VIEW,P2\n")
    result = ingest_file(conn, str(log), options)
    assert [(r.line_no, r.ts) for r in result.records] == [(3, 1700000060.0)]


def test_small_chunks_match_one_read(conn, tmp_path, monkeypatch):
    log = tmp_path / "auth.log"
    lines = b"".join(failed_line(i % 60, user=f"u{i}") for i in range(40))
    long_line = b"x" * 300 + b"\n"
    cut = lines.index(b"\n", 500) + 1
    log.write_bytes(lines[:cut] + long_line + lines[cut:])
    # 256-byte reads split lines across chunks, and one line is longer
    # than a whole chunk.
    monkeypatch.setattr("engine.logins.ingest.CHUNK_BYTES", 256)
    result = ingest_file(conn, str(log), IngestOptions(format="syslog"))
    assert [r.user for r in result.records] == [f"u{i}" for i in range(40)]
    assert result.malformed == 1
    long_line_no = lines[:cut].count(b"\n") + 1
    assert [line for _, line in result.malformed_lines] == [long_line_no]
    assert result.lines == 41


def test_journald_export_file(conn, tmp_path):
    entry = (
        b"__CURSOR=s=1\n__REALTIME_TIMESTAMP=1700000000000000\n_HOSTNAME=web1\nSYSLOG_IDENTIFIER=sshd\n_PID=4\n"
        b"MESSAGE=Accepted publickey for ann from 192.0.2.4 port 5 ssh2\n\n"
    )
    broken = b"__CURSOR=s=2\nMESSAGE=no time\n\n"
    log = tmp_path / "journal.export"
    log.write_bytes(entry + broken + entry.replace(b"ann", b"ben"))
    result = ingest_file(conn, str(log), IngestOptions())
    assert result.format == "journald"
    assert [(r.user, r.line_no, r.source) for r in result.records] == [("ann", 1, "journald"), ("ben", 3, "journald")]
    assert [line for _, line in result.malformed_lines] == [2]
    with open(log, "ab") as handle:
        handle.write(entry.replace(b"ann", b"cat"))
    again = ingest_file(conn, str(log), IngestOptions())
    assert [(r.user, r.line_no) for r in again.records] == [("cat", 4)]


def test_traffic_records_stored(conn):
    records = [
        LoginRecord(ts=1700000000.0, outcome="failure", source="traffic", user="bob", service="ldap",
                    src_ip="10.0.0.5", dst_ip="10.0.0.1", dst_port=389, origin="flow:7", line_no=1, flow_id=7,
                    protocol="ldap"),
        LoginRecord(ts=1700000001.0, outcome="success", source="traffic", user="bob", service="ldap",
                    src_ip="10.0.0.5", origin="flow:7", line_no=2, flow_id=7, protocol="ldap"),
    ]
    stored = ingest_records(conn, records)
    assert [r.id for r in stored] == [1, 2]
    loaded = storage.load_records(conn)
    assert [(r.outcome, r.flow_id, r.dst_port) for r in loaded] == [("failure", 7, 389), ("success", 7, None)]
    assert ingest_records(conn, [LoginRecord(**{**records[0].to_dict(), "id": None})]) == []


@pytest.mark.parametrize("first_line, modified, expected_year", [
    # Written on 10 December, file last modified 5 December: the year before.
    (b"Dec 10 06:55:46", (2026, 12, 5, 1, 40), 2025),
    # Earlier the same month: the modification year.
    (b"Dec  4 06:55:46", (2026, 12, 5, 1, 40), 2026),
    # A log begun in December and last written in January.
    (b"Dec 30 23:00:00", (2027, 1, 5, 0, 0), 2026),
    # Hours after the modification time in UTC, as local time east of UTC reads.
    (b"Dec  5 12:00:00", (2026, 12, 5, 1, 40), 2026),
])
def test_syslog_year_from_modification_time(conn, tmp_path, first_line, modified, expected_year):
    log = tmp_path / "auth.log"
    log.write_bytes(first_line + b" srv sshd[7]: Failed password for root from 192.0.2.1 port 40001 ssh2\n")
    stamp = datetime(*modified, tzinfo=timezone.utc).timestamp()
    os.utime(log, (stamp, stamp))
    [record] = ingest_file(conn, str(log), IngestOptions(format="syslog")).records
    assert datetime.fromtimestamp(record.ts, tz=timezone.utc).year == expected_year

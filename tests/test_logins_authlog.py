"""The compiled auth-log scanner and the journald converters, on hand-made lines."""

import struct
from datetime import datetime, timezone

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.logins.authlog import (
    journald_export_to_lines,
    journald_json_to_lines,
    scan_auth_log,
)
from engine.logins.frame import OUTCOME_FAILURE, OUTCOME_SUCCESS


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def only_record(data: bytes, **kwargs):
    scan = scan_auth_log(data, year=2016, **kwargs)
    records = scan.records(origin="test")
    assert len(records) == 1, records
    return records[0]


def test_failed_password_invalid_user():
    record = only_record(
        b"Dec 10 06:55:48 LabSZ sshd[24200]: Failed password for invalid user webmaster"
        b" from 173.234.31.186 port 38926 ssh2\n"
    )
    assert record.outcome == "failure"
    assert record.user == "webmaster"
    assert record.invalid_user is True
    assert record.src_ip == "173.234.31.186"
    assert record.src_port == 38926
    assert record.method == "password"
    assert record.service == "sshd"
    assert record.dst_host == "LabSZ"
    assert record.ts == epoch("2016-12-10T06:55:48")
    assert record.line_no == 1


def test_accepted_publickey_ipv6():
    record = only_record(
        b"Mar  3 09:00:01 srv sshd[7]: Accepted publickey for alice from 2001:db8::5 port 50000 ssh2: ED25519 SHA256:x\n"
    )
    assert record.outcome == "success"
    assert record.action == "logon"
    assert record.user == "alice"
    assert record.src_ip == "2001:db8::5"
    assert record.method == "publickey"
    assert record.ts == epoch("2016-03-03T09:00:01")


def test_sshd_session_process_name():
    record = only_record(
        b"2025-01-02T03:04:05Z h sshd-session[9]: Failed password for bob from 192.0.2.3 port 22 ssh2\n"
    )
    assert record.outcome == "failure"
    assert record.service == "sshd-session"
    assert only_record(b"2025-01-02T03:04:05Z h sshdx[9]: Failed password for bob from 192.0.2.3 port 22 ssh2\n"
                       b"2025-01-02T03:04:05Z h sshd[9]: Invalid user x from 192.0.2.3\n").action == "invalid_user"


def test_message_repeated_sets_count():
    record = only_record(
        b"Dec 10 07:13:56 LabSZ sshd[24227]: message repeated 5 times:"
        b" [ Failed password for root from 5.36.59.76 port 42393 ssh2]\n"
    )
    assert record.count == 5
    assert record.user == "root"
    assert record.privileged is True
    assert record.src_ip == "5.36.59.76"


def test_pam_failure_with_hostname_rhost():
    record = only_record(
        b"Jun 15 02:04:59 combo sshd(pam_unix)[20882]: authentication failure; logname= uid=0 euid=0"
        b" tty=NODEVssh ruser= rhost=220-135-151-1.hinet-ip.hinet.net  user=root\n"
    )
    assert record.outcome == "failure"
    assert record.user == "root"
    assert record.src_ip is None
    assert record.src_host == "220-135-151-1.hinet-ip.hinet.net"


def test_pam_failure_told_twice_counts_once():
    data = (
        b"Dec 10 07:13:31 LabSZ sshd[24227]: pam_unix(sshd:auth): authentication failure; logname= uid=0"
        b" euid=0 tty=ssh ruser= rhost=5.36.59.76 user=root\n"
        b"Dec 10 07:13:43 LabSZ sshd[24227]: Failed password for root from 5.36.59.76 port 42393 ssh2\n"
        b"Dec 10 07:14:00 LabSZ sshd[24300]: pam_unix(sshd:auth): authentication failure; logname= uid=0"
        b" euid=0 tty=ssh ruser= rhost=5.36.59.76 user=root\n"
    )
    scan = scan_auth_log(data, year=2016)
    records = scan.records()
    # The first PAM line and the Failed line are one attempt. Process 24300
    # wrote no Failed line, so its PAM line is a failure of its own.
    assert [r.line_no for r in records] == [2, 3]
    assert scan.counters["duplicate_pam_failures"] == 1


def test_sessions_and_ignored_cron():
    data = (
        b"Jun 14 15:16:01 combo su(pam_unix)[1]: session opened for user news by (uid=0)\n"
        b"Jun 14 15:16:02 combo su(pam_unix)[1]: session closed for user news\n"
        b"2026-01-02T03:04:05+00:00 h CRON[9]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)\n"
        b"2026-01-02T03:04:06+00:00 h sshd[9]: pam_unix(sshd:session): session opened for user bob(uid=1000) by (uid=0)\n"
    )
    scan = scan_auth_log(data, year=2016)
    records = scan.records()
    assert [(r.outcome, r.action, r.user, r.service) for r in records] == [
        ("success", "session_open", "news", "su"),
        ("logoff", "logoff", "news", "su"),
        ("success", "session_open", "bob", "sshd"),
    ]
    assert scan.counters["ignored_services"] == 1


def test_sudo_command_and_failures():
    data = (
        b"2026-01-02T03:04:05.250000Z web sudo:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/bin/sh\n"
        b"2026-01-02T03:05:00-01:30 web sudo:      bob : 3 incorrect password attempts ; TTY=pts/1 ;"
        b" PWD=/ ; USER=root ; COMMAND=/bin/id\n"
        b"2026-01-02T03:06:00Z web sudo: carol : TTY=pts/2 ; PWD=/ ; USER=postgres ; COMMAND=/bin/psql\n"
    )
    records = scan_auth_log(data).records()
    assert [(r.outcome, r.action, r.user, r.privileged, r.count) for r in records] == [
        ("success", "privilege_use", "alice", True, 1),
        ("failure", "privilege_use", "bob", True, 3),
        ("success", "privilege_use", "carol", False, 1),
    ]
    assert records[0].ts == epoch("2026-01-02T03:04:05.250000")
    # -01:30 is behind UTC: 03:05 local is 04:35 UTC.
    assert records[1].ts == epoch("2026-01-02T04:35:00")


def test_epoch_and_priority_headers():
    data = b"<38>@1700000000.5 host sshd[3]: Invalid user guest from 192.0.2.9 port 22\n"
    record = only_record(data)
    assert record.ts == 1700000000.5
    assert record.outcome == "info"
    assert record.action == "invalid_user"
    assert record.user == "guest"


def test_year_rolls_over_in_january():
    data = (
        b"Dec 31 23:59:59 h sshd[1]: Failed password for a from 192.0.2.1 port 1 ssh2\n"
        b"Jan  1 00:00:01 h sshd[1]: Failed password for a from 192.0.2.1 port 1 ssh2\n"
    )
    scan = scan_auth_log(data, year=2024)
    ts = [r.ts for r in scan.records()]
    assert ts == [epoch("2024-12-31T23:59:59"), epoch("2025-01-01T00:00:01")]
    assert scan.year == 2025


def test_leap_day_timestamp():
    record = only_record(b"2024-02-29T12:00:00Z h sshd[1]: Failed password for a from 192.0.2.1 port 1 ssh2\n")
    assert record.ts == epoch("2024-02-29T12:00:00")


def test_utc_offset_applies_to_bsd_time():
    data = b"Jun  1 12:00:00 h sshd[1]: Failed password for a from 192.0.2.1 port 1 ssh2\n"
    record = scan_auth_log(data, year=2020, utc_offset_s=7200).records()[0]
    assert record.ts == epoch("2020-06-01T10:00:00")


def test_malformed_lines_counted_with_numbers():
    data = (
        b"Dec 10 06:55:48 LabSZ sshd[1]: Failed password for a from 192.0.2.1 port 1 ssh2\n"
        b"garbage without a header\n"
        b"\n"
        b"Dec 99 06:55:48 LabSZ sshd[1]: Failed password for a from 192.0.2.1 port 1 ssh2\n"
        b"Dec 10 06:55:49 LabSZ kernel: eth0 link up\n"
        b"2026-13-01T00:00:00Z h sshd[1]: x\n"
    )
    scan = scan_auth_log(data, year=2016)
    assert scan.counters["lines"] == 6
    assert scan.counters["blank"] == 1
    assert scan.counters["malformed"] == 3
    assert scan.malformed_lines.tolist() == [2, 4, 6]
    assert scan.counters["ignored"] == 1
    assert scan.counters["events"] == 1


def test_malformed_listing_is_bounded():
    data = b"bad\n" * 50
    scan = scan_auth_log(data, max_malformed=10)
    assert scan.counters["malformed"] == 50
    assert scan.malformed_lines.tolist() == list(range(1, 11))


def test_partial_last_line_left_unless_final():
    line = b"Dec 10 06:55:48 LabSZ sshd[1]: Failed password for a from 192.0.2.1 port 1 ssh2"
    data = line + b"\n" + line
    waiting = scan_auth_log(data, year=2016, final=False)
    assert waiting.consumed == len(line) + 1
    assert len(waiting.events) == 1
    finished = scan_auth_log(data, year=2016, final=True)
    assert finished.consumed == len(data)
    assert len(finished.events) == 2


def test_crlf_line_endings():
    record = only_record(b"Dec 10 06:55:48 LabSZ sshd[1]: Invalid user admin from 192.0.2.1\r\n")
    assert record.src_ip == "192.0.2.1"


def test_frame_matches_records():
    data = (
        b"Dec 10 06:55:48 h sshd[1]: Failed password for root from 192.0.2.1 port 1 ssh2\n"
        b"Dec 10 06:55:49 h sshd[1]: message repeated 3 times: [ Failed password for root from 192.0.2.1 port 1 ssh2]\n"
        b"Dec 10 06:56:00 h sshd[2]: Accepted password for bob from 192.0.2.2 port 2 ssh2\n"
    )
    scan = scan_auth_log(data, year=2016)
    frame = scan.frame()
    records = scan.records()
    assert frame.outcome.tolist() == [OUTCOME_FAILURE, OUTCOME_FAILURE, OUTCOME_SUCCESS]
    assert [frame.users[i] for i in frame.user] == [r.user for r in records]
    assert [frame.sources[i] for i in frame.src] == [r.src for r in records]
    assert frame.count.tolist() == [1, 3, 1]
    assert np.allclose(frame.ts, [r.ts for r in records])


def _journal_entry(fields: dict) -> bytes:
    out = b""
    for key, value in fields.items():
        if b"\n" in value:
            out += key + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
        else:
            out += key + b"=" + value + b"\n"
    return out + b"\n"


def test_journald_export_to_lines():
    data = (
        _journal_entry({
            b"__CURSOR": b"s=1", b"__REALTIME_TIMESTAMP": b"1700000000123456", b"_HOSTNAME": b"web1",
            b"SYSLOG_IDENTIFIER": b"sshd", b"_PID": b"77",
            b"MESSAGE": b"Failed password for root from 192.0.2.7 port 4 ssh2",
        })
        + _journal_entry({b"__CURSOR": b"s=2", b"_HOSTNAME": b"web1", b"MESSAGE": b"no time"})
        + _journal_entry({
            b"__REALTIME_TIMESTAMP": b"1700000001000000", b"_HOSTNAME": b"web1", b"SYSLOG_IDENTIFIER": b"sshd",
            b"MESSAGE": b"Accepted password for bob from 192.0.2.8 port 5 ssh2\nsecond line",
        })
    )
    lines, consumed, entries, malformed = journald_export_to_lines(data)
    assert consumed == len(data)
    assert entries == 3
    assert malformed == [2]
    records = scan_auth_log(lines).records()
    assert [(r.ts, r.outcome, r.user, r.src_ip, r.dst_host) for r in records] == [
        (1700000000.123456, "failure", "root", "192.0.2.7", "web1"),
        (1700000001.0, "success", "bob", "192.0.2.8", "web1"),
    ]


def test_journald_export_waits_for_entry_end():
    entry = _journal_entry({b"__REALTIME_TIMESTAMP": b"1700000000000000", b"MESSAGE": b"x"})
    lines, consumed, entries, _ = journald_export_to_lines(entry + entry[:-5], final=False)
    assert consumed == len(entry)
    assert entries == 1


def test_journald_json_to_lines():
    data = (
        b'{"__REALTIME_TIMESTAMP":"1700000000000000","_HOSTNAME":"h","SYSLOG_IDENTIFIER":"sshd",'
        b'"_PID":"5","MESSAGE":"Invalid user x from 192.0.2.1"}\n'
        b"not json\n"
        b'{"__REALTIME_TIMESTAMP":"1700000000000001","SYSLOG_IDENTIFIER":"sshd",'
        b'"MESSAGE":[70,97,105,108,101,100,32,110,111,110,101,32,102,111,114,32,97,32,102,114,111,109,'
        b'32,49,46,50,46,51,46,52,32,112,111,114,116,32,49,32,115,115,104,50]}\n'
    )
    lines, entries, malformed = journald_json_to_lines(data)
    assert entries == 3
    assert malformed == [2]
    records = scan_auth_log(lines).records()
    assert [(r.outcome, r.user, r.src_ip, r.method) for r in records] == [
        ("info", "x", "192.0.2.1", None),
        ("failure", "a", "1.2.3.4", "none"),
    ]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash(data):
    scan = scan_auth_log(data, year=2020)
    counters = scan.counters
    assert counters["lines"] == counters["blank"] + counters["malformed"] + counters["events"] + counters["ignored"]
    assert scan.consumed == len(data)
    for event in scan.events:
        assert event["user_start"] + event["user_len"] <= len(data)
        assert event["src_start"] + event["src_len"] <= len(data)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=120))
def test_every_truncation_of_a_line(cut):
    line = b"Dec 10 06:55:48 LabSZ sshd[24200]: Failed password for invalid user web from 173.234.31.186 port 38926 ssh2"
    scan = scan_auth_log(line[:cut], year=2016)
    assert scan.counters["lines"] == (1 if cut else 0)
    for record in scan.records():
        assert record.user is None or line.decode().find(record.user) > 0

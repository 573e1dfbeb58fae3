"""User names seen in traffic are stored as keyed pseudonyms; alert text for failures without an account."""

import hashlib
import hmac
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.logins.detect import AlertBuilder, DetectionConfig, detect_bruteforce
from engine.logins.frame import LoginFrame
from engine.logins.pipeline import Privacy, is_pseudonym
from engine.logins.records import LoginRecord
from engine.privacy import Pseudonymizer, generate_key_file, load_key_file
from tests.conftest import require_tool

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "engine" / "data" / "sample.pcap"
T0 = 1_760_000_000.0


def user_pseudonym(key: bytes, name: str) -> str:
    # Written out from the definition in engine/privacy.py: HMAC-SHA256 over
    # the domain, a NUL byte and the name, first 20 hex digits.
    return "p-" + hmac.new(key, b"user\x00" + name.encode("utf-8"), hashlib.sha256).hexdigest()[:20]


def tshark_names(display_filter: str, field: str) -> set[str]:
    completed = subprocess.run(
        ["tshark", "-r", str(SAMPLE), "-Y", display_filter, "-T", "fields", "-e", field],
        capture_output=True, text=True, check=True, timeout=120,
    )
    return {name for line in completed.stdout.split() for name in line.split(",") if name}


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    directory = tmp_path_factory.mktemp("privacy")
    key_file = generate_key_file(directory / "user.key")
    store = directory / "ward.db"
    result = CliRunner().invoke(main, ["analyze", "--no-bus", "-q", "--store", str(store),
                                       "--pseudonymize", str(key_file), str(SAMPLE)])
    assert result.exit_code == 0, result.output
    return store, load_key_file(key_file)


def stored_text(store: Path) -> tuple[set[str], set[str]]:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        users = {row[0] for row in conn.execute("SELECT user FROM login_records WHERE user IS NOT NULL")}
        entities = {row[0] for row in conn.execute("SELECT entity FROM login_baselines WHERE entity_kind = 'user'")}
    return users, entities


def test_traffic_users_stored_as_pseudonyms(analysed):
    require_tool("tshark")
    store, key = analysed
    # The account names in the sample: Kerberos client names and FTP USER.
    names = tshark_names("kerberos.CNameString", "kerberos.CNameString")
    names |= tshark_names('ftp.request.command == "USER"', "ftp.request.arg")
    assert len(names) >= 10
    users, entities = stored_text(store)
    assert users == {user_pseudonym(key, name) for name in names}
    assert entities <= users
    assert entities
    assert not (users | entities) & names


def test_traffic_user_alerts_not_hashed_twice(analysed):
    store, key = analysed
    users, _ = stored_text(store)
    from engine.alerts.schema import unpack_alert

    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        bodies = [row[0] for row in conn.execute("SELECT body FROM alerts WHERE kind = 'login'")]
    named = [unpack_alert(body).evidence.get("account_names") for body in bodies]
    named = [names for names in named if names]
    assert named, "the sample's password spraying alert names its accounts"
    for names in named:
        assert set(names) <= users


def test_logins_detect_keeps_stored_pseudonyms(analysed, tmp_path):
    source_store, key = analysed
    store = tmp_path / "copy.db"
    shutil.copyfile(source_store, store)
    users, _ = stored_text(store)
    key_file = tmp_path / "other.key"
    generate_key_file(key_file)
    # A different key must not change names that are pseudonyms already.
    result = CliRunner().invoke(main, ["logins", "detect", "--json", "--store", str(store),
                                       "--pseudonymize", str(key_file)])
    assert result.exit_code == 0, result.output
    alerts = [json.loads(line) for line in result.stdout.splitlines()]
    named = [alert["evidence"]["account_names"] for alert in alerts if alert["evidence"].get("account_names")]
    assert named
    for names in named:
        assert set(names) <= users


def test_is_pseudonym_form():
    pseudonymizer = Pseudonymizer(bytes(range(32)))
    assert is_pseudonym(pseudonymizer.text("a.jabbar", "user"))
    assert not is_pseudonym("a.jabbar")
    assert not is_pseudonym("p-0123")
    assert not is_pseudonym("p-0123456789ABCDEF0123")


def test_privacy_does_not_hash_pseudonym_again():
    privacy = Privacy(Pseudonymizer(bytes(range(32))))
    hidden = privacy.display_user("f.hassan")
    assert hidden != "f.hassan"
    assert privacy.display_user(hidden) == hidden


def failures_without_user(count: int) -> list[LoginRecord]:
    # Failures from one source that name no account, as a refused
    # pre-authentication does.
    return [LoginRecord(ts=T0 + i * 5.0, outcome="failure", source="syslog", user=None, src_ip="192.0.2.7",
                        line_no=i + 1) for i in range(count)]


def test_bruteforce_summary_without_accounts():
    config = DetectionConfig(bruteforce_source_failures=10, bruteforce_window_s=300)
    frame = LoginFrame.from_records(failures_without_user(12))
    alerts = detect_bruteforce(frame, config, AlertBuilder(lambda name: name))
    assert len(alerts) == 1
    assert alerts[0].summary.endswith("brute force from 192.0.2.7: 12 failed logons with no account name logged")
    assert alerts[0].evidence["accounts"] == 0
    assert "0 accounts" not in alerts[0].summary

"""Pseudonymisation of whole alerts: no real address of a capture reaches the store, EVE, CEF or the bus."""

import ipaddress
import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import dpkt
import msgpack
import pytest

from engine.alerts.bus import GapFillingSubscriber
from engine.alerts.outputs import cef_message
from engine.alerts.schema import Alert, Contribution, Endpoint, unpack_alert
from engine.alerts.sink import pseudonymize_alert
from engine.privacy import Pseudonymizer, generate_key_file

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE = REPO_ROOT / "engine" / "data" / "sample.pcap"
KEY = bytes(range(32))


def capture_identifiers(path):
    """Return the IPv4 addresses (IP headers and ARP) and MAC addresses of a capture, read with dpkt."""
    addresses, macs = set(), set()
    with open(path, "rb") as handle:
        for _, frame in dpkt.pcap.Reader(handle):
            ethernet = dpkt.ethernet.Ethernet(frame)
            macs.update({ethernet.src, ethernet.dst})
            if isinstance(ethernet.data, dpkt.ip.IP):
                addresses.update({ethernet.data.src, ethernet.data.dst})
            elif isinstance(ethernet.data, dpkt.arp.ARP):
                addresses.update({ethernet.data.spa, ethernet.data.tpa})
                macs.update({ethernet.data.sha, ethernet.data.tha})
    macs.discard(b"\xff" * 6)
    macs.discard(b"\x00" * 6)
    ip_texts = {str(ipaddress.IPv4Address(raw)) for raw in addresses}
    mac_texts = {":".join(f"{octet:02x}" for octet in raw) for raw in macs}
    return ip_texts, mac_texts


def leaks(text, ip_texts, mac_texts):
    """Return the real addresses and MACs found in `text` as whole tokens."""
    found = []
    for address in ip_texts:
        if re.search(rf"(?<![0-9.]){re.escape(address)}(?![0-9])", text):
            found.append(address)
    lowered = text.lower()
    for mac in mac_texts:
        if mac in lowered or mac.replace(":", "-") in lowered:
            found.append(mac)
    return found


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sample_analysis_leaks_no_address(tmp_path):
    if not SAMPLE.is_file():
        pytest.skip("the shipped sample capture is missing")
    ip_texts, mac_texts = capture_identifiers(SAMPLE)
    assert "10.40.0.11" in ip_texts  # the sample's attacker, a sanity check of the reader
    key_file = generate_key_file(tmp_path / "pseudonymization.key")
    store = tmp_path / "s.db"
    eve = tmp_path / "alerts.eve"
    bus = f"tcp://127.0.0.1:{free_port()}"
    replay = f"tcp://127.0.0.1:{free_port()}"
    code = "import sys; from engine.cli import main; sys.exit(main())"
    analyze = subprocess.Popen(
        [sys.executable, "-c", code, "analyze", str(SAMPLE), "--store", str(store), "--eve", str(eve),
         "--bus", bus, "--replay-bind", replay, "--pseudonymize", str(key_file), "--linger", "30"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    bodies = []
    try:
        # Wait for the store's first publication, then fetch everything
        # through the bus and its replay socket while analyze lingers.
        deadline = time.monotonic() + 120
        while not eve.exists() and time.monotonic() < deadline and analyze.poll() is None:
            time.sleep(0.2)
        subscriber = GapFillingSubscriber([bus], replay=[replay], since=0)
        try:
            while True:
                received = subscriber.receive(timeout_s=8.0)
                if received is None:
                    break
                if received.seq is not None:
                    bodies.append(received.body)
        finally:
            subscriber.close()
    finally:
        analyze.terminate()
        stdout, stderr = analyze.communicate(timeout=60)

    import sqlite3

    with sqlite3.connect(store) as conn:
        stored = [row[0] for row in conn.execute("SELECT body FROM alert_events ORDER BY seq")]
        current = [row for row in conn.execute("SELECT src_ip, dst_ip, summary, body FROM alerts")]
    eve_lines = eve.read_text().splitlines()

    assert len(stored) > 20
    assert len(bodies) == len(stored)
    assert len(eve_lines) == len(stored)
    for body in stored:
        alert = unpack_alert(body)
        text = json.dumps(alert.to_dict())
        assert leaks(text, ip_texts, mac_texts) == [], alert.summary
        # The CEF text is built from the same alert, so it is checked here.
        assert leaks(cef_message(alert), ip_texts, mac_texts) == [], alert.summary
    for row in current:
        assert leaks(json.dumps([row[0], row[1], row[2]]), ip_texts, mac_texts) == []
    for body in bodies:
        text = json.dumps(msgpack.unpackb(body, raw=False), default=repr)
        assert leaks(text, ip_texts, mac_texts) == []
    for line in eve_lines:
        assert leaks(line, ip_texts, mac_texts) == []
    assert leaks(stdout, ip_texts, mac_texts) == []
    assert leaks(stderr, ip_texts, mac_texts) == []


def test_sample_summaries_name_field_pseudonyms(tmp_path):
    if not SAMPLE.is_file():
        pytest.skip("the shipped sample capture is missing")
    key_file = generate_key_file(tmp_path / "pseudonymization.key")
    pseudonymizer = Pseudonymizer.from_key_file(key_file)
    store = tmp_path / "s.db"
    code = "import sys; from engine.cli import main; sys.exit(main())"
    subprocess.run(
        [sys.executable, "-c", code, "analyze", str(SAMPLE), "--store", str(store), "--no-bus", "-q",
         "--pseudonymize", str(key_file)],
        cwd=REPO_ROOT, check=True, capture_output=True, timeout=300,
    )
    import sqlite3

    with sqlite3.connect(store) as conn:
        alerts = [unpack_alert(row[0]) for row in conn.execute("SELECT body FROM alerts")]
    scans = [a for a in alerts if a.evidence.get("origin") == "rule:port_scan"]
    spoofs = [a for a in alerts if a.evidence.get("origin") == "rule:arp_unsolicited_replies"]
    assert len(scans) == 1
    assert len(spoofs) == 1
    # The sample's scanner and target, and the spoofer's MAC and claimed
    # address, per its labels and tshark.
    assert scans[0].src.ip == pseudonymizer.ip("10.40.0.11")
    assert scans[0].summary.startswith(pseudonymizer.ip("10.40.0.11") + " probed")
    assert pseudonymizer.ip("10.10.0.17") in scans[0].summary
    assert spoofs[0].evidence["mac"] == pseudonymizer.mac("c8:f7:50:52:00:01")
    assert spoofs[0].evidence["claimed_address"] == pseudonymizer.ip("10.40.0.1")
    assert spoofs[0].summary.startswith(pseudonymizer.mac("c8:f7:50:52:00:01") + " sent")
    assert pseudonymizer.ip("10.40.0.1") in spoofs[0].summary


@pytest.mark.parametrize("written, address", [
    ("10.1.2.3", "10.1.2.3"),
    ("2001:db8:0:0:0:0:0:7", "2001:db8::7"),
    ("fe80::1", "fe80::1"),
    ("FE80::1", "fe80::1"),
    ("::ffff:10.1.2.3", "::ffff:10.1.2.3"),
    ("fd00:1:2:3:4:5:6:7", "fd00:1:2:3:4:5:6:7"),
])
def test_scrub_replaces_ip_forms(written, address):
    pseudonymizer = Pseudonymizer(KEY)
    pseudonym = pseudonymizer.ip(address)
    assert pseudonymizer.scrub_text(f"from {written} to x") == f"from {pseudonym} to x"
    assert pseudonymizer.scrub_text(f"({written}).") == f"({pseudonym})."


def test_scrub_replaces_address_with_port():
    pseudonymizer = Pseudonymizer(KEY)
    v4 = pseudonymizer.ip("10.1.2.3")
    v6 = pseudonymizer.ip("fe80::1")
    assert pseudonymizer.scrub_text("10.1.2.3:443/tcp") == f"[{v4}]:443/tcp"
    assert pseudonymizer.scrub_text("[fe80::1]:22") == f"[{v6}]:22"
    assert pseudonymizer.scrub_text("[fe80::1%eth0]:22") == f"[{v6}]:22"
    # tcpdump writes address.port
    assert pseudonymizer.scrub_text("10.1.2.3.443 >") == f"{v4}.443 >"


def test_scrub_keeps_url_host_parsable():
    # A URL's host must stay a valid host once it is an IPv6 pseudonym.
    pseudonymizer = Pseudonymizer(KEY)
    v4 = pseudonymizer.ip("203.0.113.217")
    v6 = pseudonymizer.ip("2001:db8::5")
    assert pseudonymizer.scrub_text("jndi:ldap://203.0.113.217/a") == f"jndi:ldap://[{v4}]/a"
    assert pseudonymizer.scrub_text("jndi:ldap://203.0.113.217:1389/a") == f"jndi:ldap://[{v4}]:1389/a"
    assert pseudonymizer.scrub_text("http://[2001:db8::5]/x") == f"http://[{v6}]/x"
    assert urllib.parse.urlsplit(pseudonymizer.scrub_text("ldap://203.0.113.217/a")).hostname == v4


@pytest.mark.parametrize("written", [
    "00:1a:2b:3c:4d:5e", "00-1A-2B-3C-4D-5E", "001a.2b3c.4d5e", "00:1A:2b:3C:4d:5E",
])
def test_scrub_replaces_mac_forms(written):
    pseudonymizer = Pseudonymizer(KEY)
    pseudonym = pseudonymizer.mac("00:1a:2b:3c:4d:5e")
    assert pseudonymizer.scrub_text(f"MAC {written} moved") == f"MAC {pseudonym} moved"


@pytest.mark.parametrize("text", [
    "CVE-2024-6387 in OpenSSH_8.9p1",
    "at 2026-04-20 04:00:00.867442 UTC",
    "version 1.2.3 and build 12:30",
    "deadbeef added to the cafe",
])
def test_scrub_keeps_text_without_addresses(text):
    assert Pseudonymizer(KEY).scrub_text(text) == text


def test_pseudonymize_alert_covers_every_field():
    pseudonymizer = Pseudonymizer(KEY)
    alert = Alert(
        category="spoofing", severity="high",
        summary="aa:bb:cc:00:11:22 claimed 10.0.0.1 for alice",
        recommended_action="Check 10.0.0.9 and the switch port of aa:bb:cc:00:11:22.",
        src=Endpoint(ip="10.0.0.9", mac="aa:bb:cc:00:11:22", user="alice", asset="10.0.0.9"),
        dst=Endpoint(ip="fe80::2", port=22),
        community_id="1:abc=",
        aggregation_key="spoofing|pair|10.0.0.9|fe80::2",
        top_features=[Contribution("bytes_to_10.0.0.1", 1.0, 0.5)],
        evidence={
            "claimed_address": "10.0.0.1",
            "history": [{"mac": "aa:bb:cc:00:11:22", "note": "seen at 10.0.0.1:80"}],
            "10.0.0.7": 3,
            "account_names": ["alice", "bob"],
            "replies": 15,
        },
    )

    original_id = alert.id
    pseudonymize_alert(alert, pseudonymizer)

    mac = pseudonymizer.mac("aa:bb:cc:00:11:22")
    claimed = pseudonymizer.ip("10.0.0.1")
    source = pseudonymizer.ip("10.0.0.9")
    alice = pseudonymizer.text("alice", "user")

    assert alert.summary == f"{mac} claimed {claimed} for {alice}"
    assert alert.recommended_action == f"Check {source} and the switch port of {mac}."
    assert alert.src.ip == source
    assert alert.src.mac == mac
    assert alert.src.user == alice
    assert alert.src.asset == source
    assert alert.dst.ip == pseudonymizer.ip("fe80::2")
    assert alert.dst.port == 22
    assert alert.community_id == pseudonymizer.text("1:abc=", "community_id")
    assert alert.aggregation_key == f"spoofing|pair|{source}|{pseudonymizer.ip('fe80::2')}"
    assert alert.top_features[0].name == f"bytes_to_{claimed}"
    assert alert.evidence["claimed_address"] == claimed
    assert alert.evidence["history"] == [{"mac": mac, "note": f"seen at [{claimed}]:80"}]
    assert alert.evidence[pseudonymizer.ip("10.0.0.7")] == 3
    assert alert.evidence["account_names"] == [alice, pseudonymizer.text("bob", "user")]
    assert alert.evidence["replies"] == 15
    assert alert.id == pseudonymizer.hex_id(original_id, "alert_id")
    assert re.fullmatch(r"[0-9a-f]{32}", alert.id)

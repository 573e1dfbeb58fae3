"""Keyed pseudonymisation: stable per key, different across keys, shape-preserving."""

import hashlib
import hmac
import ipaddress
import os
import stat

import pytest

from engine.privacy import Pseudonymizer, generate_key_file, load_key_file

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


def test_ip_matches_independent_hmac():
    # 2001:db8::/32 prefix followed by the first 96 bits of
    # HMAC-SHA256(key, b"ip" NUL canonical-address).
    digest = hmac.new(KEY_A, b"ip\x0010.1.2.3", hashlib.sha256).digest()
    expected = ipaddress.IPv6Address(bytes.fromhex("20010db8") + digest[:12])
    assert Pseudonymizer(KEY_A).ip("10.1.2.3") == str(expected)


def test_ip_stable_across_instances(tmp_path):
    key_file = generate_key_file(tmp_path / "p.key")
    first = Pseudonymizer.from_key_file(key_file).ip("192.168.7.20")
    second = Pseudonymizer.from_key_file(key_file).ip("192.168.7.20")
    assert first == second


def test_different_key_different_pseudonym():
    assert Pseudonymizer(KEY_A).ip("10.1.2.3") != Pseudonymizer(KEY_B).ip("10.1.2.3")
    assert Pseudonymizer(KEY_A).text("alice") != Pseudonymizer(KEY_B).text("alice")
    assert Pseudonymizer(KEY_A).mac("00:11:22:33:44:55") != Pseudonymizer(KEY_B).mac("00:11:22:33:44:55")


def test_ip_in_documentation_prefix():
    pseudonymizer = Pseudonymizer(KEY_A)
    for address in ("10.0.0.1", "10.0.0.2", "2001:db8::1", "fe80::1"):
        pseudonym = ipaddress.ip_address(pseudonymizer.ip(address))
        assert pseudonym in ipaddress.ip_network("2001:db8::/32")
        assert str(pseudonym) != address


def test_ip_canonical_forms_agree():
    pseudonymizer = Pseudonymizer(KEY_A)
    assert pseudonymizer.ip("2001:0db8:0000::0001") == pseudonymizer.ip("2001:db8::1")


def test_distinct_inputs_distinct_pseudonyms():
    pseudonymizer = Pseudonymizer(KEY_A)
    pseudonyms = {pseudonymizer.ip(f"10.0.{i // 256}.{i % 256}") for i in range(4096)}
    assert len(pseudonyms) == 4096


def test_mac_locally_administered_unicast():
    pseudonym = Pseudonymizer(KEY_A).mac("00:11:22:33:44:55")
    first_octet = int(pseudonym.split(":")[0], 16)
    assert first_octet & 0x02 == 0x02
    assert first_octet & 0x01 == 0
    assert len(pseudonym.split(":")) == 6


def test_domains_separated():
    pseudonymizer = Pseudonymizer(KEY_A)
    assert pseudonymizer.text("alice", "user") != pseudonymizer.text("alice", "community_id")
    assert pseudonymizer.text("alice").startswith("p-")
    assert len(pseudonymizer.text("alice")) == 22


def test_none_passes_through():
    pseudonymizer = Pseudonymizer(KEY_A)
    assert pseudonymizer.ip(None) is None
    assert pseudonymizer.mac(None) is None
    assert pseudonymizer.text(None) is None


def test_key_file_mode_and_no_overwrite(tmp_path):
    path = generate_key_file(tmp_path / "p.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(load_key_file(path)) == 32
    with pytest.raises(FileExistsError):
        generate_key_file(path)


@pytest.mark.parametrize("content, message", [
    ("not hex at all\n", "expected 64 hex digits"),
    ("00ff\n", "expected at least 16"),
])
def test_key_file_malformed(tmp_path, content, message):
    path = tmp_path / "bad.key"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_key_file(path)

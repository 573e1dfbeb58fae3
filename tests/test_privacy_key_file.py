"""Loading the pseudonymization key from files that are not key files."""

import os

import pytest

from engine.privacy import KEY_BYTES, MAX_KEY_FILE_BYTES, generate_key_file, load_key_file


@pytest.mark.parametrize("content", [
    b"\xf9\x01binary",  # not ASCII
    b"zz" * KEY_BYTES,  # ASCII but not hex
    b"ab" * (MAX_KEY_FILE_BYTES // 2 + 1),  # hex, but longer than any key file
])
def test_key_file_invalid_content(content, tmp_path):
    path = tmp_path / "pseudonymization.key"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="invalid pseudonymization key file"):
        load_key_file(path)


def test_key_file_from_device():
    if not os.path.exists("/dev/zero"):
        pytest.skip("/dev/zero is not present")
    with pytest.raises(ValueError, match="invalid pseudonymization key file /dev/zero"):
        load_key_file("/dev/zero")


def test_generated_key_file_loads(tmp_path):
    path = generate_key_file(tmp_path / "pseudonymization.key")
    key = load_key_file(path)
    assert len(key) == KEY_BYTES
    assert path.read_text() == key.hex() + "\n"

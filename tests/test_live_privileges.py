"""Privilege drop: only CAP_NET_RAW survives, checked in a forked child against /proc and real calls."""

import json
import os
import socket

import pytest

from conftest import require_root
from engine.live import privileges

CAP_NET_RAW_MASK = 1 << 13


def run_in_child(function):
    """Run `function` in a forked child; return the JSON-able value it returns."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reader)
        try:
            result = {"value": function()}
        except BaseException as error:  # reported to the parent
            result = {"error": f"{type(error).__name__}: {error}"}
        os.write(writer, json.dumps(result).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as stream:
        output = stream.read()
    os.waitpid(pid, 0)
    return json.loads(output)


def process_status():
    fields = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return fields


def test_drop_keeps_only_net_raw(tmp_path):
    require_root()
    target = tmp_path / "owned"
    target.write_text("x")

    def child():
        privileges.drop_privileges()
        status = process_status()
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        raw.close()
        try:
            os.chown(target, 12345, -1)
            chown = "allowed"
        except PermissionError:
            chown = "denied"
        return {
            "effective": int(status["CapEff"], 16),
            "permitted": int(status["CapPrm"], 16),
            "bounding": int(status["CapBnd"], 16),
            "ambient": int(status["CapAmb"], 16),
            "no_new_privs": status["NoNewPrivs"],
            "chown": chown,
            "read_back": list(privileges.read_capabilities()),
        }

    result = run_in_child(child)
    assert "error" not in result, result
    value = result["value"]
    assert value["effective"] == CAP_NET_RAW_MASK
    assert value["permitted"] == CAP_NET_RAW_MASK
    assert value["bounding"] == CAP_NET_RAW_MASK
    assert value["ambient"] == 0
    assert value["no_new_privs"] == "1"
    assert value["chown"] == "denied"
    assert value["read_back"] == [CAP_NET_RAW_MASK, CAP_NET_RAW_MASK, 0]


def test_drop_with_user_switch():
    require_root()
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")

    def child():
        privileges.drop_privileges(user="nobody")
        status = process_status()
        return {"uid": os.getuid(), "gid": os.getgid(), "effective": int(status["CapEff"], 16)}

    result = run_in_child(child)
    assert "error" not in result, result
    assert result["value"]["uid"] == nobody.pw_uid
    assert result["value"]["gid"] == nobody.pw_gid
    assert result["value"]["effective"] == CAP_NET_RAW_MASK


def test_unknown_user_rejected():
    require_root()

    def child():
        privileges.drop_privileges(user="wardwatch-no-such-user")

    result = run_in_child(child)
    assert "user 'wardwatch-no-such-user' not found" in result["error"]


def test_drop_without_net_raw_fails():
    require_root()

    def child():
        privileges._set_capabilities(0)
        privileges.drop_privileges()

    result = run_in_child(child)
    assert "lacks CAP_NET_RAW" in result["error"]

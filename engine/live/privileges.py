"""Drop every privilege except CAP_NET_RAW once the capture sockets are open.

Linux only. The calls are prctl(2), capset(2) and the set*id family,
through the C library with ctypes. After drop_privileges() the process,
and every process it forks, has CAP_NET_RAW in its permitted and
effective sets and no other capability. The bounding set is cut to
CAP_NET_RAW too when the process has CAP_SETPCAP to do so. The ambient
set is empty, and no_new_privs stops set-user-id programs from giving
privileges back.
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd

log = logging.getLogger(__name__)

# From <linux/prctl.h> and <linux/capability.h>.
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_SETPCAP = 8
CAP_NET_RAW = 13
CAP_LAST_CAP_PATH = "/proc/sys/kernel/cap_last_cap"


class PrivilegeError(OSError):
    """A privilege change that the kernel rejected."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, action: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise PrivilegeError(code, f"{action} failed: {os.strerror(code)}")


def _prctl(option: int, argument: int, action: str) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(argument), ctypes.c_ulong(0), ctypes.c_ulong(0),
                       ctypes.c_ulong(0)), action)


def read_capabilities() -> tuple[int, int, int]:
    """Return the (effective, permitted, inheritable) capability masks of this process."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    combine = lambda name: getattr(data[0], name) | (getattr(data[1], name) << 32)  # noqa: E731
    return combine("effective"), combine("permitted"), combine("inheritable")


def _set_capabilities(mask: int) -> None:
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for index in range(2):
        part = (mask >> (32 * index)) & 0xFFFFFFFF
        data[index].effective = part
        data[index].permitted = part
        data[index].inheritable = 0
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def _last_capability() -> int:
    with open(CAP_LAST_CAP_PATH, encoding="ascii") as handle:
        return int(handle.read())


def _switch_user(user: str | None, group: str | None) -> None:
    try:
        account = pwd.getpwnam(user) if user else None
    except KeyError:
        raise PrivilegeError(0, f"user {user!r} not found; create it or pass another --user") from None
    gid = account.pw_gid if account else None
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(0, f"group {group!r} not found; create it or pass another --group") from None
    # Keep the permitted set across the change of user id; the effective
    # set is cleared by it and set again by the caller.
    _prctl(PR_SET_KEEPCAPS, 1, "prctl(PR_SET_KEEPCAPS)")
    if gid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
    if account is not None:
        os.setresuid(account.pw_uid, account.pw_uid, account.pw_uid)
    _prctl(PR_SET_KEEPCAPS, 0, "prctl(PR_SET_KEEPCAPS)")


def set_parent_death_signal(signum: int) -> None:
    """Ask the kernel to send `signum` to this process when its parent exits."""
    _prctl(PR_SET_PDEATHSIG, signum, "prctl(PR_SET_PDEATHSIG)")


def drop_privileges(user: str | None = None, group: str | None = None) -> None:
    """Keep only CAP_NET_RAW, optionally after switching to `user` and `group`.

    Raises PrivilegeError when the process lacks CAP_NET_RAW to begin with
    or the kernel rejects a step.
    """
    _effective, permitted, _inheritable = read_capabilities()
    keep = 1 << CAP_NET_RAW
    if not permitted & keep:
        raise PrivilegeError(0, "the process lacks CAP_NET_RAW; run as root or grant CAP_NET_RAW")
    last_capability = _last_capability()
    if user or group:
        _switch_user(user, group)
        # A new user id clears the effective set; the bounding set drop
        # below needs CAP_SETPCAP effective again.
        _set_capabilities(permitted)

    # The bounding set can only shrink while CAP_SETPCAP is effective, so it
    # goes before the capability sets.
    if permitted & (1 << CAP_SETPCAP):
        for capability in range(last_capability + 1):
            if capability != CAP_NET_RAW:
                _prctl(PR_CAPBSET_DROP, capability, f"prctl(PR_CAPBSET_DROP, {capability})")
    else:
        log.info("no CAP_SETPCAP: the capability bounding set stays as it is")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    _set_capabilities(keep)
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")
    log.info("dropped privileges: uid %d gid %d, capabilities CAP_NET_RAW only", os.getuid(), os.getgid())

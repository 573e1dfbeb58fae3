"""Compile tcpdump filter expressions ("not port 22") to classic BPF programs.

A program is a list of (code, jt, jf, k) instructions, the layout of
struct sock_filter that SO_ATTACH_FILTER takes. libpcap compiles it when
its shared library loads through ctypes; otherwise `tcpdump -ddd` prints
the same program as text. Both compile for a "dead" Ethernet handle, so
the program reads the frame as it sits in memory.

NOTE: the kernel removes the outermost VLAN tag before the socket filter
runs, and a program compiled for a dead handle looks for the tag inside
the frame. A filter on `vlan` therefore never matches the outer tag, and
`not port 22` does not look inside VLAN-tagged frames. Filter on VLAN
traffic in the analysis, not in the capture filter.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import shutil
import subprocess

# libpcap's DLT_EN10MB, the link type the program is compiled for.
DLT_EN10MB = 1
# pcap_compile's netmask when it is not known; only `ip broadcast` needs it.
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
# The kernel rejects programs longer than BPF_MAXINSNS (linux/bpf_common.h).
BPF_MAXINSNS = 4096
TCPDUMP_TIMEOUT_S = 10.0

Instruction = tuple[int, int, int, int]


class FilterError(ValueError):
    """A filter expression that does not compile, with the compiler's message."""


class _BpfInsn(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


@functools.lru_cache(maxsize=1)
def _libpcap():
    name = ctypes.util.find_library("pcap")
    if name is None:
        return None
    try:
        library = ctypes.CDLL(name)
    except OSError:
        return None
    library.pcap_open_dead.restype = ctypes.c_void_p
    library.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    library.pcap_compile.restype = ctypes.c_int
    library.pcap_compile.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32,
    ]
    library.pcap_geterr.restype = ctypes.c_char_p
    library.pcap_geterr.argtypes = [ctypes.c_void_p]
    library.pcap_freecode.restype = None
    library.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    library.pcap_close.restype = None
    library.pcap_close.argtypes = [ctypes.c_void_p]
    return library


def compile_with_libpcap(expression: str, snaplen: int) -> list[Instruction]:
    """Compile `expression` with libpcap's pcap_compile; raise FilterError if it is invalid."""
    library = _libpcap()
    if library is None:
        raise FileNotFoundError("libpcap shared library not found (install libpcap0.8 or the equivalent)")
    handle = library.pcap_open_dead(DLT_EN10MB, snaplen)
    if not handle:
        raise MemoryError("pcap_open_dead returned NULL")
    program = _BpfProgram()
    try:
        if library.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, PCAP_NETMASK_UNKNOWN) != 0:
            message = library.pcap_geterr(handle).decode(errors="replace")
            raise FilterError(f"invalid capture filter {expression!r}: {message}")
        try:
            return [
                (int(program.bf_insns[i].code), int(program.bf_insns[i].jt),
                 int(program.bf_insns[i].jf), int(program.bf_insns[i].k))
                for i in range(program.bf_len)
            ]
        finally:
            library.pcap_freecode(ctypes.byref(program))
    finally:
        library.pcap_close(handle)


def parse_ddd(text: str) -> list[Instruction]:
    """Parse `tcpdump -ddd` output: an instruction count, then one "code jt jf k" line each."""
    lines = [line.split() for line in text.strip().splitlines()]
    if not lines or len(lines[0]) != 1:
        raise FilterError(f"invalid tcpdump -ddd output: expected an instruction count first, got {text[:80]!r}")
    try:
        count = int(lines[0][0])
        program = [tuple(int(field) for field in line) for line in lines[1:]]
    except ValueError as error:
        raise FilterError(f"invalid tcpdump -ddd output: {error}") from None
    if count != len(program) or any(len(row) != 4 for row in program):
        raise FilterError(
            f"invalid tcpdump -ddd output: count {count} but {len(program)} instructions, "
            "or a row without four numbers"
        )
    return program  # type: ignore[return-value]


def compile_with_tcpdump(expression: str, snaplen: int) -> list[Instruction]:
    """Compile `expression` by running `tcpdump -ddd` for an Ethernet link."""
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        raise FileNotFoundError("tcpdump not found on PATH")
    result = subprocess.run(
        [tcpdump, "-y", "EN10MB", "-s", str(snaplen), "-ddd", expression],
        capture_output=True, text=True, timeout=TCPDUMP_TIMEOUT_S, check=False,
    )
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit code {result.returncode}"
        raise FilterError(f"invalid capture filter {expression!r}: {message}")
    return parse_ddd(result.stdout)


def compile_filter(expression: str, snaplen: int = 65535) -> list[Instruction]:
    """Compile a tcpdump filter expression to a BPF program for an Ethernet interface.

    Uses libpcap when its library loads, else tcpdump. Raises FilterError
    for an invalid expression or an over-long program, and RuntimeError
    when neither compiler is installed.
    """
    if not expression.strip():
        raise FilterError("empty capture filter; leave --filter out to capture every packet")
    try:
        program = compile_with_libpcap(expression, snaplen)
    except FileNotFoundError:
        try:
            program = compile_with_tcpdump(expression, snaplen)
        except FileNotFoundError:
            raise RuntimeError(
                "cannot compile the capture filter: neither libpcap nor tcpdump is installed"
            ) from None
    if len(program) > BPF_MAXINSNS:
        raise FilterError(
            f"capture filter {expression!r} compiles to {len(program)} instructions, "
            f"above the kernel limit of {BPF_MAXINSNS}; simplify the expression"
        )
    return program

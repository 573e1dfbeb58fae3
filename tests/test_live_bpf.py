"""Capture filter compilation: libpcap and tcpdump give the same program; errors are clear."""

import pytest

from conftest import require_tool
from engine.capture import bpf


def test_libpcap_matches_tcpdump():
    require_tool("tcpdump")
    if bpf._libpcap() is None:
        pytest.skip("libpcap shared library not found")
    for expression in ("not port 22", "tcp and host 10.0.0.1", "udp dst port 53", "arp or icmp6"):
        assert bpf.compile_with_libpcap(expression, 65535) == bpf.compile_with_tcpdump(expression, 65535)


def test_program_rows_are_sock_filter_fields():
    program = bpf.compile_filter("not port 22")
    # The first instruction of an Ethernet filter loads the EtherType:
    # BPF_LD | BPF_H | BPF_ABS (0x28) at offset 12.
    assert program[0] == (0x28, 0, 0, 12)
    # Every path ends in BPF_RET | BPF_K (0x06): 0 drops, non-zero keeps.
    returns = [row for row in program if row[0] == 0x06]
    assert {row[3] for row in returns} == {0, 65535}


def test_parse_ddd_reads_count_and_rows():
    # `tcpdump -ddd ip`: count, ldh [12], jeq #0x800, ret #65535, ret #0.
    text = "4\n40 0 0 12\n21 0 1 2048\n6 0 0 65535\n6 0 0 0\n"
    assert bpf.parse_ddd(text) == [(40, 0, 0, 12), (21, 0, 1, 2048), (6, 0, 0, 65535), (6, 0, 0, 0)]


def test_parse_ddd_rejects_wrong_count():
    with pytest.raises(bpf.FilterError, match="count 3 but 2 instructions"):
        bpf.parse_ddd("3\n40 0 0 12\n6 0 0 0\n")


def test_parse_ddd_rejects_text():
    with pytest.raises(bpf.FilterError, match="instruction count"):
        bpf.parse_ddd("tcpdump: syntax error\n")


def test_invalid_expression_names_it():
    with pytest.raises(bpf.FilterError, match="'not portx 22'"):
        bpf.compile_filter("not portx 22")


def test_tcpdump_invalid_expression():
    require_tool("tcpdump")
    with pytest.raises(bpf.FilterError, match="syntax error"):
        bpf.compile_with_tcpdump("host", 65535)


def test_empty_expression_rejected():
    with pytest.raises(bpf.FilterError, match="empty capture filter"):
        bpf.compile_filter("  ")

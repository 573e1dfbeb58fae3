"""Capture reader on hand-built pcap and pcapng files.

Every file here is written with struct.pack, one field per argument, so the
expected values come from the bytes themselves and not from the reader.
"""

import gzip
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.capture import ANOMALY_NAMES, CaptureError, open_capture
from engine.capture import files as capture_files

NS = 1_000_000_000
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113

# --- classic pcap builders ---


def pcap_header(order="<", magic=0xA1B2C3D4, minor=4, snaplen=65535, link_type=LINKTYPE_ETHERNET):
    return struct.pack(
        order + "IHHiIII",
        magic,  # written in the file's byte order, so it also marks that order
        2,  # version major
        minor,  # version minor
        0,  # thiszone: GMT offset, always 0 in practice
        0,  # sigfigs
        snaplen,
        link_type,
    )


def pcap_record(order, sec, frac, data, wirelen=None, caplen=None):
    return (
        struct.pack(
            order + "IIII",
            sec,  # ts_sec
            frac,  # ts_usec or ts_nsec, by the file magic
            len(data) if caplen is None else caplen,  # incl_len (caplen)
            len(data) if wirelen is None else wirelen,  # orig_len (wirelen)
        )
        + data
    )


# --- pcapng builders ---


def pad4(data):
    return data + b"\0" * (-len(data) % 4)


def block(order, block_type, body, trailer=None):
    body = pad4(body)
    length = 12 + len(body)
    return (
        struct.pack(order + "II", block_type, length)
        + body
        + struct.pack(order + "I", length if trailer is None else trailer)
    )


def option(order, code, value):
    return struct.pack(order + "HH", code, len(value)) + pad4(value)


def end_of_options(order):
    return struct.pack(order + "HH", 0, 0)


def section_header(order, major=1, magic=0x1A2B3C4D):
    body = struct.pack(
        order + "IHHq",
        magic,  # byte-order magic
        major,  # version major
        0,  # version minor
        -1,  # section length: not given
    )
    return block(order, 0x0A0D0D0A, body)


def interface_description(order, link_type, snaplen, options=b""):
    body = struct.pack(
        order + "HHI",
        link_type,
        0,  # reserved
        snaplen,
    )
    if options:
        body += options + end_of_options(order)
    return block(order, 1, body)


def enhanced_packet(order, interface_id, ts_units, data, wirelen=None, caplen=None, trailer=None):
    body = struct.pack(
        order + "IIIII",
        interface_id,
        ts_units >> 32,  # timestamp, upper 32 bits
        ts_units & 0xFFFFFFFF,  # timestamp, lower 32 bits
        len(data) if caplen is None else caplen,  # captured packet length
        len(data) if wirelen is None else wirelen,  # original packet length
    )
    return block(order, 6, body + data, trailer)


def simple_packet(order, data, wirelen=None):
    body = struct.pack(order + "I", len(data) if wirelen is None else wirelen)  # original length
    return block(order, 3, body + data)


def obsolete_packet(order, interface_id, ts_units, data):
    body = struct.pack(
        order + "HHIIII",
        interface_id,
        0,  # drops count
        ts_units >> 32,
        ts_units & 0xFFFFFFFF,
        len(data),  # captured length
        len(data),  # packet length
    )
    return block(order, 2, body + data)


# --- helpers ---


def write(tmp_path, content, name="capture.bin"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def read_all(path, batch_size=4):
    with open_capture(path, batch_size=batch_size) as reader:
        batches = list(reader)
        stats = reader.stats
        interfaces = reader.interfaces
        file_format = reader.format
    packets = [
        (batch.packets[i], bytes(batch.data[batch.packets[i]["data_offset"] :][: batch.packets[i]["caplen"]]))
        for batch in batches
        for i in range(batch.count)
    ]
    return packets, stats, interfaces, file_format


def anomalies(stats):
    return {name: stats[name] for name in ANOMALY_NAMES if stats[name]}


PAYLOADS = [b"\x01" * 60, bytes(range(42)), b"\xff\xee" * 33]


# --- classic pcap ---


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_pcap_byte_orders_and_magics(tmp_path, order, nanosecond):
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    fractions = [999_999, 0, 123_456]
    content = pcap_header(order, magic, link_type=LINKTYPE_LINUX_SLL)
    for i, payload in enumerate(PAYLOADS):
        content += pcap_record(order, 1_700_000_000 + i, fractions[i], payload, wirelen=len(payload) + 10)
    packets, stats, interfaces, file_format = read_all(write(tmp_path, content))

    assert file_format == ("pcap-ns" if nanosecond else "pcap")
    assert len(packets) == 3
    unit_ns = 1 if nanosecond else 1000
    for i, (record, data) in enumerate(packets):
        assert record["ts_ns"] == (1_700_000_000 + i) * NS + fractions[i] * unit_ns
        assert record["caplen"] == len(PAYLOADS[i])
        assert record["wirelen"] == len(PAYLOADS[i]) + 10
        assert record["link_type"] == LINKTYPE_LINUX_SLL
        assert record["iface_id"] == 0
        assert record["record_index"] == i
        assert data == PAYLOADS[i]
    assert stats["packets"] == 3
    assert stats["bytes"] == sum(len(p) for p in PAYLOADS)
    assert anomalies(stats) == {}
    assert interfaces[0]["link_type"] == LINKTYPE_LINUX_SLL
    assert interfaces[0]["snaplen"] == 65535
    assert interfaces[0]["ts_resolution_ns"] == unit_ns


def test_pcap_decode_fields_zeroed(tmp_path):
    content = pcap_header() + pcap_record("<", 5, 6, PAYLOADS[0])
    packets, _, _, _ = read_all(write(tmp_path, content))
    record = packets[0][0]
    capture_fields = {"ts_ns", "data_offset", "caplen", "wirelen", "link_type", "iface_id", "record_index"}

    assert record["direction"] == 0xFF  # WW_DIRECTION_UNSET
    for name in record.dtype.names:
        if name not in capture_fields and name != "direction":
            assert not np.any(record[name]), name


def test_pcap_header_only_has_no_packets(tmp_path):
    packets, stats, interfaces, _ = read_all(write(tmp_path, pcap_header(snaplen=2000)))
    assert packets == []
    assert stats["packets"] == 0
    assert anomalies(stats) == {}
    assert interfaces[0]["snaplen"] == 2000


def test_pcap_anomalies_keep_packet(tmp_path):
    content = pcap_header(snaplen=64)
    content += pcap_record("<", 1, 0, b"a" * 100)  # caplen 100 above snaplen 64
    content += pcap_record("<", 2, 0, b"b" * 20, wirelen=10)  # caplen above wirelen
    content += pcap_record("<", 3, 1_000_000, b"c" * 8)  # microseconds field out of range
    packets, stats, _, _ = read_all(write(tmp_path, content))

    assert [record["caplen"] for record, _ in packets] == [100, 20, 8]
    assert anomalies(stats) == {
        "caplen_exceeds_snaplen": 1,
        "caplen_exceeds_wirelen": 1,
        "invalid_timestamp": 1,
    }
    # The out-of-range fraction carries into the seconds, as tshark shows it.
    assert packets[2][0]["ts_ns"] == 4 * NS


def test_pcap_version_2_2_swaps_lengths(tmp_path):
    # Before format 2.3, the record stored wirelen before caplen.
    content = pcap_header(minor=2)
    content += struct.pack("<IIII", 1, 0, 1500, 40) + b"x" * 40
    packets, stats, _, _ = read_all(write(tmp_path, content))
    assert packets[0][0]["caplen"] == 40
    assert packets[0][0]["wirelen"] == 1500
    assert anomalies(stats) == {}


def test_pcap_caplen_limit_stops_with_offset(tmp_path):
    first = pcap_record("<", 1, 0, PAYLOADS[0])
    content = pcap_header() + first + struct.pack("<IIII", 2, 0, 300_000, 300_000) + b"z" * 64
    delivered = []
    with open_capture(write(tmp_path, content)) as reader:
        with pytest.raises(CaptureError) as raised:
            for batch in reader:
                delivered.append(batch.count)
    assert delivered == [1]
    assert raised.value.offset == 24 + len(first)
    assert f"byte offset {24 + len(first)}" in str(raised.value)
    assert "caplen 300000" in str(raised.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "empty"),
        (b"GARBAGE!" * 8, "not a pcap or pcapng file: magic 0x47415242 at offset 0"),  # "GARB"
        (b"\xd4\xc3\xb2\xa1\x02\x00", "header cut short"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 3, 0, 0, 0, 65535, 1), "unsupported pcap version 3.0"),
    ],
)
def test_unreadable_files_raise(tmp_path, content, expected):
    with pytest.raises(CaptureError) as raised:
        open_capture(write(tmp_path, content))
    assert expected in str(raised.value)


def test_missing_file_raises(tmp_path):
    with pytest.raises(CaptureError, match="not found"):
        open_capture(tmp_path / "absent.pcap")


@pytest.mark.parametrize("batch_size", [0, -1, 1 << 21])
def test_batch_size_out_of_range(tmp_path, batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        open_capture(write(tmp_path, pcap_header()), batch_size=batch_size)


# --- pcapng ---


def test_pcapng_two_sections_byte_orders(tmp_path):
    content = section_header("<")
    content += interface_description("<", LINKTYPE_ETHERNET, 1514)
    content += enhanced_packet("<", 0, 1_600_000_000_123_456, PAYLOADS[0])  # microseconds by default
    content += section_header(">")
    content += interface_description(">", LINKTYPE_RAW, 0)
    content += enhanced_packet(">", 0, 1_600_000_001_000_000, PAYLOADS[1])
    packets, stats, interfaces, file_format = read_all(write(tmp_path, content))

    assert file_format == "pcapng"
    assert [record["ts_ns"] for record, _ in packets] == [
        1_600_000_000_123_456_000,
        1_600_000_001_000_000_000,
    ]
    assert [record["link_type"] for record, _ in packets] == [LINKTYPE_ETHERNET, LINKTYPE_RAW]
    # iface_id indexes the interfaces of all sections, in file order.
    assert [record["iface_id"] for record, _ in packets] == [0, 1]
    assert [data for _, data in packets] == PAYLOADS[:2]
    assert [(i["section"], i["interface_id"], i["link_type"]) for i in interfaces] == [
        (0, 0, LINKTYPE_ETHERNET),
        (1, 0, LINKTYPE_RAW),
    ]
    assert anomalies(stats) == {}


def test_pcapng_interfaces_with_tsresol(tmp_path):
    order = "<"
    content = section_header(order)
    content += interface_description(order, LINKTYPE_ETHERNET, 65535, option(order, 9, b"\x03"))  # ms
    content += interface_description(order, LINKTYPE_NULL, 65535, option(order, 9, b"\x8a"))  # 2^-10 s
    content += interface_description(
        order,
        LINKTYPE_LINUX_SLL,
        65535,
        option(order, 2, b"eth1") + option(order, 9, b"\x09") + option(order, 14, struct.pack("<q", 100)),
    )  # ns, with if_tsoffset 100 s
    content += enhanced_packet(order, 0, 1234, PAYLOADS[0])  # 1.234 s
    content += enhanced_packet(order, 1, 5 * 1024 + 512, PAYLOADS[1])  # 5.5 s
    content += enhanced_packet(order, 2, 7, PAYLOADS[2])  # 7 ns + 100 s
    content += obsolete_packet(order, 1, 3 * 1024, PAYLOADS[0])  # 3 s
    packets, stats, interfaces, _ = read_all(write(tmp_path, content))

    assert [record["ts_ns"] for record, _ in packets] == [1_234_000_000, 5_500_000_000, 100 * NS + 7, 3 * NS]
    assert [record["link_type"] for record, _ in packets] == [
        LINKTYPE_ETHERNET,
        LINKTYPE_NULL,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_NULL,
    ]
    assert [record["iface_id"] for record, _ in packets] == [0, 1, 2, 1]
    assert [interface["ts_resolution_ns"] for interface in interfaces] == [1e6, 1e9 / 1024, 1.0]
    assert interfaces[2]["name"] == "eth1"
    assert interfaces[2]["ts_offset_s"] == 100
    assert anomalies(stats) == {}


def test_pcapng_simple_packet_block(tmp_path):
    order = ">"
    content = section_header(order) + interface_description(order, LINKTYPE_ETHERNET, 50)
    content += simple_packet(order, b"s" * 40)
    content += simple_packet(order, b"t" * 50, wirelen=80)  # cut to the 50-byte snaplen
    packets, stats, _, _ = read_all(write(tmp_path, content))

    assert [(record["caplen"], record["wirelen"]) for record, _ in packets] == [(40, 40), (50, 80)]
    assert [record["ts_ns"] for record, _ in packets] == [0, 0]  # an SPB has no timestamp
    assert [data for _, data in packets] == [b"s" * 40, b"t" * 50]
    assert anomalies(stats) == {}


def test_pcapng_unknown_block_skipped(tmp_path):
    order = "<"
    content = section_header(order) + interface_description(order, LINKTYPE_ETHERNET, 0)
    content += block(order, 0x12345678, b"opaque body")
    content += block(order, 5, b"\0" * 16)  # Interface Statistics: known, ignored
    content += enhanced_packet(order, 0, 1, PAYLOADS[0])
    packets, stats, _, _ = read_all(write(tmp_path, content))
    assert len(packets) == 1
    assert anomalies(stats) == {"unknown_block": 1}


def test_pcapng_record_anomalies(tmp_path):
    order = "<"
    content = section_header(order) + interface_description(order, LINKTYPE_ETHERNET, 0)
    content += enhanced_packet(order, 0, 1, PAYLOADS[0], trailer=999)  # trailer disagrees: kept
    content += enhanced_packet(order, 0, 2, b"x" * 8, caplen=64)  # caplen past the block: skipped
    content += enhanced_packet(order, 4, 3, PAYLOADS[1])  # no interface 4: skipped
    content += interface_description(order, LINKTYPE_ETHERNET, 0, option(order, 9, b"\x09\x09"))
    content += enhanced_packet(order, 1, 4, PAYLOADS[2])  # bad if_tsresol: microseconds used
    packets, stats, _, _ = read_all(write(tmp_path, content))

    assert [data for _, data in packets] == [PAYLOADS[0], PAYLOADS[2]]
    assert packets[1][0]["ts_ns"] == 4000
    assert stats["records_skipped"] == 2
    assert anomalies(stats) == {"bad_block_length": 2, "unknown_interface": 1, "invalid_option": 1}


@pytest.mark.parametrize(
    "bad_block, reason",
    [
        (struct.pack("<II", 6, 45) + b"\0" * 37, "length 45"),  # not a multiple of 4
        (struct.pack("<II", 6, 8), "length 8"),  # below the 12-byte block minimum
        (struct.pack("<III", 6, 28, 0) + b"\0" * 16, "length 28"),  # below the 32-byte EPB minimum
        (struct.pack("<II", 6, 32 * 1024 * 1024), "above the limit"),
        (section_header("<", major=2), "major version 2"),
        (section_header("<", magic=0x11223344), "byte-order magic"),
    ],
)
def test_pcapng_impossible_block_stops(tmp_path, bad_block, reason):
    order = "<"
    good = section_header(order) + interface_description(order, LINKTYPE_ETHERNET, 0)
    good += enhanced_packet(order, 0, 1, PAYLOADS[0])
    delivered = []
    with open_capture(write(tmp_path, good + bad_block + b"\0" * 64)) as reader:
        with pytest.raises(CaptureError) as raised:
            for batch in reader:
                delivered.append(batch.count)
    assert delivered == [1]
    assert raised.value.offset == len(good)
    assert reason in str(raised.value)


# --- truncation and fuzzing ---


def small_pcap():
    content = pcap_header(">", 0xA1B23C4D)
    boundaries = [len(content)]
    for i, payload in enumerate(PAYLOADS):
        content += pcap_record(">", 10 + i, i, payload)
        boundaries.append(len(content))
    return content, boundaries


def small_pcapng():
    order = "<"
    content = section_header(order) + interface_description(order, LINKTYPE_ETHERNET, 0)
    boundaries = [len(content) - len(interface_description(order, LINKTYPE_ETHERNET, 0)), len(content)]
    for i, payload in enumerate(PAYLOADS):
        content += enhanced_packet(order, 0, i, payload)
        boundaries.append(len(content))
    return content, boundaries


@pytest.mark.parametrize("compressed", [False, True], ids=["mapped", "gzip-stream"])
@pytest.mark.parametrize("build, minimum", [(small_pcap, 24), (small_pcapng, 4)])
def test_truncation_at_every_offset(tmp_path, monkeypatch, build, minimum, compressed):
    # The gzip stream is read in 5-byte chunks, so the cut also meets
    # records that span chunks.
    monkeypatch.setattr(capture_files, "STREAM_CHUNK_SIZE", 5)
    content, boundaries = build()
    packet_ends = boundaries[-3:]
    path = tmp_path / "cut.bin"
    for cut in range(len(content)):
        path.write_bytes(gzip.compress(content[:cut]) if compressed else content[:cut])
        if cut < minimum:
            with pytest.raises(CaptureError):
                read_all(path)
            continue
        packets, stats, _, _ = read_all(path)
        complete = sum(1 for end in packet_ends if end <= cut)
        assert len(packets) == complete, cut
        assert [data for _, data in packets] == PAYLOADS[:complete], cut
        expected_truncated = 0 if cut in boundaries else 1
        assert stats["truncated_file"] == expected_truncated, cut


@pytest.mark.parametrize("build", [small_pcap, small_pcapng])
def test_stream_chunks_split_records(tmp_path, monkeypatch, build):
    # A FIFO is read in chunks; 7-byte chunks split every header and record.
    import os
    import threading

    content, _ = build()
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    monkeypatch.setattr(capture_files, "STREAM_CHUNK_SIZE", 7)

    def feed():
        with open(fifo, "wb") as writer:
            writer.write(content)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        packets, stats, _, _ = read_all(fifo)
    finally:
        feeder.join(timeout=10)
    assert [data for _, data in packets] == PAYLOADS
    assert stats["truncated_file"] == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_files_never_crash(tmp_path, data):
    content, _ = data.draw(st.sampled_from([small_pcap(), small_pcapng()]))
    mutated = bytearray(content)
    for _ in range(data.draw(st.integers(1, 6))):
        index = data.draw(st.integers(0, len(mutated) - 1))
        mutated[index] = data.draw(st.integers(0, 255))
    tail = data.draw(st.binary(max_size=64))
    path = tmp_path / "mutated.bin"
    path.write_bytes(bytes(mutated) + tail)
    try:
        packets, stats, _, _ = read_all(path)
    except CaptureError:
        return
    assert stats["packets"] == len(packets)
    for record, payload in packets:
        assert len(payload) == record["caplen"]

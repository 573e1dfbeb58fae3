"""Capture reader on the real public captures, compressed files and stdin."""

import csv
import gzip
import hashlib
import json
import shlex
import subprocess
import sys
from decimal import Decimal

import dpkt
import numpy as np
import pytest

from engine.capture import CaptureError, open_capture
from tests.conftest import SHARED_PCAPS, require_tool

NS = 1_000_000_000


def manifest_rows():
    path = SHARED_PCAPS / "MANIFEST.tsv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def read_capture(path, batch_size=8192):
    """Return (records, payloads, stats, interfaces) for a whole capture."""
    records = []
    payloads = []
    with open_capture(path, batch_size=batch_size) as reader:
        for batch in reader:
            records.append(batch.packets)
            for offset, caplen in zip(batch.packets["data_offset"], batch.packets["caplen"]):
                payloads.append(batch.data[offset : offset + caplen].tobytes())
        stats = reader.stats
        interfaces = reader.interfaces
    if records:
        return np.concatenate(records), payloads, stats, interfaces
    return np.array([]), payloads, stats, interfaces


def read_packets(path, batch_size=8192):
    """Return (records, payloads, stats) for a whole capture."""
    records, payloads, stats, _ = read_capture(path, batch_size)
    return records, payloads, stats


# Files whose reading ends in a counted truncation: the manifest's packet
# count is what capinfos read before it reported the file cut short.
TRUNCATED_FILES = {"ndpi-fuzz-cut-short-nsec.pcap"}


# Manifest timestamp resolution (capinfos) -> nanoseconds per unit.
RESOLUTION_NS = {"us": 1000.0, "ns": 1.0, "1e-6": 1000.0, "1e-9": 1.0}


@pytest.mark.parametrize("row", manifest_rows(), ids=lambda row: row["file"])
def test_shared_capture_packet_count(shared_pcaps, row):
    records, payloads, stats, interfaces = read_capture(shared_pcaps / row["file"])

    assert len(records) == int(row["packets"])
    assert stats["packets"] == int(row["packets"])
    assert stats["truncated_file"] == (1 if row["file"] in TRUNCATED_FILES else 0)
    assert [len(p) for p in payloads] == [int(c) for c in (records["caplen"] if len(records) else [])]
    if len(records):
        assert list(records["record_index"]) == list(range(len(records)))


@pytest.mark.parametrize(
    "row", [row for row in manifest_rows() if row["hdr_linktypes(DLT)"]], ids=lambda row: row["file"]
)
def test_shared_capture_interfaces(shared_pcaps, row):
    _, _, _, interfaces = read_capture(shared_pcaps / row["file"])
    link_types = [int(value) for value in row["hdr_linktypes(DLT)"].split(",")]
    snaplens = [int(value) for value in row["hdr_snaplens"].split(",")]
    resolutions = [RESOLUTION_NS[value] for value in row["hdr_ts_resolution"].split(",")]

    assert [interface["link_type"] for interface in interfaces] == link_types
    assert [interface["snaplen"] for interface in interfaces] == snaplens
    assert [interface["ts_resolution_ns"] for interface in interfaces] == resolutions


def tshark_epochs(path):
    output = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [int(Decimal(value) * NS) for value in output]


@pytest.mark.parametrize(
    "name",
    [
        "tcpd-tcp-handshake-nano.pcap",  # nanosecond magic
        "ppp-nanosecs-big-endian.pcap",  # nanosecond magic, big-endian
        "sv-nfs3-bigendian.pcap",  # microsecond magic, big-endian
        "zeek-pcapng-multi-interface.pcapng",  # interfaces at 1e-9 and 1e-6
        "png-be-test006-2idb-difflinktype.pcapng",  # big-endian pcapng
        "ppp-many-interfaces.pcapng",
    ],
)
def test_shared_capture_timestamps_match_tshark(shared_pcaps, name):
    require_tool("tshark")
    records, _, _ = read_packets(shared_pcaps / name)
    expected = tshark_epochs(shared_pcaps / name)
    assert int(records["ts_ns"][0]) == expected[0]
    assert int(records["ts_ns"][-1]) == expected[-1]
    assert [int(t) for t in records["ts_ns"]] == expected


@pytest.mark.parametrize(
    "name",
    ["sv-nfs3-bigendian.pcap", "ppp-sll.pcap", "dpkt-truncated-dns.pcap", "zeek-get-to-ssh-server-nsec.pcap"],
)
def test_shared_capture_matches_dpkt(shared_pcaps, name):
    records, payloads, _ = read_packets(shared_pcaps / name, batch_size=7)
    with open(shared_pcaps / name, "rb") as handle:
        reader = dpkt.pcap.Reader(handle)
        nanosecond = reader._divisor == 1e9  # dpkt picks the divisor from the magic
        expected = list(reader.readpkts())
    assert len(records) == len(expected)
    for record, payload, (ts, data) in zip(records, payloads, expected):
        assert payload == data
        # dpkt returns float seconds; compare at its precision.
        assert abs(int(record["ts_ns"]) - round(ts * NS)) <= (512 if nanosecond else 1000)


def test_shared_invalid_nanoseconds_counted(shared_pcaps):
    path = shared_pcaps / "tcpd-timestamp-invalid-nano.pcap"
    content = path.read_bytes()
    # Record headers, decoded by hand: 24-byte file header, then per record
    # ts_sec, ts_nsec, caplen, wirelen (little-endian).
    offset = 24
    expected = []
    while offset < len(content):
        sec, nsec, caplen, _ = np.frombuffer(content, "<u4", 4, offset)
        expected.append(int(sec) * NS + int(nsec))
        offset += 16 + int(caplen)
    records, _, stats = read_packets(path)

    assert [int(t) for t in records["ts_ns"]] == expected
    assert stats["invalid_timestamp"] == 2


def test_shared_zstd_capture(shared_pcaps):
    with open_capture(shared_pcaps / "ppp-pcapng-example.pcapng.zst") as reader:
        count = sum(batch.count for batch in reader)
        assert reader.compression == "zstd"
        assert reader.format == "pcapng"
        assert [i["link_type"] for i in reader.interfaces] == [1, 113]
    assert count == 159


def test_gzip_capture_same_as_plain(shared_pcaps, tmp_path):
    plain = shared_pcaps / "ppp-ip4-fragments.pcap"
    packed = tmp_path / "fragments.cap"  # no .gz suffix: the magic decides
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    expected_records, expected_payloads, _ = read_packets(plain)
    records, payloads, _ = read_packets(packed, batch_size=10)

    assert payloads == expected_payloads
    assert list(records["ts_ns"]) == list(expected_records["ts_ns"])
    with open_capture(packed) as reader:
        assert reader.compression == "gzip"


def test_gzip_cut_short_counts_truncation(shared_pcaps, tmp_path):
    plain = shared_pcaps / "ppp-ip4-fragments.pcap"
    packed = gzip.compress(plain.read_bytes())
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    _, payloads, stats = read_packets(cut)
    _, expected_payloads, _ = read_packets(plain)

    assert 0 < len(payloads) < len(expected_payloads)
    assert payloads == expected_payloads[: len(payloads)]
    assert stats["truncated_file"] == 1


def test_zstd_cut_short_counts_truncation(shared_pcaps, tmp_path):
    import zstandard

    plain = shared_pcaps / "ppp-ip4-fragments.pcap"
    content = plain.read_bytes()
    split = 40_000
    second_frame = zstandard.ZstdCompressor().compress(content[split:])
    cut = tmp_path / "cut.zst"
    cut.write_bytes(zstandard.ZstdCompressor().compress(content[:split]) + second_frame[:100])
    records, payloads, stats = read_packets(cut)
    expected_records, expected_payloads, _ = read_packets(plain)
    # In the mapped plain file, data_offset is the file offset, so these are
    # the packets that end inside the first frame.
    complete = int(np.sum(expected_records["data_offset"] + expected_records["caplen"] <= split))

    assert complete > 0
    assert payloads == expected_payloads[:complete]
    assert stats["truncated_file"] == 1


def test_gzip_of_garbage_raises(tmp_path):
    path = tmp_path / "garbage.gz"
    path.write_bytes(gzip.compress(b"this is not a capture at all"))
    with pytest.raises(CaptureError, match="magic 0x74686973 at offset 0"):
        open_capture(path)


STDIN_SCRIPT = """
import hashlib, json
from engine.capture import open_capture
ts, digest = [], hashlib.sha256()
with open_capture("-", batch_size=100) as reader:
    for batch in reader:
        ts.extend(int(t) for t in batch.packets["ts_ns"])
        for offset, caplen in zip(batch.packets["data_offset"], batch.packets["caplen"]):
            digest.update(batch.data[offset:offset + caplen].tobytes())
    print(json.dumps({"ts": ts, "sha256": digest.hexdigest(), "format": reader.format}))
"""


@pytest.mark.parametrize(
    "name, producer",
    [("ppp-sll.pcap", "cat"), ("ppp-many-interfaces.pcapng", "cat"), ("ppp-sll.pcap", "gzip -c")],
)
def test_stdin_same_as_file(shared_pcaps, name, producer):
    require_tool(producer.split()[0])
    path = shared_pcaps / name
    command = (
        f"{producer} {shlex.quote(str(path))} | "
        f"{shlex.quote(sys.executable)} -c {shlex.quote(STDIN_SCRIPT)}"
    )
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    from_stdin = json.loads(result.stdout)

    records, payloads, _ = read_packets(path)
    digest = hashlib.sha256(b"".join(payloads)).hexdigest()
    assert from_stdin["ts"] == [int(t) for t in records["ts_ns"]]
    assert from_stdin["sha256"] == digest


def test_batches_valid_after_close(shared_pcaps):
    path = shared_pcaps / "ppp-ip4-fragments.pcap"
    with open(path, "rb") as handle:
        expected = [data for _, data in dpkt.pcap.Reader(handle)]
    with open_capture(path, batch_size=5) as reader:
        batches = list(reader)
    # The reader is closed, but every batch still maps the file.
    payloads = [
        batch.data[offset : offset + caplen].tobytes()
        for batch in batches
        for offset, caplen in zip(batch.packets["data_offset"], batch.packets["caplen"])
    ]
    assert [batch.count for batch in batches] == [5] * 10 + [3]
    assert payloads == expected


def test_capture_info_command_json(shared_pcaps):
    from click.testing import CliRunner

    from engine.cli import main

    result = CliRunner().invoke(main, ["capture-info", "--json", str(shared_pcaps / "ppp-many-interfaces.pcapng")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["format"] == "pcapng"
    assert summary["stats"]["packets"] == 64
    assert [interface["link_type"] for interface in summary["interfaces"]] == [1, 1, 1, 1, 0, 1, 1, 1, 12, 1, 0]
    # Smallest and largest frame.time_epoch that tshark prints for this file;
    # its packets are not in time order, so the smallest is not the first.
    assert summary["earliest_ts_ns"] == 1439753725_701568000
    assert summary["latest_ts_ns"] == 1439753728_292345000


def test_capture_info_command_rejects_garbage(tmp_path):
    from click.testing import CliRunner

    from engine.cli import main

    path = tmp_path / "notes.txt"
    path.write_text("root:x:0:0\n")
    result = CliRunner().invoke(main, ["capture-info", str(path)])
    assert result.exit_code == 1
    assert "not a pcap or pcapng file: magic 0x726f6f74 at offset 0" in result.output


def mapping_rss_kib(path):
    """Resident kB of this process's mappings of `path`, from /proc/self/smaps."""
    total = 0
    inside = False
    with open("/proc/self/smaps") as handle:
        for line in handle:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                # A mapping header: address range, perms, offset, dev, inode[, path].
                inside = len(fields) >= 6 and fields[5] == str(path)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


def write_sized_capture(path, packets, frame_length):
    """Write a classic pcap of `packets` frames whose bytes encode their index."""
    header = (0xA1B2C3D4).to_bytes(4, "little") + bytes.fromhex("02000400") + bytes(8) \
        + (65535).to_bytes(4, "little") + (1).to_bytes(4, "little")
    frames = []
    with open(path, "wb") as handle:
        handle.write(header)
        for i in range(packets):
            frame = i.to_bytes(4, "big") * (frame_length // 4)
            frames.append(frame)
            handle.write(np.array([i, 0, frame_length, frame_length], dtype="<u4").tobytes() + frame)
    return frames


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_mapped_pages_released_behind_reader(tmp_path, monkeypatch):
    import engine.capture.files as files

    # A 64 KiB release step makes a 4 MiB file span many steps.
    monkeypatch.setattr(files, "MAPPED_RELEASE_STEP", 64 * 1024)
    path = tmp_path / "long.pcap"
    frames = write_sized_capture(path, 4000, 1000)
    kept_batches = []
    peak_kib = 0
    with open_capture(path, batch_size=256) as reader:
        for batch in reader:
            kept_batches.append(batch)
            peak_kib = max(peak_kib, mapping_rss_kib(path))

    # Resident: at most one release step, one batch (256 KB) and read-ahead
    # of the fault handler, far below the 4 MB file.
    assert 0 < peak_kib < 1024
    # Kept batches still read the right bytes: released pages fault back in.
    payloads = [
        batch.data[offset : offset + caplen].tobytes()
        for batch in kept_batches
        for offset, caplen in zip(batch.packets["data_offset"], batch.packets["caplen"])
    ]
    assert payloads == frames

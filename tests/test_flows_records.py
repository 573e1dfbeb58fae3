"""Columnar flow records against the per-flow reference they replaced.

reference_flows_to_records() and reference_write() below are the row-by-row
conversion and writer that engine.flows used before the columnar version.
Every test compares the bytes the new code writes with the bytes these
write, on the real shared captures and on Hypothesis-generated FLOW_DTYPE
rows whose bytes are random (NaN, infinities, -0.0, extreme integers).
"""

import csv
import io
import ipaddress
import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.capture import CaptureError, open_capture
from engine.cli import main
from engine.decode import decode_batch, new_anomaly_counters
from engine.flows import CONN_STATE_NAMES, EXPIRATION_NAMES, FLOW_DTYPE, FlowTable, flows_to_records
from engine.flows.cli import FlowWriter
from engine.flows.records import RECORD_FIELDS, flows_to_csv_rows, flows_to_csv_text, flows_to_json_lines

# ---------------------------------------------------------------- the per-flow reference

_ADDRESS_FIELDS = ("src_addr", "dst_addr")
_MAC_FIELDS = ("src_mac", "dst_mac")
_TEXT_FIELDS = ("history", "community_id")


def reference_address_text(raw, ip_version):
    raw = bytes(raw)
    if ip_version == 4:
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw))


def reference_mac_text(raw):
    return ":".join(f"{b:02x}" for b in bytes(raw))


def reference_flows_to_records(flows):
    """Convert FLOW_DTYPE rows to dicts one flow at a time, as engine.flows did before."""
    if flows.dtype != FLOW_DTYPE and flows.dtype.names == FLOW_DTYPE.names:
        flows = flows.astype(FLOW_DTYPE)
    if flows.dtype != FLOW_DTYPE:
        raise TypeError(f"flows have dtype {flows.dtype}; expected FLOW_DTYPE from engine.flows")
    records = []
    plain = [n for n in FLOW_DTYPE.names if n not in _ADDRESS_FIELDS + _MAC_FIELDS + _TEXT_FIELDS]
    columns = {name: flows[name].tolist() for name in plain}
    for i in range(len(flows)):
        row = flows[i]
        version = columns["ip_version"][i]
        record = {
            "flow_id": columns["flow_id"][i],
            "src_ip": reference_address_text(row["src_addr"], version),
            "dst_ip": reference_address_text(row["dst_addr"], version),
        }
        for name in plain:
            if name == "flow_id":
                continue
            record[name] = columns[name][i]
        depth = record["vlan_depth"]
        record["vlan_ids"] = record["vlan_ids"][:depth]
        record["src_mac"] = reference_mac_text(row["src_mac"])
        record["dst_mac"] = reference_mac_text(row["dst_mac"])
        record["history"] = row["history"].decode("ascii")
        record["community_id"] = row["community_id"].decode("ascii")
        record["expiration"] = EXPIRATION_NAMES[record["expiration_id"]]
        record["conn_state"] = CONN_STATE_NAMES[record["conn_state"]]
        records.append(record)
    return records


def reference_write(records, output_format):
    """Return what the per-record FlowWriter wrote for `records`: JSON lines, or CSV with a header."""
    stream = io.StringIO()
    writer = None
    for record in records:
        if output_format == "jsonl":
            stream.write(json.dumps(record, separators=(",", ":")))
            stream.write("\n")
            continue
        row = dict(record)
        row["vlan_ids"] = ";".join(str(v) for v in row["vlan_ids"])
        if writer is None:
            writer = csv.DictWriter(stream, fieldnames=list(row), lineterminator="\n")
            writer.writeheader()
        writer.writerow(row)
    return stream.getvalue()


def columnar_write(flows, output_format, parts=1):
    """Return what FlowWriter.write_flows writes for `flows`, handed over in `parts` calls."""
    stream = io.StringIO()
    writer = FlowWriter(stream, output_format)
    for part in np.array_split(flows, parts):
        writer.write_flows(part)
    assert writer.count == len(flows)
    return stream.getvalue()


def assert_same_output(flows):
    expected = reference_flows_to_records(flows)
    records = flows_to_records(flows)
    # repr compares key order, value types and NaN, which == does not.
    assert repr(records) == repr(expected)
    assert flows_to_json_lines(flows) == reference_write(expected, "jsonl")
    assert columnar_write(flows, "jsonl", parts=3) == reference_write(expected, "jsonl")
    assert columnar_write(flows, "csv", parts=2) == reference_write(expected, "csv")


# ---------------------------------------------------------------- real captures

def flows_of_capture(path):
    table = FlowTable(capacity=1 << 14)
    counters = new_anomaly_counters()
    parts = []
    with open_capture(str(path)) as reader:
        for batch in reader:
            decode_batch(batch.packets, batch.data, counters)
            parts.append(table.update(batch.packets, batch.data))
    parts.append(table.flush())
    return np.concatenate(parts)


def test_records_match_reference_on_shared_captures(shared_pcaps):
    captures = sorted(p for p in shared_pcaps.iterdir() if p.suffix in (".pcap", ".pcapng", ".zst"))
    compared = 0
    total_flows = 0
    for path in captures:
        try:
            flows = flows_of_capture(path)
        except CaptureError:
            continue  # captures that are invalid on purpose are covered by the capture tests
        assert_same_output(flows)
        compared += 1
        total_flows += len(flows)
    assert compared >= 40
    assert total_flows >= 900


def test_vlan_and_ipv6_capture_fields(shared_pcaps):
    flows = flows_of_capture(shared_pcaps / "zeek-mixed-vlan-mpls.pcap")
    lines = [json.loads(line) for line in flows_to_json_lines(flows).splitlines()]
    assert any(line["vlan_ids"] for line in lines)
    for line, depth in zip(lines, flows["vlan_depth"].tolist()):
        assert len(line["vlan_ids"]) == min(depth, 3)

    flows = flows_of_capture(shared_pcaps / "sv-community-id-ipv6.pcap")
    lines = [json.loads(line) for line in flows_to_json_lines(flows).splitlines()]
    assert {line["ip_version"] for line in lines} == {6}
    assert all(":" in line["src_ip"] for line in lines)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_flows_command_output_matches_reference(shared_pcaps, tmp_path, suffix):
    # The command ends flows during the capture and flushes the rest, and
    # that order is kept in the file, so the reference follows it too.
    capture = shared_pcaps / "ppp-sll.pcap"
    output = tmp_path / f"flows{suffix}"
    result = CliRunner().invoke(main, ["flows", str(capture), "-o", str(output)])
    assert result.exit_code == 0, result.output
    table = FlowTable()
    counters = new_anomaly_counters()
    records = []
    with open_capture(str(capture)) as reader:
        for batch in reader:
            decode_batch(batch.packets, batch.data, counters)
            records += reference_flows_to_records(table.update(batch.packets, batch.data))
    records += reference_flows_to_records(table.flush())
    assert len(records) > 10
    assert output.read_text() == reference_write(records, suffix.lstrip("."))


# ---------------------------------------------------------------- generated rows

def random_flows(data: bytes, count: int, text_alphabet: bytes | None) -> np.ndarray:
    """Return `count` FLOW_DTYPE rows made of `data`, with the fields the reference indexes made valid."""
    flows = np.frombuffer(data[: count * FLOW_DTYPE.itemsize], dtype=FLOW_DTYPE).copy()
    flows["expiration_id"] %= len(EXPIRATION_NAMES)
    flows["conn_state"] %= len(CONN_STATE_NAMES)
    # Most rows get a real IP version; the rest keep a random one (printed as IPv6).
    flows["ip_version"] = np.where(flows["ip_version"] % 4 == 0, flows["ip_version"],
                                   np.where(flows["ip_version"] % 2 == 0, 4, 6))
    for name in ("history", "community_id"):
        field_dtype = flows.dtype.fields[name][0]
        raw = np.ascontiguousarray(flows[name]).view(np.uint8).reshape(count, field_dtype.itemsize).copy()
        if text_alphabet is None:
            raw &= 0x7F  # any ASCII byte, NUL and control bytes included
        else:
            alphabet = np.frombuffer(text_alphabet, np.uint8)
            raw[:] = alphabet[raw % len(alphabet)]
        flows[name] = raw.view(field_dtype).reshape(count)
    return flows


# Hypothesis draws the row count and a seed; NumPy turns the seed into the
# row bytes, because rows of 536 random bytes exceed Hypothesis's input size.
# Special floats are written over one field so that every run has some.
SPECIAL_FLOATS = [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 1e15, 1e16, 5e-324, 0.1, 123.456]
rows_cases = st.tuples(
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.lists(st.sampled_from(SPECIAL_FLOATS), min_size=64, max_size=64),
)


def seeded_flows(count, seed, specials, text_alphabet):
    data = np.random.default_rng(seed).bytes(count * FLOW_DTYPE.itemsize)
    flows = random_flows(data, count, text_alphabet)
    flows["src2dst_mean_piat_ms"] = specials[:count]
    return flows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows_cases)
def test_random_rows_match_reference(case):
    count, seed, specials = case
    assert_same_output(seeded_flows(count, seed, specials, None))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows_cases)
def test_plain_text_rows_match_reference(case):
    count, seed, specials = case
    # Texts of letters, digits and Community ID punctuation take the copy path.
    assert_same_output(seeded_flows(count, seed, specials, b"ShADadFfRr^0123456789+/=: abc"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=50))
def test_float_fields_match_reference(values):
    flows = np.zeros(len(values), dtype=FLOW_DTYPE)
    flows["ip_version"] = 4
    flows["bidirectional_mean_ps"] = values
    flows["src2dst_stddev_piat_ms"] = values[::-1]
    assert_same_output(flows)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**53), min_size=1, max_size=50),
       st.sampled_from([0, 1, -1]))
def test_decimal_floats_match_reference(micro_units, nudge):
    # Values of at most six decimals, as durations in ms from nanosecond
    # timestamps are, and their float neighbours, which need more digits.
    values = [float(np.nextafter(k / 1e6, np.inf * nudge)) if nudge else k / 1e6 for k in micro_units]
    values += [1e-4, 9.99e-5, 2.0**32 - 1e-6, 2.0**32, 9.9999995, 4294967295.999999]
    # Above 2**32 floats are spaced more than 1e-6 apart, so a value can be
    # nearest to a six-decimal string while repr finds a shorter one.
    values += [2.0**33 + step * 1e-5 for step in range(50)]
    flows = np.zeros(len(values), dtype=FLOW_DTYPE)
    flows["ip_version"] = 4
    flows["bidirectional_duration_ms"] = values
    assert_same_output(flows)


def test_integer_extremes_match_reference():
    flows = np.zeros(4, dtype=FLOW_DTYPE)
    flows["ip_version"] = 4
    flows["flow_id"] = [0, 1, 2**63, 2**64 - 1]
    flows["bidirectional_first_seen_ns"] = [-(2**63), -1, 0, 2**63 - 1]
    flows["src2dst_bytes"] = [9, 10, 99, 100]
    flows["bidirectional_duration_ms"] = [1e15, 1e16, -0.0, 0.5]
    assert_same_output(flows)
    first = json.loads(flows_to_json_lines(flows).splitlines()[0])
    assert first["bidirectional_first_seen_ns"] == -(2**63)
    assert first["bidirectional_duration_ms"] == 1e15


def test_text_with_nul_matches_reference():
    flows = np.zeros(3, dtype=FLOW_DTYPE)
    flows["ip_version"] = 6
    # A NUL inside the value, not only as padding: JSON escapes it and CSV
    # copies it, so both must leave the byte-matrix path.
    flows["history"] = [b"S\x00A", b'"quoted",x', b"D\\d"]
    flows["community_id"] = [b"1:abc=", b"", b"1:a\nb"]
    assert_same_output(flows)
    assert "\x00" in flows_to_csv_text(flows)


def test_empty_flows_write_nothing():
    flows = np.zeros(0, dtype=FLOW_DTYPE)
    assert flows_to_records(flows) == []
    assert flows_to_json_lines(flows) == ""
    assert flows_to_csv_text(flows) == ""
    assert columnar_write(flows, "csv") == ""


def test_packed_dtype_is_accepted():
    flows = np.zeros(2, dtype=FLOW_DTYPE)
    flows["ip_version"] = 4
    flows["flow_id"] = [7, 8]
    packed = np.concatenate([flows[:1], flows[1:]]).astype(
        np.dtype([(name, FLOW_DTYPE.fields[name][0]) for name in FLOW_DTYPE.names]))
    assert packed.dtype != FLOW_DTYPE
    assert [record["flow_id"] for record in flows_to_records(packed)] == [7, 8]
    assert flows_to_json_lines(packed) == flows_to_json_lines(flows)


def test_invalid_rows_raise():
    with pytest.raises(TypeError, match="expected FLOW_DTYPE"):
        flows_to_json_lines(np.zeros(3, dtype=np.uint8))
    flows = np.zeros(2, dtype=FLOW_DTYPE)
    flows["expiration_id"] = [0, len(EXPIRATION_NAMES)]
    with pytest.raises(ValueError, match=f"invalid expiration_id {len(EXPIRATION_NAMES)}"):
        flows_to_json_lines(flows)
    flows["expiration_id"] = 0
    flows["conn_state"] = 200
    with pytest.raises(ValueError, match="invalid conn_state 200"):
        flows_to_csv_text(flows)
    flows["conn_state"] = 0
    flows["history"] = [b"\xff", b""]
    with pytest.raises(UnicodeDecodeError):
        flows_to_json_lines(flows)


def test_csv_rows_follow_record_fields():
    flows = np.zeros(1, dtype=FLOW_DTYPE)
    flows["ip_version"] = 4
    flows["vlan_depth"] = 2
    flows["vlan_ids"] = [[10, 20, 30]]
    [row] = flows_to_csv_rows(flows)
    assert len(row) == len(RECORD_FIELDS)
    assert row[RECORD_FIELDS.index("vlan_ids")] == "10;20"
    header = columnar_write(flows, "csv").splitlines()[0]
    assert header == ",".join(RECORD_FIELDS)


def test_writer_mixes_dicts_and_rows():
    flows = np.zeros(3, dtype=FLOW_DTYPE)
    flows["ip_version"] = 4
    flows["flow_id"] = [1, 2, 3]
    for output_format in ("jsonl", "csv"):
        stream = io.StringIO()
        writer = FlowWriter(stream, output_format)
        writer.write(flows_to_records(flows[:1]))
        writer.write_flows(flows[1:])
        assert writer.count == 3
        assert stream.getvalue() == reference_write(reference_flows_to_records(flows), output_format)

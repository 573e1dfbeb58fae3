"""Flow records as JSON-ready dicts, JSON lines and CSV rows, built column by column.

A record has the FLOW_DTYPE fields in dtype order, with four changes.
`src_addr` and `dst_addr` become `src_ip` and `dst_ip` text right after
`flow_id`. `vlan_ids` keeps only the vlan_depth ids in use. `conn_state`
is its name. `src_mac`, `dst_mac`, `history`, `community_id` and
`expiration` (the name of `expiration_id`) follow at the end.

Every function here converts a whole column at a time with NumPy. Python
code runs once per distinct text value (an address, a MAC, a float that is
neither whole nor of six decimals at most), however many flows share it.
JSON lines and CSV text are then joined as byte matrices, without a Python
object per flow. flows_to_records() still builds one dict per flow,
because a list of dicts is what it returns.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import socket

import numpy as np

from engine.flows.layout import CONN_STATE_NAMES, EXPIRATION_NAMES, FLOW_DTYPE

# Fields written as text, not as numbers.
_ADDRESS_FIELDS = ("src_addr", "dst_addr")
_MAC_FIELDS = ("src_mac", "dst_mac")
_TEXT_FIELDS = ("history", "community_id")

# FLOW_DTYPE fields copied into a record under their own name, in dtype order.
_PLAIN_FIELDS = tuple(n for n in FLOW_DTYPE.names if n not in _ADDRESS_FIELDS + _MAC_FIELDS + _TEXT_FIELDS)

# Keys of a record, in the order json.dumps and the CSV header write them.
RECORD_FIELDS = (
    ("flow_id", "src_ip", "dst_ip")
    + tuple(n for n in _PLAIN_FIELDS if n != "flow_id")
    + ("src_mac", "dst_mac", "history", "community_id", "expiration")
)

_MAX_VLAN_IDS = FLOW_DTYPE.fields["vlan_ids"][0].shape[0]
# Float values up to this magnitude that are whole numbers print as "<int>.0",
# as float.__repr__ does below 1e16.
_WHOLE_FLOAT_LIMIT = 1e15
# Range of the six-decimal fast path for floats; see _micro_matrix.
_MICRO_MIN = 1e-4
_MICRO_LIMIT = 2.0**32


def address_text(raw: np.ndarray | bytes, ip_version: int) -> str:
    """Format a 16-byte address field as IPv4 or IPv6 text."""
    raw = bytes(raw)
    if ip_version == 4:
        # inet_ntop gives the same dotted quad as ipaddress, five times faster.
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return str(ipaddress.IPv6Address(raw))


def mac_text(raw) -> str:
    """Format a 6-byte MAC address field as colon-separated lowercase hex."""
    return bytes(raw).hex(":")


def _checked(flows: np.ndarray) -> np.ndarray:
    if flows.dtype != FLOW_DTYPE and flows.dtype.names == FLOW_DTYPE.names:
        # np.concatenate packs structured dtypes: same fields, other offsets.
        flows = flows.astype(FLOW_DTYPE)
    if flows.dtype != FLOW_DTYPE:
        raise TypeError(f"flows have dtype {flows.dtype}; expected FLOW_DTYPE from engine.flows")
    if flows.ndim != 1:
        raise ValueError(f"flows have shape {flows.shape}; expected a one-dimensional array of FLOW_DTYPE rows")
    return flows


# ---------------------------------------------------------------- per distinct value
#
# The helpers below return (texts, inverse): texts[inverse[i]] is the text of
# flow i, and each text is formatted once however many flows share it.

def _distinct_texts(keys: np.ndarray, format_one) -> tuple[list[str], np.ndarray]:
    if len(keys) == 0:
        return [], np.empty(0, dtype=np.intp)
    distinct, inverse = np.unique(keys, return_inverse=True)
    return [format_one(key) for key in distinct.tolist()], inverse.reshape(-1)


def _expand(texts: list, inverse: np.ndarray) -> list:
    """Return texts[inverse[i]] for every i, as a list."""
    table = np.empty(len(texts), dtype=object)
    table[:] = texts
    return table[inverse].tolist()


def _address_texts(flows: np.ndarray, field: str, wrap=str) -> tuple[list[str], np.ndarray]:
    """Return wrap(text) of each flow's address: IPv4 for ip_version 4, IPv6 for anything else."""
    raw = np.ascontiguousarray(flows[field])
    is_v4 = flows["ip_version"] == 4
    # Only the first 4 bytes of an IPv4 field are printed, so the rest must
    # not split one address into several keys.
    keys = np.zeros((len(flows), 17), dtype=np.uint8)
    keys[:, :16] = raw
    keys[is_v4, 4:] = 0
    keys[:, 16] = is_v4
    keys = keys.view("V17").reshape(-1)

    def format_key(key: bytes) -> str:
        return wrap(address_text(key[:16], 4 if key[16] else 6))

    return _distinct_texts(keys, format_key)


def _mac_texts(flows: np.ndarray, field: str, wrap=str) -> tuple[list[str], np.ndarray]:
    keys = np.ascontiguousarray(flows[field]).view("V6").reshape(-1)
    return _distinct_texts(keys, lambda key: wrap(mac_text(key)))


def _ascii_texts(flows: np.ndarray, field: str, wrap=str) -> tuple[list[str], np.ndarray]:
    # A non-ASCII byte raises UnicodeDecodeError here, for every output form.
    return _distinct_texts(flows[field], lambda value: wrap(value.decode("ascii")))


def _name_texts(values: np.ndarray, names: tuple[str, ...], field: str, wrap=str) -> tuple[list[str], np.ndarray]:
    if len(values) and int(values.max()) >= len(names):
        raise ValueError(f"invalid {field} {int(values.max())}; expected 0 to {len(names) - 1}")
    return [wrap(name) for name in names], values.astype(np.intp)


def _vlan_depth_keys(flows: np.ndarray) -> np.ndarray:
    """Return one uint64 per flow that packs the vlan ids in use and their count."""
    depth = np.minimum(flows["vlan_depth"], _MAX_VLAN_IDS).astype(np.uint64)
    ids = flows["vlan_ids"].astype(np.uint64)
    in_use = np.arange(_MAX_VLAN_IDS) < depth[:, None]
    ids = np.where(in_use, ids, 0)
    return depth << np.uint64(48) | ids[:, 0] << np.uint64(32) | ids[:, 1] << np.uint64(16) | ids[:, 2]


def _vlan_ids_of_key(key: int) -> list[int]:
    depth = key >> 48
    return [(key >> shift) & 0xFFFF for shift in (32, 16, 0)][:depth]


# ---------------------------------------------------------------- dicts

def flows_to_records(flows: np.ndarray) -> list[dict]:
    """Convert FLOW_DTYPE rows to dicts of str, int, float and list (one per flow).

    Addresses become text, MACs colon-separated hex, `vlan_ids` a list of
    the vlan_depth ids in use, and `expiration_id` and `conn_state` gain
    their names in `expiration` and `conn_state`. Keys follow RECORD_FIELDS.
    """
    flows = _checked(flows)
    columns = _object_columns(flows)
    # Each record gets its own vlan_ids list, so a caller may change one.
    vlan_lists = [list(ids) for ids in columns["vlan_ids"]]
    columns["vlan_ids"] = vlan_lists
    ordered = [columns[name] for name in RECORD_FIELDS]
    return [dict(zip(RECORD_FIELDS, values)) for values in zip(*ordered)]


def _object_columns(flows: np.ndarray) -> dict[str, list]:
    """Return each record field as a list of Python values; vlan_ids as shared tuples."""
    columns: dict[str, list] = {}
    for name in _PLAIN_FIELDS:
        if name in ("vlan_ids", "conn_state"):
            continue
        columns[name] = flows[name].tolist()
    columns["vlan_ids"] = _expand(*_distinct_texts(_vlan_depth_keys(flows), lambda key: tuple(_vlan_ids_of_key(key))))
    for name, (texts, inverse) in _text_fields(flows, str).items():
        columns[name] = _expand(texts, inverse)
    return columns


def _text_fields(flows: np.ndarray, wrap, skip: tuple[str, ...] = ()) -> dict[str, tuple[list[str], np.ndarray]]:
    """Return wrap(text) of the record fields that are strings, except `skip`, as (texts, inverse)."""
    fields = {
        "src_ip": lambda: _address_texts(flows, "src_addr", wrap),
        "dst_ip": lambda: _address_texts(flows, "dst_addr", wrap),
        "conn_state": lambda: _name_texts(flows["conn_state"], CONN_STATE_NAMES, "conn_state", wrap),
        "src_mac": lambda: _mac_texts(flows, "src_mac", wrap),
        "dst_mac": lambda: _mac_texts(flows, "dst_mac", wrap),
        "history": lambda: _ascii_texts(flows, "history", wrap),
        "community_id": lambda: _ascii_texts(flows, "community_id", wrap),
        "expiration": lambda: _name_texts(flows["expiration_id"], EXPIRATION_NAMES, "expiration_id", wrap),
    }
    return {name: make() for name, make in fields.items() if name not in skip}


def flows_to_csv_rows(flows: np.ndarray) -> list[tuple]:
    """Return one tuple per flow in RECORD_FIELDS order, for csv.writer.

    `vlan_ids` is the ids in use joined by ";". The values are the ones
    flows_to_records() puts in the dicts, so csv.writer formats them the
    same way as csv.DictWriter formats those dicts.
    """
    flows = _checked(flows)
    columns = _object_columns(flows)
    columns["vlan_ids"] = _expand(*_distinct_texts(_vlan_depth_keys(flows),
                                                   lambda key: ";".join(str(v) for v in _vlan_ids_of_key(key))))
    return list(zip(*(columns[name] for name in RECORD_FIELDS)))


# ---------------------------------------------------------------- text lines
#
# JSON lines and CSV are built as one byte matrix per chunk of flows: each
# field is a block of columns holding its text, padded with NUL bytes, and
# the constant separators between them are blocks of their own. Dropping
# every NUL byte of the matrix leaves the lines one after the other. JSON
# text never contains a NUL byte because json.dumps escapes it. CSV text can,
# so a chunk with one takes the slower csv.writer path (iter_csv_text).

# Flows per byte matrix. A JSON row of the matrix is about 2.5 KB wide
# (keys included), so a chunk takes about 10 MB.
_CHUNK_FLOWS = 4096
_DIGIT = np.uint8(ord("0"))


def _digit_matrix(magnitude: np.ndarray) -> np.ndarray:
    """Return the decimal digits of uint64 values as ASCII, right-aligned, leading zeros as NUL bytes."""
    width = len(str(int(magnitude.max()))) if len(magnitude) else 1
    matrix = np.zeros((len(magnitude), width), dtype=np.uint8)
    for position in range(width):
        power = np.uint64(10 ** (width - 1 - position))
        digit = (magnitude // power % np.uint64(10)).astype(np.uint8) + _DIGIT
        # The last digit is always written, so zero prints as "0".
        matrix[:, position] = digit if power == 1 else np.where(magnitude >= power, digit, 0)
    return matrix


def _integer_matrix(column: np.ndarray) -> np.ndarray:
    """Return str(value) of an integer column as a NUL-padded byte matrix."""
    if column.dtype.kind == "u":
        return _digit_matrix(column.astype(np.uint64))
    negative = column < 0
    # Two's complement negation in uint64 is exact for every int64, INT64_MIN included.
    raw = column.astype(np.int64).view(np.uint64)
    magnitude = np.where(negative, ~raw + np.uint64(1), raw)
    sign = np.where(negative, np.uint8(ord("-")), np.uint8(0))[:, None]
    return np.hstack([sign, _digit_matrix(magnitude)])


def _strings_matrix(texts: list[str], inverse: np.ndarray) -> np.ndarray:
    """Return a NUL-padded byte matrix with texts[inverse[i]] in row i."""
    encoded = np.array(texts if texts else [""], dtype=np.str_).astype(np.bytes_)
    rows = encoded[inverse]
    return rows.view(np.uint8).reshape(len(inverse), encoded.dtype.itemsize)


def _distinct_matrix(keys: np.ndarray, format_one) -> np.ndarray:
    """Return format_one(key) for each row of `keys` as a byte matrix, formatting each distinct key once."""
    return _strings_matrix(*_distinct_texts(keys, format_one))


def _float_matrix(column: np.ndarray, json_names: bool) -> np.ndarray:
    """Return repr(value) of a float64 column as a byte matrix; NaN, Infinity, -Infinity if json_names.

    Shortest-repr formatting is the slowest step: about 0.7 us per value,
    measured on a 2-core x86-64. Two common kinds of value are therefore
    printed with integer arithmetic: whole numbers, and values with at most
    six decimals (durations and inter-arrival times in ms from nanosecond
    timestamps). The rest are formatted with float.__repr__ once per
    distinct value.
    """
    # NaN and infinities fail every test here and go to float.__repr__,
    # so numpy's warning about them in trunc is silenced.
    with np.errstate(invalid="ignore"):
        whole = (np.abs(column) <= _WHOLE_FLOAT_LIMIT) & (column == np.trunc(column)) & ~np.signbit(column)
    parts = []
    if whole.any():
        digits = _digit_matrix(column[whole].astype(np.uint64))
        parts.append((whole, np.hstack([digits, _constant_matrix(b".0", len(digits))])))

    micro = ~whole & (column >= _MICRO_MIN) & (column < _MICRO_LIMIT)
    micro_units = np.rint(column[micro] * 1e6).astype(np.int64)
    exact = micro_units.astype(np.float64) / 1e6 == column[micro]
    micro[micro] = exact
    if micro.any():
        parts.append((micro, _micro_matrix(micro_units[exact])))

    rest = ~whole & ~micro
    if rest.any():
        distinct, inverse = np.unique(column[rest], return_inverse=True)
        texts = list(map(float.__repr__, distinct.tolist()))
        if json_names:
            for position in np.flatnonzero(~np.isfinite(distinct)).tolist():
                # json.dumps writes the JavaScript names of the non-finite values.
                texts[position] = json.dumps(float(distinct[position]))
        parts.append((rest, _strings_matrix(texts, inverse.reshape(-1))))

    width = max((part.shape[1] for _, part in parts), default=1)
    matrix = np.zeros((len(column), width), dtype=np.uint8)
    for rows, part in parts:
        matrix[rows, : part.shape[1]] = part
    return matrix


def _micro_matrix(micro_units: np.ndarray) -> np.ndarray:
    """Return "<int>.<decimals>" of values given in millionths, trailing zero decimals as NUL bytes.

    For a value v with 1e-4 <= v < 2**32 whose nearest multiple of 1e-6 parses
    back to v, this is repr(v): two different multiples of 1e-6 are further
    apart than the float spacing below 2**32 (2**-20), so no shorter decimal
    string parses to v, and repr switches to exponent form only below 1e-4.
    """
    integer_part = _digit_matrix((micro_units // 1_000_000).astype(np.uint64))
    fraction = micro_units % 1_000_000
    decimals = np.zeros((len(micro_units), 6), dtype=np.uint8)
    for position in range(6):
        power = 10 ** (5 - position)
        digit = (fraction // power % 10).astype(np.uint8) + _DIGIT
        # A digit is kept unless it and every digit after it are zero.
        decimals[:, position] = np.where(fraction % (power * 10) != 0, digit, 0)
    return np.hstack([integer_part, _constant_matrix(b".", len(micro_units)), decimals])


def _constant_matrix(text: bytes, rows: int) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(text, np.uint8), (rows, len(text)))


def _join_matrices(blocks: list) -> bytes:
    """Concatenate the blocks (byte matrices or constant bytes) row by row and drop the NUL padding."""
    rows = next(block.shape[0] for block in blocks if isinstance(block, np.ndarray))
    widths = [len(block) if isinstance(block, bytes) else block.shape[1] for block in blocks]
    # The constant blocks go in with one broadcast copy of a template row,
    # which is several times faster than one strided copy per block.
    template = np.zeros(sum(widths), dtype=np.uint8)
    offsets = np.cumsum([0] + widths[:-1]).tolist()
    for block, offset in zip(blocks, offsets):
        if isinstance(block, bytes):
            template[offset : offset + len(block)] = np.frombuffer(block, np.uint8)
    matrix = np.empty((rows, len(template)), dtype=np.uint8)
    matrix[:] = template
    for block, offset, width in zip(blocks, offsets, widths):
        if not isinstance(block, bytes):
            matrix[:, offset : offset + width] = block
    return matrix[matrix != 0].tobytes()


def _field_matrices(flows: np.ndarray, quote, json_names: bool, vlan_text, copy_table: np.ndarray,
                    quote_byte: bytes) -> dict[str, np.ndarray]:
    """Return the text of every record field as a byte matrix.

    `quote` formats a string value. A bytes field (history, community_id)
    whose bytes are all true in `copy_table` is instead copied as it is
    between two `quote_byte`, because quote() would return it unchanged
    apart from them.
    """
    matrices = {}
    for name in _PLAIN_FIELDS:
        if name in ("vlan_ids", "conn_state"):
            continue
        column = flows[name]
        if column.dtype.kind == "f":
            matrices[name] = _float_matrix(column, json_names)
        else:
            matrices[name] = _integer_matrix(column)
    matrices["vlan_ids"] = _distinct_matrix(_vlan_depth_keys(flows), lambda key: vlan_text(_vlan_ids_of_key(key)))
    copied = {}
    for name in _TEXT_FIELDS:
        raw = _bytes_matrix(flows[name])
        if copy_table[raw].all() and not _has_inner_nul(raw):
            quote_column = np.broadcast_to(np.frombuffer(quote_byte, np.uint8), (len(flows), len(quote_byte)))
            copied[name] = np.hstack([quote_column, raw, quote_column])
    matrices.update(copied)
    for name, (texts, inverse) in _text_fields(flows, quote, skip=tuple(copied)).items():
        matrices[name] = _strings_matrix(texts, inverse)
    return matrices


def _bytes_matrix(column: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(column).view(np.uint8).reshape(len(column), column.dtype.itemsize)


def _has_inner_nul(raw: np.ndarray) -> bool:
    """Return whether a row of a byte matrix has a NUL byte before its last non-NUL byte."""
    filled = raw != 0
    followed_by_text = np.cumsum(filled[:, ::-1], axis=1)[:, ::-1] > 0
    return bool((~filled & followed_by_text).any())


def _copy_table(allowed: bytes) -> np.ndarray:
    """Return a 256-entry lookup of the bytes in `allowed`, plus NUL, the padding of bytes fields."""
    table = np.zeros(256, dtype=bool)
    table[np.frombuffer(allowed, np.uint8)] = True
    table[0] = True
    return table


def _chunks(flows: np.ndarray):
    for start in range(0, len(flows), _CHUNK_FLOWS):
        yield flows[start : start + _CHUNK_FLOWS]


# ---------------------------------------------------------------- JSON lines

# Bytes that json.dumps (ensure_ascii) writes as they are: printable ASCII except " and \\.
_JSON_COPY_TABLE = _copy_table(bytes(b for b in range(0x20, 0x7F) if b not in b'"\\'))


def _json_vlan_text(ids: list[int]) -> str:
    return json.dumps(ids, separators=(",", ":"))


def flows_to_json_lines(flows: np.ndarray) -> str:
    """Return the JSON lines of the flows' records, each ending in a newline.

    The text is byte for byte what json.dumps(record, separators=(",", ":"))
    writes for each dict from flows_to_records(), NaN and Infinity included.
    """
    return "".join(iter_json_lines(flows))


def iter_json_lines(flows: np.ndarray):
    """Yield the text of flows_to_json_lines() in pieces of up to _CHUNK_FLOWS lines."""
    flows = _checked(flows)
    separators = [("{" if index == 0 else ",") + json.dumps(name) + ":" for index, name in enumerate(RECORD_FIELDS)]
    for chunk in _chunks(flows):
        matrices = _field_matrices(chunk, json.dumps, True, _json_vlan_text, _JSON_COPY_TABLE, b'"')
        blocks = []
        for separator, name in zip(separators, RECORD_FIELDS):
            blocks.append(separator.encode("ascii"))
            blocks.append(matrices[name])
        blocks.append(b"}\n")
        yield _join_matrices(blocks).decode("ascii")


# ---------------------------------------------------------------- CSV

# Bytes that csv.writer never quotes: letters, digits and the punctuation of
# Community IDs (base64) and connection histories.
_CSV_COPY_TABLE = _copy_table(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/=:^-_.")


def _csv_field_text(value) -> str:
    """Return one field as csv.writer writes it in a row of several fields (QUOTE_MINIMAL)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([value, ""])
    return buffer.getvalue()[: -len(",\n")]


def _csv_vlan_text(ids: list[int]) -> str:
    return _csv_field_text(";".join(str(v) for v in ids))


def flows_to_csv_text(flows: np.ndarray) -> str:
    """Return the CSV rows of the flows' records, without a header, each ending in a newline.

    The text is byte for byte what csv.writer(stream, lineterminator="\\n")
    writes for flows_to_csv_rows(), which contains the values of
    flows_to_records() with `vlan_ids` joined by ";".
    """
    return "".join(iter_csv_text(flows))


def iter_csv_text(flows: np.ndarray):
    """Yield the text of flows_to_csv_text() in pieces of up to _CHUNK_FLOWS rows."""
    flows = _checked(flows)
    for chunk in _chunks(flows):
        if any(_has_inner_nul(_bytes_matrix(chunk[name])) for name in _TEXT_FIELDS):
            # csv.writer copies a NUL byte as it is, which the byte matrix
            # cannot carry, so such a chunk takes the slower exact path.
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows(flows_to_csv_rows(chunk))
            yield buffer.getvalue()
            continue
        matrices = _field_matrices(chunk, _csv_field_text, False, _csv_vlan_text, _CSV_COPY_TABLE, b"")
        blocks = []
        for index, name in enumerate(RECORD_FIELDS):
            if index:
                blocks.append(b",")
            blocks.append(matrices[name])
        blocks.append(b"\n")
        yield _join_matrices(blocks).decode("ascii")

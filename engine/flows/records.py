"""Flow records as JSON-ready dicts and CSV rows."""

from __future__ import annotations

import ipaddress

import numpy as np

from engine.flows.layout import CONN_STATE_NAMES, EXPIRATION_NAMES, FLOW_DTYPE

# Fields written as text, not as numbers.
_ADDRESS_FIELDS = ("src_addr", "dst_addr")
_MAC_FIELDS = ("src_mac", "dst_mac")
_TEXT_FIELDS = ("history", "community_id")


def address_text(raw: np.ndarray | bytes, ip_version: int) -> str:
    """Format a 16-byte address field as IPv4 or IPv6 text."""
    raw = bytes(raw)
    if ip_version == 4:
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw))


def mac_text(raw) -> str:
    """Format a 6-byte MAC address field as colon-separated lowercase hex."""
    return ":".join(f"{b:02x}" for b in bytes(raw))


def flows_to_records(flows: np.ndarray) -> list[dict]:
    """Convert FLOW_DTYPE rows to dicts of str, int and float (one per flow).

    Addresses become text, MACs colon-separated hex, `vlan_ids` a list of
    the vlan_depth ids in use, and `expiration_id` and `conn_state` gain
    their names in `expiration` and `conn_state`.
    """
    if flows.dtype != FLOW_DTYPE and flows.dtype.names == FLOW_DTYPE.names:
        # np.concatenate packs structured dtypes: same fields, other offsets.
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
            "src_ip": address_text(row["src_addr"], version),
            "dst_ip": address_text(row["dst_addr"], version),
        }
        for name in plain:
            if name == "flow_id":
                continue
            record[name] = columns[name][i]
        depth = record["vlan_depth"]
        record["vlan_ids"] = record["vlan_ids"][:depth]
        record["src_mac"] = mac_text(row["src_mac"])
        record["dst_mac"] = mac_text(row["dst_mac"])
        record["history"] = row["history"].decode("ascii")
        record["community_id"] = row["community_id"].decode("ascii")
        record["expiration"] = EXPIRATION_NAMES[record["expiration_id"]]
        record["conn_state"] = CONN_STATE_NAMES[record["conn_state"]]
        records.append(record)
    return records

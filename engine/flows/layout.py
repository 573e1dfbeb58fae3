"""The flow record dtype, derived from the ww_flow struct in ext/ww_flow.pxd.

The struct nests one ww_flow_direction per direction. FLOW_DTYPE describes
the same bytes with flat NFStream-style names (`src2dst_packets`,
`bidirectional_mean_ps`, ...), so callers index one level only, and turns the
fixed-width character fields into byte strings (`history`, `community_id`).
"""

import numpy as np

from engine._native.flowtable import flow_dtype, flow_itemsize

# Names of the expiration_id values, indexed by value (ww_expiration).
EXPIRATION_NAMES = ("idle", "active", "end_of_flow", "evicted", "flushed", "live")

# Names of the conn_state values, indexed by value (ww_conn_state).
CONN_STATE_NAMES = (
    "S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH",
)


def _flatten(nested: np.dtype) -> np.dtype:
    names, formats, offsets = [], [], []
    for name in nested.names:
        field_dtype, offset = nested.fields[name][:2]
        if field_dtype.names:
            for inner in field_dtype.names:
                inner_dtype, inner_offset = field_dtype.fields[inner][:2]
                names.append(f"{name}_{inner}")
                formats.append(inner_dtype)
                offsets.append(offset + inner_offset)
            continue
        if field_dtype.subdtype is not None and field_dtype.subdtype[0] == np.dtype("S1"):
            field_dtype = np.dtype(f"S{field_dtype.subdtype[1][0]}")
        names.append(name)
        formats.append(field_dtype)
        offsets.append(offset)
    return np.dtype(
        {"names": names, "formats": formats, "offsets": offsets, "itemsize": nested.itemsize}
    )


FLOW_DTYPE_NESTED = flow_dtype()
FLOW_DTYPE = _flatten(FLOW_DTYPE_NESTED)

if FLOW_DTYPE.itemsize != flow_itemsize():
    raise ImportError(
        f"flow dtype itemsize {FLOW_DTYPE.itemsize} differs from "
        f"sizeof(ww_flow) {flow_itemsize()}; rebuild the extensions"
    )

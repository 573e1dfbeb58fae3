"""FlowTable: the Python edge of the compiled bidirectional flow table."""

from __future__ import annotations

import logging
import time

import numpy as np

from engine._native.flowtable import FlowTableKernel
from engine.decode.layout import PACKET_DTYPE
from engine.flows.layout import FLOW_DTYPE

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 1 << 20
DEFAULT_IDLE_TIMEOUT_S = 120.0
DEFAULT_ACTIVE_TIMEOUT_S = 1800.0
# How long a TCP flow stays in the table without packets after its RST, or
# after the ACK of the second FIN, so a late ACK or repeated RST joins it.
# Zeek waits 5 s (tcp_close_delay and tcp_reset_delay in its
# init-bare.zeek). A live sensor scores a closed flow only after the delay,
# so a shorter one reports brute force and scans sooner and keeps fewer
# closed flows. In the public captures tested (web browsing, FTP brute
# force) every late packet came within 0.5 s of the close.
DEFAULT_CLOSE_DELAY_S = 2.0
MAX_CAPACITY = (1 << 31) - 1
# The kernel keeps timeouts as int64 nanoseconds, so about 292 years is the
# largest timeout it can hold; a larger one (or inf) would overflow.
MAX_TIMEOUT_S = float((2**63 - 1) // 10**9)
# Repeated overload warnings are logged at most this often (wall clock).
WARNING_INTERVAL_S = 60.0


class FlowTable:
    """A bounded table of bidirectional flows fed with decoded packet batches.

    `capacity` is the maximum number of live flows, closed ones included.
    When a new flow arrives in a full table, a closed flow among the new
    key's index neighbours is exported as `end_of_flow`, or else the least
    recently seen one with expiration reason `evicted` (counter
    `flows_evicted`). The counter `flow_table_full` goes up either way. Timeouts run on
    capture time, never the wall clock. That is the largest packet timestamp
    seen, moved back when two packets in a row confirm a clock step of more
    than 60 s back (counter `clock_steps_back`). A flow ends `idle` after
    `idle_timeout_s` without packets and `active` after lasting
    `active_timeout_s`. A TCP flow closes at a RST, or at the last ACK after
    FIN from both sides. It is exported as `end_of_flow` once
    `close_delay_s` has passed without a packet, or when a SYN opens a new
    connection on its ports. Packets within the delay join it (counter
    `packets_after_close`).
    The delay is capped at `idle_timeout_s`, and 0 exports a flow as soon
    as it closes. `community_id_seed` is the Community ID seed (0 unless
    flows must match a sensor configured otherwise).

    A table is not thread-safe: the kernel runs without the GIL, so give
    each thread (or capture worker) a table of its own.
    """

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        active_timeout_s: float = DEFAULT_ACTIVE_TIMEOUT_S,
        community_id_seed: int = 0,
        close_delay_s: float = DEFAULT_CLOSE_DELAY_S,
    ):
        if not isinstance(capacity, (int, np.integer)) or not 1 <= capacity <= MAX_CAPACITY:
            raise ValueError(f"invalid capacity {capacity!r}; expected an integer from 1 to {MAX_CAPACITY}")
        if not 0 < idle_timeout_s <= MAX_TIMEOUT_S:
            raise ValueError(
                f"invalid idle_timeout_s {idle_timeout_s!r}; expected seconds > 0 and at most {MAX_TIMEOUT_S:.0f}"
            )
        if not 0 < active_timeout_s <= MAX_TIMEOUT_S:
            raise ValueError(
                f"invalid active_timeout_s {active_timeout_s!r}; expected seconds > 0 and at most {MAX_TIMEOUT_S:.0f}"
            )
        if not 0 <= close_delay_s <= MAX_TIMEOUT_S:
            raise ValueError(
                f"invalid close_delay_s {close_delay_s!r}; expected seconds >= 0 and at most {MAX_TIMEOUT_S:.0f}"
            )
        if not isinstance(community_id_seed, (int, np.integer)) or not 0 <= community_id_seed <= 0xFFFF:
            raise ValueError(
                f"invalid community_id_seed {community_id_seed!r}; expected an integer from 0 to 65535"
            )

        self.capacity = int(capacity)
        self.idle_timeout_s = float(idle_timeout_s)
        self.active_timeout_s = float(active_timeout_s)
        self.community_id_seed = int(community_id_seed)
        self.close_delay_s = float(close_delay_s)

        self._kernel = FlowTableKernel(
            self.capacity,
            int(self.idle_timeout_s * 1e9),
            int(self.active_timeout_s * 1e9),
            self.community_id_seed,
            int(self.close_delay_s * 1e9),
        )
        self._evictions_logged = 0
        self._last_warning = 0.0

    def update(self, packets: np.ndarray, data=None) -> np.ndarray:
        """Assign each packet of a batch to a flow; return the flows that ended.

        Writes `direction`, `flow_slot` and `flow_id` into every packet
        (packets without an IP layer get flow_id 0). `data` is accepted so the
        call matches the other stages; the table reads headers only.
        """
        _check_packets(packets)
        ended = self._kernel.update(packets).view(FLOW_DTYPE)
        self._warn_on_evictions()
        return ended

    def flush(self) -> np.ndarray:
        """End every live flow and return them (end of input).

        Open flows get reason `flushed`; closed TCP flows waiting out the
        close delay get `end_of_flow`.
        """
        return self._kernel.flush().view(FLOW_DTYPE)

    def active_snapshot(self, min_age_s: float = 0.0) -> np.ndarray:
        """Return copies of the open flows that began at least `min_age_s` ago.

        The flows stay in the table; the copies have expiration reason `live`
        and statistics as of the last packet. Closed TCP flows waiting out
        the close delay are not included.
        """
        if not min_age_s >= 0:
            raise ValueError(f"invalid min_age_s {min_age_s!r}; expected seconds >= 0")
        return self._kernel.active_snapshot(int(min_age_s * 1e9)).view(FLOW_DTYPE)

    @property
    def live_flows(self) -> int:
        return self._kernel.live_flows

    @property
    def stats(self) -> dict[str, int]:
        """Counters since the table was created: packets, flows by outcome, overloads."""
        counters = self._kernel.counters
        counters["flows_live"] = self._kernel.live_flows
        return counters

    def _warn_on_evictions(self) -> None:
        evicted = self._kernel.counters["flows_evicted"]
        if evicted == self._evictions_logged:
            return
        now = time.monotonic()
        if now - self._last_warning < WARNING_INTERVAL_S:
            return
        log.warning(
            "flow table full (capacity %d flows): %d flows evicted so far; "
            "raise the capacity or lower idle_timeout_s",
            self.capacity,
            evicted,
        )
        self._evictions_logged = evicted
        self._last_warning = now


def _check_packets(packets) -> None:
    if not isinstance(packets, np.ndarray):
        raise TypeError(f"packets must be a NumPy array of PACKET_DTYPE, not {type(packets).__name__}")
    if packets.dtype != PACKET_DTYPE:
        raise TypeError(f"packets have dtype {packets.dtype}; expected PACKET_DTYPE from engine.decode.layout")
    if packets.ndim != 1:
        raise ValueError(f"packets must be one-dimensional, not of shape {packets.shape}")
    if not packets.flags.c_contiguous or not packets.flags.writeable:
        raise ValueError("packets must be a C-contiguous, writeable array (the table writes flow ids)")

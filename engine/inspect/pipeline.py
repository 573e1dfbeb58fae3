"""Inspect a capture end to end: batches, stream capture, parsers, then assets, findings and policy."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from engine.alerts.schema import Alert
from engine.inspect.inspector import Inspector
from engine.inspect.records import FlowInspection
from engine.logins.records import LoginRecord


# Flows tracked by the flow table; the inspector tracks fewer (its own capacity).
DEFAULT_FLOW_CAPACITY = 1 << 16


def iter_inspections(path: str, inspector: Inspector | None = None,
                     flow_capacity: int = DEFAULT_FLOW_CAPACITY) -> Iterator[FlowInspection]:
    """Yield one FlowInspection per inspected flow of a capture file.

    Runs the engine's reader, decoder and flow table, then the inspector, on
    each batch. Flows that the flow table ends are parsed and freed at once.
    Other flows are parsed when they become ready or at the end of the file.
    """
    from engine.capture import open_capture
    from engine.decode import decode_batch, new_anomaly_counters
    from engine.flows.table import FlowTable

    inspector = inspector or Inspector()
    flows = FlowTable(capacity=flow_capacity)
    counters = new_anomaly_counters()
    with open_capture(path) as reader:
        for batch in reader:
            decode_batch(batch.packets, batch.data, counters)
            ended = flows.update(batch.packets, batch.data)
            yield from inspector.process(batch.packets, batch.data)
            if len(ended):
                yield from inspector.end_flows(ended["flow_id"])
    ended = flows.flush()
    if len(ended):
        yield from inspector.end_flows(ended["flow_id"])
    yield from inspector.flush()


def iter_inspections_dpkt(path: str, inspector: Inspector | None = None) -> Iterator[FlowInspection]:
    """Yield inspections with packets built by the dpkt reference feeder (a test oracle)."""
    from engine.inspect.feed import read_batch

    inspector = inspector or Inspector()
    batch = read_batch(path)
    yield from inspector.process(batch.packets, batch.data)
    yield from inspector.flush()


@dataclass
class InspectionOutput:
    results: list[FlowInspection] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)  # kind "finding" and "policy"
    logins: list[LoginRecord] = field(default_factory=list)


def analyse(results, zones=None, access=None, inventory=None, callbacks=None) -> InspectionOutput:
    """Feed results to the inventory, the findings, the exploit checks and the access monitor; collect alerts and logins.

    `callbacks` is an engine.policy.exploits.Log4ShellCallbacks that keeps
    its state across calls, or None to skip linking requests to callbacks.
    """
    from engine.policy.exploits import exploit_alerts
    from engine.policy.findings import findings_for
    from engine.policy.zones import ZoneMap

    zones = zones or ZoneMap()
    output = InspectionOutput(results=list(results))
    if inventory is not None:
        inventory.update(output.results)
    for result in output.results:
        output.alerts.extend(findings_for(result, zones))
        exploits = exploit_alerts(result)
        output.alerts.extend(exploits)
        if callbacks is not None:
            output.alerts.extend(callbacks.observe(result, exploits))
        if access is not None:
            output.alerts.extend(access.observe(result))
        output.logins.extend(result.logins)
    return output

"""Bidirectional flows: the flow table, the flow record and its text forms."""

from engine.flows.layout import CONN_STATE_NAMES, EXPIRATION_NAMES, FLOW_DTYPE
from engine.flows.records import flows_to_records
from engine.flows.table import FlowTable

__all__ = ["CONN_STATE_NAMES", "EXPIRATION_NAMES", "FLOW_DTYPE", "FlowTable", "flows_to_records"]

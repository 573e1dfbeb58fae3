"""Alerts: schema, aggregation, durable store, ZeroMQ bus and SIEM outputs.

AlertSink and AlertConfig are imported on first use, so code that needs only
the schema does not import ZeroMQ.
"""

from engine.alerts.schema import SCHEMA_VERSION, Alert, Contribution, Endpoint

__all__ = ["SCHEMA_VERSION", "Alert", "AlertConfig", "AlertSink", "Contribution", "Endpoint"]


def __getattr__(name):
    if name == "AlertSink":
        from engine.alerts.sink import AlertSink

        return AlertSink
    if name == "AlertConfig":
        from engine.alerts.config import AlertConfig

        return AlertConfig
    raise AttributeError(f"module 'engine.alerts' has no attribute {name!r}")

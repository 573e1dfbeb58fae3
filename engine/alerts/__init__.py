"""Alerts: schema, aggregation, durable store, ZeroMQ bus and SIEM outputs."""

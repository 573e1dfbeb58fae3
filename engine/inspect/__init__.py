"""Application-layer inspection: stream capture, protocol detection and parsers."""

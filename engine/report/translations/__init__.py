"""Report messages and locale formats, one JSON file per language (see engine.report.locale)."""

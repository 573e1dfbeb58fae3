"""The shipped default model (default.ww) and its metrics (default.metrics.json).

Rebuild both with `python tools/train_default_model.py`; docs/model.md describes the file.
"""

"""The analysis pipeline: capture batches to scored flows to alerts."""

from engine.analyze.pipeline import AnalyzeOptions, Detection, Pipeline

__all__ = ["AnalyzeOptions", "Detection", "Pipeline"]

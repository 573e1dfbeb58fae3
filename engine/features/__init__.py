"""Feature extraction: damped window statistics and the flow feature matrix."""

from engine.features.schema import FEATURE_NAMES, FEATURE_SCHEMA, FEATURE_SCHEMA_HASH, HALF_LIVES_S
from engine.features.matrix import flow_feature_matrix
from engine.features.window import WindowFeatures

__all__ = [
    "FEATURE_NAMES",
    "FEATURE_SCHEMA",
    "FEATURE_SCHEMA_HASH",
    "HALF_LIVES_S",
    "WindowFeatures",
    "flow_feature_matrix",
]

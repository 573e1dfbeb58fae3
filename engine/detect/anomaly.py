"""Isolation forest learnt from benign flows, scored by the compiled tree walker.

An isolation forest (Liu, Ting and Zhou, "Isolation Forest", ICDM 2008)
splits random subsamples on a random feature at a random value until each
row is alone in a leaf. Rows unlike the training data are isolated in fewer
splits, so the score 2^(-mean path length / c(subsample)) is near 1 for
them and near 0.5 or below for typical rows.

Splits are drawn on sign(x) * log1p(|x|), because byte and packet counts
span many decades and a uniform split on the raw value would nearly always
land in the top decade. The transform is monotonic, so each threshold is
mapped back to raw units and scoring needs no transform: the forest is
stored as TreeArrays and walked by engine.detect.scorer.raw_scores, with
each leaf's value being its depth plus c(rows left in the leaf).
"""

from __future__ import annotations

import math

import numpy as np

from engine.detect.trees import TreeArrays

EULER_GAMMA = 0.5772156649015329
SPLIT_MARGIN = 0.25


def average_path_length(rows: float) -> float:
    """Return c(n): the mean unsuccessful-search path length of a binary search tree of n rows."""
    if rows <= 1:
        return 0.0
    if rows == 2:
        return 1.0
    return 2.0 * (math.log(rows - 1.0) + EULER_GAMMA) - 2.0 * (rows - 1.0) / rows


def _compress(X: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(X.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return np.sign(values) * np.log1p(np.abs(values))


def _expand(value: float) -> float:
    return math.copysign(math.expm1(abs(value)), value)


def fit_isolation_forest(X: np.ndarray, trees: int = 200, subsample: int = 512, seed: int = 0) -> tuple[TreeArrays, int]:
    """Fit an isolation forest on X (benign rows); return its arrays and the subsample size used."""
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"invalid training matrix shape {X.shape}: expected at least 2 rows")
    rng = np.random.default_rng(seed)
    compressed = _compress(X)
    subsample = min(subsample, X.shape[0])
    max_depth = int(math.ceil(math.log2(subsample)))
    feature, threshold, left, right = [], [], [], []
    leaf_value, leaf_count, roots = [], [], []

    def new_leaf(rows: int, depth: int) -> int:
        leaf_value.append(depth + average_path_length(rows))
        leaf_count.append(float(rows))
        return ~(len(leaf_value) - 1)

    def grow(sample: np.ndarray, depth: int) -> int:
        if depth >= max_depth or sample.shape[0] <= 1:
            return new_leaf(sample.shape[0], depth)
        low = sample.min(axis=0)
        high = sample.max(axis=0)
        candidates = np.flatnonzero(high > low)
        if candidates.size == 0:
            return new_leaf(sample.shape[0], depth)
        column = int(rng.choice(candidates))
        # Splits may fall up to SPLIT_MARGIN of the range beyond the rows
        # seen. A value outside the benign range can then land in an empty
        # branch (a short path) instead of sharing the edge leaf with the
        # most extreme benign rows.
        span = high[column] - low[column]
        split = rng.uniform(low[column] - SPLIT_MARGIN * span, high[column] + SPLIT_MARGIN * span)
        node = len(feature)
        feature.append(column)
        # Raw units: x <= expand(split) exactly when compress(x) <= split.
        threshold.append(_expand(split))
        left.append(0)
        right.append(0)
        goes_left = sample[:, column] <= split
        left[node] = grow(sample[goes_left], depth + 1)
        right[node] = grow(sample[~goes_left], depth + 1)
        return node

    for _ in range(trees):
        rows = rng.choice(compressed.shape[0], size=subsample, replace=False)
        roots.append(grow(compressed[rows], 0))

    nodes = len(feature)
    arrays = TreeArrays(
        tree_root=np.array(roots, dtype=np.int32),
        tree_class=np.zeros(trees, dtype=np.int32),
        feature=np.array(feature, dtype=np.int32),
        threshold=np.array(threshold, dtype=np.float64),
        left=np.array(left, dtype=np.int32),
        right=np.array(right, dtype=np.int32),
        # Missing type none: NaN reads as 0.0, as _compress does in training.
        decision_flags=np.zeros(nodes, dtype=np.uint8),
        node_value=np.zeros(nodes, dtype=np.float64),
        leaf_value=np.array(leaf_value, dtype=np.float64),
        leaf_count=np.array(leaf_count, dtype=np.float64),
    )
    arrays.validate()
    return arrays, subsample


def scores_from_path_sums(path_sums: np.ndarray, trees: int, subsample: int) -> np.ndarray:
    """Turn summed path lengths over the forest into anomaly scores in (0, 1]."""
    mean_path = path_sums / trees
    return np.power(2.0, -mean_path / average_path_length(subsample))

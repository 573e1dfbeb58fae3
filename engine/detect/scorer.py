"""Compiled tree-ensemble kernels: raw scores, softmax and path contributions.

The kernels walk the flattened arrays of engine.detect.trees, one row at a
time and every tree per row, with no Python per row and the GIL released
(nogil), so a caller may score batches from several threads.
"""

import math

import numpy as np
from numba import njit

from engine.detect.trees import DEFAULT_LEFT, MISSING_NAN, MISSING_SHIFT, MISSING_ZERO

# LightGBM treats |x| <= 1e-35 as zero for missing_type zero (kZeroThreshold).
ZERO_THRESHOLD = 1e-35


@njit(cache=True, nogil=True, inline="always")
def _go_left(value, threshold, flags):
    missing = (flags >> MISSING_SHIFT) & 3
    if math.isnan(value) and missing != MISSING_NAN:
        value = 0.0
    if (missing == MISSING_ZERO and -ZERO_THRESHOLD <= value <= ZERO_THRESHOLD) or (
        missing == MISSING_NAN and math.isnan(value)
    ):
        return (flags & DEFAULT_LEFT) != 0
    return value <= threshold


@njit(cache=True, nogil=True, inline="always")
def _leaf_of(X, row, root, feature, threshold, left, right, flags):
    node = root
    while node >= 0:
        value = np.float64(X[row, feature[node]])
        if _go_left(value, threshold[node], flags[node]):
            node = left[node]
        else:
            node = right[node]
    return ~node


@njit(cache=True, nogil=True, error_model="numpy")
def raw_scores(X, tree_root, tree_class, feature, threshold, left, right, flags, leaf_value, outputs):
    """Return float64 [rows, outputs]: the sum of each output's tree leaves per row."""
    rows = X.shape[0]
    out = np.zeros((rows, outputs))
    for row in range(rows):
        for tree in range(tree_root.shape[0]):
            leaf = _leaf_of(X, row, tree_root[tree], feature, threshold, left, right, flags)
            out[row, tree_class[tree]] += leaf_value[leaf]
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def softmax_rows(raw):
    """Return the row-wise softmax of raw scores, shifted by the row maximum for stability."""
    out = np.empty_like(raw)
    for row in range(raw.shape[0]):
        top = raw[row, 0]
        for c in range(1, raw.shape[1]):
            top = max(top, raw[row, c])
        total = 0.0
        for c in range(raw.shape[1]):
            out[row, c] = math.exp(raw[row, c] - top)
            total += out[row, c]
        for c in range(raw.shape[1]):
            out[row, c] /= total
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def path_contributions(
    X, output, tree_root, tree_class, feature, threshold, left, right, flags, node_value, leaf_value
):
    """Return float64 [rows, features + 1]: per-feature path contributions to one output.

    Walking a row's path, each split adds (value of the child taken - value
    of the node) to the split's feature, and the last column holds the sum
    of the root values (the expected score). Along one tree the steps
    telescope to leaf - root, so each row sums to its raw score exactly, up
    to float rounding.
    """
    rows = X.shape[0]
    features = X.shape[1]
    out = np.zeros((rows, features + 1))
    for row in range(rows):
        for tree in range(tree_root.shape[0]):
            if tree_class[tree] != output:
                continue
            node = tree_root[tree]
            if node < 0:
                out[row, features] += leaf_value[~node]
                continue
            out[row, features] += node_value[node]
            while node >= 0:
                value = np.float64(X[row, feature[node]])
                if _go_left(value, threshold[node], flags[node]):
                    child = left[node]
                else:
                    child = right[node]
                if child >= 0:
                    child_value = node_value[child]
                else:
                    child_value = leaf_value[~child]
                out[row, feature[node]] += child_value - node_value[node]
                node = child
    return out

"""Tree-ensemble scoring: raw scores, softmax and path contributions.

The work runs in the Cython module engine._native.treescorer (ext/treescorer.pyx),
which walks the flattened arrays of engine.detect.trees without the GIL,
so a caller may score batches from several threads. These wrappers only
bring arrays to the dtype and C order the kernels take.
"""

from __future__ import annotations

import numpy as np

from engine._native import treescorer


def _rows(X) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"invalid feature matrix shape {X.shape}: expected (rows, features)")
    if X.dtype != np.float32 and X.dtype != np.float64:
        X = X.astype(np.float64)
    return np.ascontiguousarray(X)


def _tree_arrays(tree_root, tree_class, feature, threshold, left, right, flags):
    return (
        np.ascontiguousarray(tree_root, dtype=np.int32),
        np.ascontiguousarray(tree_class, dtype=np.int32),
        np.ascontiguousarray(feature, dtype=np.int32),
        np.ascontiguousarray(threshold, dtype=np.float64),
        np.ascontiguousarray(left, dtype=np.int32),
        np.ascontiguousarray(right, dtype=np.int32),
        np.ascontiguousarray(flags, dtype=np.uint8),
    )


def raw_scores(X, tree_root, tree_class, feature, threshold, left, right, flags, leaf_value, outputs):
    """Return float64 [rows, outputs]: the sum of each output's tree leaves per row."""
    return treescorer.raw_scores(
        _rows(X),
        *_tree_arrays(tree_root, tree_class, feature, threshold, left, right, flags),
        np.ascontiguousarray(leaf_value, dtype=np.float64),
        int(outputs),
    )


def softmax_rows(raw):
    """Return the row-wise softmax of raw scores, shifted by the row maximum for stability."""
    return treescorer.softmax_rows(np.ascontiguousarray(raw, dtype=np.float64))


def path_contributions(
    X, output, tree_root, tree_class, feature, threshold, left, right, flags, node_value, leaf_value
):
    """Return float64 [rows, features + 1]: per-feature path contributions to one output.

    Walking a row's path, each split adds (value of the child taken - value
    of the node) to the split's feature, and the last column contains the sum
    of the root values (the expected score). Along one tree the steps
    telescope to leaf - root, so each row sums to its raw score exactly, up
    to float rounding.
    """
    return treescorer.path_contributions(
        _rows(X),
        int(output),
        *_tree_arrays(tree_root, tree_class, feature, threshold, left, right, flags),
        np.ascontiguousarray(node_value, dtype=np.float64),
        np.ascontiguousarray(leaf_value, dtype=np.float64),
    )

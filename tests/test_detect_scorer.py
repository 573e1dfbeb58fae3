"""The compiled scorer against LightGBM, and path contributions against a slow walk."""

import math

import numpy as np
import pytest

from engine.detect import scorer
from engine.detect.trees import DEFAULT_LEFT, MISSING_NAN, MISSING_SHIFT, MISSING_ZERO, TreeArrays, trees_from_lightgbm

lightgbm = pytest.importorskip("lightgbm")

FEATURES = 12
CLASSES = 4


def synthetic_rows(seed, rows):
    """Rows with NaNs and exact zeros, so every missing-value route is taken."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan
    X[:, 3] = np.where(rng.random(rows) < 0.3, 0.0, X[:, 3])
    filled = np.nan_to_num(X)
    y = (filled[:, 0] > 0).astype(int) + (filled[:, 1] > 0.5).astype(int) + (filled[:, 3] > 0).astype(int)
    return X, y


@pytest.fixture(scope="module")
def booster():
    X, y = synthetic_rows(0, 20_000)
    params = {"objective": "multiclass", "num_class": CLASSES, "num_leaves": 31, "verbose": -1,
              "seed": 0, "num_threads": 1, "use_missing": True}
    return lightgbm.train(params, lightgbm.Dataset(X, y), num_boost_round=40)


def score(trees, X, outputs):
    return scorer.raw_scores(X, trees.tree_root, trees.tree_class, trees.feature, trees.threshold,
                             trees.left, trees.right, trees.decision_flags, trees.leaf_value, outputs)


def test_scorer_matches_lightgbm_100k_rows(booster):
    trees, outputs = trees_from_lightgbm(booster)
    assert outputs == CLASSES
    X, _ = synthetic_rows(1, 100_000)
    raw = score(trees, X, outputs)
    proba = scorer.softmax_rows(raw)
    expected = booster.predict(X)
    assert proba.shape == expected.shape
    assert np.max(np.abs(proba - expected)) <= 1e-6
    assert np.max(np.abs(raw - booster.predict(X, raw_score=True))) <= 1e-6


def test_scorer_float64_input_matches(booster):
    trees, outputs = trees_from_lightgbm(booster)
    X, _ = synthetic_rows(2, 2_000)
    X64 = X.astype(np.float64)
    assert np.max(np.abs(score(trees, X64, outputs) - booster.predict(X64, raw_score=True))) <= 1e-6


def slow_contributions(trees, row, output):
    """Walk each tree in Python and credit value(child) - value(node) to the split feature."""
    contributions = [0.0] * (FEATURES + 1)
    for tree, root in enumerate(trees.tree_root):
        if trees.tree_class[tree] != output:
            continue
        if root < 0:
            contributions[-1] += trees.leaf_value[~root]
            continue
        node = int(root)
        contributions[-1] += trees.node_value[node]
        while node >= 0:
            value = float(row[trees.feature[node]])
            flags = int(trees.decision_flags[node])
            missing = (flags >> MISSING_SHIFT) & 3
            if math.isnan(value) and missing != MISSING_NAN:
                value = 0.0
            if (missing == MISSING_ZERO and abs(value) <= 1e-35) or (missing == MISSING_NAN and math.isnan(value)):
                left = bool(flags & DEFAULT_LEFT)
            else:
                left = value <= trees.threshold[node]
            child = int(trees.left[node] if left else trees.right[node])
            child_value = trees.node_value[child] if child >= 0 else trees.leaf_value[~child]
            contributions[trees.feature[node]] += child_value - trees.node_value[node]
            node = child
    return contributions


def test_contributions_sum_to_raw_score(booster):
    trees, outputs = trees_from_lightgbm(booster)
    X, _ = synthetic_rows(3, 3_000)
    raw = score(trees, X, outputs)
    for output in range(outputs):
        contributions = scorer.path_contributions(
            X, output, trees.tree_root, trees.tree_class, trees.feature, trees.threshold, trees.left,
            trees.right, trees.decision_flags, trees.node_value, trees.leaf_value)
        assert contributions.shape == (X.shape[0], FEATURES + 1)
        assert np.max(np.abs(contributions.sum(axis=1) - raw[:, output])) <= 1e-9


def test_contributions_match_slow_walk(booster):
    trees, _ = trees_from_lightgbm(booster)
    X, _ = synthetic_rows(4, 20)
    contributions = scorer.path_contributions(
        X, 2, trees.tree_root, trees.tree_class, trees.feature, trees.threshold, trees.left,
        trees.right, trees.decision_flags, trees.node_value, trees.leaf_value)
    for row in range(X.shape[0]):
        assert contributions[row] == pytest.approx(slow_contributions(trees, X[row], 2), abs=1e-12)


def test_contributions_credit_the_signal_features(booster):
    # y depends on features 0, 1 and 3 only; on average they must carry
    # most of the absolute contribution.
    trees, _ = trees_from_lightgbm(booster)
    X, _ = synthetic_rows(5, 2_000)
    contributions = scorer.path_contributions(
        X, 3, trees.tree_root, trees.tree_class, trees.feature, trees.threshold, trees.left,
        trees.right, trees.decision_flags, trees.node_value, trees.leaf_value)
    share = np.abs(contributions[:, :FEATURES]).mean(axis=0)
    assert share[[0, 1, 3]].sum() > 0.8 * share.sum()


def hand_tree():
    """One stump on feature 0 at 1.5 with NaN sent left, plus a single-leaf tree.

    node 0: feature 0 <= 1.5 -> leaf 0 (value -1.0, 30 rows), else leaf 1 (value 2.0, 10 rows)
    tree 1: a lone leaf 2 (value 0.25)
    """
    return TreeArrays(
        tree_root=np.array([0, ~2], dtype=np.int32),
        tree_class=np.array([0, 0], dtype=np.int32),
        feature=np.array([0], dtype=np.int32),
        threshold=np.array([1.5]),
        left=np.array([~0], dtype=np.int32),
        right=np.array([~1], dtype=np.int32),
        decision_flags=np.array([DEFAULT_LEFT | (MISSING_NAN << MISSING_SHIFT)], dtype=np.uint8),
        node_value=np.array([(30 * -1.0 + 10 * 2.0) / 40]),
        leaf_value=np.array([-1.0, 2.0, 0.25]),
        leaf_count=np.array([30.0, 10.0, 1.0]),
    )


def test_hand_tree_routes_rows():
    trees = hand_tree()
    trees.validate()
    X = np.array([[1.0], [1.5], [1.6], [np.nan]], dtype=np.float32)
    raw = score(trees, X, 1)[:, 0]
    assert raw.tolist() == [-0.75, -0.75, 2.25, -0.75]
    contributions = scorer.path_contributions(
        X, 0, trees.tree_root, trees.tree_class, trees.feature, trees.threshold, trees.left,
        trees.right, trees.decision_flags, trees.node_value, trees.leaf_value)
    # bias = root value -0.25 plus the lone leaf 0.25
    assert contributions[:, 1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert contributions[2, 0] == pytest.approx(2.0 - -0.25)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("left", np.array([~7], dtype=np.int32), "past the 3 leaves"),
        ("right", np.array([0], dtype=np.int32), "at or before its parent"),
        ("tree_root", np.array([5, ~2], dtype=np.int32), "past the 1 internal nodes"),
    ],
)
def test_tree_arrays_reject_bad_index(field, value, message):
    trees = hand_tree()
    setattr(trees, field, value)
    with pytest.raises(ValueError, match=message):
        trees.validate()


def test_scorer_strided_input_matches(booster):
    # A column slice of a Fortran-ordered matrix is neither C-contiguous
    # nor float32; the wrapper must copy it, not misread its strides.
    trees, outputs = trees_from_lightgbm(booster)
    X, _ = synthetic_rows(6, 1_000)
    wide = np.asfortranarray(np.hstack([X, X]).astype(np.float64))[:, :FEATURES]
    assert not wide.flags.c_contiguous
    assert np.max(np.abs(score(trees, wide, outputs) - booster.predict(X, raw_score=True))) <= 1e-6


def test_scorer_empty_and_partial_blocks(booster):
    # 0 rows, and row counts around the kernel's 64-row block, give the
    # same scores as one row at a time.
    trees, outputs = trees_from_lightgbm(booster)
    assert score(trees, np.zeros((0, FEATURES), dtype=np.float32), outputs).shape == (0, outputs)
    X, _ = synthetic_rows(7, 130)
    one_by_one = np.vstack([score(trees, X[row:row + 1], outputs) for row in range(X.shape[0])])
    for rows in (1, 63, 64, 65, 130):
        assert np.array_equal(score(trees, X[:rows], outputs), one_by_one[:rows])

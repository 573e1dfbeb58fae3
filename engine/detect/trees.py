"""Flattened tree arrays: the layout the compiled scorer walks.

All trees of a model share one set of node arrays. An internal node i
splits on feature[i] at threshold[i]; left[i] and right[i] are either
another internal node (>= 0) or a leaf, encoded as ~leaf_index (< 0).
tree_root[t] is the root of tree t, encoded the same way, so a tree made of
one leaf has a negative root. Node values (node_value) are the
count-weighted mean of the leaf values below a node, the expected output
that path contributions are measured against.

decision_flags[i] packs how a missing value is routed, with LightGBM's
meaning (LightGBM 4.x, include/LightGBM/tree.h): bit 1 (value 2) sends it
left, bits 2-3 hold the missing type (0 none: NaN is read as 0.0, 1 zero:
0.0 and NaN are missing, 2 nan: NaN is missing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_LEFT = 2
MISSING_SHIFT = 2
MISSING_NONE = 0
MISSING_ZERO = 1
MISSING_NAN = 2
CATEGORICAL = 1

TREE_ARRAY_NAMES = (
    "tree_root",
    "tree_class",
    "feature",
    "threshold",
    "left",
    "right",
    "decision_flags",
    "node_value",
    "leaf_value",
    "leaf_count",
)


@dataclass
class TreeArrays:
    tree_root: np.ndarray  # int32 [trees]
    tree_class: np.ndarray  # int32 [trees]: output column the tree adds to
    feature: np.ndarray  # int32 [nodes]
    threshold: np.ndarray  # float64 [nodes]: go left when value <= threshold
    left: np.ndarray  # int32 [nodes]
    right: np.ndarray  # int32 [nodes]
    decision_flags: np.ndarray  # uint8 [nodes]
    node_value: np.ndarray  # float64 [nodes]
    leaf_value: np.ndarray  # float64 [leaves]
    leaf_count: np.ndarray  # float64 [leaves]: training rows in the leaf

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in TREE_ARRAY_NAMES}

    @classmethod
    def from_dict(cls, arrays) -> "TreeArrays":
        dtypes = {
            "tree_root": np.int32, "tree_class": np.int32, "feature": np.int32,
            "threshold": np.float64, "left": np.int32, "right": np.int32,
            "decision_flags": np.uint8, "node_value": np.float64,
            "leaf_value": np.float64, "leaf_count": np.float64,
        }
        values = {}
        for name, dtype in dtypes.items():
            array = np.asarray(arrays[name])
            if array.dtype != dtype or array.ndim != 1:
                raise ValueError(
                    f"invalid tree array {name}: expected 1-D {np.dtype(dtype)}, got {array.ndim}-D {array.dtype}"
                )
            values[name] = np.ascontiguousarray(array)
        trees = cls(**values)
        trees.validate()
        return trees

    def validate(self) -> None:
        """Raise ValueError unless every index points inside its array (a corrupt file must not crash the scorer)."""
        nodes = self.feature.size
        leaves = self.leaf_value.size
        for name in ("threshold", "left", "right", "decision_flags", "node_value"):
            if getattr(self, name).size != nodes:
                raise ValueError(f"invalid tree arrays: {name} has {getattr(self, name).size} entries, feature has {nodes}")
        if self.leaf_count.size != leaves or self.tree_class.size != self.tree_root.size:
            raise ValueError("invalid tree arrays: leaf or tree array lengths differ")
        for name in ("left", "right", "tree_root"):
            children = getattr(self, name)
            internal = children[children >= 0]
            leaf = ~children[children < 0]
            if internal.size and internal.max() >= nodes:
                raise ValueError(f"invalid tree arrays: {name} points past the {nodes} internal nodes")
            if leaf.size and leaf.max() >= leaves:
                raise ValueError(f"invalid tree arrays: {name} points past the {leaves} leaves")
        # A child index must be larger than its parent's, so a walk always
        # ends; the LightGBM conversion lays trees out that way.
        order = np.arange(nodes)
        for name in ("left", "right"):
            children = getattr(self, name)
            if np.any((children >= 0) & (children <= order)):
                raise ValueError(f"invalid tree arrays: {name} has a child at or before its parent")


def _parse_model_text(text: str) -> tuple[dict, list[dict]]:
    header: dict[str, str] = {}
    trees: list[dict] = []
    current = header
    for line in text.splitlines():
        if line.startswith("Tree="):
            current = {}
            trees.append(current)
            continue
        if line.startswith("end of trees"):
            break
        if "=" in line:
            key, _, value = line.partition("=")
            current[key] = value
    return header, trees


def _numbers(tree: dict, key: str, dtype) -> np.ndarray:
    value = tree.get(key, "").strip()
    if not value:
        return np.zeros(0, dtype=dtype)
    return np.array(value.split(" "), dtype=np.float64).astype(dtype)


def trees_from_lightgbm(booster) -> tuple[TreeArrays, int]:
    """Flatten a trained LightGBM booster; return (arrays, number of output columns).

    Reads the booster's text model (full-precision thresholds and leaf
    values). Categorical splits and linear trees are rejected.
    """
    header, trees = _parse_model_text(booster.model_to_string())
    outputs = int(header.get("num_tree_per_iteration", "1"))
    roots, classes = [], []
    feature, threshold, left, right, flags, node_value = [], [], [], [], [], []
    leaf_value, leaf_count = [], []
    for index, tree in enumerate(trees):
        if int(tree.get("is_linear", "0")):
            raise ValueError("linear trees are not supported; train with linear_tree=false")
        node_base = sum(len(a) for a in feature)
        leaf_base = sum(len(a) for a in leaf_value)
        values = _numbers(tree, "leaf_value", np.float64)
        counts = _numbers(tree, "leaf_count", np.float64)
        if counts.size != values.size:
            counts = np.ones(values.size)
        leaf_value.append(values)
        leaf_count.append(counts)
        classes.append(index % outputs)
        if int(tree["num_leaves"]) == 1:
            roots.append(~leaf_base)
            for array in (feature, threshold, left, right, flags, node_value):
                array.append(np.zeros(0))
            continue
        decision = _numbers(tree, "decision_type", np.int64)
        if np.any(decision & CATEGORICAL):
            raise ValueError("categorical splits are not supported; train without categorical_feature")

        def shift(children):
            return np.where(children >= 0, children + node_base, ~(~children + leaf_base))

        tree_left = _numbers(tree, "left_child", np.int64)
        tree_right = _numbers(tree, "right_child", np.int64)
        roots.append(node_base)
        feature.append(_numbers(tree, "split_feature", np.int64))
        threshold.append(_numbers(tree, "threshold", np.float64))
        left.append(shift(tree_left))
        right.append(shift(tree_right))
        flags.append(decision & 0xFF)
        node_value.append(_expected_values(tree_left, tree_right, values, counts))
    arrays = TreeArrays(
        tree_root=np.array(roots, dtype=np.int32),
        tree_class=np.array(classes, dtype=np.int32),
        feature=np.concatenate(feature).astype(np.int32),
        threshold=np.concatenate(threshold).astype(np.float64),
        left=np.concatenate(left).astype(np.int32),
        right=np.concatenate(right).astype(np.int32),
        decision_flags=np.concatenate(flags).astype(np.uint8),
        node_value=np.concatenate(node_value).astype(np.float64),
        leaf_value=np.concatenate(leaf_value).astype(np.float64),
        leaf_count=np.concatenate(leaf_count).astype(np.float64),
    )
    arrays.validate()
    return arrays, outputs


def _expected_values(left, right, leaf_values, leaf_counts):
    """Return each internal node's count-weighted mean leaf value (children come after parents)."""
    nodes = left.size
    value = np.zeros(nodes)
    weight = np.zeros(nodes)
    for node in range(nodes - 1, -1, -1):
        total_value = 0.0
        total_weight = 0.0
        for child in (left[node], right[node]):
            if child < 0:
                w = leaf_counts[~child]
                total_value += w * leaf_values[~child]
            else:
                w = weight[child]
                total_value += w * value[child]
            total_weight += w
        weight[node] = total_weight
        value[node] = total_value / total_weight if total_weight > 0 else 0.0
    return value

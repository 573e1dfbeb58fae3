# Tree-ensemble kernels: raw scores, row-wise softmax and path contributions.
#
# The kernels walk the flattened arrays of engine.detect.trees (see that
# module for the node layout and the meaning of decision_flags). Callers
# pass validated, C-contiguous arrays through engine.detect.scorer. Every
# node and leaf index is trusted here, because TreeArrays.validate() has
# checked that each one points inside its array and that children come
# after their parents, so every walk ends.
#
# raw_scores is tree-major over blocks of ROW_BLOCK rows, so a tree's nodes
# are fetched into cache once per block instead of once per row. Each row
# still adds its trees in tree order, so the sums equal a row-by-row walk
# bit for bit. All loops run without the GIL.

cimport cython
import numpy as np

from libc.math cimport exp
from libc.stdint cimport int32_t, uint8_t
from libc.stdlib cimport free, malloc

# Same values as engine.detect.trees; the tests compare both paths against
# LightGBM, so a drift shows there.
cdef enum:
    DEFAULT_LEFT = 2
    MISSING_SHIFT = 2
    MISSING_ZERO = 1
    MISSING_NAN = 2

# LightGBM reads |x| <= 1e-35 as zero for missing type zero (kZeroThreshold
# in LightGBM 4.x include/LightGBM/meta.h).
cdef double ZERO_THRESHOLD = 1e-35

# Rows routed through one tree before the next. 64 rows of the 120 float32
# features are 30 KiB, so a block and one tree's nodes fit in L2 together.
cdef enum:
    ROW_BLOCK = 64

ctypedef fused feature_t:
    float
    double


cdef inline bint _go_left(double value, double threshold, uint8_t flags) noexcept nogil:
    cdef int missing = (flags >> MISSING_SHIFT) & 3
    if value != value and missing != MISSING_NAN:
        value = 0.0
    if missing == MISSING_ZERO and -ZERO_THRESHOLD <= value <= ZERO_THRESHOLD:
        return (flags & DEFAULT_LEFT) != 0
    if missing == MISSING_NAN and value != value:
        return (flags & DEFAULT_LEFT) != 0
    return value <= threshold


# One internal node in 24 bytes, so a split reads one cache line instead
# of one line in each of five parallel arrays.
ctypedef struct tree_node:
    double threshold  # go left when value <= threshold
    int32_t feature  # column of X
    int32_t left  # internal node (>= 0) or ~leaf index
    int32_t right
    uint8_t flags  # decision_flags: default-left bit and missing type


cdef tree_node* _pack_nodes(
    const int32_t[::1] feature,
    const double[::1] threshold,
    const int32_t[::1] left,
    const int32_t[::1] right,
    const uint8_t[::1] flags,
) except NULL:
    cdef Py_ssize_t count = feature.shape[0]
    cdef Py_ssize_t node
    cdef tree_node* nodes = <tree_node*>malloc(max(count, 1) * sizeof(tree_node))
    if nodes == NULL:
        raise MemoryError(f"cannot allocate {count} tree nodes")
    for node in range(count):
        nodes[node].threshold = threshold[node]
        nodes[node].feature = feature[node]
        nodes[node].left = left[node]
        nodes[node].right = right[node]
        nodes[node].flags = flags[node]
    return nodes


cdef inline int32_t _leaf_of(const feature_t* row, int32_t root, const tree_node* nodes) noexcept nogil:
    cdef int32_t node = root
    cdef const tree_node* split
    while node >= 0:
        split = &nodes[node]
        if _go_left(<double>row[split.feature], split.threshold, split.flags):
            node = split.left
        else:
            node = split.right
    return ~node


@cython.boundscheck(False)
@cython.wraparound(False)
def raw_scores(
    const feature_t[:, ::1] X,
    const int32_t[::1] tree_root,
    const int32_t[::1] tree_class,
    const int32_t[::1] feature,
    const double[::1] threshold,
    const int32_t[::1] left,
    const int32_t[::1] right,
    const uint8_t[::1] flags,
    const double[::1] leaf_value,
    Py_ssize_t outputs,
):
    """Return float64 [rows, outputs]: the sum of each output's tree leaves per row."""
    cdef Py_ssize_t rows = X.shape[0]
    cdef Py_ssize_t columns = X.shape[1]
    cdef Py_ssize_t trees = tree_root.shape[0]
    out_array = np.zeros((rows, outputs), dtype=np.float64)
    cdef double[:, ::1] out = out_array
    if rows == 0 or trees == 0:
        return out_array

    cdef Py_ssize_t block_start, block_end, row, tree
    cdef int32_t root, leaf, output
    cdef const feature_t* base = &X[0, 0]
    cdef tree_node* nodes = _pack_nodes(feature, threshold, left, right, flags)
    try:
        with nogil:
            block_start = 0
            while block_start < rows:
                block_end = min(block_start + ROW_BLOCK, rows)
                for tree in range(trees):
                    root = tree_root[tree]
                    output = tree_class[tree]
                    if root < 0:
                        for row in range(block_start, block_end):
                            out[row, output] += leaf_value[~root]
                        continue
                    for row in range(block_start, block_end):
                        leaf = _leaf_of(base + row * columns, root, nodes)
                        out[row, output] += leaf_value[leaf]
                block_start = block_end
    finally:
        free(nodes)
    return out_array


@cython.boundscheck(False)
@cython.wraparound(False)
def softmax_rows(const double[:, ::1] raw):
    """Return the row-wise softmax of raw scores, shifted by the row maximum for stability."""
    cdef Py_ssize_t rows = raw.shape[0]
    cdef Py_ssize_t classes = raw.shape[1]
    out_array = np.empty((rows, classes), dtype=np.float64)
    cdef double[:, ::1] out = out_array
    cdef Py_ssize_t row, c
    cdef double top, total
    if classes == 0:
        return out_array
    with nogil:
        for row in range(rows):
            top = raw[row, 0]
            for c in range(1, classes):
                if raw[row, c] > top:
                    top = raw[row, c]
            total = 0.0
            for c in range(classes):
                out[row, c] = exp(raw[row, c] - top)
                total += out[row, c]
            for c in range(classes):
                out[row, c] /= total
    return out_array


@cython.boundscheck(False)
@cython.wraparound(False)
def path_contributions(
    const feature_t[:, ::1] X,
    Py_ssize_t output,
    const int32_t[::1] tree_root,
    const int32_t[::1] tree_class,
    const int32_t[::1] feature,
    const double[::1] threshold,
    const int32_t[::1] left,
    const int32_t[::1] right,
    const uint8_t[::1] flags,
    const double[::1] node_value,
    const double[::1] leaf_value,
):
    """Return float64 [rows, features + 1]: per-feature path contributions to one output.

    Each split on a row's path adds (value of the child taken - value of
    the node) to the split's feature, and the last column holds the sum of
    the root values (the expected score). Along one tree the steps
    telescope to leaf - root, so each row sums to its raw score up to float
    rounding.
    """
    cdef Py_ssize_t rows = X.shape[0]
    cdef Py_ssize_t features = X.shape[1]
    cdef Py_ssize_t trees = tree_root.shape[0]
    out_array = np.zeros((rows, features + 1), dtype=np.float64)
    cdef double[:, ::1] out = out_array
    cdef Py_ssize_t row, tree
    cdef int32_t node, child, split_feature
    cdef double child_value
    with nogil:
        for row in range(rows):
            for tree in range(trees):
                if tree_class[tree] != output:
                    continue
                node = tree_root[tree]
                if node < 0:
                    out[row, features] += leaf_value[~node]
                    continue
                out[row, features] += node_value[node]
                while node >= 0:
                    split_feature = feature[node]
                    if _go_left(<double>X[row, split_feature], threshold[node], flags[node]):
                        child = left[node]
                    else:
                        child = right[node]
                    if child >= 0:
                        child_value = node_value[child]
                    else:
                        child_value = leaf_value[~child]
                    out[row, split_feature] += child_value - node_value[node]
                    node = child
    return out_array

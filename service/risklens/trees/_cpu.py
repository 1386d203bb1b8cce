"""Numba kernels: exact path-dependent TreeSHAP, interaction values and interventional TreeSHAP.

Path-dependent SHAP uses the quadrature form of the Shapley weights: for a root-to-leaf path with
unique features ``D`` (duplicates merged: ``z`` = product of cover ratios, ``o`` = AND of "the row
goes this way"), the leaf's contribution to feature ``i`` is

    v * (o_i - z_i) * integral_0^1 prod_{j != i} (z_j + t (o_j - z_j)) dt,

a polynomial of degree ``D - 1`` in ``t``, so ``ceil(D / 2)`` Gauss-Legendre nodes make it exact.
One pre-order pass per (row, tree) carries the product ``G(t_q)`` down the tree; one reverse pass
sums ``v * G`` up the tree and hands each edge its share (the Linear-TreeSHAP way of attributing a
repeated feature: add at the deeper occurrence, subtract what the shallower one counted). Cost per
row and tree is O(nodes * Q) instead of TreeSHAP's O(leaves * depth^2).
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import njit, prange

from risklens.trees._ensemble import KIND_CAT, KIND_LT, NAN_AS_ZERO, NAN_ZERO_DEFAULT, TreeEnsemble

_ZERO_THRESHOLD = 1e-35  # LightGBM's kZeroThreshold


@njit(inline="always", cache=True)
def _goes_left(x, node, kind, threshold, default_left, nan_mode, cat_start, cat_end, cats, cat_in_left):
    mode = nan_mode[node]
    if math.isnan(x):
        if mode == NAN_AS_ZERO:
            x = 0.0
        else:
            return default_left[node]
    elif mode == NAN_ZERO_DEFAULT and abs(x) <= _ZERO_THRESHOLD:
        return default_left[node]
    k = kind[node]
    if k == KIND_CAT:
        member = False
        if x >= 0.0:
            code = math.floor(x)
            for c in range(cat_start[node], cat_end[node]):
                if cats[c] == code:
                    member = True
                    break
        return member == cat_in_left[node]
    if k == KIND_LT:
        return x < threshold[node]
    return x <= threshold[node]


@njit(cache=True)
def _structure(parent, left, feature, cover, tree_start):
    """Row-independent edge data. An edge is named by its child node.

    Returns (edge_feature, edge_is_left, merged_zero_fraction, prev_same_feature_edge, unique_depth).
    """
    n = len(parent)
    edge_feature = np.zeros(n, np.int32)
    is_left = np.zeros(n, np.bool_)
    zm = np.ones(n, np.float64)
    prev = np.full(n, -1, np.int32)
    unique_depth = np.zeros(n, np.int32)
    for t in range(len(tree_start) - 1):
        root = tree_start[t]
        for node in range(root + 1, tree_start[t + 1]):
            p = parent[node]
            f = feature[p]
            edge_feature[node] = f
            is_left[node] = left[p] == node
            z = cover[node] / cover[p] if cover[p] > 0 else 0.0
            a = p
            while a > root:  # nearest ancestor edge on the same feature
                if edge_feature[a] == f:
                    prev[node] = a
                    break
                a = parent[a]
            if prev[node] >= 0:
                zm[node] = z * zm[prev[node]]
                unique_depth[node] = unique_depth[p]
            else:
                zm[node] = z
                unique_depth[node] = unique_depth[p] + 1
    return edge_feature, is_left, zm, prev, unique_depth


def _gauss_legendre_table(q_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [0, 1]; row ``q`` holds the ``q``-point rule."""
    nodes = np.zeros((q_max + 1, q_max))
    weights = np.zeros((q_max + 1, q_max))
    for q in range(1, q_max + 1):
        x, w = np.polynomial.legendre.leggauss(q)
        nodes[q, :q] = (x + 1.0) / 2.0
        weights[q, :q] = w / 2.0
    return nodes, weights


class CpuStructure:
    """Everything the kernels need that does not depend on the rows, built once per model."""

    def __init__(self, ens: TreeEnsemble) -> None:
        self.ens = ens
        (self.edge_feature, self.is_left, self.zm, self.prev, unique_depth) = _structure(
            ens.parent, ens.left, ens.feature, ens.cover, ens.tree_start)
        n_trees = ens.n_trees
        tree_of_node = np.repeat(np.arange(n_trees), np.diff(ens.tree_start))
        tree_depth = np.zeros(n_trees, dtype=np.int64)
        np.maximum.at(tree_depth, tree_of_node, unique_depth)
        self.max_unique_depth = int(tree_depth.max()) if n_trees else 0
        self.tree_q = np.maximum(1, (tree_depth + 1) // 2).astype(np.int32)
        self.q_max = int(self.tree_q.max()) if n_trees else 1
        self.gl_nodes, self.gl_weights = _gauss_legendre_table(self.q_max)
        self.max_tree_nodes = int(np.diff(ens.tree_start).max()) if n_trees else 1
        # expected value of each tree under the cover distribution
        path_prob = np.ones(ens.n_nodes)
        edge_z = np.ones(ens.n_nodes)
        has_parent = ens.parent >= 0
        parent_cover = ens.cover[ens.parent[has_parent]]
        edge_z[has_parent] = np.divide(ens.cover[has_parent], parent_cover,
                                       out=np.zeros(int(has_parent.sum())), where=parent_cover > 0)
        for node in np.flatnonzero(has_parent):  # pre-order: parent's product is ready
            path_prob[node] = path_prob[ens.parent[node]] * edge_z[node]
        leaves = ens.left < 0
        self.expected_value = float(ens.base_offset + np.sum(path_prob[leaves] * ens.value[leaves]))
        max_d = ens.max_depth + 2
        a = np.arange(max_d)[:, None]
        b = np.arange(max_d)[None, :]
        # a! b! / (a + b + 1)!: Shapley weight of a leaf that needs a features from x and b from r
        self.interventional_weight = np.exp(
            _lgamma(a + 1) + _lgamma(b + 1) - _lgamma(a + b + 2))

    def tree_args(self) -> tuple:
        e = self.ens
        return (e.tree_start, e.left, e.parent, e.kind, e.threshold, e.default_left, e.nan_mode,
                e.cat_start, e.cat_end, e.cats, e.cat_in_left, e.value)


def _lgamma(values: np.ndarray) -> np.ndarray:
    return np.vectorize(math.lgamma)(values.astype(np.float64))


def _row_blocks(n_rows: int) -> int:
    threads = numba.get_num_threads()
    return max(1, min(n_rows, threads * 8))


# ----------------------------------------------------------------------------- prediction

def _predict_impl(X, base, tree_start, left, parent, kind, threshold, default_left, nan_mode,
                  cat_start, cat_end, cats, cat_in_left, value, feature, right):
    n = X.shape[0]
    out = np.full(n, base)
    for r in prange(n):
        acc = 0.0
        for t in range(len(tree_start) - 1):
            node = tree_start[t]
            while left[node] >= 0:
                if _goes_left(X[r, feature[node]], node, kind, threshold, default_left, nan_mode,
                              cat_start, cat_end, cats, cat_in_left):
                    node = left[node]
                else:
                    node = right[node]
            acc += value[node]
        out[r] += acc
    return out


_predict_parallel = njit(parallel=True, cache=True)(_predict_impl)


def predict_raw(structure: CpuStructure, X: np.ndarray) -> np.ndarray:
    e = structure.ens
    return _predict_parallel(X, e.base_offset, *structure.tree_args(), e.feature, e.right)


# ----------------------------------------------------------------------------- path-dependent SHAP

def _shap_impl(X, out, n_blocks, tree_start, left, parent, kind, threshold, default_left, nan_mode,
               cat_start, cat_end, cats, cat_in_left, value, feature, edge_feature, is_left, zm, prev,
               tree_q, gl_nodes, gl_weights, max_tree_nodes, q_max):
    n = X.shape[0]
    n_trees = len(tree_start) - 1
    for block in prange(n_blocks):
        dec = np.empty(max_tree_nodes, np.bool_)
        on = np.empty(max_tree_nodes, np.float64)
        F = np.empty((max_tree_nodes, q_max), np.float64)
        G = np.empty((max_tree_nodes, q_max), np.float64)
        S = np.empty((max_tree_nodes, q_max), np.float64)
        r0 = block * n // n_blocks
        r1 = (block + 1) * n // n_blocks
        for r in range(r0, r1):
            for t in range(n_trees):
                s0 = tree_start[t]
                s1 = tree_start[t + 1]
                if s1 - s0 == 1:
                    continue
                Q = tree_q[t]
                tq = gl_nodes[Q]
                wq = gl_weights[Q]
                for q in range(Q):
                    G[0, q] = 1.0
                    S[0, q] = 0.0
                dec[0] = _goes_left(X[r, feature[s0]], s0, kind, threshold, default_left, nan_mode,
                                    cat_start, cat_end, cats, cat_in_left)
                # down: merged one-fractions, factors and the product G along each path
                for node in range(s0 + 1, s1):
                    i = node - s0
                    pi = parent[node] - s0
                    if left[node] >= 0:
                        dec[i] = _goes_left(X[r, feature[node]], node, kind, threshold, default_left,
                                            nan_mode, cat_start, cat_end, cats, cat_in_left)
                    o = 1.0 if dec[pi] == is_left[node] else 0.0
                    pv = prev[node]
                    if pv >= 0:
                        o *= on[pv - s0]
                    on[i] = o
                    z = zm[node]
                    d = o - z
                    for q in range(Q):
                        f = z + tq[q] * d
                        F[i, q] = f
                        S[i, q] = 0.0
                        if pv >= 0:
                            fp = F[pv - s0, q]
                            G[i, q] = G[pi, q] * f / fp if fp != 0.0 else 0.0
                        else:
                            G[i, q] = G[pi, q] * f
                # up: sum v * G over each subtree, attribute each edge its share
                for node in range(s1 - 1, s0, -1):
                    i = node - s0
                    pi = parent[node] - s0
                    if left[node] < 0:
                        v = value[node]
                        for q in range(Q):
                            S[i, q] = v * G[i, q]
                    acc = 0.0
                    d = on[i] - zm[node]
                    if d != 0.0:
                        for q in range(Q):
                            acc += wq[q] * S[i, q] / F[i, q]
                        acc *= d
                    pv = prev[node]
                    if pv >= 0:
                        dp = on[pv - s0] - zm[pv]
                        if dp != 0.0:
                            sub = 0.0
                            for q in range(Q):
                                sub += wq[q] * S[i, q] / F[pv - s0, q]
                            acc -= dp * sub
                    out[r, edge_feature[node]] += acc
                    for q in range(Q):
                        S[pi, q] += S[i, q]


_shap_serial = njit(cache=True)(_shap_impl)
_shap_parallel = njit(parallel=True, cache=True)(_shap_impl)

_SERIAL_BELOW_ROWS = int(os.environ.get("RISKLENS_TREESHAP_SERIAL_ROWS", "4"))


def shap_values(structure: CpuStructure, X: np.ndarray) -> np.ndarray:
    """Path-dependent SHAP values (n_rows, n_features) in float64; X already float64 and C-ordered."""
    e = structure.ens
    out = np.zeros((X.shape[0], e.n_features), dtype=np.float64)
    if X.shape[0] == 0:
        return out
    kernel = _shap_serial if X.shape[0] < _SERIAL_BELOW_ROWS else _shap_parallel
    n_blocks = 1 if kernel is _shap_serial else _row_blocks(X.shape[0])
    kernel(X, out, n_blocks, *structure.tree_args(), e.feature, structure.edge_feature, structure.is_left,
           structure.zm, structure.prev, structure.tree_q, structure.gl_nodes, structure.gl_weights,
           structure.max_tree_nodes, structure.q_max)
    return out


# ----------------------------------------------------------------------------- interaction values

@njit(parallel=True, cache=True)
def _interactions_kernel(X, out, phi, tree_start, left, parent, kind, threshold, default_left, nan_mode,
                         cat_start, cat_end, cats, cat_in_left, value, feature, edge_feature, is_left, zm,
                         prev, tree_q, gl_nodes, gl_weights, max_tree_nodes, q_max, max_depth, n_features):
    n = X.shape[0]
    n_trees = len(tree_start) - 1
    for r in prange(n):
        dec = np.empty(max_tree_nodes, np.bool_)
        on = np.empty(max_tree_nodes, np.float64)
        F = np.empty((max_tree_nodes, q_max), np.float64)
        G = np.empty((max_tree_nodes, q_max), np.float64)
        seen = np.full(n_features, -1, np.int64)
        uniq = np.empty(max_depth + 1, np.int64)  # edge nodes of the deepest occurrence per feature
        share = np.empty(max_depth + 1, np.float64)
        stamp = 0
        for t in range(n_trees):
            s0 = tree_start[t]
            s1 = tree_start[t + 1]
            if s1 - s0 == 1:
                continue
            Q = tree_q[t]
            tq = gl_nodes[Q]
            wq = gl_weights[Q]
            for q in range(Q):
                G[0, q] = 1.0
            dec[0] = _goes_left(X[r, feature[s0]], s0, kind, threshold, default_left, nan_mode,
                                cat_start, cat_end, cats, cat_in_left)
            for node in range(s0 + 1, s1):
                i = node - s0
                pi = parent[node] - s0
                if left[node] >= 0:
                    dec[i] = _goes_left(X[r, feature[node]], node, kind, threshold, default_left,
                                        nan_mode, cat_start, cat_end, cats, cat_in_left)
                o = 1.0 if dec[pi] == is_left[node] else 0.0
                pv = prev[node]
                if pv >= 0:
                    o *= on[pv - s0]
                on[i] = o
                z = zm[node]
                for q in range(Q):
                    f = z + tq[q] * (o - z)
                    F[i, q] = f
                    if pv >= 0:
                        fp = F[pv - s0, q]
                        G[i, q] = G[pi, q] * f / fp if fp != 0.0 else 0.0
                    else:
                        G[i, q] = G[pi, q] * f
                if left[node] >= 0:
                    continue
                # a leaf: its unique features are the deepest occurrences on the way up
                stamp += 1
                D = 0
                a = node
                while a > s0:
                    f_a = edge_feature[a]
                    if seen[f_a] != stamp:
                        seen[f_a] = stamp
                        uniq[D] = a
                        D += 1
                    a = parent[a]
                v = value[node]
                for k in range(D):
                    ea = uniq[k]
                    da = on[ea - s0] - zm[ea]
                    acc = 0.0
                    if da != 0.0:
                        for q in range(Q):
                            acc += wq[q] * G[i, q] / F[ea - s0, q]
                    share[k] = v * da * acc
                    phi[r, edge_feature[ea]] += share[k]
                for k in range(D):
                    ea = uniq[k]
                    da = on[ea - s0] - zm[ea]
                    if da == 0.0:
                        continue
                    for m in range(k + 1, D):
                        eb = uniq[m]
                        db = on[eb - s0] - zm[eb]
                        if db == 0.0:
                            continue
                        acc = 0.0
                        for q in range(Q):
                            acc += wq[q] * G[i, q] / (F[ea - s0, q] * F[eb - s0, q])
                        half = 0.5 * v * da * db * acc
                        out[r, edge_feature[ea], edge_feature[eb]] += half
                        out[r, edge_feature[eb], edge_feature[ea]] += half
        for j in range(n_features):
            off = 0.0
            for k in range(n_features):
                if k != j:
                    off += out[r, j, k]
            out[r, j, j] = phi[r, j] - off


def interaction_values(structure: CpuStructure, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(interactions (n, f, f), shap values (n, f)); rows of interactions sum to the SHAP values."""
    e = structure.ens
    n, f = X.shape[0], e.n_features
    out = np.zeros((n, f, f), dtype=np.float64)
    phi = np.zeros((n, f), dtype=np.float64)
    if n:
        _interactions_kernel(X, out, phi, *structure.tree_args(), e.feature, structure.edge_feature,
                             structure.is_left, structure.zm, structure.prev, structure.tree_q,
                             structure.gl_nodes, structure.gl_weights, structure.max_tree_nodes,
                             structure.q_max, e.max_depth, f)
    return out, phi


# ----------------------------------------------------------------------------- interventional SHAP

@njit(parallel=True, cache=True)
def _decisions_kernel(X, n_nodes, left, feature, kind, threshold, default_left, nan_mode, cat_start,
                      cat_end, cats, cat_in_left):
    out = np.zeros((X.shape[0], n_nodes), np.bool_)
    for r in prange(X.shape[0]):
        for node in range(n_nodes):
            if left[node] >= 0:
                out[r, node] = _goes_left(X[r, feature[node]], node, kind, threshold, default_left,
                                          nan_mode, cat_start, cat_end, cats, cat_in_left)
    return out


@njit(parallel=True, cache=True)
def _interventional_kernel(x_dec, r_dec, fx, fr, transform, out, tree_start, left, parent, value,
                           subtree_end, edge_feature, is_left, prev, weight, max_tree_nodes, max_depth,
                           n_features):
    n = x_dec.shape[0]
    n_bg = r_dec.shape[0]
    n_trees = len(tree_start) - 1
    for r in prange(n):
        xok = np.empty(max_tree_nodes, np.bool_)
        rok = np.empty(max_tree_nodes, np.bool_)
        n_a = np.empty(max_tree_nodes, np.int64)
        n_b = np.empty(max_tree_nodes, np.int64)
        seen = np.full(n_features, -1, np.int64)
        pair = np.zeros(n_features, np.float64)
        stamp = 0
        for b in range(n_bg):
            for j in range(n_features):
                pair[j] = 0.0
            for t in range(n_trees):
                s0 = tree_start[t]
                s1 = tree_start[t + 1]
                n_a[0] = 0
                n_b[0] = 0
                node = s0 + 1
                while node < s1:
                    i = node - s0
                    p = parent[node]
                    pi = p - s0
                    xo = x_dec[r, p] == is_left[node]
                    ro = r_dec[b, p] == is_left[node]
                    pv = prev[node]
                    was_a = False
                    was_b = False
                    if pv >= 0:
                        xo = xo and xok[pv - s0]
                        ro = ro and rok[pv - s0]
                        was_a = xok[pv - s0] and not rok[pv - s0]
                        was_b = rok[pv - s0] and not xok[pv - s0]
                    if not xo and not ro:  # neither x nor r can reach this subtree
                        node = subtree_end[node]
                        continue
                    xok[i] = xo
                    rok[i] = ro
                    n_a[i] = n_a[pi] - was_a + (xo and not ro)
                    n_b[i] = n_b[pi] - was_b + (ro and not xo)
                    if left[node] < 0 and n_a[i] + n_b[i] > 0:
                        na = n_a[i]
                        nb = n_b[i]
                        v = value[node]
                        stamp += 1
                        a = node
                        while a > s0:
                            f_a = edge_feature[a]
                            if seen[f_a] != stamp:
                                seen[f_a] = stamp
                                ia = a - s0
                                if xok[ia] and not rok[ia]:
                                    pair[f_a] += v * weight[na - 1, nb]
                                elif rok[ia] and not xok[ia]:
                                    pair[f_a] -= v * weight[na, nb - 1]
                            a = parent[a]
                    node += 1
            scale = 1.0
            if transform == 1:  # rescale the margin attributions onto the logistic output
                sx = 1.0 / (1.0 + math.exp(-fx[r]))
                sr = 1.0 / (1.0 + math.exp(-fr[b]))
                gap = fx[r] - fr[b]
                scale = (sx - sr) / gap if gap != 0.0 else sx * (1.0 - sx)
            for j in range(n_features):
                out[r, j] += pair[j] * scale / n_bg


def interventional_values(structure: CpuStructure, X: np.ndarray, background: np.ndarray,
                          fx: np.ndarray, fr: np.ndarray, logistic: bool) -> np.ndarray:
    e = structure.ens
    out = np.zeros((X.shape[0], e.n_features), dtype=np.float64)
    if X.shape[0] == 0:
        return out
    dec_args = (e.n_nodes, e.left, e.feature, e.kind, e.threshold, e.default_left, e.nan_mode, e.cat_start,
                e.cat_end, e.cats, e.cat_in_left)
    x_dec = _decisions_kernel(X, *dec_args)
    r_dec = _decisions_kernel(background, *dec_args)
    _interventional_kernel(x_dec, r_dec, fx, fr, 1 if logistic else 0, out, e.tree_start, e.left, e.parent,
                           e.value, e.subtree_end, structure.edge_feature, structure.is_left, structure.prev,
                           structure.interventional_weight, structure.max_tree_nodes, e.max_depth, e.n_features)
    return out

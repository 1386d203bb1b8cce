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
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from risklens.trees import _aot
from risklens.trees._ensemble import KIND_CAT, KIND_LT, NAN_AS_ZERO, NAN_DEFAULT, NAN_ZERO_DEFAULT, TreeEnsemble

_ZERO_THRESHOLD = 1e-35  # LightGBM's kZeroThreshold
# per-edge quadrature tables kept for the whole model up to this size (two float64 tables)
_TABLE_BUDGET_BYTES = 256 * 1024**2


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
        compiled = _aot.load()
        structure = compiled.structure if compiled is not None else _structure
        (self.edge_feature, self.is_left, self.zm, self.prev, unique_depth) = structure(
            ens.parent, ens.left, ens.feature, ens.cover, ens.tree_start)
        n_trees = ens.n_trees
        tree_of_node = np.repeat(np.arange(n_trees), np.diff(ens.tree_start))
        tree_depth = np.zeros(n_trees, dtype=np.int64)
        np.maximum.at(tree_depth, tree_of_node, unique_depth)
        self.max_unique_depth = int(tree_depth.max()) if n_trees else 0
        self.tree_q = np.maximum(1, (tree_depth + 1) // 2).astype(np.int32)
        self.q_max = int(self.tree_q.max()) if n_trees else 1
        self.gl_nodes, self.gl_weights = _gauss_legendre_table(self.q_max)
        # the deepest tree's rule (exact for every tree) as tuples: the few-rows kernel is compiled per length
        self.deepest_rule = (tuple(float(t) for t in self.gl_nodes[self.q_max, :self.q_max]),
                             tuple(float(w) for w in self.gl_weights[self.q_max, :self.q_max]))
        self.max_tree_nodes = int(np.diff(ens.tree_start).max()) if n_trees else 1
        # numeric splits decide with one comparison: x <= t is x < nextafter(t, inf) for every
        # non-NaN float64
        self.thr_lt = np.where(ens.kind == KIND_LT, ens.threshold, np.nextafter(ens.threshold, np.inf))
        self.numeric = (ens.kind != KIND_CAT) & np.isfinite(ens.threshold) & np.isfinite(self.thr_lt)
        self.inv_zm = np.divide(1.0, self.zm, out=np.zeros_like(self.zm), where=self.zm > 0)
        # 1 / factor and (1 - z) w_q / factor of every edge on the row's side, for the whole model
        # when that is small; otherwise each row block builds them per tree
        self.tables_ready = ens.n_nodes * self.q_max * 16 <= _TABLE_BUDGET_BYTES
        table_rows = ens.n_nodes if self.tables_ready else 0
        self.inv_hot = np.zeros((table_rows, self.q_max))
        self.coef_hot = np.zeros((table_rows, self.q_max))
        if self.tables_ready:
            fill = compiled.fill_all_hot_tables if compiled is not None else _fill_all_hot_tables
            fill(ens.tree_start, self.zm, self.tree_q, self.gl_nodes, self.gl_weights, self.inv_hot, self.coef_hot)
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

def _predict_impl(X, base, tree_start, left, right, feature, numeric, thr_lt, kind, threshold, default_left, nan_mode,
                  cat_start, cat_end, cats, cat_in_left, value):
    n = X.shape[0]
    out = np.full(n, base)
    for r in prange(n):
        acc = 0.0
        for t in range(len(tree_start) - 1):
            node = tree_start[t]
            while left[node] >= 0:
                x = X[r, feature[node]]
                if numeric[node]:  # written out: a helper taking the node arrays costs more than the comparison
                    mode = nan_mode[node]
                    if mode == NAN_AS_ZERO:
                        x = 0.0 if x != x else x
                    take_default = x != x or (mode == NAN_ZERO_DEFAULT and abs(x) <= _ZERO_THRESHOLD)
                    go_left = default_left[node] if take_default else x < thr_lt[node]
                else:
                    go_left = _goes_left(x, node, kind, threshold, default_left, nan_mode, cat_start, cat_end, cats,
                                         cat_in_left)
                node = left[node] if go_left else right[node]
            acc += value[node]
        out[r] += acc
    return out


_predict_parallel = njit(parallel=True, cache=True)(_predict_impl)
_predict_serial = njit(cache=True)(_predict_impl)  # no thread wake-up for a single claim


def _serial_compiled() -> Any:
    """The ahead-of-time kernels when this process runs kernels on one thread (batch workers); else None."""
    compiled = _aot.load()
    return compiled if compiled is not None and numba.get_num_threads() == 1 else None


def predict_raw(structure: CpuStructure, X: np.ndarray) -> np.ndarray:
    e = structure.ens
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.shape[0] < TABLE_KERNEL_MIN_ROWS:
        compiled = _aot.load()
        kernel = compiled.predict if compiled is not None else _predict_serial
    else:
        compiled = _serial_compiled()
        kernel = compiled.predict if compiled is not None else _predict_parallel
    return kernel(X, e.base_offset, e.tree_start, e.left, e.right, e.feature, structure.numeric, structure.thr_lt,
                  e.kind, e.threshold, e.default_left, e.nan_mode, e.cat_start, e.cat_end, e.cats, e.cat_in_left,
                  e.value)


# ----------------------------------------------------------------------------- path-dependent SHAP

# rows explained together (a block): every per-node step is a loop over the block's rows, which the
# compiler turns into SIMD arithmetic without branches on each row's direction. 64 measured fastest
# on 100-1,000-node trees (the per-block scratch stays in L2).
_LANES = 64


@njit(inline="always", cache=True)
def _decide_lanes(xt, lanes, node, dec, i, feature, numeric, thr_lt, kind, threshold, default_left, nan_mode,
                  cat_start, cat_end, cats, cat_in_left):
    """dec[i, lane] = 1.0 where the lane's row goes left at ``node``; numeric splits compare without branches."""
    f = feature[node]
    if numeric[node]:
        thr = thr_lt[node]
        dl = 1.0 if default_left[node] else 0.0
        mode = nan_mode[node]
        if mode == NAN_DEFAULT:
            for lane in range(lanes):
                x = xt[f, lane]
                d = 1.0 if x < thr else 0.0
                dec[i, lane] = dl if x != x else d
        elif mode == NAN_AS_ZERO:
            for lane in range(lanes):
                x = xt[f, lane]
                x = 0.0 if x != x else x
                dec[i, lane] = 1.0 if x < thr else 0.0
        else:  # NAN_ZERO_DEFAULT: NaN and (near) zero take the default
            for lane in range(lanes):
                x = xt[f, lane]
                d = 1.0 if x < thr else 0.0
                dec[i, lane] = dl if (x != x or abs(x) <= _ZERO_THRESHOLD) else d
    else:
        for lane in range(lanes):
            dec[i, lane] = 1.0 if _goes_left(xt[f, lane], node, kind, threshold, default_left, nan_mode,
                                             cat_start, cat_end, cats, cat_in_left) else 0.0


@njit(cache=True)
def _fill_hot_tables(s0, s1, offset, zm, tq, wq, n_q, inv_hot, coef_hot):
    """Per edge of one tree: 1 / (z + t_q (1 - z)) and w_q (1 - z) / (z + t_q (1 - z)) at row ``node - offset``."""
    for node in range(s0 + 1, s1):
        i = node - offset
        z = zm[node]
        for q in range(n_q):
            inv = 1.0 / (z + tq[q] * (1.0 - z))
            inv_hot[i, q] = inv
            coef_hot[i, q] = wq[q] * (1.0 - z) * inv


@njit(cache=True)
def _fill_all_hot_tables(tree_start, zm, tree_q, gl_nodes, gl_weights, inv_hot, coef_hot):
    for t in range(len(tree_start) - 1):
        n_q = tree_q[t]
        _fill_hot_tables(tree_start[t], tree_start[t + 1], 0, zm, gl_nodes[n_q], gl_weights[n_q], n_q,
                         inv_hot, coef_hot)


def _shap_impl(X, out, lanes, tree_start, left, parent, feature, numeric, thr_lt, kind, threshold,
               default_left, nan_mode, cat_start, cat_end, cats, cat_in_left, value, edge_feature, is_left, zm,
               inv_zm, prev, tree_q, gl_nodes, gl_weights, inv_hot_all, coef_hot_all, tables_ready,
               max_tree_nodes, q_max):
    """Rows are cut into blocks of ``lanes`` rows, one task each; every node step loops over the block.

    For an edge the row's factor is ``z (1 - t) + hot * t`` (hot = the row follows the edge); its
    coefficient ``(o - z) w / factor`` is ``-w / (1 - t)`` when cold (z > 0) and a table entry when hot.
    """
    n, n_features = X.shape
    n_trees = len(tree_start) - 1
    n_blocks = (n + lanes - 1) // lanes
    for block in prange(n_blocks):
        r0 = block * lanes
        r1 = min(n, r0 + lanes)
        xt = np.empty((n_features, lanes), np.float64)
        acc = np.zeros((n_features, lanes), np.float64)
        for lane in range(lanes):
            r = min(r0 + lane, r1 - 1)  # spare lanes of the last block repeat its last row
            for f in range(n_features):
                xt[f, lane] = X[r, f]
        dec = np.empty((max_tree_nodes, lanes), np.float64)  # 1.0: goes left at this node
        hot = np.empty((max_tree_nodes, lanes), np.float64)  # 1.0: follows this edge (all splits on its feature)
        G = np.empty((max_tree_nodes, q_max, lanes), np.float64)  # product of the path's factors at t_q
        S = np.empty((max_tree_nodes, q_max, lanes), np.float64)  # sum of v * G over the subtree
        one_minus_t = np.empty(q_max, np.float64)
        inv_one_minus_t = np.empty(q_max, np.float64)
        coef_cold = np.empty(q_max, np.float64)
        if tables_ready:
            inv_hot = inv_hot_all
            coef_hot = coef_hot_all
        else:
            inv_hot = np.empty((max_tree_nodes, q_max), np.float64)
            coef_hot = np.empty((max_tree_nodes, q_max), np.float64)
        for t in range(n_trees):
            s0 = tree_start[t]
            s1 = tree_start[t + 1]
            if s1 - s0 == 1:
                continue
            n_q = tree_q[t]
            tq = gl_nodes[n_q]
            wq = gl_weights[n_q]
            for q in range(n_q):
                one_minus_t[q] = 1.0 - tq[q]
                inv_one_minus_t[q] = 1.0 / one_minus_t[q]
                coef_cold[q] = -wq[q] * inv_one_minus_t[q]
            if tables_ready:
                table_offset = 0
            else:  # tables too large to keep for the whole model: build this tree's once per row block
                table_offset = s0
                _fill_hot_tables(s0, s1, s0, zm, tq, wq, n_q, inv_hot, coef_hot)
            for q in range(n_q):
                for lane in range(lanes):
                    G[0, q, lane] = 1.0
            _decide_lanes(xt, lanes, s0, dec, 0, feature, numeric, thr_lt, kind, threshold, default_left, nan_mode,
                          cat_start, cat_end, cats, cat_in_left)
            # down: which rows follow each edge, and the product G of the factors along the path
            for node in range(s0 + 1, s1):
                i = node - s0
                pi = parent[node] - s0
                if is_left[node]:
                    for lane in range(lanes):
                        hot[i, lane] = dec[pi, lane]
                else:
                    for lane in range(lanes):
                        hot[i, lane] = 1.0 - dec[pi, lane]
                pv = prev[node]
                if pv >= 0:
                    pvi = pv - s0
                    for lane in range(lanes):
                        hot[i, lane] *= hot[pvi, lane]
                if left[node] >= 0:
                    _decide_lanes(xt, lanes, node, dec, i, feature, numeric, thr_lt, kind, threshold, default_left,
                                  nan_mode, cat_start, cat_end, cats, cat_in_left)
                    for q in range(n_q):
                        for lane in range(lanes):
                            S[i, q, lane] = 0.0
                z = zm[node]
                for q in range(n_q):
                    cold = z * one_minus_t[q]
                    tqq = tq[q]
                    for lane in range(lanes):
                        G[i, q, lane] = G[pi, q, lane] * (cold + hot[i, lane] * tqq)
                if pv >= 0:  # a repeated feature: its shallower factor is replaced, not multiplied
                    pvi = pv - s0
                    iz = inv_zm[pv]
                    tp = pv - table_offset
                    for q in range(n_q):
                        ic = iz * inv_one_minus_t[q]
                        dh = inv_hot[tp, q] - ic
                        for lane in range(lanes):
                            G[i, q, lane] *= ic + hot[pvi, lane] * dh
            # up: sum v * G over each subtree, attribute each edge its share
            for node in range(s1 - 1, s0, -1):
                i = node - s0
                pi = parent[node] - s0
                if left[node] < 0:
                    v = value[node]
                    for q in range(n_q):
                        for lane in range(lanes):
                            S[i, q, lane] = v * G[i, q, lane]
                ef = edge_feature[node]
                live = 1.0 if zm[node] > 0.0 else 0.0
                ti = node - table_offset
                pv = prev[node]
                for q in range(n_q):
                    kc = live * coef_cold[q]
                    dk = coef_hot[ti, q] - kc
                    for lane in range(lanes):
                        acc[ef, lane] += S[i, q, lane] * (kc + hot[i, lane] * dk)
                        S[pi, q, lane] += S[i, q, lane]
                if pv >= 0:  # take back what the shallower edge on the same feature counts
                    pvi = pv - s0
                    tp = pv - table_offset
                    live_p = 1.0 if zm[pv] > 0.0 else 0.0
                    for q in range(n_q):
                        kc = live_p * coef_cold[q]
                        dk = coef_hot[tp, q] - kc
                        for lane in range(lanes):
                            acc[ef, lane] -= S[i, q, lane] * (kc + hot[pvi, lane] * dk)
        for r in range(r0, r1):
            for f in range(n_features):
                out[r, f] = acc[f, r - r0]


@njit(cache=True)
def _shap_few_rows(X, out, t_nodes, t_weights, tree_start, left, parent, feature, numeric, thr_lt, kind, threshold,
                   default_left, nan_mode, cat_start, cat_end, cats, cat_in_left, value, edge_feature, is_left, zm,
                   inv_zm, prev, max_tree_nodes):
    """One row at a time, for latency: the same quadrature, one rule for every tree, no tables.

    ``t_nodes`` / ``t_weights`` are tuples, so their length (the number of quadrature nodes, enough for
    the deepest tree; a rule with more nodes is still exact) is a compile-time constant and every
    per-node loop over it is unrolled. Leaf values are 0 at internal nodes and decisions at leaves are
    never read, so the passes need no branch on the node type.
    """
    nq = len(t_nodes)
    tq = np.empty(nq, np.float64)
    one_minus_t = np.empty(nq, np.float64)
    inv_one_minus_t = np.empty(nq, np.float64)
    coef_cold = np.empty(nq, np.float64)
    for q in range(nq):
        tq[q] = t_nodes[q]
        one_minus_t[q] = 1.0 - t_nodes[q]
        inv_one_minus_t[q] = 1.0 / one_minus_t[q]
        coef_cold[q] = -t_weights[q] * inv_one_minus_t[q]
    wq = np.empty(nq, np.float64)
    for q in range(nq):
        wq[q] = t_weights[q]
    dec = np.empty(max_tree_nodes, np.bool_)
    hot = np.empty(max_tree_nodes, np.bool_)
    G = np.empty(max_tree_nodes * nq, np.float64)
    S = np.empty(max_tree_nodes * nq, np.float64)
    inv_f = np.empty(max_tree_nodes * nq, np.float64)
    coef = np.empty(max_tree_nodes * nq, np.float64)
    for r in range(X.shape[0]):
        for t in range(len(tree_start) - 1):
            s0 = tree_start[t]
            s1 = tree_start[t + 1]
            if s1 - s0 == 1:
                continue
            for q in range(nq):
                G[q] = 1.0
                S[q] = 0.0
            dec[0] = _goes_left(X[r, feature[s0]], s0, kind, threshold, default_left, nan_mode, cat_start, cat_end,
                                cats, cat_in_left)
            for node in range(s0 + 1, s1):
                i = node - s0
                pi = parent[node] - s0
                h = dec[pi] == is_left[node]
                pv = prev[node]
                if pv >= 0:
                    h = h and hot[pv - s0]
                hot[i] = h
                # written out here: a helper taking the node arrays costs more than the comparison
                if numeric[node]:
                    x = X[r, feature[node]]
                    mode = nan_mode[node]
                    if mode == NAN_AS_ZERO:
                        x = 0.0 if x != x else x
                    take_default = x != x or (mode == NAN_ZERO_DEFAULT and abs(x) <= _ZERO_THRESHOLD)
                    dec[i] = default_left[node] if take_default else x < thr_lt[node]
                else:
                    dec[i] = _goes_left(X[r, feature[node]], node, kind, threshold, default_left, nan_mode, cat_start,
                                        cat_end, cats, cat_in_left)
                z = zm[node]
                iz = inv_zm[node]
                live = 1.0 if z > 0.0 else 0.0
                hf = 1.0 if h else 0.0
                b = i * nq
                bp = pi * nq
                for q in range(nq):
                    f_hot = z * one_minus_t[q] + tq[q]  # > 0 always
                    inv_hot = 1.0 / f_hot
                    inv_f[b + q] = inv_hot if h else iz * inv_one_minus_t[q]
                    coef[b + q] = wq[q] * (1.0 - z) * inv_hot if h else live * coef_cold[q]
                    G[b + q] = G[bp + q] * (z * one_minus_t[q] + hf * tq[q])
                    S[b + q] = 0.0
                if pv >= 0:  # a repeated feature: its shallower factor is replaced, not multiplied
                    bv = (pv - s0) * nq
                    for q in range(nq):
                        G[b + q] *= inv_f[bv + q]
            for node in range(s1 - 1, s0, -1):
                i = node - s0
                b = i * nq
                bp = (parent[node] - s0) * nq
                v = value[node]
                acc = 0.0
                for q in range(nq):
                    s = S[b + q] + v * G[b + q]
                    acc += s * coef[b + q]
                    S[bp + q] += s
                    S[b + q] = s
                pv = prev[node]
                if pv >= 0:
                    bv = (pv - s0) * nq
                    for q in range(nq):
                        acc -= S[b + q] * coef[bv + q]
                out[r, edge_feature[node]] += acc


_shap_parallel = njit(parallel=True, cache=True)(_shap_impl)

# Below this many rows one row at a time is faster than blocks of too few rows. Both kernels are
# exact, but their sums run in different orders, so a row's values can differ in the last bits
# between the two; the block kernel gives a row the same bits whatever block it sits in.
TABLE_KERNEL_MIN_ROWS = int(os.environ.get("RISKLENS_TREESHAP_SERIAL_ROWS", "4"))


def _lanes(n_rows: int) -> int:
    """Rows per block: _LANES, or fewer so that a small batch still gives every thread a block."""
    return max(1, min(_LANES, -(-n_rows // numba.get_num_threads())))


def shap_values(structure: CpuStructure, X: np.ndarray) -> np.ndarray:
    """Path-dependent SHAP values (n_rows, n_features) in float64; X already float64 and C-ordered."""
    e = structure.ens
    out = np.zeros((X.shape[0], e.n_features), dtype=np.float64)
    if X.shape[0] == 0:
        return out
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.shape[0] < TABLE_KERNEL_MIN_ROWS:
        compiled = _aot.load()
        kernel = _shap_few_rows
        if compiled is not None and structure.q_max <= _aot.FEW_ROWS_MAX_NODES:
            kernel = getattr(compiled, f"shap_few_rows_{structure.q_max}")
        kernel(X, out, structure.deepest_rule[0], structure.deepest_rule[1], e.tree_start, e.left, e.parent,
               e.feature, structure.numeric, structure.thr_lt, e.kind, e.threshold, e.default_left, e.nan_mode,
               e.cat_start, e.cat_end, e.cats, e.cat_in_left, e.value, structure.edge_feature, structure.is_left,
               structure.zm, structure.inv_zm, structure.prev, structure.max_tree_nodes)
        return out
    compiled = _serial_compiled()
    kernel = compiled.shap_blocks if compiled is not None else _shap_parallel
    kernel(X, out, _lanes(X.shape[0]), e.tree_start, e.left, e.parent, e.feature, structure.numeric,
           structure.thr_lt, e.kind, e.threshold, e.default_left, e.nan_mode, e.cat_start, e.cat_end, e.cats,
           e.cat_in_left, e.value, structure.edge_feature, structure.is_left, structure.zm, structure.inv_zm,
           structure.prev, structure.tree_q, structure.gl_nodes, structure.gl_weights, structure.inv_hot,
           structure.coef_hot, structure.tables_ready, structure.max_tree_nodes, structure.q_max)
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

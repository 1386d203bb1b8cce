"""Array (NumPy / CuPy) path-dependent TreeSHAP over (rows x root-to-leaf paths).

The same code runs on NumPy and CuPy (``xp``); CuPy is imported lazily by the caller. Each leaf
becomes a path with its unique features (duplicates merged: ``z`` = product of cover ratios, ``o``
= AND of the row's decisions). With Gauss-Legendre nodes ``t_q`` (exact for the degree ``D - 1``
Shapley-weight polynomial):

    phi_i += v * (o_i - z_i) * sum_q w_q * prod_j (z_j + t_q (o_j - z_j)) / (z_i + t_q (o_i - z_i))

Rows are processed in chunks whose working set fits the memory budget the caller passes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from risklens.trees._cpu import CpuStructure, _gauss_legendre_table
from risklens.trees._ensemble import KIND_CAT, KIND_LT, NAN_AS_ZERO, NAN_ZERO_DEFAULT, TreeEnsemble


@njit(cache=True)
def _paths_kernel(left, parent, tree_start, edge_feature, is_left, zm, n_leaves, max_depth):
    path_value_node = np.empty(n_leaves, np.int64)
    path_feat = np.full((n_leaves, max_depth), -1, np.int64)
    path_z = np.ones((n_leaves, max_depth), np.float64)
    elem_node = np.zeros((n_leaves, max_depth), np.int64)  # parent node whose decision is read
    elem_left = np.zeros((n_leaves, max_depth), np.bool_)
    elem_slot = np.full((n_leaves, max_depth), max_depth, np.int64)  # max_depth = padding slot
    slot_of = np.full(max_depth + 1, -1, np.int64)
    p = 0
    for t in range(len(tree_start) - 1):
        s0 = tree_start[t]
        for node in range(s0, tree_start[t + 1]):
            if left[node] >= 0:
                continue
            path_value_node[p] = node
            D = 0
            e = 0
            a = node
            while a > s0:
                f = edge_feature[a]
                slot = -1
                for k in range(D):
                    if path_feat[p, k] == f:
                        slot = k
                        break
                if slot < 0:  # first seen walking up = deepest occurrence = merged fractions
                    slot = D
                    path_feat[p, D] = f
                    path_z[p, D] = zm[a]
                    D += 1
                elem_node[p, e] = parent[a]
                elem_left[p, e] = is_left[a]
                elem_slot[p, e] = slot
                e += 1
                a = parent[a]
            p += 1
    return path_value_node, path_feat, path_z, elem_node, elem_left, elem_slot


class PathTables:
    """Row-independent path arrays, moved to ``xp`` once."""

    def __init__(self, structure: CpuStructure, xp: Any) -> None:
        ens: TreeEnsemble = structure.ens
        depth = max(1, ens.max_depth)
        n_leaves = int((ens.left < 0).sum())
        (leaf_node, feat, z, elem_node, elem_left, elem_slot) = _paths_kernel(
            ens.left, ens.parent, ens.tree_start, structure.edge_feature, structure.is_left, structure.zm,
            n_leaves, depth)
        has_features = feat[:, 0] >= 0  # single-leaf trees only move the expected value
        self.xp = xp
        self.n_features = ens.n_features
        self.depth = depth
        self.n_paths = int(has_features.sum())
        self.value = xp.asarray(ens.value[leaf_node[has_features]])
        # padding slots point at a dummy output column n_features
        self.feat = xp.asarray(np.where(feat[has_features] >= 0, feat[has_features], ens.n_features))
        self.z = xp.asarray(z[has_features])
        self.elem_node = xp.asarray(elem_node[has_features])
        self.elem_left = xp.asarray(elem_left[has_features])
        self.elem_slot = xp.asarray(elem_slot[has_features])
        q = max(1, (structure.max_unique_depth + 1) // 2)
        nodes, weights = _gauss_legendre_table(q)
        self.t = [float(v) for v in nodes[q, :q]]
        self.w = [float(v) for v in weights[q, :q]]
        # node decision tables
        internal = np.flatnonzero(ens.left >= 0)
        self.internal = xp.asarray(internal)
        self.node_slot = np.full(ens.n_nodes, 0, dtype=np.int64)
        self.node_slot[internal] = np.arange(len(internal))
        self.elem_col = xp.asarray(self.node_slot[elem_node[has_features]])
        self.feature = xp.asarray(ens.feature[internal])
        self.threshold = xp.asarray(ens.threshold[internal])
        self.is_lt = xp.asarray(ens.kind[internal] == KIND_LT)
        self.is_cat = ens.kind[internal] == KIND_CAT
        self.default_left = xp.asarray(ens.default_left[internal])
        self.nan_as_zero = xp.asarray(ens.nan_mode[internal] == NAN_AS_ZERO)
        self.zero_default = xp.asarray(ens.nan_mode[internal] == NAN_ZERO_DEFAULT)
        self.cat_cols = np.flatnonzero(self.is_cat)
        if len(self.cat_cols):
            nodes_cat = internal[self.cat_cols]
            max_code = int(max(ens.cats.max(initial=0), 0)) + 1
            table = np.zeros((len(nodes_cat), max_code + 1), dtype=bool)  # last column: not a member
            for k, node in enumerate(nodes_cat):
                members = ens.cats[ens.cat_start[node]:ens.cat_end[node]].astype(np.int64)
                table[k, members[members >= 0]] = True
            self.cat_table = xp.asarray(table)
            self.cat_in_left = xp.asarray(ens.cat_in_left[nodes_cat])
            self.max_code = max_code
            self.cat_cols_xp = xp.asarray(self.cat_cols)
        self.is_cat = xp.asarray(self.is_cat)

    def bytes_per_row(self) -> int:
        # decisions + one-fractions + factors + accumulators, float64, with slack for temporaries
        return int(8 * (len(self.internal) + 6 * self.n_paths * (self.depth + 1)) * 2)

    def decisions(self, X: Any) -> Any:
        xp = self.xp
        x = X[:, self.feature]
        nan = xp.isnan(x)
        x_num = xp.where(nan & self.nan_as_zero, 0.0, x)
        missing = (nan & ~self.nan_as_zero) | (self.zero_default & (xp.abs(x_num) <= 1e-35))
        go_left = xp.where(self.is_lt, x_num < self.threshold, x_num <= self.threshold)
        if len(self.cat_cols):
            xc = x_num[:, self.cat_cols_xp]
            code = xp.where((xc >= 0) & (xc < self.max_code), xp.floor(xp.nan_to_num(xc, nan=-1.0)),
                            self.max_code).astype(xp.int64)
            member = self.cat_table[xp.arange(len(self.cat_cols))[None, :], code]
            go_left[:, self.cat_cols_xp] = member == self.cat_in_left[None, :]
        return xp.where(missing, self.default_left, go_left)

    def shap_values(self, X: Any) -> Any:
        xp = self.xp
        n = X.shape[0]
        P, D = self.n_paths, self.depth
        out = xp.zeros((n, self.n_features + 1), dtype=xp.float64)
        if P == 0 or n == 0:
            return out[:, :-1]
        dec = self.decisions(X)  # (n, internal nodes)
        one = xp.ones((n, P, D + 1), dtype=xp.float64)
        rows = xp.arange(P)
        for e in range(D):
            match = dec[:, self.elem_col[:, e]] == self.elem_left[None, :, e]
            one[:, rows, self.elem_slot[:, e]] *= match
        o = one[:, :, :D]
        diff = o - self.z[None]
        acc = xp.zeros((n, P, D), dtype=xp.float64)
        for tq, wq in zip(self.t, self.w):
            factor = self.z[None] + tq * diff
            g = xp.prod(factor, axis=2, keepdims=True)
            safe = xp.where(diff != 0.0, factor, 1.0)
            acc += wq * g / safe
        contrib = xp.where(diff != 0.0, acc * diff, 0.0) * self.value[None, :, None]
        index = (xp.arange(n)[:, None, None] * (self.n_features + 1) + self.feat[None]).ravel()
        out = xp.bincount(index, weights=contrib.ravel(), minlength=n * (self.n_features + 1))
        return out.reshape(n, self.n_features + 1)[:, :-1]

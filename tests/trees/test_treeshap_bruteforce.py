"""Random small trees against brute-force Shapley values (every feature subset enumerated)."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from risklens.trees import TreeShap
from risklens.trees._ensemble import (
    KIND_CAT,
    KIND_LE,
    KIND_LT,
    NAN_AS_ZERO,
    NAN_DEFAULT,
    NAN_ZERO_DEFAULT,
    TreeEnsemble,
    TreeTable,
    build_ensemble,
)

TOL = 1e-9
GRID = [-1.0, 0.0, 0.5, 1.0, 2.0, 3.0]  # thresholds and inputs share values: "<" vs "<=" matters


def _goes_left(ens: TreeEnsemble, node: int, x: float) -> bool:
    """Independent restatement of the split semantics documented in risklens.trees._ensemble."""
    mode = ens.nan_mode[node]
    if math.isnan(x):
        if mode == NAN_AS_ZERO:
            x = 0.0
        else:
            return bool(ens.default_left[node])
    elif mode == NAN_ZERO_DEFAULT and x == 0.0:
        return bool(ens.default_left[node])
    if ens.kind[node] == KIND_CAT:
        members = set(ens.cats[ens.cat_start[node]:ens.cat_end[node]].tolist())
        member = x >= 0 and math.floor(x) in members
        return member == bool(ens.cat_in_left[node])
    if ens.kind[node] == KIND_LT:
        return x < ens.threshold[node]
    return x <= ens.threshold[node]


def _tree_expectation(ens: TreeEnsemble, node: int, x: np.ndarray, known: set[int]) -> float:
    if ens.left[node] < 0:
        return float(ens.value[node])
    f = int(ens.feature[node])
    left, right = int(ens.left[node]), int(ens.right[node])
    if f in known:
        return _tree_expectation(ens, left if _goes_left(ens, node, x[f]) else right, x, known)
    c = ens.cover[node]
    return (ens.cover[left] / c * _tree_expectation(ens, left, x, known)
            + ens.cover[right] / c * _tree_expectation(ens, right, x, known))


def _predict_one(ens: TreeEnsemble, x: np.ndarray) -> float:
    return ens.base_offset + sum(
        _tree_expectation(ens, int(root), x, set(range(len(x)))) for root in ens.tree_start[:-1])


def _shapley(n: int, game) -> tuple[np.ndarray, np.ndarray]:
    """Shapley values and Shapley interaction values (shap's convention) of a game on n players."""
    v = {frozenset(s): game(set(s)) for k in range(n + 1) for s in itertools.combinations(range(n), k)}
    phi = np.zeros(n)
    inter = np.zeros((n, n))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            for s in itertools.combinations(others, k):
                w = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
                phi[i] += w * (v[frozenset(s) | {i}] - v[frozenset(s)])
        for j in others:
            rest = [m for m in others if m != j]
            for k in range(n - 1):
                for s in itertools.combinations(rest, k):
                    S = frozenset(s)
                    w = math.factorial(k) * math.factorial(n - k - 2) / (2 * math.factorial(n - 1))
                    inter[i, j] += w * (v[S | {i, j}] - v[S | {i}] - v[S | {j}] + v[S])
        inter[i, i] = phi[i] - inter[i].sum()
    return phi, inter


def brute_force_path_dependent(ens: TreeEnsemble, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    roots = [int(r) for r in ens.tree_start[:-1]]
    out_phi, out_inter = [], []
    for x in X:
        def game(S: set[int], x: np.ndarray = x) -> float:
            return ens.base_offset + sum(_tree_expectation(ens, r, x, S) for r in roots)
        phi, inter = _shapley(ens.n_features, game)
        out_phi.append(phi)
        out_inter.append(inter)
    return np.array(out_phi), np.array(out_inter)


def brute_force_interventional(ens: TreeEnsemble, X: np.ndarray, background: np.ndarray) -> np.ndarray:
    out = []
    for x in X:
        def game(S: set[int], x: np.ndarray = x) -> float:
            total = 0.0
            for r in background:
                total += _predict_one(ens, np.where(np.isin(np.arange(len(x)), list(S)), x, r))
            return total / len(background)
        out.append(_shapley(ens.n_features, game)[0])
    return np.array(out)


def brute_force_interventional_probability(ens: TreeEnsemble, X: np.ndarray, background: np.ndarray) -> np.ndarray:
    """shap's interventional values of the probability output: for each background row r, the
    Shapley values of the margin game against r alone, scaled by (s(f(x)) - s(f(r))) / (f(x) - f(r))
    (s the logistic function; s'(f(x)) where the margins are equal), averaged over the background."""
    def sigmoid(margin: float) -> float:
        return 1.0 / (1.0 + math.exp(-margin))

    out = []
    for x in X:
        fx = _predict_one(ens, x)
        phi = np.zeros(ens.n_features)
        for r in background:
            def game(S: set[int], x: np.ndarray = x, r: np.ndarray = r) -> float:
                return _predict_one(ens, np.where(np.isin(np.arange(len(x)), list(S)), x, r))
            fr = _predict_one(ens, r)
            scale = (sigmoid(fx) - sigmoid(fr)) / (fx - fr) if fx != fr else sigmoid(fx) * (1.0 - sigmoid(fx))
            phi += _shapley(ens.n_features, game)[0] * scale
        out.append(phi / len(background))
    return np.array(out)


@st.composite
def ensembles(draw) -> TreeEnsemble:
    n_features = draw(st.integers(1, 8))
    trees = []
    for _ in range(draw(st.integers(1, 3))):
        left, right, feature, threshold, kind, default_left, nan_mode, value, cover = ([] for _ in range(9))
        categories: dict[int, np.ndarray] = {}

        def grow(depth: int) -> int:
            node = len(left)
            for col in (left, right, feature, threshold, kind, default_left, nan_mode, value, cover):
                col.append(0)
            if depth == 0 or draw(st.integers(0, 3)) == 0:
                left[node] = right[node] = -1
                value[node] = draw(st.floats(-3, 3, allow_nan=False))
                cover[node] = draw(st.integers(1, 50))
                return node
            feature[node] = draw(st.integers(0, n_features - 1))
            kind[node] = draw(st.sampled_from([KIND_LT, KIND_LE, KIND_LE, KIND_CAT]))
            threshold[node] = draw(st.sampled_from(GRID))
            if kind[node] == KIND_CAT:
                categories[node] = np.array(sorted(draw(st.sets(st.integers(0, 3), min_size=1, max_size=3))), float)
            default_left[node] = draw(st.booleans())
            nan_mode[node] = draw(st.sampled_from([NAN_DEFAULT, NAN_DEFAULT, NAN_AS_ZERO, NAN_ZERO_DEFAULT]))
            left[node] = grow(depth - 1)
            right[node] = grow(depth - 1)
            cover[node] = cover[left[node]] + cover[right[node]]
            return node

        grow(draw(st.integers(0, 5)))
        trees.append(TreeTable(
            left=np.array(left), right=np.array(right), feature=np.array(feature), threshold=np.array(threshold, float),
            kind=np.array(kind, np.int8), default_left=np.array(default_left, bool),
            nan_mode=np.array(nan_mode, np.int8), value=np.array(value, float), cover=np.array(cover, float),
            categories=categories, cat_in_left=draw(st.booleans())))
    return build_ensemble(trees, base_offset=draw(st.floats(-1, 1)), n_features=n_features, feature_names=None,
                          input_float32=False, output_space="log_odds", family="random")


def rows(n_features: int, n_rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.choice(np.array(GRID + [np.nan, 1.5, -0.5]), size=(n_rows, n_features))
    return X


_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(ens=ensembles(), seed=st.integers(0, 10_000))
def test_path_dependent_values_and_interactions_equal_brute_force(ens, seed):
    X = rows(ens.n_features, 3, seed)
    ts = TreeShap(ens)
    values, base = ts.shap_values(X, device="cpu")
    expected_phi, expected_inter = brute_force_path_dependent(ens, X)
    np.testing.assert_allclose(values, expected_phi, rtol=0, atol=TOL)
    # 3 rows take the one-row kernel; 9 rows take the block kernel (SIMD over rows): both are exact
    block_values, _ = ts.shap_values(np.tile(X, (3, 1)), device="cpu")
    np.testing.assert_allclose(block_values, np.tile(expected_phi, (3, 1)), rtol=0, atol=TOL)
    empty_game = ens.base_offset + sum(_tree_expectation(ens, int(r), X[0], set()) for r in ens.tree_start[:-1])
    assert abs(base - empty_game) <= TOL
    np.testing.assert_allclose(ts.interaction_values(X), expected_inter, rtol=0, atol=TOL)
    full = np.array([_predict_one(ens, x) for x in X])
    np.testing.assert_allclose(base + values.sum(1), full, rtol=0, atol=TOL)
    np.testing.assert_allclose(ts.predict_raw(X), full, rtol=0, atol=TOL)


@_settings
@given(ens=ensembles(), seed=st.integers(0, 10_000), logistic=st.booleans())
def test_interventional_values_equal_brute_force(ens, seed, logistic):
    X = rows(ens.n_features, 2, seed)
    background = rows(ens.n_features, 3, seed + 1)
    ts = TreeShap(ens, background=background, model_output="probability" if logistic else "raw")
    values, base = ts.shap_values(X, device="cpu")
    target = np.array([_predict_one(ens, x) for x in X])
    if logistic:
        target = 1.0 / (1.0 + np.exp(-target))
        # probability output rescales each (x, r) pair's attributions (shap's definition)
        np.testing.assert_allclose(values, brute_force_interventional_probability(ens, X, background),
                                   rtol=0, atol=TOL)
    else:
        np.testing.assert_allclose(values, brute_force_interventional(ens, X, background), rtol=0, atol=TOL)
    np.testing.assert_allclose(base + values.sum(1), target, rtol=0, atol=TOL)

"""Exact SHAP: risklens's own TreeSHAP engine for tree ensembles, closed-form SHAP for linear models,
exact interventional SHAP for EBMs.

Attributions are computed on the model matrix and summed back to the original features (one-hot
columns into their source feature). Local accuracy is checked on every call: base value plus the
contributions must equal the raw output within ``ADDITIVITY_TOLERANCE`` (for trees, the float64
evaluation of the normalized trees), and that raw output must match the framework's own prediction
at the framework's precision (XGBoost predicts in float32).
"""

from __future__ import annotations

from functools import partial
from itertools import repeat
from typing import NamedTuple

import numpy as np

from risklens.errors import DeviceUnavailable, RiskLensError, UnsupportedModel
from risklens.explainers.base import ClaimRows, ExplainContext, Explainer, FeatureSums
from risklens.registry import LoadedModel
from risklens.trees import TreeShap

ADDITIVITY_TOLERANCE = 1e-6


class AdditivityError(RiskLensError):
    code = "INTERNAL"


class ShapResult(NamedTuple):
    """One claim's attributions (a tuple: built for every claim of a batch, 0.3 us against 1.9 for a
    frozen dataclass)."""

    values: np.ndarray  # (n_features,) in manifest feature order
    base_value: float
    raw_score: float
    output_space: str
    engine: str
    device: str


def _linear_shap(model: LoadedModel, matrix: np.ndarray) -> tuple[np.ndarray, float, str]:
    """Exact SHAP of a linear margin w.x + b with independent features: w_j (x_j - E[x_j])."""
    coef = np.asarray(model.estimator.coef_, dtype="float64").reshape(-1)
    intercept = float(np.asarray(model.estimator.intercept_, dtype="float64").reshape(-1)[0])
    mean = model.background_matrix.mean(axis=0)
    return coef * (matrix - mean), float(intercept + coef @ mean), "linear-exact"


def _additive_shap(model: LoadedModel, matrix: np.ndarray) -> tuple[np.ndarray, float, str]:
    """Exact interventional SHAP of an EBM against the background sample.

    A single-feature term f_j gives phi_j = f_j(x_j) - E[f_j(X_j)]. A pair term f_jk is a
    two-player game v(S) = E[f_jk(x_S, X_rest)] over background rows; its exact Shapley split is
    phi_j = (v(j) - v({}) + v(jk) - v(k)) / 2, and phi_k likewise, so the pair's two shares add up
    to f_jk(x) - E[f_jk(X)]. Base value: intercept + sum of the terms' background means.
    """
    from risklens.registry.adapters import EBMAdapter

    ebm = model.estimator
    background = model.background_matrix
    terms_bg = np.asarray(ebm.eval_terms(EBMAdapter.frame(ebm, background)), dtype="float64")
    terms_x = np.asarray(ebm.eval_terms(EBMAdapter.frame(ebm, matrix)), dtype="float64")
    mean_bg = terms_bg.mean(axis=0)
    n, m = len(matrix), len(background)
    values = np.zeros_like(matrix, dtype="float64")
    pair_columns = sorted({c for term in ebm.term_features_ if len(term) == 2 for c in term})
    # with_column[c][i, t]: mean over background rows of term t with column c set to row i's value.
    with_column: dict[int, np.ndarray] = {}
    for c in pair_columns:
        stacked = np.tile(background, (n, 1))
        stacked[:, c] = np.repeat(matrix[:, c], m)
        scores = np.asarray(ebm.eval_terms(EBMAdapter.frame(ebm, stacked)), dtype="float64")
        with_column[c] = scores.reshape(n, m, -1).mean(axis=1)
    for t, term in enumerate(ebm.term_features_):
        if len(term) == 1:
            values[:, term[0]] += terms_x[:, t] - mean_bg[t]
        elif len(term) == 2:
            j, k = term
            v_j, v_k, v_jk = with_column[j][:, t], with_column[k][:, t], terms_x[:, t]
            values[:, j] += 0.5 * (v_j - mean_bg[t] + v_jk - v_k)
            values[:, k] += 0.5 * (v_k - mean_bg[t] + v_jk - v_j)
        else:
            raise UnsupportedModel(f"EBM term {ebm.term_names_[t]!r} joins {len(term)} features; "
                                   "exact SHAP covers single features and pairs")
    base = float(np.asarray(ebm.intercept_, dtype="float64").reshape(-1)[0] + mean_bg.sum())
    return values, base, "ebm-exact"


def _check_close(actual: np.ndarray, expected: np.ndarray, tolerance: float | np.ndarray, what: str) -> None:
    """Raise unless every |actual - expected| is within the tolerance (floored at ADDITIVITY_TOLERANCE)."""
    excess = np.abs(actual - expected) - np.maximum(tolerance, ADDITIVITY_TOLERANCE)
    if excess.size and excess.max() > 0:
        worst = int(np.argmax(excess))
        raise AdditivityError(f"{what}: gap {abs(actual[worst] - expected[worst]):.3g} exceeds the tolerance "
                              f"{np.broadcast_to(np.maximum(tolerance, ADDITIVITY_TOLERANCE), excess.shape)[worst]:.3g}")


class ShapExplainer(Explainer):
    name = "shap"

    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model)
        self._feature_sums = FeatureSums(model.encoding.group_matrix(len(model.manifest.features)))
        self._tree: TreeShap | None = TreeShap(model.estimator) if model.kind == "tree" else None

    @classmethod
    def supports(cls, model: LoadedModel) -> bool:
        return model.kind in ("tree", "linear", "additive")

    def attributions(self, matrix: np.ndarray, device: str = "auto") -> tuple[np.ndarray, float, np.ndarray, str, str]:
        """(values per feature (n, f), base value, raw output (n,), engine, device used) of rows of
        the model matrix."""
        framework_raw = self.model.raw_from_matrix(matrix)
        used = "cpu"
        tolerance: float | np.ndarray = ADDITIVITY_TOLERANCE
        if self._tree is not None:
            try:
                used = self._tree.resolve_device(device)
            except DeviceUnavailable as error:  # to the service's callers the device is a request option
                raise DeviceUnavailable(error.message, field="options.device") from None
            column_values, base = self._tree.shap_values(matrix, device=used)
            engine = "risklens-treeshap"
            tolerance = self.model.estimator_adapter.output_tolerance(self.model.estimator) * np.maximum(
                1, np.abs(framework_raw))
        elif self.model.kind == "linear":
            column_values, base, engine = _linear_shap(self.model, matrix)
        else:
            column_values, base, engine = _additive_shap(self.model, matrix)
        # The raw output returned is the attributions' sum (local accuracy), each row summed on its
        # own; the framework's prediction checks it (for trees: the normalized trees and the kernel
        # together, without walking the trees a second time). The framework's own output is a
        # matrix product whose BLAS kernel, and so its last bits, change with the table's size.
        raw = base + np.ascontiguousarray(column_values).sum(axis=1)
        _check_close(raw, framework_raw, tolerance,
                     f"attribution sum (base + SHAP values) of model {self.model.name!r} vs its framework's prediction")
        values = self._feature_sums(column_values)
        _check_close(base + values.sum(axis=1), raw, ADDITIVITY_TOLERANCE,
                     f"SHAP local accuracy (base + sum vs raw output) of model {self.model.name!r}")
        return values, base, raw, engine, used

    def explain(self, claims: ClaimRows, context: ExplainContext) -> list[ShapResult]:
        values, base, raw, engine, device = self.attributions(claims.matrix, context.device)
        space = self.model.output_space
        rows = zip(values, repeat(base), raw.tolist(), repeat(space), repeat(engine), repeat(device))
        return list(map(partial(tuple.__new__, ShapResult), rows))  # no Python frame a claim

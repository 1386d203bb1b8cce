"""Exact SHAP: path-dependent TreeSHAP for tree ensembles, closed-form SHAP for linear models.

Attributions are computed on the model matrix and summed back to the original features (one-hot
columns into their source feature). Local accuracy is checked on every call: base value plus the
contributions must equal the model's raw output within ``ADDITIVITY_TOLERANCE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from risklens.errors import RiskLensError, UnsupportedModel
from risklens.explainers.base import ExplainContext, Explainer
from risklens.registry import LoadedModel

ADDITIVITY_TOLERANCE = 1e-6


class AdditivityError(RiskLensError):
    code = "INTERNAL"


@dataclass(frozen=True)
class ShapResult:
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


class ShapExplainer(Explainer):
    name = "shap"

    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model)
        self._groups = model.encoding.group_matrix(len(model.manifest.features))
        self._tree_explainer: Any = None
        if model.kind == "tree":
            import shap

            self._tree_explainer = shap.TreeExplainer(model.estimator, feature_perturbation="tree_path_dependent")

    @classmethod
    def supports(cls, model: LoadedModel) -> bool:
        return model.kind in ("tree", "linear", "additive")

    def attributions(self, frame: pd.DataFrame, device: str = "auto") -> tuple[np.ndarray, float, np.ndarray, str, str]:
        """(values per feature (n, f), base value, raw output (n,), engine, device used)."""
        matrix = self.model.model_matrix(frame)
        if self.model.kind == "linear":
            column_values, base, engine = _linear_shap(self.model, matrix)
        elif self.model.kind == "additive":
            column_values, base, engine = _additive_shap(self.model, matrix)
        else:
            column_values, base, engine = self._tree_shap(matrix)
        raw = self.model.raw_from_matrix(matrix)
        values = column_values @ self._groups
        # Local accuracy against the framework's own prediction, at that prediction's precision.
        tolerance = max(ADDITIVITY_TOLERANCE, self.model.estimator_adapter.output_tolerance)
        gap = np.abs(base + values.sum(axis=1) - raw)
        if gap.size and gap.max() > tolerance:
            raise AdditivityError(
                f"SHAP local accuracy failed for model {self.model.name!r}: max |base + sum - raw| = "
                f"{gap.max():.3g} > {tolerance}")
        return values, base, raw, engine, "cpu"

    def _tree_shap(self, matrix: np.ndarray) -> tuple[np.ndarray, float, str]:
        values = np.asarray(self._tree_explainer.shap_values(matrix, check_additivity=False), dtype="float64")
        base = np.atleast_1d(np.asarray(self._tree_explainer.expected_value, dtype="float64"))
        if values.ndim == 3:  # (rows, columns, classes): explain the positive class
            values = values[:, :, -1]
        return values, float(base[-1]), "shap-tree"

    def explain(self, frame: pd.DataFrame, context: ExplainContext) -> list[ShapResult]:
        values, base, raw, engine, device = self.attributions(frame, context.device)
        space = self.model.output_space
        return [ShapResult(values[i], base, float(raw[i]), space, engine, device) for i in range(len(frame))]

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

from risklens.errors import RiskLensError
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
        return model.kind in ("tree", "linear")

    def attributions(self, frame: pd.DataFrame, device: str = "auto") -> tuple[np.ndarray, float, np.ndarray, str, str]:
        """(values per feature (n, f), base value, raw output (n,), engine, device used)."""
        matrix = self.model.model_matrix(frame)
        if self.model.kind == "linear":
            column_values, base, engine = _linear_shap(self.model, matrix)
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

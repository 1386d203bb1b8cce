"""What the exact TreeSHAP tests compare: the model cases, and shap's own TreeSHAP as the reference.

A module of its own (not ``conftest``): test folders share the module name ``conftest``, so
importing it by name picks whichever folder's conftest was imported first.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

# (model family, data set, depth) of every exactness case.
CASES = [
    ("xgboost", "fraud_oracle", 1), ("xgboost", "insurance_claims", 6), ("xgboost", "german", 3),
    ("xgboost", "synthetic", 12), ("xgboost_reg", "synthetic", 4),
    ("lightgbm", "fraud_oracle", 6), ("lightgbm", "insurance_claims", 2), ("lightgbm", "german", 10),
    ("lightgbm", "synthetic", 8), ("lightgbm_zero", "synthetic", 5),
    ("random_forest", "fraud_oracle", 12), ("random_forest", "synthetic", 7),
    ("extra_trees", "german", 9), ("extra_trees", "insurance_claims", 5),
    ("gradient_boosting", "insurance_claims", 3), ("gradient_boosting", "synthetic", 11),
    ("decision_tree", "german", 12), ("decision_tree", "synthetic", 1),
    ("hist_gradient_boosting", "fraud_oracle", 4), ("hist_gradient_boosting", "synthetic", 9),
]


def shap_reference(model: Any, X: pd.DataFrame, *, float32_input: bool, internal: bool,
                   interactions: bool = False) -> tuple[np.ndarray, float]:
    """shap's TreeExplainer (``internal=True``: its own float64 C++ TreeSHAP, not the library shortcut)."""
    import shap

    explainer = shap.TreeExplainer(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # shap sets expected_value for XGBoost/LightGBM from the library's bias column on this call
        default_values = explainer.shap_values(X.iloc[:2], check_additivity=False)
        base = np.asarray(explainer.expected_value).ravel()
        data: Any = X
        if internal:
            explainer.model.model_type = "internal"
            data = X.to_numpy(np.float32 if float32_input else np.float64)
        if interactions:
            values = explainer.shap_interaction_values(data)
        else:
            values = explainer.shap_values(data, check_additivity=False)
    values = np.asarray(values)
    if np.asarray(default_values).ndim == 3:  # per-class output: take the positive class
        values = values[..., 1]
        base = base[1:]
    return values, float(base[-1])

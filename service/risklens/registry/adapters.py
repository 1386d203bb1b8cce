"""Per-framework model adapters behind one interface, tried in order (shap's tree-handler pattern).

An adapter knows how to save and load its framework's artifact and how to get the model's raw output
(margin) from a numeric model matrix. Pipelines are unwrapped by the loader before adapters see them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from risklens.errors import UnsupportedModel

OutputSpace = Literal["log_odds", "probability", "raw"]
ModelKind = Literal["tree", "linear", "additive"]


class ModelAdapter(ABC):
    framework: ClassVar[str]
    artifact_suffix: ClassVar[str]

    def output_tolerance(self, estimator: Any) -> float:
        """Precision of the framework's own raw output, relative to max(1, |output|)."""
        return 1e-9

    @classmethod
    @abstractmethod
    def can_handle(cls, estimator: Any) -> bool: ...

    @abstractmethod
    def load(self, path: Path) -> Any: ...

    @abstractmethod
    def save(self, estimator: Any, path: Path) -> None: ...

    @abstractmethod
    def raw_output(self, estimator: Any, matrix: np.ndarray) -> np.ndarray:
        """The model's margin for each row (log-odds, probability for bagged trees, or prediction)."""

    @abstractmethod
    def output_space(self, estimator: Any) -> OutputSpace: ...

    @abstractmethod
    def kind(self, estimator: Any) -> ModelKind: ...


class XGBoostAdapter(ModelAdapter):
    framework = "xgboost"
    artifact_suffix = ".json"

    def output_tolerance(self, estimator: Any) -> float:
        # XGBoost adds up its trees' leaf values in float32: the rounding error grows with the tree count.
        booster = estimator.get_booster() if hasattr(estimator, "get_booster") else estimator
        return float(np.finfo(np.float32).eps) * (booster.num_boosted_rounds() + 1)

    @classmethod
    def can_handle(cls, estimator: Any) -> bool:
        return type(estimator).__module__.startswith("xgboost")

    def load(self, path: Path) -> Any:
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(str(path))  # JSON or UBJ by suffix: no pickle involved
        return booster

    def save(self, estimator: Any, path: Path) -> None:
        booster = estimator.get_booster() if hasattr(estimator, "get_booster") else estimator
        booster.save_model(str(path))

    def raw_output(self, estimator: Any, matrix: np.ndarray) -> np.ndarray:
        estimator = estimator.get_booster() if hasattr(estimator, "get_booster") else estimator
        # In-place prediction skips building a DMatrix (3x faster on LIME/ICE batches, same margins).
        return estimator.inplace_predict(np.ascontiguousarray(matrix, dtype="float64"), predict_type="margin",
                                         missing=np.nan).astype("float64")

    def output_space(self, estimator: Any) -> OutputSpace:
        import json

        estimator = estimator.get_booster() if hasattr(estimator, "get_booster") else estimator
        objective = json.loads(estimator.save_config())["learner"]["objective"]["name"]
        return "log_odds" if objective.startswith("binary:") else "raw"

    def kind(self, estimator: Any) -> ModelKind:
        return "tree"


class LightGBMAdapter(ModelAdapter):
    framework = "lightgbm"
    artifact_suffix = ".txt"

    @classmethod
    def can_handle(cls, estimator: Any) -> bool:
        return type(estimator).__module__.startswith("lightgbm")

    def load(self, path: Path) -> Any:
        import lightgbm as lgb

        return lgb.Booster(model_file=str(path))

    def save(self, estimator: Any, path: Path) -> None:
        booster = estimator.booster_ if hasattr(estimator, "booster_") else estimator
        booster.save_model(str(path))

    def raw_output(self, estimator: Any, matrix: np.ndarray) -> np.ndarray:
        estimator = estimator.booster_ if hasattr(estimator, "booster_") else estimator
        return np.asarray(estimator.predict(matrix, raw_score=True), dtype="float64")

    def output_space(self, estimator: Any) -> OutputSpace:
        estimator = estimator.booster_ if hasattr(estimator, "booster_") else estimator
        objective = str(estimator.params.get("objective", estimator.dump_model().get("objective", "")))
        return "log_odds" if objective.startswith(("binary", "cross_entropy")) else "raw"

    def kind(self, estimator: Any) -> ModelKind:
        return "tree"


_BAGGED_TREES = ("RandomForestClassifier", "ExtraTreesClassifier", "DecisionTreeClassifier")
_TREES = ("RandomForest", "ExtraTrees", "DecisionTree", "GradientBoosting", "HistGradientBoosting")


class SklearnAdapter(ModelAdapter):
    """scikit-learn estimators and Pipelines, stored with joblib (loaded only after the sha256 check)."""

    framework = "sklearn"
    artifact_suffix = ".joblib"

    @classmethod
    def can_handle(cls, estimator: Any) -> bool:
        return type(estimator).__module__.startswith("sklearn")

    def load(self, path: Path) -> Any:
        import joblib

        return joblib.load(path)

    def save(self, estimator: Any, path: Path) -> None:
        import joblib

        joblib.dump(estimator, path)

    def raw_output(self, estimator: Any, matrix: np.ndarray) -> np.ndarray:
        name = type(estimator).__name__
        if name in _BAGGED_TREES:
            return estimator.predict_proba(matrix)[:, 1].astype("float64")
        coef = np.asarray(getattr(estimator, "coef_", ()), dtype="float64")
        if coef.size and coef.size == matrix.shape[1]:
            # w.x + b row by row, as the estimator defines it. Its decision_function is a matrix
            # product whose BLAS kernel, and so the last bits of a row's margin, changes with the
            # number of rows: a claim's ICE and LIME scores differed between a batch and alone.
            intercept = float(np.asarray(estimator.intercept_, dtype="float64").reshape(-1)[0])
            return (np.ascontiguousarray(matrix, dtype="float64") * coef.reshape(-1)).sum(axis=1) + intercept
        if hasattr(estimator, "decision_function"):
            return np.asarray(estimator.decision_function(matrix), dtype="float64")
        return np.asarray(estimator.predict(matrix), dtype="float64")

    def output_space(self, estimator: Any) -> OutputSpace:
        name = type(estimator).__name__
        if name in _BAGGED_TREES:
            return "probability"
        return "log_odds" if hasattr(estimator, "predict_proba") else "raw"

    def kind(self, estimator: Any) -> ModelKind:
        name = type(estimator).__name__
        if name.startswith(_TREES):
            return "tree"
        if hasattr(estimator, "coef_"):
            return "linear"
        raise UnsupportedModel(f"scikit-learn {name} has no exact SHAP path in risklens")


class EBMAdapter(ModelAdapter):
    """interpret's Explainable Boosting Machines, fitted on the schema-encoded model matrix.

    Stored with joblib; the loader checks the file's sha256 before this adapter unpickles it.
    """

    framework = "ebm"
    artifact_suffix = ".joblib"

    @classmethod
    def can_handle(cls, estimator: Any) -> bool:
        return type(estimator).__module__.startswith("interpret") and type(estimator).__name__ in (
            "ExplainableBoostingClassifier", "ExplainableBoostingRegressor")

    def load(self, path: Path) -> Any:
        import joblib

        return joblib.load(path)

    def save(self, estimator: Any, path: Path) -> None:
        import joblib

        joblib.dump(estimator, path)

    @staticmethod
    def frame(estimator: Any, matrix: np.ndarray) -> Any:
        """The matrix as the EBM saw it at fit time (named columns, so interpret maps them by name)."""
        import pandas as pd

        return pd.DataFrame(np.asarray(matrix, dtype="float64"), columns=list(estimator.feature_names_in_))

    def raw_output(self, estimator: Any, matrix: np.ndarray) -> np.ndarray:
        if type(estimator).__name__ == "ExplainableBoostingClassifier":
            return np.asarray(estimator.decision_function(self.frame(estimator, matrix)), dtype="float64")
        return np.asarray(estimator.predict(self.frame(estimator, matrix)), dtype="float64")

    def output_space(self, estimator: Any) -> OutputSpace:
        return "log_odds" if type(estimator).__name__ == "ExplainableBoostingClassifier" else "raw"

    def kind(self, estimator: Any) -> ModelKind:
        return "additive"


ADAPTERS: dict[str, ModelAdapter] = {
    adapter.framework: adapter
    for adapter in (XGBoostAdapter(), LightGBMAdapter(), SklearnAdapter(), EBMAdapter())
}


def adapter_for_framework(framework: str) -> ModelAdapter:
    try:
        return ADAPTERS[framework]
    except KeyError:
        raise UnsupportedModel(f"no adapter for framework {framework!r}; known: {sorted(ADAPTERS)}") from None


def adapter_for_estimator(estimator: Any) -> ModelAdapter:
    """The first registered adapter that can handle ``estimator`` (a final estimator, not a Pipeline)."""
    for adapter in ADAPTERS.values():
        if adapter.can_handle(estimator):
            return adapter
    raise UnsupportedModel(f"no adapter can handle {type(estimator).__module__}.{type(estimator).__name__}")

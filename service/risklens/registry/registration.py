"""Model registration: a trained model plus a data sample become a complete model directory.

``register_model`` writes the directory with ``write_model_dir`` (artifact, manifest with sha256,
schema, background sample, reason-code catalogue stub) and then precomputes what the optional
explanation methods read at request time, each stored as a sha256-pinned ``manifest.artifacts``
entry (``LoadedModel.extras[name]`` after loading):

- ``pdp``: partial dependence of the model score for every feature on a fixed grid (the same
  numbers as scikit-learn's brute-force ``partial_dependence`` over the background sample);
- ``ebm_surrogate`` + ``ebm_fidelity``: an EBM distilled from the model's logits, and how well it
  matches (R^2 of logits, decision agreement) on data it was not trained on. Native EBM models
  explain themselves and get no surrogate;
- ``permutation``: scikit-learn ``permutation_importance`` on labelled hold-out data, grouped by
  original feature (the raw columns are permuted, so one-hot columns move together).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from risklens.errors import InvalidRequest, UnsupportedModel
from risklens.registry.builder import BACKGROUND_ROWS, infer_schema, write_model_dir
from risklens.registry.hashing import file_sha256
from risklens.registry.loader import LoadedModel, load_model_dir
from risklens.registry.manifest import (FIDELITY_ARTIFACT, PDP_ARTIFACT, PERMUTATION_ARTIFACT, SURROGATE_ARTIFACT,
                                        ArtifactRef, FeatureSpec, Manifest)

log = logging.getLogger(__name__)

REGISTRATION_STEPS = ("model directory", "PDP grids", "EBM surrogate", "permutation importance", "manifest")

# Logits of probabilities are clipped here so a probability of exactly 0 or 1 stays finite.
_PROBABILITY_CLIP = 1e-6


@dataclass(frozen=True)
class RegistrationSettings:
    """How much work registration does. The defaults keep the demo models' registration to seconds."""

    grid_resolution: int = 20
    grid_percentiles: tuple[float, float] = (0.05, 0.95)
    surrogate_rows: int = 2000
    surrogate_interactions: int = 5
    surrogate_outer_bags: int = 1
    permutation_rows: int = 2000
    permutation_repeats: int = 5
    background_rows: int = BACKGROUND_ROWS


# ---------------------------------------------------------------------------- sklearn view of a model


class ScoreClassifier(ClassifierMixin, BaseEstimator):
    """A loaded binary model as a fitted scikit-learn classifier over the raw feature frame.

    scikit-learn's inspection tools (``permutation_importance``, ``partial_dependence``) and pdpbox
    take this; ``predict_proba`` is the model score, so their numbers are in the score's units.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    def __sklearn_is_fitted__(self) -> bool:
        return True

    @property
    def classes_(self) -> np.ndarray:
        return np.array([0, 1])

    @property
    def n_classes_(self) -> int:  # pdpbox reads this
        return 2

    def fit(self, X: Any, y: Any = None) -> "ScoreClassifier":
        raise InvalidRequest("a registered model is already trained; ScoreClassifier cannot be refitted")

    def _frame(self, X: Any) -> pd.DataFrame:
        frame = X if isinstance(X, pd.DataFrame) else pd.DataFrame(X, columns=self.model.manifest.feature_names)
        return frame[self.model.manifest.feature_names]

    def predict_proba(self, X: Any) -> np.ndarray:
        score = self.model.predict_score(self._frame(X))
        return np.column_stack([1.0 - score, score])

    def decision_function(self, X: Any) -> np.ndarray:
        return self.model.raw_output(self._frame(X))

    def predict(self, X: Any) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= self.model.manifest.threshold).astype(int)


class ScoreRegressor(RegressorMixin, BaseEstimator):
    """A loaded regression model as a fitted scikit-learn regressor over the raw feature frame."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def fit(self, X: Any, y: Any = None) -> "ScoreRegressor":
        raise InvalidRequest("a registered model is already trained; ScoreRegressor cannot be refitted")

    def predict(self, X: Any) -> np.ndarray:
        return self.model.predict_score(X[self.model.manifest.feature_names])


def sklearn_view(model: LoadedModel) -> ScoreClassifier | ScoreRegressor:
    return ScoreClassifier(model) if model.manifest.task == "binary" else ScoreRegressor(model)


def model_logits(model: LoadedModel, frame: pd.DataFrame) -> np.ndarray:
    """The model's output on the log-odds scale (probabilities are converted; regressions stay raw)."""
    raw = model.raw_output(frame)
    if model.output_space == "probability":
        p = np.clip(raw, _PROBABILITY_CLIP, 1.0 - _PROBABILITY_CLIP)
        return np.log(p / (1.0 - p))
    return raw


def decision_logit(model: LoadedModel) -> float:
    """The referral threshold on the scale of ``model_logits``."""
    t = model.manifest.threshold
    if model.output_space in ("log_odds", "probability") and 0.0 < t < 1.0:
        return float(np.log(t / (1.0 - t)))
    return float(t)


# ---------------------------------------------------------------------------- PDP grids


def feature_grid(spec: FeatureSpec, column: pd.Series, resolution: int,
                 percentiles: tuple[float, float]) -> list[Any]:
    """scikit-learn's grid: the unique values when fewer than ``resolution``, else an even spacing
    between the ``percentiles`` of the data. Categoricals use every schema category (also unseen
    ones); booleans are [False, True]; missing values are not grid points."""
    if spec.type == "categorical":
        return list(spec.categories)
    if spec.type == "boolean":
        return [False, True]
    from scipy.stats.mstats import mquantiles

    values = column.to_numpy(dtype="float64", na_value=np.nan)
    values = values[~np.isnan(values)]
    uniques = np.unique(values)
    if len(uniques) < resolution:
        return [float(v) for v in uniques]
    low, high = mquantiles(values, prob=percentiles, axis=0)
    if np.isclose(low, high):
        return [float(v) for v in np.unique(np.quantile(values, np.linspace(0, 1, resolution)))]
    return [float(v) for v in np.linspace(low, high, num=resolution)]


def with_feature_values(frame: pd.DataFrame, feature: str, grid: list[Any]) -> pd.DataFrame:
    """``frame`` repeated once per grid value (grid-major), with ``feature`` set to that value.

    The column's dtype follows the grid: booleans stay bool, numbers float64, categories text.
    """
    repeated = pd.concat([frame] * len(grid), ignore_index=True)
    values = np.repeat(np.asarray(grid, dtype=object), len(frame))
    if all(isinstance(g, (bool, np.bool_)) for g in grid):
        repeated[feature] = values.astype(bool)
    elif all(isinstance(g, (int, float, np.number)) for g in grid):
        repeated[feature] = values.astype("float64")
    else:
        repeated[feature] = pd.Series(values.astype(str), dtype="str")
    return repeated


def partial_dependence_grid(model: LoadedModel, frame: pd.DataFrame, feature: str,
                            grid: list[Any]) -> np.ndarray:
    """Brute-force partial dependence of the model score: mean score over ``frame`` at each grid value."""
    scores = model.predict_score(with_feature_values(frame, feature, grid))
    return scores.reshape(len(grid), len(frame)).mean(axis=1)


def compute_pdp(model: LoadedModel, settings: RegistrationSettings) -> dict[str, Any]:
    """PDP of every schema feature over the model's background sample."""
    background = model.background
    features: dict[str, Any] = {}
    for spec in model.manifest.features:
        grid = feature_grid(spec, background[spec.name], settings.grid_resolution, settings.grid_percentiles)
        pdp = partial_dependence_grid(model, background, spec.name, grid)
        features[spec.name] = {"type": spec.type, "grid": grid, "pdp": [float(v) for v in pdp]}
    return {"method": "brute", "output": "score", "rows": len(background),
            "grid_resolution": settings.grid_resolution, "percentiles": list(settings.grid_percentiles),
            "features": features}


# ---------------------------------------------------------------------------- EBM surrogate


def fit_surrogate(model: LoadedModel, train: pd.DataFrame, evaluate: pd.DataFrame,
                  settings: RegistrationSettings, seed: int) -> tuple[Any, dict[str, Any]]:
    """An EBM regressor distilled from the model's logits on ``train``; fidelity measured on ``evaluate``."""
    from interpret.glassbox import ExplainableBoostingRegressor
    from sklearn.metrics import r2_score

    names = model.manifest.feature_names
    train = train[names].reset_index(drop=True)
    surrogate = ExplainableBoostingRegressor(
        interactions=settings.surrogate_interactions, outer_bags=settings.surrogate_outer_bags,
        n_jobs=1, random_state=seed)
    with warnings.catch_warnings():
        # interpret warns that its plots hide missing values; the surrogate scores them all the same.
        warnings.filterwarnings("ignore", message="Missing values detected", category=UserWarning)
        surrogate.fit(train, model_logits(model, train))
    evaluate = evaluate[names].reset_index(drop=True)
    truth = model_logits(model, evaluate)
    approx = np.asarray(surrogate.predict(evaluate), dtype="float64")
    cut = decision_logit(model)
    fidelity = {
        "r2": float(r2_score(truth, approx)),
        "decision_agreement": float(np.mean((truth >= cut) == (approx >= cut))),
        "train_rows": len(train), "evaluation_rows": len(evaluate),
        "interactions": settings.surrogate_interactions, "outer_bags": settings.surrogate_outer_bags,
        "target": "logit",
    }
    return surrogate, fidelity


# ---------------------------------------------------------------------------- permutation importance


def compute_permutation_importance(model: LoadedModel, X: pd.DataFrame, y: pd.Series,
                                   settings: RegistrationSettings, seed: int) -> dict[str, Any]:
    """scikit-learn ``permutation_importance`` over raw features (one-hot columns permute together)."""
    from sklearn.inspection import permutation_importance

    names = model.manifest.feature_names
    scoring = "roc_auc" if model.manifest.task == "binary" else "r2"
    result = permutation_importance(sklearn_view(model), X[names].reset_index(drop=True), np.asarray(y),
                                    scoring=scoring, n_repeats=settings.permutation_repeats,
                                    random_state=seed, n_jobs=1)
    order = np.argsort(-result.importances_mean, kind="stable")
    ranks = np.empty(len(names), dtype=int)
    ranks[order] = np.arange(1, len(names) + 1)
    features = [{"feature": names[j], "rank": int(ranks[j]), "importance_mean": float(result.importances_mean[j]),
                 "importance_std": float(result.importances_std[j])} for j in order]
    return {"scoring": scoring, "n_repeats": settings.permutation_repeats, "seed": seed, "rows": len(X),
            "features": features}


# ---------------------------------------------------------------------------- the registration step


def _subsample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    return frame.sample(rows, random_state=seed) if len(frame) > rows else frame


def _write_json(directory: Path, file: str, payload: dict[str, Any]) -> ArtifactRef:
    path = directory / file
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return ArtifactRef(file=file, sha256=file_sha256(path))


def register_model(
    directory: Path,
    estimator: Any,
    data: pd.DataFrame,
    *,
    name: str,
    version: str,
    holdout: tuple[pd.DataFrame, pd.Series] | None = None,
    features: list[FeatureSpec] | None = None,
    reason_codes: dict[str, Any] | None = None,
    threshold: float = 0.5,
    task: Literal["binary", "regression"] = "binary",
    description: str = "",
    audit: dict[str, Any] | None = None,
    seed: int = 0,
    settings: RegistrationSettings | None = None,
    progress: Callable[[str], None] | None = None,
) -> Manifest:
    """Write a complete model directory for ``estimator`` and return its manifest.

    ``data`` is a sample of raw claims (no label column): the background sample, the PDP grids and
    the EBM surrogate's training set come from it. ``holdout`` is labelled data the model was not
    trained on: permutation importance needs it, and the surrogate's fidelity is measured on it
    (on ``data`` rows the surrogate did not see when there is none). ``features`` defaults to
    ``infer_schema(data)``, which a person should review. ``progress`` is called with each step's
    name (``REGISTRATION_STEPS``) as it starts.
    """
    settings = settings or RegistrationSettings()
    directory = Path(directory)
    features = features if features is not None else infer_schema(data)
    names = [f.name for f in features]
    missing = [n for n in names if n not in data.columns]
    if missing:
        raise InvalidRequest(f"the data sample lacks schema features {missing}", field="data")
    data = data[names]
    step = progress or (lambda _name: None)

    step(REGISTRATION_STEPS[0])
    write_model_dir(directory, estimator, name=name, version=version, features=features, background=data,
                    reason_codes=reason_codes, threshold=threshold, task=task, description=description,
                    audit=audit, background_rows=settings.background_rows, seed=seed)
    model = load_model_dir(directory)
    artifacts: dict[str, ArtifactRef] = {}

    step(REGISTRATION_STEPS[1])
    artifacts[PDP_ARTIFACT] = _write_json(directory, "pdp.json", compute_pdp(model, settings))

    step(REGISTRATION_STEPS[2])
    if model.kind != "additive":  # a native EBM explains itself exactly
        import joblib

        train = _subsample(data, settings.surrogate_rows, seed)
        if holdout is not None:
            evaluate = holdout[0]
        else:
            evaluate = data.drop(index=train.index)
            evaluate = evaluate if len(evaluate) else model.background
        surrogate, fidelity = fit_surrogate(model, train, evaluate, settings, seed)
        joblib.dump(surrogate, directory / "ebm_surrogate.joblib")
        artifacts[SURROGATE_ARTIFACT] = ArtifactRef(
            file="ebm_surrogate.joblib", sha256=file_sha256(directory / "ebm_surrogate.joblib"))
        artifacts[FIDELITY_ARTIFACT] = _write_json(directory, "ebm_fidelity.json", fidelity)
        log.info("EBM surrogate for %s: R^2 %.3f, decision agreement %.3f", name, fidelity["r2"],
                 fidelity["decision_agreement"])

    step(REGISTRATION_STEPS[3])
    if holdout is not None:
        X_hold, y_hold = holdout
        X_hold = _subsample(X_hold[names], settings.permutation_rows, seed)
        y_hold = pd.Series(np.asarray(y_hold), index=holdout[0].index).loc[X_hold.index]
        artifacts[PERMUTATION_ARTIFACT] = _write_json(
            directory, "permutation.json", compute_permutation_importance(model, X_hold, y_hold, settings, seed))
    else:
        log.warning("no labelled hold-out data for %s: permutation importance is not available", name)

    step(REGISTRATION_STEPS[4])
    manifest = Manifest.read(directory)
    manifest.artifacts.update(artifacts)
    manifest.write(directory)
    return manifest


# ---------------------------------------------------------------------------- files, for ``risklens models add``


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file as a DataFrame (text columns stay text)."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if path.suffix.lower() in (".csv", ".txt"):
        try:
            return pd.read_csv(path)
        except UnicodeDecodeError as error:
            raise InvalidRequest(f"{path} is not UTF-8 text ({error.reason})", field="data") from None
    raise InvalidRequest(f"{path} is neither .csv nor .parquet", field="data")


def read_model_file(path: Path, framework: str = "auto") -> Any:
    """A trained model from disk: XGBoost JSON/UBJ, LightGBM text, or a joblib file (scikit-learn
    estimator or Pipeline, interpret EBM). Unpickling runs code: only pass files you trust."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"model file {path} does not exist or is not a file", field="model_file")
    suffix = path.suffix.lower()
    if framework == "auto":
        framework = {".json": "xgboost", ".ubj": "xgboost", ".txt": "lightgbm"}.get(suffix, "joblib")
    if framework not in ("xgboost", "lightgbm", "joblib", "sklearn", "ebm"):
        raise InvalidRequest(f"unknown framework {framework!r}; use auto, xgboost, lightgbm, sklearn or ebm",
                             field="framework")
    try:
        return _load_model_file(path, framework)
    except Exception as error:  # noqa: BLE001 - each library fails its own way on a file that is not its model
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise UnsupportedModel(f"cannot read {path} as a {framework} model ({type(error).__name__}: {first}); "
                               f"check the file and --framework", field="model_file") from error


def _load_model_file(path: Path, framework: str) -> Any:
    if framework == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(str(path))
        return booster
    if framework == "lightgbm":
        import lightgbm as lgb

        return lgb.Booster(model_file=str(path))
    import joblib

    return joblib.load(path)

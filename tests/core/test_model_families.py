"""Exact SHAP on every supported model family, trained for real on shared and synthetic data.

Local accuracy (base value + contributions == the model's raw output) is checked for every family,
and tree attributions are checked against shap's TreeExplainer summed back to original features.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from risklens.core import ClaimInput, ExplainService
from risklens.datasets import generate_claims, load_shared
from risklens.registry import ModelRegistry, frame_to_claims, infer_schema, load_model_dir, write_model_dir
from risklens.registry.manifest import Manifest
from risklens.registry.schema import encode_frame
from risklens.settings import Settings

ROWS = 2500
EXPLAINED = 40


def _fraud_oracle() -> tuple[pd.DataFrame, pd.Series]:
    X, y = load_shared("fraud_oracle")
    keep = X.sample(ROWS, random_state=0).index
    return X.loc[keep].reset_index(drop=True), y.loc[keep].reset_index(drop=True)


def _german() -> tuple[pd.DataFrame, pd.Series]:
    return load_shared("german")


def _synthetic() -> tuple[pd.DataFrame, pd.Series]:
    return generate_claims(ROWS, seed=3)


def _xgboost(matrix, y):
    import xgboost as xgb

    return xgb.XGBClassifier(n_estimators=30, max_depth=4, n_jobs=1, random_state=0).fit(matrix, y)


def _lightgbm(matrix, y):
    import lightgbm as lgb

    return lgb.LGBMClassifier(n_estimators=30, num_leaves=15, n_jobs=1, random_state=0, verbose=-1).fit(matrix, y)


def _random_forest(matrix, y):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=15, max_depth=6, random_state=0, n_jobs=1).fit(matrix, y)


def _gradient_boosting(matrix, y):
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0).fit(matrix, y)


def _hist_gradient_boosting(matrix, y):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=20, max_depth=4, random_state=0).fit(matrix, y)


def _pipeline(final: str):
    def fit(frame: pd.DataFrame, y: pd.Series):
        from sklearn.compose import ColumnTransformer
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline, make_pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
        text = [c for c in frame.columns if c not in numeric]
        pre = ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), text)])
        model = (LogisticRegression(max_iter=3000) if final == "logreg"
                 else RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0, n_jobs=1))
        return Pipeline([("pre", pre), ("model", model)]).fit(frame, y)
    return fit


def _bools_as_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(**{c: frame[c].astype("float64") for c in frame.columns if frame[c].dtype == bool})


# (id, data loader, trainer, trainer takes the raw frame (pipeline) instead of the schema matrix)
CASES: list[tuple[str, Callable, Callable, bool]] = [
    ("xgboost-fraud_oracle", _fraud_oracle, _xgboost, False),
    ("lightgbm-fraud_oracle", _fraud_oracle, _lightgbm, False),
    ("xgboost-german", _german, _xgboost, False),
    ("random_forest-german", _german, _random_forest, False),
    ("gradient_boosting-german", _german, _gradient_boosting, False),
    ("hist_gradient_boosting-synthetic", _synthetic, _hist_gradient_boosting, False),
    ("lightgbm-synthetic", _synthetic, _lightgbm, False),
    ("logreg_pipeline-german", _german, _pipeline("logreg"), True),
    ("random_forest_pipeline-fraud_oracle", _fraud_oracle, _pipeline("forest"), True),
    ("logreg_pipeline-synthetic", _synthetic, _pipeline("logreg"), True),
]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def trained(request, tmp_path_factory) -> tuple[str, Path, pd.DataFrame]:
    name, load, train, takes_frame = request.param
    X, y = load()
    features = infer_schema(X)
    if takes_frame:
        estimator = train(_bools_as_numbers(X), y)
    else:
        schema = Manifest(name=name, version="1", framework="sklearn", artifact="_", sha256="_", features=features)
        estimator = train(encode_frame(schema, X), y.to_numpy())
    directory = tmp_path_factory.mktemp(name)
    write_model_dir(directory, estimator, name=name, version="1", features=features, background=X)
    return name, directory, X.head(EXPLAINED)


def _source_feature_of_each_column(model) -> list[str]:
    """The schema feature each model-matrix column comes from, read off the fitted transformers (a
    pipeline) or the schema's layout (one column a feature, one a category when one-hot): not from
    the column names, which is how the service's encoding maps them."""
    if model.is_pipeline:
        from sklearn.preprocessing import OneHotEncoder

        sources: list[str] = []
        for name, transformer, columns in model.artifact.named_steps["pre"].transformers_:
            if name == "remainder" and transformer == "drop":
                continue
            last = transformer.steps[-1][1] if hasattr(transformer, "steps") else transformer
            for position, column in enumerate(columns):
                width = len(last.categories_[position]) if isinstance(last, OneHotEncoder) else 1
                sources += [column] * width
        return sources
    return [spec.name for spec in model.manifest.features for _ in range(
        len(spec.categories) if spec.type == "categorical" and spec.encoding == "onehot" else 1)]


def _groups(model) -> np.ndarray:
    """(columns, features) 0/1 matrix from ``_source_feature_of_each_column``."""
    names = model.manifest.feature_names
    sources = _source_feature_of_each_column(model)
    groups = np.zeros((len(sources), len(names)))
    groups[np.arange(len(sources)), [names.index(s) for s in sources]] = 1.0
    return groups


def test_local_accuracy_and_agreement_with_shap(trained):
    name, directory, rows = trained
    model = load_model_dir(directory)
    service = ExplainService(ModelRegistry([model]), Settings(audit_enabled=False))
    outcomes = service.explain_batch(name, [ClaimInput(c) for c in frame_to_claims(rows)])
    assert all(not isinstance(o, Exception) for o in outcomes), outcomes
    names = model.manifest.feature_names
    values = np.array([[dict((f, s) for f, _, s in o.contributions)[n] for n in names] for o in outcomes])
    assert values.shape == (EXPLAINED, len(names))  # one value per original feature
    base = outcomes[0].base_value
    raw_scores = np.array([o.raw_score for o in outcomes])
    # Exact local accuracy in float64 ...
    np.testing.assert_allclose(base + values.sum(axis=1), raw_scores, rtol=0, atol=1e-6)
    # ... and the raw score is the model's own output (XGBoost's own prediction is float32).
    framework_raw = model.raw_output(rows)
    precision = model.estimator_adapter.output_tolerance(model.estimator) * np.maximum(1, np.abs(raw_scores))
    assert (np.abs(raw_scores - framework_raw) <= np.maximum(precision, 1e-9)).all()
    if model.kind == "linear":  # raw_output goes through the service's own model matrix: ask scikit-learn
        assert model.is_pipeline
        np.testing.assert_allclose(raw_scores, model.artifact.decision_function(_bools_as_numbers(rows)),
                                   rtol=0, atol=1e-9)

    matrix = model.model_matrix(rows)
    groups = _groups(model)  # shap's per-column values summed back to features independently of the service
    if model.kind == "tree":
        import shap

        reference = shap.TreeExplainer(model.estimator, feature_perturbation="tree_path_dependent")
        ref_values = np.asarray(reference.shap_values(matrix, check_additivity=False))
        ref_values = ref_values[:, :, -1] if ref_values.ndim == 3 else ref_values
        # shap hands XGBoost models to XGBoost's own float32 contributions code: compare at that precision.
        atol = 2e-5 * np.abs(ref_values).max() if model.manifest.framework == "xgboost" else 1e-6
        np.testing.assert_allclose(values, ref_values @ groups, rtol=0, atol=atol)
        assert outcomes[0].shap_engine == "risklens-treeshap"
    else:
        import shap

        background = shap.maskers.Independent(model.background_matrix, max_samples=len(model.background_matrix))
        reference = shap.LinearExplainer(model.estimator, background)
        np.testing.assert_allclose(values, np.asarray(reference.shap_values(matrix)) @ groups, rtol=0, atol=1e-6)


def test_one_hot_columns_are_credited_to_their_own_feature(trained):
    """Every column of the model matrix is summed into the feature it was encoded from (for a
    pipeline the service matches output column names to features: a prefix rule checked here
    against the fitted transformers), and categoricals really are spread over several columns."""
    name, directory, rows = trained
    model = load_model_dir(directory)
    names = model.manifest.feature_names
    assert [names[i] for i in model.encoding.feature_index] == _source_feature_of_each_column(model)
    categorical = [f for f in model.manifest.features if f.type == "categorical"]
    if not categorical:
        pytest.skip(f"{name} has no categorical features")
    widths = np.bincount(model.encoding.feature_index, minlength=len(names))
    assert max(widths[names.index(f.name)] for f in categorical) >= 2

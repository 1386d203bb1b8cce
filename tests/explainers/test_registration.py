"""The registration step: ``register_model`` artifacts are pinned by sha256; ``risklens models add``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from risklens.errors import ArtifactIntegrityError
from risklens.registry import load_model_dir
from risklens.registry.registration import (
    FIDELITY_ARTIFACT,
    PDP_ARTIFACT,
    PERMUTATION_ARTIFACT,
    SURROGATE_ARTIFACT,
)


def test_artifacts_are_pinned_and_exposed(xgb_model):
    artifacts = xgb_model.manifest.artifacts
    assert set(artifacts) == {PDP_ARTIFACT, SURROGATE_ARTIFACT, FIDELITY_ARTIFACT, PERMUTATION_ARTIFACT}
    for name, ref in artifacts.items():
        assert xgb_model.extras[name] == xgb_model.directory / ref.file
        assert len(ref.sha256) == 64


def test_changed_artifact_is_refused(tmp_path, xgb_model):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(xgb_model.directory, copy)
    pdp = json.loads((copy / "pdp.json").read_text())
    pdp["features"]["claim_amount"]["pdp"][0] += 0.5
    (copy / "pdp.json").write_text(json.dumps(pdp))
    with pytest.raises(ArtifactIntegrityError, match="pdp.json"):
        load_model_dir(copy)


def test_models_add_cli(tmp_path, synthetic, schema_matrix, synthetic_features):
    """End to end: a trained XGBoost file + a labelled CSV become a loadable model directory."""
    import xgboost as xgb

    from risklens.cli import app

    estimator = xgb.XGBClassifier(n_estimators=30, max_depth=3, random_state=0, n_jobs=1)
    estimator.fit(schema_matrix(synthetic_features, synthetic.X).to_numpy(), synthetic.y.to_numpy())
    estimator.get_booster().save_model(str(tmp_path / "model.json"))
    sample = synthetic.X.iloc[:1600].assign(fraud=synthetic.y.iloc[:1600])
    sample.to_csv(tmp_path / "claims.csv", index=False)
    schema = tmp_path / "schema.yaml"
    import yaml

    schema.write_text(yaml.safe_dump([f.model_dump(mode="json") for f in synthetic_features]))
    result = CliRunner().invoke(app, [
        "models", "add", str(tmp_path / "model.json"), "--data", str(tmp_path / "claims.csv"), "--label", "fraud",
        "--name", "cli-xgb", "--version", "2.0.0", "--schema", str(schema), "--models", str(tmp_path / "models")])
    assert result.exit_code == 0, result.output
    assert "registered cli-xgb 2.0.0 (xgboost)" in result.output
    model = load_model_dir(tmp_path / "models" / "cli-xgb")
    assert set(model.extras) == {PDP_ARTIFACT, SURROGATE_ARTIFACT, FIDELITY_ARTIFACT, PERMUTATION_ARTIFACT}
    assert model.manifest.feature_names == [f.name for f in synthetic_features]
    again = CliRunner().invoke(app, [
        "models", "add", str(tmp_path / "model.json"), "--data", str(tmp_path / "claims.csv"),
        "--name", "cli-xgb", "--schema", str(schema), "--models", str(tmp_path / "models")])
    assert again.exit_code == 2 and "--force" in again.output


def test_models_add_help():
    from risklens.cli import app

    result = CliRunner().invoke(app, ["models", "add", "--help"])
    assert result.exit_code == 0
    for option in ("--data", "--label", "--holdout", "--schema", "--framework", "--force"):
        assert option in result.output

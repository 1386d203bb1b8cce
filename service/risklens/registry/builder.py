"""Writing model directories: artifact + manifest (with sha256) + background sample + reason codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml

from risklens.registry.adapters import ADAPTERS, adapter_for_estimator
from risklens.registry.hashing import file_sha256
from risklens.registry.manifest import FeatureSpec, Manifest

BACKGROUND_ROWS = 200


def infer_schema(frame: pd.DataFrame, *, categorical_encoding: Literal["onehot", "ordinal"] = "onehot",
                 max_categories: int = 64) -> list[FeatureSpec]:
    """A first schema from data, for a person to review: types, categories, nullability.

    Text columns become categorical (at most ``max_categories`` values), bool columns boolean,
    numbers numeric. No range is imposed: real claims may exceed what training data saw.
    """
    specs = []
    for name in frame.columns:
        col = frame[name]
        nullable = bool(col.isna().any())
        if pd.api.types.is_bool_dtype(col):
            specs.append(FeatureSpec(name=name, type="boolean", nullable=nullable))
        elif pd.api.types.is_numeric_dtype(col):
            specs.append(FeatureSpec(name=name, type="numeric", nullable=nullable))
        else:
            categories = sorted(str(v) for v in col.dropna().unique())
            if len(categories) > max_categories:
                raise ValueError(f"column {name!r} has {len(categories)} distinct values; "
                                 f"more than {max_categories} is not a categorical feature")
            specs.append(FeatureSpec(name=name, type="categorical", categories=categories,
                                     nullable=nullable, encoding=categorical_encoding))
    return specs


def write_model_dir(
    directory: Path,
    estimator: Any,
    *,
    name: str,
    version: str,
    features: list[FeatureSpec],
    background: pd.DataFrame,
    reason_codes: dict[str, Any] | None = None,
    threshold: float = 0.5,
    task: Literal["binary", "regression"] = "binary",
    positive_class: str = "1",
    description: str = "",
    audit: dict[str, Any] | None = None,
    background_rows: int = BACKGROUND_ROWS,
    seed: int = 0,
) -> Manifest:
    """Save a trained model as a model directory that ``load_model_dir`` accepts.

    A scikit-learn Pipeline is stored whole ("pipeline" preprocessing: it takes raw features);
    any other estimator is stored in its framework's native format and fed the schema encoding.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    is_pipeline = type(estimator).__name__ == "Pipeline"
    adapter = ADAPTERS["sklearn"] if is_pipeline else adapter_for_estimator(estimator)
    framework = "sklearn" if is_pipeline else adapter.framework
    artifact = f"model{adapter.artifact_suffix}"
    adapter.save(estimator, directory / artifact)
    sample = background[[f.name for f in features]]
    if len(sample) > background_rows:
        sample = sample.sample(background_rows, random_state=seed)
    sample.reset_index(drop=True).to_parquet(directory / "background.parquet")
    (directory / "reason_codes.yaml").write_text(
        yaml.safe_dump(reason_codes or {"codes": []}, sort_keys=False))
    manifest = Manifest(
        name=name, version=version, framework=framework, task=task, artifact=artifact,
        sha256=file_sha256(directory / artifact), features=features, positive_class=positive_class,
        threshold=threshold, preprocessing="pipeline" if is_pipeline else "schema",
        description=description, audit=audit)
    manifest.write(directory)
    return manifest

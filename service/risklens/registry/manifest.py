"""The model manifest: what a model directory promises about its artifact and its inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from risklens.errors import ManifestError

MANIFEST_FILE = "manifest.yaml"
# Names of the precomputed artifacts registration adds to ``Manifest.artifacts`` (read by the explainers).
PDP_ARTIFACT = "pdp"
SURROGATE_ARTIFACT = "ebm_surrogate"
FIDELITY_ARTIFACT = "ebm_fidelity"
PERMUTATION_ARTIFACT = "permutation"

FeatureType = Literal["numeric", "categorical", "boolean"]
Framework = Literal["xgboost", "lightgbm", "sklearn", "ebm"]


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with libyaml's parser where PyYAML has it (its wheels do): a fraud_oracle
    manifest took 0.09 s in the pure-Python parser, in every process that loads the model."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


class FeatureSpec(BaseModel):
    """One input feature as the caller sends it (before any encoding)."""

    name: str
    type: FeatureType
    categories: list[str] = Field(default_factory=list, description="Allowed values of a categorical feature.")
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    description: str = ""
    label: str = Field("", description="Plain-words name for rationales; defaults to the name.")
    # How the registry encodes a categorical for "schema" preprocessing: one-hot columns named
    # "<feature>=<category>", or one ordinal column holding the category's index (native categorical).
    encoding: Literal["onehot", "ordinal"] = "onehot"

    @model_validator(mode="after")
    def _categories_for_categoricals(self) -> "FeatureSpec":
        if self.type == "categorical" and not self.categories:
            raise ValueError(f"categorical feature {self.name!r} needs a non-empty 'categories' list")
        return self

    @property
    def display_name(self) -> str:
        return self.label or self.name.replace("_", " ")


class ArtifactRef(BaseModel):
    """An extra file stored with the model (PDP grids, surrogate, ...), pinned by its sha256."""

    file: str
    sha256: str


class Manifest(BaseModel):
    name: str
    version: str
    framework: Framework
    task: Literal["binary", "regression"] = "binary"
    artifact: str = Field(description="Model file inside the model directory.")
    sha256: str = Field(description="sha256 of the artifact file, hex.")
    features: list[FeatureSpec]
    positive_class: str = "1"
    threshold: float = 0.5
    # "schema": the registry encodes features per FeatureSpec before calling the model;
    # "pipeline": the artifact is a scikit-learn Pipeline that takes the raw feature frame.
    preprocessing: Literal["schema", "pipeline"] = "schema"
    background: str = "background.parquet"
    reason_codes: str = "reason_codes.yaml"
    description: str = ""
    artifacts: dict[str, ArtifactRef] = Field(default_factory=dict)
    audit: dict[str, Any] | None = Field(None, description="Redaction and retention policy for audit records.")

    @model_validator(mode="after")
    def _unique_features(self) -> "Manifest":
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate feature names: {dupes}")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def feature(self, name: str) -> FeatureSpec:
        for spec in self.features:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        path = directory / MANIFEST_FILE
        if not path.is_file():
            raise ManifestError(f"no {MANIFEST_FILE} in {directory}")
        try:
            return cls.model_validate(load_yaml(path.read_text()))
        except (ValidationError, yaml.YAMLError) as exc:
            raise ManifestError(f"invalid manifest {path}: {exc}") from exc

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_FILE
        path.write_text(yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False))
        return path

"""Loading model directories: integrity check, artifact, background sample, encoding, reason codes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from risklens.errors import ArtifactIntegrityError, ManifestError
from risklens.registry.adapters import (
    ModelAdapter,
    ModelKind,
    OutputSpace,
    adapter_for_estimator,
    adapter_for_framework,
)
from risklens.registry.hashing import file_sha256
from risklens.registry.manifest import Manifest
from risklens.registry.schema import Encoding, encode_frame, schema_encoding

log = logging.getLogger(__name__)


def verified_path(directory: Path, file: str, sha256: str) -> Path:
    """Path of ``file`` in ``directory`` after checking its sha256; refuses anything else."""
    path = directory / file
    if not path.is_file():
        raise ArtifactIntegrityError(f"{path} is missing")
    actual = file_sha256(path)
    if actual != sha256:
        raise ArtifactIntegrityError(
            f"{path} has sha256 {actual} but the manifest pins {sha256}: refusing to load a changed file")
    return path


def _pipeline_encoding(pipeline: Any, manifest: Manifest) -> Encoding:
    """Map a fitted Pipeline's transformed columns back to the schema feature each came from."""
    names = [str(n).split("__", 1)[-1] for n in pipeline[:-1].get_feature_names_out()]
    features = manifest.feature_names
    index = []
    for col in names:
        # The longest feature name that equals the column or prefixes it as "<feature>_<category>".
        matches = [i for i, f in enumerate(features) if col == f or col.startswith(f + "_")]
        if not matches:
            raise ManifestError(f"pipeline output column {col!r} matches no schema feature")
        index.append(max(matches, key=lambda i: len(features[i])))
    return Encoding(names, np.asarray(index, dtype=np.intp))


@dataclass
class LoadedModel:
    """A verified, loaded model plus everything explainers need from its directory."""

    manifest: Manifest
    directory: Path
    artifact: Any
    background: pd.DataFrame
    adapter: ModelAdapter = field(repr=False)
    extras: dict[str, Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def key(self) -> tuple[str, str]:
        return (self.manifest.name, self.manifest.version)

    @property
    def is_pipeline(self) -> bool:
        return self.manifest.preprocessing == "pipeline"

    @cached_property
    def estimator(self) -> Any:
        """The final estimator that sees the model matrix (the artifact itself unless it is a Pipeline)."""
        return self.artifact[-1] if self.is_pipeline else self.artifact

    @cached_property
    def estimator_adapter(self) -> ModelAdapter:
        return adapter_for_estimator(self.estimator) if self.is_pipeline else self.adapter

    @cached_property
    def encoding(self) -> Encoding:
        return _pipeline_encoding(self.artifact, self.manifest) if self.is_pipeline else schema_encoding(self.manifest)

    @cached_property
    def output_space(self) -> OutputSpace:
        return self.estimator_adapter.output_space(self.estimator)

    @cached_property
    def kind(self) -> ModelKind:
        return self.estimator_adapter.kind(self.estimator)

    @cached_property
    def background_matrix(self) -> np.ndarray:
        return self.model_matrix(self.background)

    def model_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """Validated raw features -> the float64 matrix the final estimator takes."""
        if self.is_pipeline:
            out = self.artifact[:-1].transform(frame)
            out = out.toarray() if hasattr(out, "toarray") else out
            return np.asarray(out, dtype="float64")
        return encode_frame(self.manifest, frame)

    def raw_from_matrix(self, matrix: np.ndarray) -> np.ndarray:
        return self.estimator_adapter.raw_output(self.estimator, matrix)

    def raw_output(self, frame: pd.DataFrame) -> np.ndarray:
        return self.raw_from_matrix(self.model_matrix(frame))

    def score_from_raw(self, raw: np.ndarray) -> np.ndarray:
        """Positive-class probability for classifiers (sigmoid of log-odds), the prediction otherwise."""
        raw = np.asarray(raw, dtype="float64")
        return 1.0 / (1.0 + np.exp(-raw)) if self.output_space == "log_odds" else raw

    def predict_score(self, frame: pd.DataFrame) -> np.ndarray:
        return self.score_from_raw(self.raw_output(frame))


def load_model_dir(directory: Path) -> LoadedModel:
    """Load one model directory; every file is checked against the manifest's sha256 first."""
    directory = Path(directory)
    manifest = Manifest.read(directory)
    artifact_path = verified_path(directory, manifest.artifact, manifest.sha256)
    adapter = adapter_for_framework("sklearn" if manifest.preprocessing == "pipeline" else manifest.framework)
    artifact = adapter.load(artifact_path)
    background_path = directory / manifest.background
    if not background_path.is_file():
        raise ManifestError(f"background sample {background_path} is missing")
    background = pd.read_parquet(background_path)
    missing = [f for f in manifest.feature_names if f not in background.columns]
    if missing:
        raise ManifestError(f"background sample lacks schema features {missing}")
    extras = {name: verified_path(directory, ref.file, ref.sha256) for name, ref in manifest.artifacts.items()}
    model = LoadedModel(manifest, directory, artifact, background[manifest.feature_names], adapter, extras)
    log.info("loaded model %s version %s (%s, sha256 %s)", manifest.name, manifest.version,
             manifest.framework, manifest.sha256[:12])
    return model

"""The one explainer protocol every method implements (one module per method in this package)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from risklens.registry import LoadedModel
from risklens.registry.schema import FeatureValue, columns_frame, encode_columns


class ClaimRows:
    """Validated claims in the forms the methods take, each built on first use: the raw-feature frame
    (pandas: LIME, ICE, EBM surrogates, pipelines) and the model matrix (SHAP, native EBMs).

    SHAP alone never builds the frame: the matrix is encoded from the values (``encode_columns``).
    """

    def __init__(self, model: LoadedModel, columns: Mapping[str, Sequence[FeatureValue]] | None = None, *,
                 frame: pd.DataFrame | None = None) -> None:
        """``columns``: the claims' canonical values per schema feature (what ``validate_claim`` and
        ``validate_columns`` return), or ``frame``: a frame of validated raw features (tests, tools)."""
        if (columns is None) == (frame is None):
            raise TypeError("ClaimRows takes either the validated columns or a frame of them")
        self.model = model
        self.columns = columns
        if frame is not None:
            self.frame = frame
            self._rows = len(frame)
        else:
            names = model.manifest.feature_names
            self._rows = len(columns[names[0]]) if names else 0  # type: ignore[index]

    def __len__(self) -> int:
        return self._rows

    @cached_property
    def frame(self) -> pd.DataFrame:
        # Only reached with columns: a ClaimRows made from a frame has its frame set.
        return columns_frame(self.model.manifest, self.columns)  # type: ignore[arg-type]

    @cached_property
    def matrix(self) -> np.ndarray:
        """The float64 matrix the model's final estimator takes."""
        if self.columns is None or self.model.is_pipeline:
            return self.model.model_matrix(self.frame)
        return encode_columns(self.model.manifest, self.columns)


class FeatureSums:
    """``values @ weights`` per row, each row's feature sums taken on their own, in one fixed order.

    Why not the matrix product: BLAS picks its kernel, and so the order of each sum, by the table's
    shape; a claim's per-feature values then differed in the last bit between a batch and the same
    claim alone, and a batch receipt did not replay as identical. Here the weighted columns are laid
    out feature by feature and ``np.add.reduceat`` adds each row's run of columns for a feature in
    the same order whatever the rows around it (tested against the claim alone and in tables).
    """

    def __init__(self, weights: np.ndarray) -> None:
        """``weights``: (n_columns, n_features); a column adds ``weight * value`` to each feature it weighs on."""
        self.n_features = weights.shape[1]
        features, columns = np.nonzero(weights.T)  # feature-major: each feature's columns in order
        self._columns = columns
        self._scale = None if np.all(weights[columns, features] == 1.0) else weights[columns, features]
        self._present = np.unique(features)  # features some column weighs on; the others sum to 0
        self._starts = np.searchsorted(features, self._present)
        self._all_present = len(self._present) == self.n_features

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """(n_rows, n_features) sums of the (n_rows, n_columns) ``values``."""
        if not len(self._columns):
            return np.zeros((values.shape[0], self.n_features))
        laid_out = values[:, self._columns]
        if self._scale is not None:
            laid_out *= self._scale
        summed = np.add.reduceat(laid_out, self._starts, axis=1)
        if self._all_present:
            return summed
        sums = np.zeros((values.shape[0], self.n_features))
        sums[:, self._present] = summed
        return sums


@dataclass
class ExplainContext:
    """Per-call options and the results of methods that already ran (SHAP always runs first)."""

    top_k: int
    device: str
    seeds: list[int]  # one per row
    lime_samples: int = 0
    agreement_threshold: float = 0.5
    results: dict[str, list[Any]] = field(default_factory=dict)


class Explainer(ABC):
    """One explanation method for one loaded model. Built once per model and reused across calls."""

    name: ClassVar[str]
    # Methods whose results this one reads from ``ExplainContext.results`` (run before it when supported).
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    @classmethod
    def supports(cls, model: LoadedModel) -> bool:
        """Whether this method can explain ``model`` at all."""
        return True

    @abstractmethod
    def explain(self, claims: ClaimRows, context: ExplainContext) -> list[Any]:
        """One result per claim, in order."""

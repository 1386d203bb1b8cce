"""PDP / ICE position: where a claim sits on the model's partial-dependence curves.

Partial dependence of the model score is precomputed for every feature at registration (the
``pdp`` artifact, see ``risklens.registry.registration``). Per claim, for its top-k features by
|SHAP|: the claim's own ICE curve on the same grid (the score with only that feature changed), the
PDP curve, the claim value's percentile in the background sample, and whether the ICE curve rises,
falls or stays flat where the claim sits. All ICE curves of a call come from one model call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from risklens.explainers.base import ClaimRows, ExplainContext, Explainer
from risklens.registry import LoadedModel
from risklens.registry.manifest import PDP_ARTIFACT
from risklens.v1 import risklens_pb2 as pb

# Score change over one grid step below which the curve counts as flat there.
FLAT_TOLERANCE = 1e-4
# position_percentile for a missing value (it has no place on the feature's scale).
MISSING_PERCENTILE = -1.0


@dataclass(frozen=True)
class FeatureIce:
    feature: str
    grid: list[Any]  # numbers, or category labels / booleans
    ice: np.ndarray
    pdp: np.ndarray
    position_percentile: float
    slope_direction: str
    value: Any

    def to_proto(self) -> pb.FeatureIce:
        from risklens.wire import value_to_proto

        numeric = all(isinstance(g, float) for g in self.grid)
        return pb.FeatureIce(
            feature=self.feature, grid=self.grid if numeric else [],
            grid_labels=[] if numeric else [str(g) for g in self.grid],
            ice=[float(v) for v in self.ice], pdp=[float(v) for v in self.pdp],
            position_percentile=self.position_percentile, slope_direction=self.slope_direction,
            value=value_to_proto(self.value))


@dataclass(frozen=True)
class IceResult:
    features: list[FeatureIce]

    def to_proto(self) -> pb.IceResult:
        return pb.IceResult(features=[f.to_proto() for f in self.features])


def mid_rank_percentile(sorted_values: np.ndarray, value: float) -> float:
    """Percent of the background below ``value``, counting ties as half (0-100)."""
    if len(sorted_values) == 0:
        return 50.0
    below = np.searchsorted(sorted_values, value, side="left")
    at_or_below = np.searchsorted(sorted_values, value, side="right")
    return float(100.0 * (below + 0.5 * (at_or_below - below)) / len(sorted_values))


def slope_direction(delta: float) -> str:
    if abs(delta) < FLAT_TOLERANCE:
        return "flat"
    return "increasing" if delta > 0 else "decreasing"


class IceExplainer(Explainer):
    name = "ice"

    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model)
        stored = json.loads(model.extras[PDP_ARTIFACT].read_text())["features"]
        self.grids: dict[str, list[Any]] = {}
        self.pdp: dict[str, np.ndarray] = {}
        # Each feature's background values on one numeric scale (category index for categoricals).
        self.positions: dict[str, np.ndarray] = {}
        for spec in model.manifest.features:
            entry = stored[spec.name]
            grid = entry["grid"]
            self.grids[spec.name] = [bool(g) for g in grid] if spec.type == "boolean" else (
                [str(g) for g in grid] if spec.type == "categorical" else [float(g) for g in grid])
            self.pdp[spec.name] = np.asarray(entry["pdp"], dtype="float64")
            self.positions[spec.name] = np.sort(self._scale(spec.name, model.background[spec.name]))

    @classmethod
    def supports(cls, model: LoadedModel) -> bool:
        return PDP_ARTIFACT in model.extras

    def _scale(self, feature: str, column: pd.Series) -> np.ndarray:
        """Values as numbers for ranking: categories by schema order, booleans 0/1; missing dropped."""
        spec = self.model.manifest.feature(feature)
        column = column.dropna()
        if spec.type == "categorical":
            return pd.Categorical(column, categories=spec.categories).codes.astype("float64")
        if spec.type == "boolean":
            return column.astype(bool).to_numpy(dtype="float64")
        return column.to_numpy(dtype="float64")

    def _position(self, feature: str, value: Any) -> float:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return MISSING_PERCENTILE
        scaled = self._scale(feature, pd.Series([value]))
        return mid_rank_percentile(self.positions[feature], float(scaled[0]))

    def _slope(self, feature: str, value: Any, ice: np.ndarray) -> str:
        """Direction of the ICE curve at the claim's value: over the grid step that contains it for
        numbers (the nearest end step outside the grid); towards the next category in schema order
        (the previous one for the last) for categories; from False to True for booleans."""
        grid = self.grids[feature]
        if len(grid) < 2:
            return "flat"
        spec = self.model.manifest.feature(feature)
        if spec.type == "numeric":
            if value is None or np.isnan(value):
                return "flat"
            step = int(np.clip(np.searchsorted(np.asarray(grid), value, side="right") - 1, 0, len(grid) - 2))
            return slope_direction(float(ice[step + 1] - ice[step]))
        if spec.type == "boolean":
            return slope_direction(float(ice[1] - ice[0]))
        at = grid.index(value) if value in grid else 0
        step = min(at, len(grid) - 2)
        return slope_direction(float(ice[step + 1] - ice[step]))

    def explain(self, claims: ClaimRows, context: ExplainContext) -> list[IceResult]:
        from risklens.registry.registration import with_feature_values

        frame = claims.frame
        names = self.model.manifest.feature_names
        shap_results = context.results["shap"]
        k = max(1, context.top_k)
        picks: list[list[str]] = []
        blocks: list[pd.DataFrame] = []
        for row in range(len(frame)):
            order = np.argsort(-np.abs(shap_results[row].values), kind="stable")[:k]
            chosen = [names[j] for j in order]
            picks.append(chosen)
            blocks += [with_feature_values(frame.iloc[[row]], f, self.grids[f]) for f in chosen]
        scores = self.model.predict_score(pd.concat(blocks, ignore_index=True)) if blocks else np.empty(0)
        results, offset = [], 0
        for row, chosen in enumerate(picks):
            features = []
            for feature in chosen:
                grid = self.grids[feature]
                ice = scores[offset:offset + len(grid)]
                offset += len(grid)
                value = frame[feature].iloc[row]
                value = None if value is None or (not isinstance(value, str) and pd.isna(value)) else (
                    value.item() if hasattr(value, "item") else value)
                features.append(FeatureIce(
                    feature=feature, grid=grid, ice=ice, pdp=self.pdp[feature],
                    position_percentile=self._position(feature, value),
                    slope_direction=self._slope(feature, value, ice), value=value))
            results.append(IceResult(features))
        return results

"""Claim validation against a manifest's feature schema, and schema-driven encoding to a model matrix.

``validate_claim`` is the one validation entry point: every message states what was expected, what
arrived and which field it was, so the gRPC layer can pass it straight to the caller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from risklens.errors import SchemaError
from risklens.registry.manifest import FeatureSpec, Manifest

FeatureValue = float | int | str | bool | None


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    return type(value).__name__


def _check_value(spec: FeatureSpec, value: FeatureValue) -> FeatureValue:
    """Return the value in canonical Python form, or raise SchemaError naming the feature."""
    name = spec.name
    if isinstance(value, float) and math.isnan(value):
        value = None  # NaN is how callers send "missing" in numeric arrays
    if value is None:
        if not spec.nullable:
            raise SchemaError(f"feature {name!r} is null (or NaN) but the schema does not allow missing values",
                              field=name)
        return None
    if spec.type == "numeric":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"feature {name!r} must be a number, got {_describe(value)}", field=name)
        number = float(value)
        if math.isinf(number):
            raise SchemaError(f"feature {name!r} must be finite, got {number}", field=name)
        if spec.min is not None and number < spec.min or spec.max is not None and number > spec.max:
            raise SchemaError(
                f"feature {name!r} is outside the schema range [{spec.min}, {spec.max}]", field=name)
        return number
    if spec.type == "boolean":
        if not isinstance(value, bool):
            raise SchemaError(f"feature {name!r} must be a boolean, got {_describe(value)}", field=name)
        return value
    if not isinstance(value, str):
        raise SchemaError(f"feature {name!r} must be text (a category), got {_describe(value)}", field=name)
    if value not in spec.categories:
        raise SchemaError(
            f"feature {name!r} has a category outside the schema; allowed: {spec.categories}", field=name)
    return value


def validate_claim(manifest: Manifest, features: Mapping[str, FeatureValue]) -> dict[str, FeatureValue]:
    """Check one claim against the schema; returns the claim in schema order with canonical values."""
    expected = manifest.feature_names
    unknown = sorted(set(features) - set(expected))
    if unknown:
        raise SchemaError(
            f"unknown feature {unknown[0]!r} for model {manifest.name!r} (expects {len(expected)} features)",
            field=unknown[0])
    clean: dict[str, FeatureValue] = {}
    for spec in manifest.features:
        if spec.name not in features:
            raise SchemaError(f"missing feature {spec.name!r} ({spec.type}) for model {manifest.name!r}",
                              field=spec.name)
        clean[spec.name] = _check_value(spec, features[spec.name])
    return clean


def claims_frame(manifest: Manifest, claims: Sequence[Mapping[str, FeatureValue]]) -> pd.DataFrame:
    """Validated claims as a DataFrame: float64 numbers, bool (object when null) flags, str categories.

    Columns are built from NumPy arrays: for one claim, pandas' own per-column inference costs
    more than the rest of an explanation.
    """
    columns: dict[str, np.ndarray] = {}
    for spec in manifest.features:
        raw = [claim[spec.name] for claim in claims]
        if spec.type == "numeric":
            columns[spec.name] = np.array([np.nan if v is None else v for v in raw], dtype="float64")
        elif spec.type == "boolean":
            columns[spec.name] = np.array(raw, dtype=object if None in raw else bool)
        else:
            columns[spec.name] = np.array(raw, dtype=object)  # pandas infers its str dtype
    return pd.DataFrame(columns, copy=False)


def frame_to_claims(frame: pd.DataFrame) -> list[dict[str, FeatureValue]]:
    """Rows of a DataFrame as claim dicts with plain Python values (NaN/NA become None)."""
    claims = []
    for row in frame.to_dict(orient="records"):
        claim: dict[str, FeatureValue] = {}
        for key, value in row.items():
            if value is None or (not isinstance(value, str) and pd.isna(value)):
                claim[key] = None
            elif isinstance(value, (bool, np.bool_)):
                claim[key] = bool(value)
            elif isinstance(value, (int, float, np.integer, np.floating)):
                claim[key] = float(value)
            else:
                claim[key] = str(value)
        claims.append(claim)
    return claims


@dataclass(frozen=True)
class Encoding:
    """How schema features map to model-matrix columns: column names and each column's feature index."""

    columns: list[str]
    feature_index: np.ndarray  # (n_columns,) index into the manifest's features

    def group_matrix(self, n_features: int) -> np.ndarray:
        """(n_columns, n_features) 0/1 matrix that sums column attributions back to features."""
        groups = np.zeros((len(self.columns), n_features))
        groups[np.arange(len(self.columns)), self.feature_index] = 1.0
        return groups


def schema_encoding(manifest: Manifest) -> Encoding:
    columns: list[str] = []
    index: list[int] = []
    for i, spec in enumerate(manifest.features):
        if spec.type == "categorical" and spec.encoding == "onehot":
            names = [f"{spec.name}={cat}" for cat in spec.categories]
        else:
            names = [spec.name]
        columns += names
        index += [i] * len(names)
    return Encoding(columns, np.asarray(index, dtype=np.intp))


_BOOLEAN_CODES = {True: 1.0, False: 0.0}


def _codes(values: np.ndarray, index: dict[Any, float]) -> np.ndarray:
    """Map each value through ``index``; anything else (None, NaN) becomes NaN, i.e. missing."""
    return np.fromiter((index.get(v, np.nan) for v in values), dtype="float64", count=len(values))


def encode_frame(manifest: Manifest, frame: pd.DataFrame) -> np.ndarray:
    """Validated raw features -> float64 model matrix in ``schema_encoding(manifest).columns`` order."""
    blocks: list[np.ndarray] = []
    for spec in manifest.features:
        col = frame[spec.name]
        if spec.type == "numeric":
            blocks.append(col.to_numpy(dtype="float64", na_value=np.nan)[:, None])
        elif spec.type == "boolean":
            blocks.append(_codes(col.to_numpy(dtype=object), _BOOLEAN_CODES)[:, None])
        else:
            codes = _codes(col.to_numpy(dtype=object), {c: float(i) for i, c in enumerate(spec.categories)})
            if spec.encoding == "ordinal":
                blocks.append(codes[:, None])
            else:
                onehot = (codes[:, None] == np.arange(len(spec.categories))[None, :]).astype("float64")
                onehot[np.isnan(codes)] = np.nan
                blocks.append(onehot)
    return np.hstack(blocks) if blocks else np.empty((len(frame), 0))

"""Faithfulness of attributions: deletion and insertion curves.

For each claim, features are ranked by a method's attribution (largest risk-raising first). The
deletion curve replaces the top-k features with a reference value (background median / mode) and
records the score; the insertion curve starts from the reference claim and puts the claim's own
top-k values back. A faithful method makes the score fall fast on deletion and rise fast on
insertion. The "average drop" (mean relative fall of the score after deleting the top-k) and the
"average increase" (share of claims whose score rises when only the top-k are kept) summarise them,
as in the attribution-evaluation literature. A random order is the baseline every method must beat.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from risklens.registry import LoadedModel


@dataclass(frozen=True)
class Curves:
    method: str
    steps: np.ndarray  # k = 0..K features removed / inserted
    deletion: np.ndarray  # mean score after deleting the top-k
    insertion: np.ndarray  # mean score after inserting the top-k into the reference claim
    average_drop: float  # mean max(0, score - score_after_deleting_top_k) / score, at k = top_k
    average_increase: float  # share of claims whose top-k-only score exceeds the reference score

    @property
    def deletion_area(self) -> float:
        return float(np.trapezoid(self.deletion, self.steps) / max(self.steps[-1], 1))

    @property
    def insertion_area(self) -> float:
        return float(np.trapezoid(self.insertion, self.steps) / max(self.steps[-1], 1))


def reference_claim(model: LoadedModel) -> dict[str, object]:
    """A neutral claim: background median for numbers, the most common value otherwise."""
    background = model.background
    reference: dict[str, object] = {}
    for spec in model.manifest.features:
        column = background[spec.name].dropna()
        if spec.type == "numeric":
            reference[spec.name] = float(column.median()) if len(column) else None
        else:
            reference[spec.name] = column.mode().iloc[0] if len(column) else None
    return reference


def faithfulness_curves(model: LoadedModel, frame: pd.DataFrame, attributions: dict[str, np.ndarray], *,
                        max_steps: int = 10, top_k: int = 3, seed: int = 0) -> list[Curves]:
    """Curves per method (plus "random") for the claims in ``frame`` (validated, schema dtypes).

    ``attributions[method]`` is (rows, features) in manifest feature order.
    """
    names = model.manifest.feature_names
    frame = frame.reset_index(drop=True)
    n, f = len(frame), len(names)
    steps = np.arange(min(max_steps, f) + 1)
    reference = reference_claim(model)
    reference_frame = pd.DataFrame([reference] * n, columns=names).astype(frame.dtypes.to_dict())
    reference_score = model.predict_score(reference_frame.iloc[:1])[0]
    original = model.predict_score(frame)
    rng = np.random.default_rng(seed)
    orders = {method: np.argsort(-values, axis=1, kind="stable") for method, values in attributions.items()}
    orders["random"] = np.argsort(rng.random((n, f)), axis=1)
    curves = []
    for method, order in orders.items():
        deleted_frames, inserted_frames = [], []
        for k in steps:
            mask = np.zeros((n, f), dtype=bool)
            np.put_along_axis(mask, order[:, :k], True, axis=1)
            deleted = frame.copy()
            inserted = reference_frame.copy()
            for j, name in enumerate(names):
                if mask[:, j].any():
                    deleted.loc[mask[:, j], name] = reference_frame.loc[mask[:, j], name]
                    inserted.loc[mask[:, j], name] = frame.loc[mask[:, j], name].to_numpy()
            deleted_frames.append(deleted)
            inserted_frames.append(inserted)
        deletion = model.predict_score(pd.concat(deleted_frames, ignore_index=True)).reshape(len(steps), n)
        insertion = model.predict_score(pd.concat(inserted_frames, ignore_index=True)).reshape(len(steps), n)
        k = min(top_k, len(steps) - 1)
        drop = np.maximum(0.0, original - deletion[k]) / np.maximum(original, 1e-12)
        curves.append(Curves(method=method, steps=steps, deletion=deletion.mean(axis=1),
                             insertion=insertion.mean(axis=1), average_drop=float(drop.mean()),
                             average_increase=float((insertion[k] > reference_score).mean())))
    return curves

"""Permutation importance: where a claim's top features rank for the model as a whole.

The ranking is global (scikit-learn ``permutation_importance`` on labelled hold-out data, computed
at registration and stored as the ``permutation`` artifact). Per claim, the response lists the
claim's top-k features by |SHAP| with their global rank, so a reviewer sees whether this claim
is driven by what usually matters or by something the model rarely relies on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from risklens.explainers.base import ClaimRows, ExplainContext, Explainer
from risklens.registry import LoadedModel
from risklens.registry.manifest import PERMUTATION_ARTIFACT
from risklens.v1 import risklens_pb2 as pb


@dataclass(frozen=True)
class PermutationRank:
    feature: str
    global_rank: int
    importance_mean: float
    importance_std: float


@dataclass(frozen=True)
class PermutationResult:
    features: list[PermutationRank]
    scoring: str

    def to_proto(self) -> pb.PermutationResult:
        return pb.PermutationResult(
            features=[pb.PermutationRank(feature=f.feature, global_rank=f.global_rank,
                                         importance_mean=f.importance_mean, importance_std=f.importance_std)
                      for f in self.features],
            scoring=self.scoring)


class PermutationExplainer(Explainer):
    name = "permutation"

    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model)
        stored = json.loads(model.extras[PERMUTATION_ARTIFACT].read_text())
        self.scoring: str = stored["scoring"]
        # How the ranking was measured: repeats of each shuffle, on how many held-out claims.
        self.n_repeats: int = int(stored["n_repeats"])
        self.holdout_rows: int = int(stored["rows"])
        self.ranks = {entry["feature"]: PermutationRank(entry["feature"], int(entry["rank"]),
                                                        float(entry["importance_mean"]),
                                                        float(entry["importance_std"]))
                      for entry in stored["features"]}

    @classmethod
    def supports(cls, model: LoadedModel) -> bool:
        return PERMUTATION_ARTIFACT in model.extras

    def global_ranking(self) -> list[PermutationRank]:
        return sorted(self.ranks.values(), key=lambda r: r.global_rank)

    def explain(self, claims: ClaimRows, context: ExplainContext) -> list[PermutationResult]:
        names = self.model.manifest.feature_names
        k = max(1, context.top_k)
        results = []
        for shap_result in context.results["shap"]:
            order = np.argsort(-np.abs(shap_result.values), kind="stable")[:k]
            results.append(PermutationResult([self.ranks[names[j]] for j in order], self.scoring))
        return results

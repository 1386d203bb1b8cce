"""EBM glass-box terms: exact for EBM models, from a distilled surrogate for every other model.

An EBM's logit is its intercept plus one score per term (single features and feature pairs), so
its local explanation is exact: ``eval_terms``. A native EBM (framework "ebm") sees the model
matrix, so its terms name encoded columns and map back to schema features through the encoding.
For other models the ``ebm_surrogate`` artifact (an EBM regressor trained at registration on the
model's logits over raw features) explains the claim, and ``ebm_fidelity`` says how far to trust it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from risklens.explainers.base import ClaimRows, ExplainContext, Explainer, FeatureSums
from risklens.registry import LoadedModel
from risklens.registry.adapters import EBMAdapter
from risklens.registry.manifest import FIDELITY_ARTIFACT, SURROGATE_ARTIFACT
from risklens.v1 import risklens_pb2 as pb


@dataclass(frozen=True)
class EbmTerm:
    term: str
    features: tuple[str, ...]
    contribution: float


@dataclass(frozen=True)
class EbmResult:
    surrogate: bool
    intercept: float
    terms: list[EbmTerm]
    logit: float
    fidelity_r2: float
    fidelity_agreement: float
    # Per schema feature: its single-feature terms plus half of each pair term it is in (the
    # Shapley split of a pair that is scored as one table); used for cross-method agreement.
    feature_contributions: np.ndarray

    def to_proto(self) -> pb.EbmResult:
        terms = sorted(self.terms, key=lambda t: -abs(t.contribution))
        return pb.EbmResult(
            surrogate=self.surrogate, intercept=self.intercept,
            terms=[pb.EbmTerm(term=t.term, features=list(t.features), contribution=t.contribution) for t in terms],
            logit=self.logit, fidelity_r2=self.fidelity_r2, fidelity_agreement=self.fidelity_agreement)


def load_surrogate(model: LoadedModel) -> tuple[Any, dict[str, Any]]:
    """The registered surrogate EBM and its fidelity record (both sha256-verified by the loader)."""
    import joblib

    surrogate = joblib.load(model.extras[SURROGATE_ARTIFACT])
    fidelity = json.loads(model.extras[FIDELITY_ARTIFACT].read_text())
    return surrogate, fidelity


class EbmExplainer(Explainer):
    name = "ebm"

    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model)
        names = model.manifest.feature_names
        if model.kind == "additive":
            self.ebm = model.estimator
            self.surrogate = False
            self.fidelity = {"r2": 1.0, "decision_agreement": 1.0}
            # EBM input column -> schema feature (through the registry's encoding).
            column_feature = [names[i] for i in model.encoding.feature_index]
        else:
            self.ebm, self.fidelity = load_surrogate(model)
            self.surrogate = True
            column_feature = list(self.ebm.feature_names_in_)
        self._term_features = [tuple(dict.fromkeys(column_feature[c] for c in term)) for term in self.ebm.term_features_]
        self._term_names = [str(t) for t in self.ebm.term_names_]
        # (n_terms, n_features): how each term's score is shared among schema features.
        share = np.zeros((len(self._term_names), len(names)))
        index = {name: j for j, name in enumerate(names)}
        for t, term in enumerate(self.ebm.term_features_):
            for c in term:
                share[t, index[column_feature[c]]] += 1.0 / len(term)
        self._feature_sums = FeatureSums(share)

    @classmethod
    def supports(cls, model: LoadedModel) -> bool:
        return model.kind == "additive" or (SURROGATE_ARTIFACT in model.extras and FIDELITY_ARTIFACT in model.extras)

    def term_scores(self, claims: ClaimRows) -> np.ndarray:
        """(rows, terms) local term scores on the logit scale."""
        if self.surrogate:
            data = claims.frame[list(self.ebm.feature_names_in_)].reset_index(drop=True)
        else:
            data = EBMAdapter.frame(self.ebm, claims.matrix)
        return np.asarray(self.ebm.eval_terms(data), dtype="float64")

    def explain(self, claims: ClaimRows, context: ExplainContext) -> list[EbmResult]:
        scores = self.term_scores(claims)
        intercept = float(np.asarray(self.ebm.intercept_).reshape(-1)[0])
        per_feature = self._feature_sums(scores)
        results = []
        for row in range(len(claims)):
            terms = [EbmTerm(self._term_names[t], self._term_features[t], float(scores[row, t]))
                     for t in range(scores.shape[1])]
            results.append(EbmResult(
                surrogate=self.surrogate, intercept=intercept, terms=terms,
                logit=intercept + float(scores[row].sum()),
                fidelity_r2=float(self.fidelity["r2"]), fidelity_agreement=float(self.fidelity["decision_agreement"]),
                feature_contributions=per_feature[row]))
        return results

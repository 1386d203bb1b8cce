"""Cross-method agreement: do SHAP, LIME and the EBM tell the same story about a claim?

Each method gives one signed attribution per schema feature (positive raises the risk). For every
pair of methods the rank agreement of their top-k features is computed (``rank_agreement``); a
claim is flagged when some pair agrees less than the configured threshold, and ``summary`` says in
plain words which methods agree about the strongest driver. The core puts ``summary`` into the
rationale.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from risklens.explainers.base import ClaimRows, ExplainContext, Explainer
from risklens.registry import LoadedModel
from risklens.v1 import risklens_pb2 as pb

METHOD_LABELS = {"shap": "SHAP", "lime": "LIME", "ebm": "EBM"}
_COUNT_WORDS = {1: "One", 2: "Two", 3: "Three"}


def top_k_signed(values: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The ``k`` largest |values| as (feature index, sign), largest first; ties go to the lower index."""
    order = np.argsort(-np.abs(values), kind="stable")[:k]
    return [(int(j), int(np.sign(values[j]))) for j in order]


def rank_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Average overlap of two signed top-k lists, in [0, 1] (1: same features, same order, same signs).

    For each depth d = 1..k, the share of the first d (feature, sign) pairs the two lists have in
    common; the mean over depths. It rewards agreement at the top more than further down (it is
    rank-biased overlap without discounting) and counts a feature only when both methods give
    its effect the same direction.
    """
    k = min(k, len(a), len(b))
    if k == 0:
        return 1.0
    top_a, top_b = top_k_signed(a, k), top_k_signed(b, k)
    return float(np.mean([len(set(top_a[:d]) & set(top_b[:d])) / d for d in range(1, k + 1)]))


@dataclass(frozen=True)
class AgreementResult:
    pairs: list[tuple[str, str, float]]
    threshold: float
    disagree: bool
    summary: str

    def to_proto(self) -> pb.AgreementResult:
        return pb.AgreementResult(
            pairs=[pb.MethodAgreement(method_a=a, method_b=b, agreement=v) for a, b, v in self.pairs],
            threshold=self.threshold, disagree=self.disagree, summary=self.summary)


def feature_attributions(method: str, result: object) -> np.ndarray:
    """One signed attribution per schema feature from a SHAP, LIME or EBM result."""
    if method == "shap":
        return np.asarray(result.values, dtype="float64")  # type: ignore[attr-defined]
    return np.asarray(result.feature_contributions, dtype="float64")  # type: ignore[attr-defined]


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def summarise(attributions: dict[str, np.ndarray], labels: list[str], k: int, disagree: bool) -> str:
    """Plain words about the strongest driver by SHAP (the reference method) and who agrees."""
    methods = list(attributions)
    reference = attributions["shap"]
    j = int(np.argmax(np.abs(reference)))
    sign = int(np.sign(reference[j]))
    if sign == 0:
        return ""
    verb = "raises" if sign > 0 else "lowers"
    agreeing = [m for m in methods if (j, sign) in top_k_signed(attributions[m], k)]
    others = [m for m in methods if m not in agreeing]
    count, total = len(agreeing), len(methods)
    names = _join([METHOD_LABELS.get(m, m) for m in agreeing])
    if count == total:
        lead = "All three" if total == 3 else ("Both" if total == 2 else "The")
        sentence = f"{lead} methods ({names}) agree that {labels[j]} {verb} the risk."
    else:
        sentence = (f"{_COUNT_WORDS.get(count, str(count))} of {_COUNT_WORDS.get(total, str(total)).lower()} "
                    f"methods ({names}) agree that "
                    f"{labels[j]} {verb} the risk; "
                    f"{_join([METHOD_LABELS.get(m, m) for m in others])} "
                    f"{'does' if len(others) == 1 else 'do'} not rank it among the top {k} in that direction.")
    if disagree:
        sentence += " The methods disagree beyond the set threshold on the main drivers, so read this explanation with care."
    return sentence


class AgreementExplainer(Explainer):
    name = "agreement"
    requires = ("lime", "ebm")

    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model)
        self._labels = [spec.display_name for spec in model.manifest.features]

    @classmethod
    def supports(cls, model: LoadedModel) -> bool:
        from risklens.explainers.ebm import EbmExplainer
        from risklens.explainers.lime import LimeExplainer

        return LimeExplainer.supports(model) or EbmExplainer.supports(model)

    def explain(self, claims: ClaimRows, context: ExplainContext) -> list[AgreementResult]:
        methods = [m for m in ("shap", "lime", "ebm") if m in context.results]
        k = max(1, context.top_k)
        results = []
        for row in range(len(claims)):
            attributions = {m: feature_attributions(m, context.results[m][row]) for m in methods}
            pairs = [(a, b, rank_agreement(attributions[a], attributions[b], k)) for a, b in combinations(methods, 2)]
            disagree = any(v < context.agreement_threshold for _, _, v in pairs)
            summary = summarise(attributions, self._labels, k, disagree)
            results.append(AgreementResult(pairs, context.agreement_threshold, disagree, summary))
        return results

"""Permutation importance finds the planted fraud drivers; each response ranks its top features."""

from __future__ import annotations

import json

import numpy as np

from risklens.datasets import PLANTED_RULES
from risklens.explainers.base import ClaimRows, ExplainContext
from risklens.explainers.permutation import PermutationExplainer
from risklens.explainers.shap import ShapExplainer
from risklens.registry.manifest import PERMUTATION_ARTIFACT

# The five strongest planted rules and the feature that carries each (claim_exceeds_vehicle is
# carried by the amount; no_corroboration by either of its two flags).
STRONG_RULES = {"early_claim", "repeat_claimant", "claim_exceeds_vehicle", "third_party_fault", "no_corroboration"}


def test_planted_drivers_rank_first(xgb_model):
    stored = json.loads(xgb_model.extras[PERMUTATION_ARTIFACT].read_text())
    assert stored["scoring"] == "roc_auc" and stored["n_repeats"] == 3
    ranking = [entry["feature"] for entry in stored["features"]]
    assert sorted(ranking) == sorted(xgb_model.manifest.feature_names)  # one entry per original feature
    planted = {f for rule in PLANTED_RULES for f in rule.features}
    top = set(ranking[:7])
    for rule in PLANTED_RULES:
        if rule.name in STRONG_RULES:
            assert top & set(rule.features), f"{rule.name} ({rule.features}) not in the top 7: {ranking}"
    # Features no rule uses carry no signal: each ranks below every strong-rule feature found.
    unplanted_ranks = [ranking.index(f) for f in ranking if f not in planted]
    strong_ranks = [ranking.index(r.features[0]) for r in PLANTED_RULES if r.name in STRONG_RULES]
    assert max(strong_ranks) < min(unplanted_ranks), ranking


def test_response_ranks_the_claims_top_features(xgb_model, synthetic):
    claims = ClaimRows(xgb_model, frame=synthetic.X_hold.iloc[:5].reset_index(drop=True))
    context = ExplainContext(top_k=3, device="cpu", seeds=[0] * 5)
    context.results["shap"] = ShapExplainer(xgb_model).explain(claims, context)
    explainer = PermutationExplainer(xgb_model)
    global_order = [r.feature for r in explainer.global_ranking()]
    names = xgb_model.manifest.feature_names
    for shap_result, result in zip(context.results["shap"], explainer.explain(claims, context)):
        top = [names[j] for j in np.argsort(-np.abs(shap_result.values), kind="stable")[:3]]
        assert [r.feature for r in result.features] == top
        assert [r.global_rank for r in result.features] == [global_order.index(f) + 1 for f in top]
        proto = result.to_proto()
        assert proto.scoring == "roc_auc" and proto.features[0].global_rank >= 1

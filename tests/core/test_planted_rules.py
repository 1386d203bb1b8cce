"""The demo model's explanations find the fraud rules the synthetic generator planted."""

from __future__ import annotations

import pytest

from risklens.core import ClaimInput, ExplainService
from risklens.datasets import PLANTED_RULES, generate_claims
from risklens.registry import ModelRegistry, frame_to_claims
from risklens.settings import Settings

# Reason code that groups each planted rule's features in the demo catalogue.
RULE_CODES = {"early_claim": "EC01", "no_corroboration": "NC02", "repeat_claimant": "PC03",
              "claim_exceeds_vehicle": "VA04", "recent_address_change": "AD05", "third_party_fault": "TP06"}


@pytest.fixture(scope="module")
def explained(demo_models_dir):
    service = ExplainService(ModelRegistry.from_directory(demo_models_dir), Settings(audit_enabled=False))
    claims, _ = generate_claims(600, seed=99)  # held out: the demo models trained on seed 7
    outcomes = {m: service.explain_batch(m, [ClaimInput(c) for c in frame_to_claims(claims)])
                for m in ("demo-xgb", "demo-logreg")}
    return claims, outcomes


@pytest.mark.parametrize("model", ["demo-xgb", "demo-logreg"])
@pytest.mark.parametrize("rule", PLANTED_RULES, ids=[r.name for r in PLANTED_RULES])
def test_planted_rule_shows_up_as_a_reason(explained, model, rule):
    claims, outcomes = explained
    applies = rule.applies(claims)
    code = RULE_CODES[rule.name]
    direction = "raises" if rule.log_odds > 0 else "lowers"
    hits = [any(c.code == code and c.direction == direction for c in outcomes[model][i].reason_codes)
            for i in range(len(claims)) if applies[i]]
    assert len(hits) >= 10
    assert sum(hits) / len(hits) >= 0.8, f"{code} among reasons for only {sum(hits)}/{len(hits)} claims"

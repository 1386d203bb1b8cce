"""One Explain call with methods=["all"] through a real gRPC server returns every method, typed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from risklens.explainers.lime import DEFAULT_SAMPLES
from risklens.v1 import risklens_pb2 as pb
from risklens.wire import value_to_proto

METHODS = ("lime", "ice", "ebm", "permutation", "agreement")


def features(path: Path) -> dict[str, pb.Value]:
    return {k: value_to_proto(v) for k, v in json.loads(path.read_text()).items()}


@pytest.mark.parametrize("model", ["demo-xgb", "demo-logreg"])
def test_explain_all_methods(demo_stub, examples_dir, model):
    request = pb.ExplainRequest(model=model, features=features(examples_dir / "early-claim-no-witness.json"),
                                claim_id="c-1", methods=["all"], options=pb.ExplainOptions(top_k=3, seed=42))
    response = demo_stub.Explain(request, timeout=60)
    for method in METHODS:
        assert response.HasField(method), method
    assert set(METHODS) <= set(response.settings.methods)
    assert response.settings.seed == 42
    # The settings state what was used, defaults resolved: the receipt says so months later.
    assert response.settings.lime_samples == response.lime.num_samples == DEFAULT_SAMPLES
    assert response.settings.top_k == 3 and response.settings.device == "cpu"
    receipt = demo_stub.GetReceipt(pb.GetReceiptRequest(receipt_id=response.receipt_id), timeout=30)
    assert receipt.explanation.settings.lime_samples == DEFAULT_SAMPLES

    assert len(response.lime.weights) == 15 and response.lime.seed == 42 and response.lime.num_samples > 0
    assert 0.0 <= response.lime.stability <= 1.0 and response.lime.weights[0].condition
    assert [f.feature for f in response.ice.features] == [c.feature for c in response.contributions[:3]]
    for ice in response.ice.features:
        assert len(ice.ice) == len(ice.pdp) == max(len(ice.grid), len(ice.grid_labels)) > 1
        assert ice.slope_direction in ("increasing", "decreasing", "flat")
    assert response.ebm.surrogate and 0.7 < response.ebm.fidelity_r2 <= 1.0
    assert response.ebm.logit == pytest.approx(response.ebm.intercept + sum(t.contribution for t in response.ebm.terms))
    assert [f.feature for f in response.permutation.features] == [c.feature for c in response.contributions[:3]]
    assert response.permutation.scoring == "roc_auc" and response.permutation.features[0].global_rank >= 1
    assert len(response.agreement.pairs) == 3 and response.agreement.summary
    assert response.agreement.summary in response.rationale

    again = demo_stub.Explain(request, timeout=60)  # same seed, same LIME
    assert [w.weight for w in again.lime.weights] == [w.weight for w in response.lime.weights]


def test_batch_with_some_methods(demo_stub, examples_dir):
    claims = [pb.Claim(claim_id=p.stem, features=features(p)) for p in sorted(examples_dir.glob("*.json"))]
    response = demo_stub.ExplainBatch(pb.ExplainBatchRequest(model="demo-xgb", claims=claims,
                                                             methods=["ice", "permutation"]), timeout=60)
    assert len(response.items) == len(claims)
    for item in response.items:
        assert item.WhichOneof("outcome") == "result"
        assert item.result.HasField("ice") and item.result.HasField("permutation")
        assert not item.result.HasField("lime") and not item.result.HasField("agreement")

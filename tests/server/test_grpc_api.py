"""The gRPC API end to end: a real server on loopback, called with the generated client."""

from __future__ import annotations

import json
import math
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from risklens.v1 import risklens_pb2 as pb
from risklens.wire import value_to_proto


def claim_features(path: Path, **changes: object) -> dict[str, pb.Value]:
    claim = json.loads(path.read_text())
    claim.update(changes)
    return {k: value_to_proto(v) for k, v in claim.items() if v is not ...}


@pytest.fixture(scope="module")
def early_claim(examples_dir: Path) -> Path:
    return examples_dir / "early-claim-no-witness.json"


def field_violation(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None, "status carries no rich details"
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return bad_request.field_violations[0].field


@pytest.mark.parametrize("model", ["demo-xgb", "demo-logreg"])
def test_explain_returns_exact_shap_reasons_and_rationale(demo_stub, early_claim, model):
    response = demo_stub.Explain(pb.ExplainRequest(model=model, claim_id="C-1", features=claim_features(early_claim)))
    assert response.model.name == model and len(response.model.sha256) == 64
    assert response.claim_id == "C-1" and response.receipt_id
    assert response.output_space == pb.LOG_ODDS
    total = response.base_value + sum(c.shap for c in response.contributions)
    assert total == pytest.approx(response.raw_score, abs=1e-6)
    assert response.score == pytest.approx(1 / (1 + math.exp(-response.raw_score)), abs=1e-12)
    # One contribution per original feature: one-hot columns were summed back.
    assert len(response.contributions) == 15
    assert len({c.feature for c in response.contributions}) == 15
    magnitudes = [abs(c.shap) for c in response.contributions]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert response.decision == ("refer" if response.score >= response.threshold else "pass")
    raising = [c for c in response.reason_codes if c.direction == "raises"]
    assert raising and all(c.weight > 0 for c in raising)
    assert f"{response.score:.2f}" in response.rationale
    assert raising[0].text[1:] in response.rationale  # the top reason is in the prose
    assert response.settings.shap_engine in ("shap-tree", "risklens-treeshap", "linear-exact")


def test_list_and_get_models(demo_stub):
    listed = demo_stub.ListModels(pb.ListModelsRequest())
    names = sorted(m.ref.name for m in listed.models)
    assert names == ["demo-logreg", "demo-xgb"]
    info = demo_stub.GetModel(pb.GetModelRequest(name="demo-xgb"))
    assert info.ref.version == "1.0.0" and info.output_space == pb.LOG_ODDS
    band = next(f for f in info.features if f.name == "vehicle_price_band")
    assert band.type == "categorical" and "under 20k" in band.categories
    assert "shap" in info.methods


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"claim_amount": ...}, "claim_amount", "missing feature"),
        ({"claim_amount": "lots"}, "claim_amount", "must be a number"),
        ({"fault": "nobody"}, "fault", "outside the schema"),
        ({"claim_amount": float("nan")}, "claim_amount", "null (or NaN)"),
        ({"claim_amount": float("inf")}, "claim_amount", "finite"),
        ({"shoe_size": 44.0}, "shoe_size", "unknown feature"),
        ({"witness_present": 1.0}, "witness_present", "must be a boolean"),
        ({"claimant_age": 7.0}, "claimant_age", "outside the schema range"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field(demo_stub, early_claim, changes, field, fragment):
    features = claim_features(early_claim, **{k: v for k, v in changes.items() if v is not ...})
    for name in (k for k, v in changes.items() if v is ...):
        del features[name]
    with pytest.raises(grpc.RpcError) as info:
        demo_stub.Explain(pb.ExplainRequest(model="demo-xgb", features=features))
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in err.details() and field in err.details()
    assert field_violation(err) == field


def test_nullable_feature_accepts_null(demo_stub, early_claim):
    response = demo_stub.Explain(pb.ExplainRequest(
        model="demo-xgb", features=claim_features(early_claim, driver_rating=None)))
    rating = next(c for c in response.contributions if c.feature == "driver_rating")
    assert rating.value.WhichOneof("kind") == "null"


def test_unknown_model_and_version_are_not_found(demo_stub, early_claim):
    for request in (pb.ExplainRequest(model="no-such-model", features=claim_features(early_claim)),
                    pb.ExplainRequest(model="demo-xgb", version="9.9", features=claim_features(early_claim))):
        with pytest.raises(grpc.RpcError) as info:
            demo_stub.Explain(request)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        demo_stub.GetModel(pb.GetModelRequest(name="no-such-model"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-model" in info.value.details()


def test_unknown_method_is_invalid_argument(demo_stub, early_claim):
    with pytest.raises(grpc.RpcError) as info:
        demo_stub.Explain(pb.ExplainRequest(model="demo-xgb", methods=["astrology"],
                                            features=claim_features(early_claim)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violation(info.value) == "methods"


def test_batch_keeps_good_rows_when_one_is_bad(demo_stub, examples_dir):
    good = [claim_features(p) for p in sorted(examples_dir.glob("*.json"))]
    bad = dict(good[0])
    bad["fault"] = value_to_proto("aliens")
    claims = [pb.Claim(claim_id=f"c{i}", features=f) for i, f in enumerate([good[0], bad, *good[1:]])]
    response = demo_stub.ExplainBatch(pb.ExplainBatchRequest(model="demo-xgb", claims=claims))
    assert [item.index for item in response.items] == list(range(len(claims)))
    outcomes = [item.WhichOneof("outcome") for item in response.items]
    assert outcomes == ["result", "error", *["result"] * (len(claims) - 2)]
    error = response.items[1].error
    assert error.code == "INVALID_ARGUMENT" and error.field == "fault"
    assert response.items[0].result.claim_id == "c0"
    single = demo_stub.Explain(pb.ExplainRequest(model="demo-xgb", features=good[0]))
    assert response.items[0].result.score == pytest.approx(single.score, abs=1e-12)
    receipts = {item.result.receipt_id for item in response.items if item.HasField("result")}
    assert len(receipts) == len(claims) - 1


def test_oversize_batch_is_resource_exhausted(demo_stub, early_claim):
    claims = [pb.Claim(claim_id=str(i), features=claim_features(early_claim)) for i in range(51)]
    with pytest.raises(grpc.RpcError) as info:
        demo_stub.ExplainBatch(pb.ExplainBatchRequest(model="demo-xgb", claims=claims))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "51" in info.value.details() and "50" in info.value.details()


def test_stream_returns_one_item_per_claim_and_survives_bad_ones(demo_stub, early_claim):
    requests = [
        pb.ExplainRequest(model="demo-xgb", claim_id="s0", features=claim_features(early_claim)),
        pb.ExplainRequest(model="missing", claim_id="s1", features=claim_features(early_claim)),
        pb.ExplainRequest(model="demo-logreg", claim_id="s2", features=claim_features(early_claim, fault=3.0)),
        pb.ExplainRequest(model="demo-logreg", claim_id="s3", features=claim_features(early_claim)),
    ]
    items = list(demo_stub.ExplainStream(iter(requests)))
    assert [i.claim_id for i in items] == ["s0", "s1", "s2", "s3"]
    assert [i.WhichOneof("outcome") for i in items] == ["result", "error", "error", "result"]
    assert items[1].error.code == "NOT_FOUND"
    assert items[2].error.code == "INVALID_ARGUMENT" and items[2].error.field == "fault"


def test_health_and_reflection(demo_server):
    health = health_pb2_grpc.HealthStub(demo_server.channel)
    for service in ("", "risklens.v1.RiskLens"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(demo_server.channel)
    replies = list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"risklens.v1.RiskLens", "grpc.health.v1.Health"} <= names


def test_logs_never_carry_claim_values(demo_stub, early_claim, caplog):
    marker_amount = 87654.32
    with caplog.at_level("DEBUG", logger="risklens"):
        demo_stub.Explain(pb.ExplainRequest(model="demo-xgb", claim_id="LOG-1",
                                            features=claim_features(early_claim, claim_amount=marker_amount)))
        with pytest.raises(grpc.RpcError):
            demo_stub.Explain(pb.ExplainRequest(model="demo-xgb", features=claim_features(
                early_claim, claim_amount=marker_amount, fault="secret-category-value")))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "explained 1 claim(s)" in logged and "INVALID_ARGUMENT" in logged
    for raw in ("87654", "87,654", "secret-category-value"):
        assert raw not in logged

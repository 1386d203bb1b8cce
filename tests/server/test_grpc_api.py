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
    for request, field in ((pb.ExplainRequest(model="no-such-model", features=claim_features(early_claim)), "model"),
                           (pb.ExplainRequest(model="demo-xgb", version="9.9", features=claim_features(early_claim)),
                            "version")):
        with pytest.raises(grpc.RpcError) as info:
            demo_stub.Explain(request)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert field_violation(info.value) == field
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
    assert field_violation(info.value) == "claims"


@pytest.mark.parametrize(
    ("methods", "options", "field", "fragment"),
    [
        (["lime"], pb.ExplainOptions(lime_samples=4_294_967_295), "options.lime_samples", "between 100 and 20,000"),
        (["lime"], pb.ExplainOptions(lime_samples=1), "options.lime_samples", "got 1"),
        ([], pb.ExplainOptions(top_k=21), "options.top_k", "between 1 and 20"),
        ([], pb.ExplainOptions(device="tpu"), "options.device", "'tpu'"),
    ],
)
def test_out_of_bounds_options_are_invalid_argument_naming_the_option(demo_stub, early_claim, methods, options,
                                                                      field, fragment):
    with pytest.raises(grpc.RpcError) as info:
        demo_stub.Explain(pb.ExplainRequest(model="demo-xgb", methods=methods, options=options,
                                            features=claim_features(early_claim)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violation(info.value) == field and fragment in info.value.details()


def test_gpu_on_a_machine_without_one_is_failed_precondition_naming_the_option(demo_stub, early_claim):
    from risklens.trees._explainer import _gpu_available

    if _gpu_available():
        pytest.skip("this machine has a CUDA device; the no-GPU error cannot occur")
    with pytest.raises(grpc.RpcError) as info:
        demo_stub.Explain(pb.ExplainRequest(model="demo-xgb", options=pb.ExplainOptions(device="gpu"),
                                            features=claim_features(early_claim)))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert field_violation(info.value) == "options.device"


def test_lime_at_the_sample_bounds_is_explained(demo_stub, early_claim):
    for samples in (100, 20_000):
        response = demo_stub.Explain(pb.ExplainRequest(model="demo-xgb", methods=["lime"], features=claim_features(
            early_claim), options=pb.ExplainOptions(lime_samples=samples, seed=3)))
        assert response.lime.num_samples == samples and 0 < response.lime.fit_score <= 1


def test_a_huge_caller_supplied_name_is_clipped_not_resource_exhausted(demo_stub, early_claim):
    """Names the caller chose are quoted in errors: clipped, a 20,000-character one still gets its own
    status (unclipped it passed gRPC's 16 KiB metadata limit: RESOURCE_EXHAUSTED at the client)."""
    huge = "x" * 20_000
    for request, code in ((pb.ExplainRequest(model="demo-xgb", features={**claim_features(early_claim),
                                                                          huge: value_to_proto(1.0)}),
                           grpc.StatusCode.INVALID_ARGUMENT),
                          (pb.ExplainRequest(model=huge, features=claim_features(early_claim)),
                           grpc.StatusCode.NOT_FOUND)):
        with pytest.raises(grpc.RpcError) as info:
            demo_stub.Explain(request)
        assert info.value.code() == code
        assert "more characters)" in info.value.details() and len(info.value.details()) < 2_100
        assert len(field_violation(info.value)) < 230


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


def test_stream_reports_an_unexpected_failure_for_its_item_and_goes_on(grpc_server_factory, demo_models_dir,
                                                                       early_claim, caplog):
    """A failure of ours (not a bad claim) in one stream item: INTERNAL for that item, the rest explained."""
    from risklens.core import ExplainService
    from risklens.registry import ModelRegistry
    from risklens.server import start_server
    from risklens.settings import Settings
    from risklens.v1 import risklens_pb2_grpc as pb_grpc

    class FailingOnce(ExplainService):
        """Fault injection: the core fails, as a bug would, for the claim id "boom"."""

        def explain(self, model_name, features, *, claim_id="", **kwargs):
            if claim_id == "boom":
                raise RuntimeError("injected failure")
            return super().explain(model_name, features, claim_id=claim_id, **kwargs)

    settings = Settings(models_dir=demo_models_dir, host="127.0.0.1", port=0, audit_enabled=False)
    running = start_server(settings, FailingOnce(ModelRegistry.from_directory(demo_models_dir), settings))
    try:
        with grpc.insecure_channel(running.target) as channel:
            requests = [pb.ExplainRequest(model="demo-xgb", claim_id=claim_id, features=claim_features(early_claim))
                        for claim_id in ("a", "boom", "b")]
            with caplog.at_level("ERROR", logger="risklens"):
                items = list(pb_grpc.RiskLensStub(channel).ExplainStream(iter(requests)))
    finally:
        running.stop()
    assert [(i.claim_id, i.WhichOneof("outcome")) for i in items] == [("a", "result"), ("boom", "error"),
                                                                      ("b", "result")]
    assert items[1].error.code == "INTERNAL" and "item 1" in items[1].error.message
    assert "injected failure" not in items[1].error.message  # details stay in the server log
    assert any("ExplainStream item 1 failed unexpectedly" in r.getMessage() and r.exc_info for r in caplog.records)


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


def test_a_newline_in_a_field_name_cannot_forge_a_log_line(demo_stub, early_claim, caplog):
    forged = "x\n2026-12-03 00:00:00,000 CRITICAL risklens: forged"
    with caplog.at_level("INFO", logger="risklens"), pytest.raises(grpc.RpcError) as info:
        demo_stub.Explain(pb.ExplainRequest(model="demo-xgb", features={**claim_features(early_claim),
                                                                         forged: value_to_proto(1.0)}))
    assert field_violation(info.value) == forged
    logged = [r.getMessage() for r in caplog.records if "INVALID_ARGUMENT" in r.getMessage()]
    assert logged and all("\n" not in line for line in logged)

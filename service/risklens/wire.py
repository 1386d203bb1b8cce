"""Conversions between core objects and the risklens.v1 protobuf messages.

The server, the audit trail and batch exports all use these, so what a reviewer was sent and what
was recorded are the same message. Optional methods convert their own results (``to_proto()``);
the response field for a method has the method's name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from risklens.core import ExplainOptions, Explanation, library_versions
from risklens.registry import LoadedModel
from risklens.registry.schema import FeatureValue
from risklens.v1 import risklens_pb2 as pb

OUTPUT_SPACES = {"log_odds": pb.LOG_ODDS, "probability": pb.PROBABILITY, "raw": pb.RAW}


def value_to_proto(value: FeatureValue) -> pb.Value:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return pb.Value(null=pb.NULL_VALUE)
    if isinstance(value, bool):
        return pb.Value(flag=value)
    if isinstance(value, (int, float)):
        return pb.Value(number=float(value))
    return pb.Value(text=str(value))


def value_from_proto(value: pb.Value) -> FeatureValue:
    kind = value.WhichOneof("kind")
    if kind == "number":
        return value.number
    if kind == "text":
        return value.text
    if kind == "flag":
        return value.flag
    return None  # explicit null, or no value set


def features_from_proto(features: Mapping[str, pb.Value]) -> dict[str, FeatureValue]:
    return {name: value_from_proto(value) for name, value in features.items()}


def options_from_proto(methods: list[str], options: pb.ExplainOptions) -> ExplainOptions:
    return ExplainOptions(
        methods=tuple(methods), top_k=options.top_k,
        seed=options.seed if options.HasField("seed") else None,
        device=options.device, lime_samples=options.lime_samples)


def model_ref(model: LoadedModel) -> pb.ModelRef:
    m = model.manifest
    return pb.ModelRef(name=m.name, version=m.version, sha256=m.sha256, framework=m.framework)


def model_info(model: LoadedModel, methods: list[str]) -> pb.ModelInfo:
    m = model.manifest
    features = [
        pb.FeatureSchema(name=f.name, type=f.type, categories=f.categories, nullable=f.nullable,
                         min=f.min, max=f.max, description=f.description)
        for f in m.features
    ]
    return pb.ModelInfo(ref=model_ref(model), positive_class=m.positive_class, threshold=m.threshold,
                        features=features, output_space=OUTPUT_SPACES[model.output_space],
                        description=m.description, methods=methods)


def explanation_to_proto(e: Explanation) -> pb.ExplainResponse:
    response = pb.ExplainResponse(
        receipt_id=e.receipt_id, claim_id=e.claim_id, model=model_ref(e.model), score=e.score,
        raw_score=e.raw_score, base_value=e.base_value, output_space=OUTPUT_SPACES[e.output_space],
        threshold=e.threshold, decision=e.decision,
        contributions=[pb.Contribution(feature=f, value=value_to_proto(v), shap=s) for f, v, s in e.contributions],
        reason_codes=[pb.ReasonCode(code=c.code, text=c.text, direction=c.direction, weight=c.weight,
                                    features=list(c.features)) for c in e.reason_codes],
        rationale=e.rationale,
        settings=pb.ExplainSettings(seed=e.seed, device=e.device, shap_engine=e.shap_engine, top_k=e.top_k,
                                    methods=list(e.methods), lime_samples=e.lime_samples,
                                    library_versions=library_versions()))
    for method, result in e.method_results.items():
        getattr(response, method).CopyFrom(result.to_proto())
    return response

"""Conversions between core objects and the risklens.v1 protobuf messages.

The server, the audit trail and batch exports all use these, so what a reviewer was sent and what
was recorded are the same message. Optional methods convert their own results (``to_proto()``);
the response field for a method has the method's name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cache

from risklens.core import ExplainOptions, Explanation, library_versions
from risklens.registry import LoadedModel
from risklens.registry.schema import FeatureValue
from risklens.v1 import risklens_pb2 as pb

OUTPUT_SPACES = {"log_odds": pb.LOG_ODDS, "probability": pb.PROBABILITY, "raw": pb.RAW}


def set_value(target: pb.Value, value: FeatureValue) -> None:
    """Write ``value`` into an existing Value message (cheaper than building and copying one)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        target.null = pb.NULL_VALUE
    elif isinstance(value, bool):
        target.flag = value
    elif isinstance(value, (int, float)):
        target.number = float(value)
    else:
        target.text = str(value)


def value_to_proto(value: FeatureValue) -> pb.Value:
    message = pb.Value()
    set_value(message, value)
    return message


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


@cache
def _versions_settings() -> pb.ExplainSettings:
    return pb.ExplainSettings(library_versions=library_versions())


def explanation_to_proto(e: Explanation) -> pb.ExplainResponse:
    response = pb.ExplainResponse(
        receipt_id=e.receipt_id, claim_id=e.claim_id, model=model_ref(e.model), score=e.score,
        raw_score=e.raw_score, base_value=e.base_value, output_space=OUTPUT_SPACES[e.output_space],
        threshold=e.threshold, decision=e.decision, rationale=e.rationale,
        reason_codes=[pb.ReasonCode(code=c.code, text=c.text, direction=c.direction, weight=c.weight,
                                    features=list(c.features)) for c in e.reason_codes])
    for feature, value, shap in e.contributions:
        set_value(response.contributions.add(feature=feature, shap=shap).value, value)
    settings = response.settings
    settings.CopyFrom(_versions_settings())
    settings.seed, settings.device, settings.shap_engine = e.seed, e.device, e.shap_engine
    settings.top_k, settings.lime_samples = e.top_k, e.lime_samples
    settings.methods.extend(e.methods)
    for method, result in e.method_results.items():
        getattr(response, method).CopyFrom(result.to_proto())
    return response

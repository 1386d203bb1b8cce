"""The explanation core: plain Python, used by the gRPC server, the CLI and batch audit runs alike.

``ExplainService.explain_batch`` validates each claim on its own (one bad claim never loses the
others), runs the requested methods on the valid rows together, renders reason codes and the
rationale, and records every explanation in the audit trail before returning it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, cached_property
from typing import Any

import numpy as np

from risklens import __version__
from risklens.errors import BatchTooLarge, InvalidRequest, RiskLensError
from risklens.explainers import EXPLAINERS, ExplainContext, Explainer
from risklens.explainers.shap import ShapResult
from risklens.rationale import ReasonCode, ReasonCodeSelector, load_catalogue, render_rationale
from risklens.registry import LoadedModel, ModelRegistry, claims_frame, validate_claim
from risklens.registry.schema import FeatureValue
from risklens.settings import Settings

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class ExplainOptions:
    """Per-request options; zero/empty values fall back to the service settings."""

    methods: tuple[str, ...] = ()
    top_k: int = 0
    seed: int | None = None
    device: str = ""
    lime_samples: int = 0


@dataclass(frozen=True)
class ClaimInput:
    features: Mapping[str, FeatureValue]
    claim_id: str = ""


@dataclass
class Explanation:
    """Everything returned for one claim; ``method_results`` holds the optional methods' results."""

    receipt_id: str
    claim_id: str
    model: LoadedModel
    claim: dict[str, FeatureValue]
    score: float
    raw_score: float
    base_value: float
    output_space: str
    threshold: float
    decision: str
    contributions: list[tuple[str, FeatureValue, float]]
    reason_codes: list[ReasonCode]
    rationale: str
    seed: int
    device: str
    shap_engine: str
    top_k: int
    methods: tuple[str, ...]
    lime_samples: int
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    method_results: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def response(self) -> Any:
        """The risklens.v1 ExplainResponse: exactly what callers receive and the audit trail records."""
        from risklens.wire import explanation_to_proto

        return explanation_to_proto(self)


def seed_from_receipt(receipt_id: str) -> int:
    """The default seed of randomised methods: stable for a receipt, different across receipts."""
    return int.from_bytes(hashlib.sha256(receipt_id.encode()).digest()[:4], "big")


@cache
def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"risklens": __version__}
    for dist in ("numpy", "shap", "xgboost", "lightgbm", "scikit-learn", "lime", "interpret-core"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return versions


class ExplainService:
    """Explains claims for the models in a registry; optionally records each result in an audit store."""

    def __init__(self, registry: ModelRegistry, settings: Settings | None = None, audit: Any = None) -> None:
        self.registry = registry
        self.settings = settings or Settings()
        self.audit = audit
        self._explainers: dict[tuple[str, str, str], Explainer] = {}
        self._selectors: dict[tuple[str, str], ReasonCodeSelector] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ setup helpers

    def explainer(self, model: LoadedModel, method: str) -> Explainer:
        key = (*model.key, method)
        with self._lock:
            if key not in self._explainers:
                self._explainers[key] = EXPLAINERS[method](model)
            return self._explainers[key]

    def reason_codes(self, model: LoadedModel) -> ReasonCodeSelector:
        with self._lock:
            if model.key not in self._selectors:
                self._selectors[model.key] = ReasonCodeSelector(load_catalogue(model), model.manifest)
            return self._selectors[model.key]

    def supported_methods(self, model: LoadedModel) -> list[str]:
        return [name for name, cls in EXPLAINERS.items() if cls.supports(model)]

    def resolve_methods(self, model: LoadedModel, requested: Sequence[str]) -> tuple[str, ...]:
        """Requested methods plus what they need, in run order; "shap" always runs."""
        wanted = {m.strip().lower() for m in requested if m.strip()}
        supported = self.supported_methods(model)
        if "all" in wanted:
            wanted = (wanted - {"all"}) | set(supported)
        unknown = sorted(wanted - set(EXPLAINERS))
        if unknown:
            raise InvalidRequest(f"unknown method {unknown[0]!r}; known: {['all', *EXPLAINERS]}", field="methods")
        unsupported = sorted(wanted - set(supported))
        if unsupported:
            raise InvalidRequest(f"method {unsupported[0]!r} cannot explain model {model.name!r} "
                                 f"({model.manifest.framework})", field="methods")
        wanted.add("shap")
        changed = True
        while changed:  # close over prerequisites
            needed = {r for m in wanted for r in EXPLAINERS[m].requires if EXPLAINERS[r].supports(model)}
            changed = not needed <= wanted
            wanted |= needed
        return tuple(name for name in EXPLAINERS if name in wanted)

    # ------------------------------------------------------------------ explain

    def explain(self, model_name: str, features: Mapping[str, FeatureValue], *, claim_id: str = "",
                version: str = "", options: ExplainOptions | None = None) -> Explanation:
        """Explain one claim; raises the claim's RiskLensError if it is invalid."""
        outcome = self.explain_batch(model_name, [ClaimInput(features, claim_id)], version=version,
                                     options=options)[0]
        if isinstance(outcome, RiskLensError):
            raise outcome
        return outcome

    def explain_batch(self, model_name: str, claims: Sequence[ClaimInput], *, version: str = "",
                      options: ExplainOptions | None = None) -> list[Explanation | RiskLensError]:
        """One outcome per claim, in order: an Explanation, or the RiskLensError for that claim alone."""
        options = options or ExplainOptions()
        if len(claims) > self.settings.max_batch_size:
            raise BatchTooLarge(f"batch of {len(claims)} claims exceeds the limit of "
                                f"{self.settings.max_batch_size}", field="claims")
        model = self.registry.get(model_name, version)
        methods = self.resolve_methods(model, options.methods)
        device = (options.device or self.settings.device).lower()
        if device not in DEVICES:
            raise InvalidRequest(f"device must be one of {DEVICES}, got {device!r}", field="options.device")
        top_k = options.top_k or self.settings.top_k

        outcomes: list[Explanation | RiskLensError | None] = [None] * len(claims)
        valid: list[tuple[int, dict[str, FeatureValue]]] = []
        for i, claim in enumerate(claims):
            try:
                valid.append((i, validate_claim(model.manifest, claim.features)))
            except RiskLensError as exc:
                outcomes[i] = exc
        if valid:
            from risklens.audit import new_receipt_id

            receipts = [new_receipt_id() for _ in valid]
            seeds = [options.seed if options.seed is not None else seed_from_receipt(r) for r in receipts]
            explanations = self._explain_valid(
                model, [c for _, c in valid], [claims[i].claim_id for i, _ in valid], receipts, seeds,
                methods, device, top_k, options.lime_samples)
            self._record(model, explanations)
            for (i, _), explanation in zip(valid, explanations):
                outcomes[i] = explanation
        n_bad = sum(isinstance(o, RiskLensError) for o in outcomes)
        log.info("explained %d claim(s) with %s v%s [%s]; %d rejected", len(valid), model.name, model.version,
                 ",".join(methods), n_bad)
        return outcomes  # type: ignore[return-value]

    def _explain_valid(self, model: LoadedModel, claims: list[dict[str, FeatureValue]], claim_ids: list[str],
                       receipts: list[str], seeds: list[int], methods: tuple[str, ...], device: str,
                       top_k: int, lime_samples: int) -> list[Explanation]:
        frame = claims_frame(model.manifest, claims)
        context = ExplainContext(top_k=top_k, device=device, seeds=seeds, lime_samples=lime_samples,
                                 agreement_threshold=self.settings.agreement_threshold)
        for method in methods:
            context.results[method] = self.explainer(model, method).explain(frame, context)
        selector = self.reason_codes(model)
        names = model.manifest.feature_names
        manifest = model.manifest
        explanations = []
        for row, claim in enumerate(claims):
            shap_result: ShapResult = context.results["shap"][row]
            score = float(model.score_from_raw(np.array([shap_result.raw_score]))[0])
            decision = "refer" if score >= manifest.threshold else "pass"
            order = np.argsort(-np.abs(shap_result.values), kind="stable")
            contributions = [(names[j], claim[names[j]], float(shap_result.values[j])) for j in order]
            codes = selector.select(claim, shap_result.values, top_k)
            extras = {m: context.results[m][row] for m in methods if m != "shap"}
            agreement = extras.get("agreement")
            rationale = render_rationale(
                model_label=manifest.description or manifest.name, score=score, threshold=manifest.threshold,
                decision=decision, reason_codes=codes,
                agreement_summary=getattr(agreement, "summary", "") if agreement is not None else "")
            explanations.append(Explanation(
                receipt_id=receipts[row], claim_id=claim_ids[row], model=model, claim=claim, score=score,
                raw_score=shap_result.raw_score, base_value=shap_result.base_value,
                output_space=shap_result.output_space, threshold=manifest.threshold, decision=decision,
                contributions=contributions, reason_codes=codes, rationale=rationale, seed=seeds[row],
                device=shap_result.device, shap_engine=shap_result.engine, top_k=top_k, methods=methods,
                lime_samples=lime_samples, method_results=extras))
        return explanations

    def _record(self, model: LoadedModel, explanations: list[Explanation]) -> None:
        """Make the explanations durable in the audit trail; raises (and returns nothing) if that fails."""
        if self.audit is None:
            return
        from risklens.audit import AuditEntry, RedactionPolicy
        from risklens.wire import model_ref

        policy = RedactionPolicy.from_manifest(model.manifest.audit)
        ref = model_ref(model)
        self.audit.record([
            AuditEntry(receipt_id=e.receipt_id, created_at=e.created_at, model=ref, input=e.claim,
                       explanation=e, policy=policy)
            for e in explanations
        ])

"""The explanation core: plain Python, used by the gRPC server, the CLI and batch audit runs alike.

``ExplainService.explain_batch`` validates each claim on its own (one bad claim never loses the
others), runs the requested methods on the valid rows together, renders reason codes and the
rationale, and records every explanation in the audit trail before returning it.
``ExplainService.explain_frame`` does the same for a table, validating it column by column; both
go through one array-wide path (``_explain_valid``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cache, cached_property
from typing import Any

import numpy as np
import pandas as pd

from risklens import __version__
from risklens.errors import BatchTooLarge, InvalidRequest, RiskLensError
from risklens.explainers import EXPLAINERS, ClaimRows, ExplainContext, Explainer
from risklens.explainers.shap import ShapResult
from risklens.rationale import ReasonCode, ReasonCodeSelector, load_catalogue, render_rationale
from risklens.registry import LoadedModel, ModelRegistry, validate_claim
from risklens.registry.schema import FeatureValue, validate_columns
from risklens.settings import MAX_TOP_K, Settings

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
    agreement_threshold: float | None = None  # None: the setting (batch runs pin the run's value)


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
    # SHAP values in the manifest's feature order, and the positions in it of the contributions,
    # largest magnitude first: the arrays a batch's audit bodies are written from, column by column.
    shap_values: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    contribution_order: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.intp), repr=False)
    # The reason codes and rationale as the audit trail stores them, where its policy hashes or drops
    # a value their texts show (None: as returned). Set when the explanation is recorded.
    withheld_texts: tuple[list[ReasonCode], str] | None = field(default=None, repr=False)

    @cached_property
    def contributions(self) -> list[tuple[str, FeatureValue, float]]:
        """(feature, claim value, SHAP value), largest magnitude first."""
        names = self.model.manifest.feature_names
        return [(names[j], self.claim[names[j]], shap)
                for j, shap in zip(self.contribution_order.tolist(), self.shap_values[self.contribution_order].tolist())]

    @cached_property
    def response(self) -> Any:
        """The risklens.v1 ExplainResponse: exactly what callers receive and the audit trail records."""
        from risklens.wire import explanation_to_proto

        return explanation_to_proto(self)


def _rationale(manifest: Any, score: float, decision: str, codes: list[ReasonCode],
               method_results: Mapping[str, Any]) -> str:
    agreement = method_results.get("agreement")
    return render_rationale(model_label=manifest.description or manifest.name, score=score,
                            threshold=manifest.threshold, decision=decision, reason_codes=codes,
                            agreement_summary=getattr(agreement, "summary", "") if agreement is not None else "")


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
        self._audit_contexts: dict[tuple[str, str], tuple[Any, Any, frozenset[str]]] = {}
        self._lock = threading.Lock()
        if audit is not None:
            self.check_audit_policies(registry)

    @staticmethod
    def check_audit_policies(registry: ModelRegistry) -> None:
        """Each model's redaction policy, built now: one that cannot be applied (it hashes fields and
        no HMAC key is set) stops the server or run at start, not every request later."""
        from risklens.audit import RedactionPolicy

        for model in registry.models():
            RedactionPolicy.from_manifest(model.manifest.audit)

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
        methods, device, top_k, options = self._resolve_options(model, options)
        outcomes: list[Explanation | RiskLensError | None] = [None] * len(claims)
        valid: list[int] = []
        checked: list[dict[str, FeatureValue]] = []
        for i, claim in enumerate(claims):
            try:
                checked.append(validate_claim(model.manifest, claim.features))
                valid.append(i)
            except RiskLensError as exc:
                outcomes[i] = exc
        if valid:
            rows = ClaimRows(model, {name: [claim[name] for claim in checked] for name in model.manifest.feature_names})
            explanations = self._explain_valid(model, checked, rows, [claims[i].claim_id for i in valid],
                                               methods, device, top_k, options)
            for i, explanation in zip(valid, explanations):
                outcomes[i] = explanation
        self._log_outcomes(model, methods, len(valid), len(claims) - len(valid))
        return outcomes  # type: ignore[return-value]

    def explain_frame(self, model_name: str, frame: pd.DataFrame, *, claim_ids: Sequence[str] | None = None,
                      seeds: Sequence[int] | None = None, version: str = "", options: ExplainOptions | None = None
                      ) -> list[Explanation | RiskLensError]:
        """Explain every row of a claims table (batch runs): ``explain_batch`` for tables.

        Rows are validated column by column (``validate_columns``: the same contract and messages
        as ``validate_claim``); each invalid row gets its own error and the rest are explained.
        There is no batch-size limit: callers size their chunks. Outcomes are in row order.
        ``seeds``: one per row for the randomised methods (a batch run derives them from its own
        seed, so that a rerun reproduces them); default as for single claims.
        """
        options = options or ExplainOptions()
        model = self.registry.get(model_name, version)
        methods, device, top_k, options = self._resolve_options(model, options)
        columns, valid, errors = validate_columns(model.manifest, frame)
        outcomes: list[Explanation | RiskLensError | None] = [None] * len(frame)
        for row, error in errors.items():
            outcomes[row] = error
        if len(valid):
            names = model.manifest.feature_names
            claims = [dict(zip(names, values)) for values in zip(*(columns[name] for name in names))]
            ids = [claim_ids[row] for row in valid] if claim_ids is not None else [""] * len(valid)
            explanations = self._explain_valid(model, claims, ClaimRows(model, columns), ids,
                                               methods, device, top_k, options,
                                               None if seeds is None else [seeds[row] for row in valid.tolist()])
            for row, explanation in zip(valid.tolist(), explanations):
                outcomes[row] = explanation
        self._log_outcomes(model, methods, len(valid), len(errors))
        return outcomes  # type: ignore[return-value]

    def _resolve_options(self, model: LoadedModel, options: ExplainOptions
                         ) -> tuple[tuple[str, ...], str, int, ExplainOptions]:
        """The methods, device and top_k to use, and the options with the LIME sample count resolved
        (what the explanation, and so its audit record, states it was computed with)."""
        methods = self.resolve_methods(model, options.methods)
        device, top_k = self.resolve_device(options.device), self.resolve_top_k(options.top_k)
        lime_samples = self.resolve_lime_samples(options.lime_samples)
        if lime_samples != options.lime_samples:
            options = replace(options, lime_samples=lime_samples)
        return methods, device, top_k, options

    def resolve_device(self, device: str) -> str:
        """A request's device ("" for the setting), checked."""
        resolved = (device or self.settings.device).lower()
        if resolved not in DEVICES:
            raise InvalidRequest(f"device must be one of {DEVICES}, got {device!r}", field="options.device")
        return resolved

    def resolve_top_k(self, top_k: int) -> int:
        """A request's reasons per claim (0 for the setting), checked."""
        if not 0 <= top_k <= MAX_TOP_K:
            raise InvalidRequest(f"top_k must be between 1 and {MAX_TOP_K} (0: the server's default), got {top_k}",
                                 field="options.top_k")
        return top_k or self.settings.top_k

    @staticmethod
    def resolve_lime_samples(lime_samples: int) -> int:
        """A request's LIME sample count (0 for the default), checked against the bounds a fit needs
        and a server affords."""
        from risklens.explainers.lime import DEFAULT_SAMPLES, MAX_SAMPLES, MIN_SAMPLES

        if lime_samples and not MIN_SAMPLES <= lime_samples <= MAX_SAMPLES:
            raise InvalidRequest(f"lime_samples must be between {MIN_SAMPLES:,} and {MAX_SAMPLES:,} "
                                 f"(0: the default, {DEFAULT_SAMPLES:,}), got {lime_samples:,}",
                                 field="options.lime_samples")
        return lime_samples or DEFAULT_SAMPLES

    @staticmethod
    def _log_outcomes(model: LoadedModel, methods: tuple[str, ...], explained: int, rejected: int) -> None:
        log.info("explained %d claim(s) with %s v%s [%s]; %d rejected", explained, model.name, model.version,
                 ",".join(methods), rejected)

    def _explain_valid(self, model: LoadedModel, claims: list[dict[str, FeatureValue]], rows: ClaimRows,
                       claim_ids: list[str], methods: tuple[str, ...], device: str, top_k: int,
                       options: ExplainOptions, seeds: list[int] | None = None) -> list[Explanation]:
        """Explain validated claims (``rows`` holds the same claims), then record them in the audit trail.

        Per-claim work is done on whole arrays where it can be (scores, contribution order, reason
        code weights), so one claim and a table chunk take the same code path.
        """
        from risklens.audit import new_receipt_ids

        receipts = new_receipt_ids(len(claims))
        if seeds is None:
            seeds = [options.seed if options.seed is not None else seed_from_receipt(r) for r in receipts]
        context = ExplainContext(top_k=top_k, device=device, seeds=seeds, lime_samples=options.lime_samples,
                                 agreement_threshold=(self.settings.agreement_threshold
                                                      if options.agreement_threshold is None
                                                      else options.agreement_threshold))
        for method in methods:
            context.results[method] = self.explainer(model, method).explain(rows, context)
        shap_rows: list[ShapResult] = context.results["shap"]
        values = np.array([result.values for result in shap_rows])  # np.vstack: ~3x the time a row
        manifest = model.manifest
        scores = model.score_from_raw(np.array([result.raw_score for result in shap_rows])).tolist()
        order = np.argsort(-np.abs(values), axis=1, kind="stable")
        reason_codes = self.reason_codes(model).select_rows(claims, values, top_k)
        extras = [m for m in methods if m != "shap"]
        created_at = datetime.now(UTC)
        explanations = []
        for row, claim in enumerate(claims):
            shap_result = shap_rows[row]
            score = scores[row]
            decision = "refer" if score >= manifest.threshold else "pass"
            method_results = {m: context.results[m][row] for m in extras}
            codes = reason_codes[row]
            rationale = _rationale(manifest, score, decision, codes, method_results)
            explanations.append(Explanation(
                receipt_id=receipts[row], claim_id=claim_ids[row], model=model, claim=claim, score=score,
                raw_score=shap_result.raw_score, base_value=shap_result.base_value,
                output_space=shap_result.output_space, threshold=manifest.threshold, decision=decision,
                reason_codes=codes, rationale=rationale, seed=seeds[row], device=shap_result.device,
                shap_engine=shap_result.engine, top_k=top_k, methods=methods, lime_samples=options.lime_samples,
                created_at=created_at, method_results=method_results, shap_values=values[row],
                contribution_order=order[row]))
        self._record(model, explanations)
        return explanations

    def _record(self, model: LoadedModel, explanations: list[Explanation]) -> None:
        """Make the explanations durable in the audit trail; raises (and returns nothing) if that fails."""
        if self.audit is None:
            return
        from risklens.audit import AuditEntry

        policy, ref, hidden = self._audit_context(model)
        if hidden:
            for e in explanations:
                e.withheld_texts = self.withheld_texts(e, hidden)
        self.audit.record([
            AuditEntry(receipt_id=e.receipt_id, created_at=e.created_at, model=ref, input=e.claim,
                       explanation=e, policy=policy)
            for e in explanations
        ])

    def withheld_texts(self, explanation: Explanation, hidden: frozenset[str]) -> tuple[list[ReasonCode], str] | None:
        """The explanation's reason codes and rationale with the values of ``hidden`` features shown
        as ``risklens.rationale.WITHHELD``: what an audit trail whose policy hashes or drops those
        features stores. None when no text shows such a value."""
        codes = self.reason_codes(explanation.model).withheld(explanation.claim, explanation.reason_codes, hidden)
        if codes is None:
            return None
        return codes, _rationale(explanation.model.manifest, explanation.score, explanation.decision, codes,
                                 explanation.method_results)

    def _audit_context(self, model: LoadedModel) -> tuple[Any, Any, frozenset[str]]:
        """The model's redaction policy, its ModelRef and the features the policy hashes or drops,
        built once per loaded model."""
        from risklens.audit import RedactionPolicy
        from risklens.wire import model_ref

        with self._lock:
            if model.key not in self._audit_contexts:
                policy = RedactionPolicy.from_manifest(model.manifest.audit)
                self._audit_contexts[model.key] = (policy, model_ref(model),
                                                   policy.withheld(model.manifest.feature_names))
            return self._audit_contexts[model.key]

"""Replay: recompute a recorded explanation with the recorded model (by sha256) and settings, compare."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from risklens.errors import InvalidRequest
from risklens.rationale import WITHHELD
from risklens.v1 import risklens_pb2

from ._canonical import canonical_input, message_dict, sha256_hex, to_value_map
from ._policy import HMAC_KEY_ENV, HMAC_PREFIX, RedactionPolicy, keyed_digest


_ALONE = "the claim alone"
_IN_A_TABLE = "the claim as a row of a table (as batches and batch runs compute it)"


@dataclass
class ReplayResult:
    receipt_id: str
    identical: bool
    differences: list[str] = field(default_factory=list)
    # Why the differences may be expected (library versions, device), in plain words.
    explanations: list[str] = field(default_factory=list)
    recomputed: risklens_pb2.ExplainResponse | None = None
    computed_as: str = _ALONE  # how the compared recomputation was made

    def summary(self) -> str:
        how = "" if self.computed_as == _ALONE else f" (recomputed as {self.computed_as})"
        if self.identical:
            return f"receipt {self.receipt_id}: replay IDENTICAL to the recorded explanation{how}"
        lines = [f"receipt {self.receipt_id}: replay DIFFERS in {len(self.differences)} place(s){how}:",
                 *[f"  {line}" for line in self.differences[:50]]]
        if len(self.differences) > 50:
            lines.append(f"  ... and {len(self.differences) - 50} more")
        lines += [f"  likely cause: {reason}" for reason in self.explanations]
        return "\n".join(lines)


_ROUNDING = " (floating-point rounding)"


def _diff(recorded: Any, recomputed: Any, path: str, out: list[str]) -> None:
    if isinstance(recorded, dict) and isinstance(recomputed, dict):
        for key in sorted(set(recorded) | set(recomputed)):
            _diff(recorded.get(key), recomputed.get(key), f"{path}.{key}" if path else key, out)
    elif isinstance(recorded, list) and isinstance(recomputed, list):
        if len(recorded) != len(recomputed):
            out.append(f"{path}: {len(recorded)} items recorded, {len(recomputed)} recomputed")
        for index, (a, b) in enumerate(zip(recorded, recomputed)):
            _diff(a, b, f"{path}[{index}]", out)
    elif recorded != recomputed:
        if isinstance(recorded, float) and isinstance(recomputed, float) and math.isclose(recorded, recomputed,
                                                                                           rel_tol=1e-9):
            out.append(f"{path}: recorded {recorded!r}, recomputed {recomputed!r}{_ROUNDING}")
        else:
            out.append(f"{path}: recorded {recorded!r}, recomputed {recomputed!r}")


def replay_input(receipt: risklens_pb2.Receipt, raw_input: Mapping[str, Any] | None) -> dict[str, Any]:
    """The claim to recompute with: the stored input, or the caller's copy when fields were redacted."""
    from risklens.wire import features_from_proto

    if receipt.purged:
        raise InvalidRequest(f"receipt {receipt.receipt_id} was purged by retention: its explanation is no longer "
                             f"stored, so there is nothing to compare a recomputation with", field="receipt_id")
    if raw_input is not None:
        values = to_value_map(raw_input)
        if _input_digest(values, receipt) != receipt.input_sha256:
            keyed = receipt.input_sha256.startswith(HMAC_PREFIX)
            raise InvalidRequest(f"the supplied input does not hash to the recorded input_sha256 of receipt "
                                 f"{receipt.receipt_id}: it is not the claim that was explained"
                                 + (f", or {HMAC_KEY_ENV} is not the key it was recorded with" if keyed else ""),
                                 field="input")
        return features_from_proto(values)
    redacted = list(receipt.dropped_fields) + [name for name, value in receipt.input.items()
                                               if value.text.startswith(HMAC_PREFIX)]
    if redacted:
        raise InvalidRequest(f"receipt {receipt.receipt_id} stores {', '.join(sorted(redacted))} redacted; supply "
                             f"the original input (it is checked against input_sha256)", field="input")
    return features_from_proto(receipt.input)


def _input_digest(values: Mapping[str, risklens_pb2.Value], receipt: risklens_pb2.Receipt) -> str:
    """The supplied input's hash as the receipt's was taken: plain, or keyed where its policy withheld fields."""
    canonical = canonical_input(values)
    if not receipt.input_sha256.startswith(HMAC_PREFIX):
        return sha256_hex(canonical)
    key = os.environ.get(HMAC_KEY_ENV)
    if not key:
        raise InvalidRequest(f"receipt {receipt.receipt_id} has a keyed input hash (its model's policy hashes or drops "
                             f"fields): set {HMAC_KEY_ENV} to the key it was recorded with to check the supplied "
                             f"input", field="input")
    return keyed_digest(key.encode("utf-8"), canonical)


def _recompute(service: Any, model: Any, claim: dict[str, Any], claim_id: str, options: Any,
               rows: int, withheld: frozenset[str]) -> risklens_pb2.ExplainResponse:
    """The explanation of ``claim`` recomputed alone (``rows == 1``) or as the first of ``rows``
    copies in a table, through the same core calls as the server and the batch runs; its reason
    texts and rationale as a trail that withholds the ``withheld`` features stores them."""
    import pandas as pd

    from risklens.errors import RiskLensError

    if rows == 1:
        explanation = service.explain(model.name, claim, claim_id=claim_id, version=model.version, options=options)
    else:
        outcome = service.explain_frame(model.name, pd.DataFrame([claim] * rows, dtype=object),
                                        claim_ids=[claim_id] * rows, version=model.version, options=options)[0]
        if isinstance(outcome, RiskLensError):
            raise outcome
        explanation = outcome
    recomputed = risklens_pb2.ExplainResponse()
    recomputed.CopyFrom(explanation.response)
    texts = service.withheld_texts(explanation, withheld) if withheld else None
    if texts is not None:
        codes, recomputed.rationale = texts
        for message, code in zip(recomputed.reason_codes, codes):
            message.text = code.text
    return recomputed


def replay(receipt: risklens_pb2.Receipt, registry: Any, raw_input: Mapping[str, Any] | None = None) -> ReplayResult:
    """Recompute with the model whose artifact sha256 was recorded and the recorded settings.

    The claim is recomputed alone first. A tree model's claim explained inside a table (a batch
    run, or a batch of at least ``TABLE_KERNEL_MIN_ROWS`` claims) went through the engine's table
    kernel, whose exact sums can differ from the single-claim kernel's in the last bits. A row's
    values do not depend on the rows around it, so when the claim alone does not match it is
    recomputed as a row of a small table (for every model kind, in case a framework's predictions
    depend on the batch's size), and a bit-for-bit match of either counts as
    identical. Otherwise the differences of the recomputation closest to the record are reported.
    """
    from risklens.core import ExplainOptions, ExplainService, library_versions
    from risklens.trees import TABLE_KERNEL_MIN_ROWS

    recorded = receipt.explanation
    claim = replay_input(receipt, raw_input)
    model = registry.find_by_sha256(receipt.model.sha256)
    settings = recorded.settings
    options = ExplainOptions(methods=tuple(settings.methods), top_k=settings.top_k, seed=settings.seed,
                             device=settings.device, lime_samples=settings.lime_samples)
    service = ExplainService(registry)
    # Values the record holds redacted are compared through input_sha256 (checked above), so the
    # comparison leaves them out on both sides; everything else must match exactly.
    redacted = set(receipt.dropped_fields) | {name for name, value in receipt.input.items()
                                              if value.text.startswith(HMAC_PREFIX)}
    blind = RedactionPolicy(fields=dict.fromkeys(redacted, "drop"))
    expected = message_dict(blind.redact_explanation(recorded))
    # Texts that showed a redacted value are stored with it withheld; records made before they were
    # (the texts as returned) are compared as they are.
    withheld = frozenset(redacted) if WITHHELD in recorded.rationale or any(
        WITHHELD in code.text for code in recorded.reason_codes) else frozenset()
    attempts = [(_ALONE, 1), (_IN_A_TABLE, TABLE_KERNEL_MIN_ROWS)]
    closest: tuple[risklens_pb2.ExplainResponse, list[str], str] | None = None
    for computed_as, rows in attempts:
        recomputed = _recompute(service, model, claim, recorded.claim_id, options, rows, withheld)
        recomputed.receipt_id = recorded.receipt_id  # a replay gets a new id; the content is what is compared
        if not settings.lime_samples:  # recorded before explanations stated the default LIME sample count
            recomputed.settings.lime_samples = 0
        differences: list[str] = []
        _diff(expected, message_dict(blind.redact_explanation(recomputed)), "", differences)
        if not differences:
            return ReplayResult(receipt.receipt_id, True, [], [], recomputed, computed_as)
        if closest is None or len(differences) < len(closest[1]):  # the fewest differences say the most
            closest = (recomputed, differences, computed_as)
    recomputed, differences, computed_as = closest  # type: ignore[misc]
    causes = []
    now_versions = library_versions()
    changed = {name: (then, now_versions.get(name)) for name, then in settings.library_versions.items()
               if now_versions.get(name) != then}
    if changed:
        causes.append("library versions changed since recording: " + ", ".join(
            f"{name} {then} -> {now}" for name, (then, now) in sorted(changed.items())))
    if recomputed.settings.device != settings.device:
        causes.append(f"recorded on {settings.device}, replayed on {recomputed.settings.device}")
    if all(line.endswith(_ROUNDING) for line in differences):
        causes.append("every difference is floating-point rounding: the claim was most likely explained on "
                      "another machine or build, whose sums ran in another order (BLAS kernels, vector "
                      "instructions)")
    return ReplayResult(receipt.receipt_id, False, differences, causes, recomputed, computed_as)

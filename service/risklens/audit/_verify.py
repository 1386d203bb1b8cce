"""Hash-chain and checkpoint verification, shared by the live store and offline exports."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from risklens.v1 import risklens_pb2

from ._canonical import body_sha256, checkpoint_payload, record_hash, sha256_hex


@dataclass(frozen=True)
class BadRecord:
    """The first record (or checkpoint) that fails verification, and why."""

    sequence: int
    receipt_id: str
    reason: str


@dataclass
class VerifyReport:
    ok: bool = True
    records_checked: int = 0
    bodies_checked: int = 0
    purged: int = 0
    # Records of other models or outside the time range that an export carries as chain links only.
    link_only: int = 0
    checkpoints_checked: int = 0
    head_sequence: int = 0
    head_hash: str = ""
    first_bad: BadRecord | None = None
    notes: list[str] = field(default_factory=list)

    def fail(self, sequence: int, receipt_id: str, reason: str) -> VerifyReport:
        self.ok = False
        self.first_bad = BadRecord(sequence, receipt_id, reason)
        return self

    def summary(self) -> str:
        if self.ok:
            text = (f"OK: {self.records_checked} records (sequence {self.head_sequence - self.records_checked + 1}"
                    f"..{self.head_sequence}), {self.bodies_checked} bodies re-hashed, {self.purged} purged, "
                    f"{self.link_only} link-only, {self.checkpoints_checked} signed checkpoints verified; "
                    f"head {self.head_hash or '(empty)'}")
        else:
            bad = self.first_bad
            assert bad is not None
            text = f"FAILED at sequence {bad.sequence} (receipt {bad.receipt_id or '?'}): {bad.reason}"
        return "\n".join([text, *self.notes])


def _explanation_receipt_id(body: bytes) -> str:
    """The receipt id inside a stored body (canonical JSON); "?" when the body is not a JSON object."""
    try:
        document = json.loads(body)
    except ValueError:
        return "?"
    explanation = document.get("explanation") if isinstance(document, dict) else None
    return explanation.get("receipt_id", "") if isinstance(explanation, dict) else "?"


class ChainVerifier:
    """Feed records in sequence order; stops at the first bad one, then ``finish``.

    ``selected``: for an export filtered by model or time, tells which records it selected; the
    others may come without a body (links only), while selected records must carry theirs.
    ``checkpoints``: signed chain heads; each one inside the fed range must match the chain.
    """

    def __init__(self, *, first_sequence: int = 1, prev_hash: str = "",
                 selected: Callable[[risklens_pb2.Receipt], bool] | None = None,
                 checkpoints: Sequence[risklens_pb2.Checkpoint] = (),
                 trusted_public_key: bytes | None = None) -> None:
        self.report = VerifyReport(head_sequence=first_sequence - 1, head_hash=prev_hash)
        self._expected_sequence = first_sequence
        self._prev_hash = prev_hash
        self._selected = selected
        self._trusted_public_key = trusted_public_key
        self._checkpoints: dict[int, list[risklens_pb2.Checkpoint]] = {}
        for checkpoint in checkpoints:
            self._checkpoints.setdefault(checkpoint.sequence, []).append(checkpoint)
        if checkpoints and trusted_public_key is None:
            self.report.notes.append("checkpoint signatures checked against their embedded public keys; "
                                     "pass the published key to pin it")

    def feed(self, receipt: risklens_pb2.Receipt, body: bytes | None = None) -> bool:
        """Check the next record. ``body``: the record's stored body bytes, when ``receipt`` is its
        header only (a live store); without it the body is re-written from ``receipt`` (an export).
        """
        report = self.report
        if not report.ok:
            return False
        where = (receipt.sequence, receipt.receipt_id)
        if receipt.sequence != self._expected_sequence:
            kind = "missing or deleted" if receipt.sequence > self._expected_sequence else "reordered or inserted"
            report.fail(*where, f"expected sequence {self._expected_sequence}, found {receipt.sequence} "
                                f"({kind} record)")
            return False
        if receipt.prev_hash != self._prev_hash:
            report.fail(*where, "prev_hash does not match the previous record's hash "
                                "(a record before it was deleted, inserted or edited)")
            return False
        has_body = (body is not None or bool(receipt.input) or bool(receipt.dropped_fields)
                    or receipt.HasField("explanation"))
        if receipt.purged:
            if has_body:
                report.fail(*where, "marked purged but still carries a body")
                return False
            report.purged += 1
        elif not has_body and self._selected is not None and not self._selected(receipt):
            report.link_only += 1
        else:
            if (sha256_hex(body) if body is not None else body_sha256(receipt)) != receipt.body_sha256:
                report.fail(*where, "body (input or explanation) does not match body_sha256: record edited")
                return False
            explained = _explanation_receipt_id(body) if body is not None else receipt.explanation.receipt_id
            if explained and explained != receipt.receipt_id:
                report.fail(*where, "explanation belongs to another receipt")
                return False
            report.bodies_checked += 1
        if record_hash(receipt) != receipt.record_hash:
            report.fail(*where, "record_hash does not match the record's header: record edited")
            return False
        for checkpoint in self._checkpoints.pop(receipt.sequence, ()):
            if not self._check_checkpoint(checkpoint, receipt.record_hash):
                return False
        self._prev_hash = receipt.record_hash
        self._expected_sequence += 1
        report.records_checked += 1
        report.head_sequence = receipt.sequence
        report.head_hash = receipt.record_hash
        return True

    def feed_all(self, receipts: Iterable[risklens_pb2.Receipt]) -> bool:
        for receipt in receipts:
            if not self.feed(receipt):
                return False
        return True

    def finish(self, head_sequence: int, head_hash: str, what: str) -> VerifyReport:
        """The recorded chain head (store head row or export manifest) must be the last record fed."""
        report = self.report
        if not report.ok:
            return report
        if (head_sequence, head_hash) != (report.head_sequence, report.head_hash):
            report.fail(report.head_sequence + 1, "",
                        f"{what} says the chain ends at sequence {head_sequence} ({head_hash or 'empty'}) but "
                        f"the records end at {report.head_sequence}: records after it were deleted or added")
            return report
        for sequence, checkpoints in sorted(self._checkpoints.items()):
            for checkpoint in checkpoints:
                if not self._check_checkpoint(checkpoint, None):
                    return report
                report.notes.append(f"checkpoint at sequence {sequence} is outside the checked range "
                                    f"(signature valid)")
        return report

    def _check_checkpoint(self, checkpoint: risklens_pb2.Checkpoint, chain_hash: str | None) -> bool:
        report = self.report
        try:
            key_bytes = bytes.fromhex(checkpoint.public_key)
            if self._trusted_public_key is not None and key_bytes != self._trusted_public_key:
                report.fail(checkpoint.sequence, "", "checkpoint signed by an untrusted key")
                return False
            Ed25519PublicKey.from_public_bytes(key_bytes).verify(
                bytes.fromhex(checkpoint.signature), checkpoint_payload(checkpoint))
        except (InvalidSignature, ValueError):
            report.fail(checkpoint.sequence, "", "checkpoint signature is invalid")
            return False
        if chain_hash is not None:
            if chain_hash != checkpoint.head_hash:
                report.fail(checkpoint.sequence, "", "signed checkpoint does not match the chain at this "
                                                     "sequence: history was rewritten")
                return False
            report.checkpoints_checked += 1
        return True

"""Compliance exports: records (jsonl, csv or parquet) + manifest.json + adverse-action notices.

An export directory verifies offline (``verify_export``) with nothing but its files: every record
carries its full receipt as canonical JSON, and the manifest pins the chain's ends and checkpoints.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from google.protobuf import json_format

from risklens.errors import InvalidRequest
from risklens.v1 import risklens_pb2

from ._canonical import OPEN_END, canonical_message, message_dict
from ._verify import ChainVerifier, VerifyReport

ExportFormat = Literal["jsonl", "csv", "parquet"]
FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet")
MANIFEST_FILE = "manifest.json"
NOTICES_FILE = "adverse_action_notices.csv"
_EXPORT_FILES = {MANIFEST_FILE, NOTICES_FILE, *(f"records.{f}" for f in FORMATS)}
# Adverse-action notices conventionally state at most four principal reasons.
NOTICE_REASONS = 4
_FLAT_COLUMNS = ("sequence", "receipt_id", "created_at", "model_name", "model_version", "model_sha256",
                 "claim_id", "decision", "score", "input_sha256", "body_sha256", "prev_hash", "record_hash",
                 "purged", "receipt_json")
_PARQUET_BATCH = 2000


def _flat_row(receipt: risklens_pb2.Receipt) -> dict[str, Any]:
    explanation = receipt.explanation
    return {"sequence": receipt.sequence, "receipt_id": receipt.receipt_id, "created_at": receipt.created_at,
            "model_name": receipt.model.name, "model_version": receipt.model.version,
            "model_sha256": receipt.model.sha256, "claim_id": explanation.claim_id,
            "decision": explanation.decision,
            "score": explanation.score if receipt.HasField("explanation") else None,
            "input_sha256": receipt.input_sha256, "body_sha256": receipt.body_sha256,
            "prev_hash": receipt.prev_hash, "record_hash": receipt.record_hash, "purged": receipt.purged,
            "receipt_json": canonical_message(receipt).decode("utf-8")}


class AdverseNoticeWriter:
    """Per-claim notice rows: the decision and the top reasons that raised the risk, as stated."""

    columns = ("claim_id", "receipt_id", "created_at", "model", "model_version", "decision", "score",
               "threshold", *[f"reason_{i}_{part}" for i in range(1, NOTICE_REASONS + 1) for part in ("code", "text")])

    def __init__(self, handle: Any) -> None:
        self._writer = csv.writer(handle)
        self._writer.writerow(self.columns)
        self.rows = 0

    def write(self, receipt: risklens_pb2.Receipt) -> None:
        explanation = receipt.explanation
        reasons = [code for code in explanation.reason_codes if code.direction == "raises"][:NOTICE_REASONS]
        cells: list[Any] = [explanation.claim_id, receipt.receipt_id, receipt.created_at, receipt.model.name,
                            receipt.model.version, explanation.decision, explanation.score, explanation.threshold]
        for index in range(NOTICE_REASONS):
            cells += [reasons[index].code, reasons[index].text] if index < len(reasons) else ["", ""]
        self._writer.writerow(cells)
        self.rows += 1


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_export(items: Iterable[risklens_pb2.Receipt | risklens_pb2.ExportManifest], out_dir: str | os.PathLike[str],
                 export_format: str = "jsonl") -> risklens_pb2.ExportManifest:
    """Write an export stream (``AuditStore.export`` or the ExportAudit RPC) into ``out_dir``.

    Files: ``records.<format>``, ``manifest.json`` and ``adverse_action_notices.csv`` (one row per
    selected record with an explanation). Returns the manifest.
    """
    if export_format not in FORMATS:
        raise InvalidRequest(f"export format {export_format!r}: expected one of {', '.join(FORMATS)}",
                             field="format")
    directory = Path(out_dir)
    if directory.exists() and not directory.is_dir():
        raise InvalidRequest(f"export directory {directory} is a file", field="out")
    existing = sorted(p.name for p in directory.glob("*") if p.name in _EXPORT_FILES) if directory.is_dir() else []
    if existing:
        raise InvalidRequest(f"{directory} already holds an export ({', '.join(existing)}): write each export to a "
                             f"new directory", field="out")
    directory.mkdir(parents=True, exist_ok=True)
    records_path = directory / f"records.{export_format}"
    written = (records_path, directory / NOTICES_FILE, directory / MANIFEST_FILE)
    try:
        manifest = _write_files(items, directory, records_path, export_format)
    except BaseException:
        for path in written:  # a failed export leaves no partial files for a verifier to trip over
            path.unlink(missing_ok=True)
        raise
    for path in written:
        _fsync_file(path)
    return manifest


def _write_files(items: Iterable[risklens_pb2.Receipt | risklens_pb2.ExportManifest], directory: Path,
                 records_path: Path, export_format: str) -> risklens_pb2.ExportManifest:
    manifest: risklens_pb2.ExportManifest | None = None
    with open(directory / NOTICES_FILE, "w", newline="", encoding="utf-8") as notices_handle:
        notices = AdverseNoticeWriter(notices_handle)

        def receipts() -> Iterator[risklens_pb2.Receipt]:
            nonlocal manifest
            for item in items:
                if isinstance(item, risklens_pb2.ExportManifest):
                    manifest = item
                    continue
                if item.HasField("explanation"):
                    notices.write(item)
                yield item

        if export_format == "jsonl":
            with open(records_path, "w", encoding="utf-8") as handle:
                for receipt in receipts():
                    handle.write(_flat_row(receipt)["receipt_json"] + "\n")
        elif export_format == "csv":
            with open(records_path, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=_FLAT_COLUMNS)
                writer.writeheader()
                for receipt in receipts():
                    writer.writerow(_flat_row(receipt))
        else:
            _write_parquet(records_path, receipts())
    if manifest is None:
        raise InvalidRequest("the export stream ended without a manifest; the export is incomplete")
    (directory / MANIFEST_FILE).write_text(
        json.dumps(message_dict(manifest), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def _write_parquet(path: Path, receipts: Iterator[risklens_pb2.Receipt]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, pa.int64() if name == "sequence" else pa.float64() if name == "score"
                         else pa.bool_() if name == "purged" else pa.string()) for name in _FLAT_COLUMNS])
    with pq.ParquetWriter(path, schema) as writer:
        batch: list[dict[str, Any]] = []
        for receipt in receipts:
            batch.append(_flat_row(receipt))
            if len(batch) >= _PARQUET_BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        writer.write_table(pa.Table.from_pylist(batch, schema=schema))


def _receipt_from_json(text: str) -> risklens_pb2.Receipt:
    return json_format.Parse(text, risklens_pb2.Receipt())


def read_export(directory: str | os.PathLike[str]) -> tuple[risklens_pb2.ExportManifest, Iterator[risklens_pb2.Receipt]]:
    """The manifest and the records of an export directory (whichever records format it holds)."""
    root = Path(directory)
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise InvalidRequest(f"{root} has no {MANIFEST_FILE}: not an audit export", field="path")
    manifest = json_format.ParseDict(json.loads(manifest_path.read_text(encoding="utf-8")),
                                     risklens_pb2.ExportManifest())
    present = [fmt for fmt in FORMATS if (root / f"records.{fmt}").is_file()]
    if len(present) != 1:
        raise InvalidRequest(f"{root} must hold exactly one records.(jsonl|csv|parquet), found {present}",
                             field="path")
    records_path = root / f"records.{present[0]}"

    def receipts() -> Iterator[risklens_pb2.Receipt]:
        if present[0] == "jsonl":
            with open(records_path, encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        yield _receipt_from_json(line)
        elif present[0] == "csv":
            csv.field_size_limit(sys.maxsize)
            with open(records_path, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    yield _receipt_from_json(row["receipt_json"])
        else:
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(records_path).iter_batches(columns=["receipt_json"]):
                for text in batch.column(0).to_pylist():
                    yield _receipt_from_json(text)

    return manifest, receipts()


def verify_export(directory: str | os.PathLike[str], trusted_public_key: bytes | None = None) -> VerifyReport:
    """Verify an export offline: chain links, record and body hashes, manifest ends, checkpoints."""
    manifest, receipts = read_export(directory)
    models = {(ref.name, ref.version, ref.sha256) for ref in manifest.models}
    low, high = manifest.from_time, manifest.to_time or OPEN_END

    def selected(receipt: risklens_pb2.Receipt) -> bool:
        return (low <= receipt.created_at <= high
                and (receipt.model.name, receipt.model.version, receipt.model.sha256) in models)

    verifier = ChainVerifier(first_sequence=manifest.first_sequence or 1, prev_hash=manifest.prev_hash,
                             selected=selected, checkpoints=manifest.checkpoints,
                             trusted_public_key=trusted_public_key)
    verifier.feed_all(receipts)
    head_sequence = manifest.last_sequence if manifest.first_sequence else 0
    report = verifier.finish(head_sequence, manifest.chain_head, "the manifest")
    if report.ok and report.bodies_checked != manifest.count:
        report.fail(head_sequence, "", f"the manifest counts {manifest.count} records but the export holds "
                                       f"{report.bodies_checked} with a body")
    return report

"""Compliance exports: every format verifies offline; tampering with the files is caught."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from risklens.audit import (AuditEntry, AuditStore, RedactionPolicy, load_or_create_signing_key, public_key_hex,
                            read_export, verify_export, write_export)
from risklens.errors import InvalidRequest
from risklens.v1 import risklens_pb2

EntryFactory = Callable[..., list[AuditEntry]]
START = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture
def filled(store: AuditStore, make_entries: EntryFactory, tmp_path: Path) -> AuditStore:
    """Twelve records a minute apart, alternating two models, one checkpoint at the 8th."""
    entries = []
    for index in range(12):
        entry = make_entries(1, created_at=START + timedelta(minutes=index),
                             model_name="demo-xgb" if index % 2 == 0 else "other-model")[0]
        entries.append(entry)
        store.record([entry])
        if index == 7:
            store.checkpoint(load_or_create_signing_key(tmp_path / "signing.pem"))
    return store


@pytest.mark.parametrize("export_format", ["jsonl", "csv", "parquet"])
def test_full_export_verifies_offline(filled: AuditStore, tmp_path: Path, export_format: str) -> None:
    out = tmp_path / f"export-{export_format}"
    manifest = write_export(filled.export(), out, export_format)
    assert manifest.count == 12 and (manifest.first_sequence, manifest.last_sequence) == (1, 12)
    assert manifest.chain_head == filled.head()[1] and manifest.prev_hash == ""
    assert (manifest.from_time, manifest.to_time) == ("", "")  # an open range stays open in the manifest
    assert len(manifest.checkpoints) == 1 and {m.name for m in manifest.models} == {"demo-xgb", "other-model"}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", f"records.{export_format}", "adverse_action_notices.csv"])
    key = bytes.fromhex(manifest.checkpoints[0].public_key)
    report = verify_export(out, trusted_public_key=key)
    assert report.ok and report.bodies_checked == 12 and report.checkpoints_checked == 1, report.summary()
    _, receipts = read_export(out)
    assert [r.sequence for r in receipts] == list(range(1, 13))


def test_model_and_time_filtered_export_verifies_with_links(filled: AuditStore, tmp_path: Path) -> None:
    items = list(filled.export(START + timedelta(minutes=3), START + timedelta(minutes=9), "demo-xgb"))
    manifest = items[-1]
    assert isinstance(manifest, risklens_pb2.ExportManifest)
    records = items[:-1]
    selected = [r for r in records if r.HasField("explanation")]
    # demo-xgb records are the even minutes: 4, 6, 8 -> sequences 5, 7, 9.
    assert [r.sequence for r in selected] == [5, 7, 9] and manifest.count == 3
    assert [r.sequence for r in records] == [5, 6, 7, 8, 9]  # other-model records come as links
    assert (manifest.from_time, manifest.to_time) == ("2025-03-01T00:03:00.000000Z", "2025-03-01T00:09:00.000000Z")
    assert all(not r.input for r in records if r.model.name == "other-model")
    out = tmp_path / "filtered"
    write_export(iter(items), out, "jsonl")
    report = verify_export(out)
    assert report.ok and report.link_only == 2 and report.bodies_checked == 3, report.summary()


def test_empty_export_verifies(filled: AuditStore, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    manifest = write_export(filled.export(model="no-such-model"), out, "csv")
    assert manifest.count == 0
    assert verify_export(out).ok


def test_inverted_or_unreadable_time_range_is_refused_naming_the_bound(filled: AuditStore) -> None:
    from risklens.audit import export_items

    with pytest.raises(InvalidRequest, match="before from_time") as info:
        next(filled.export(START + timedelta(minutes=5), START))
    assert info.value.field == "to_time"
    for bounds, field in ((("yesterday", ""), "from_time"), (("", "2026-13-45T99:00:00Z"), "to_time")):
        with pytest.raises(InvalidRequest, match=f"^{field}: not an RFC 3339 time") as info:
            next(export_items(filled, *bounds))
        assert info.value.field == field


def _rewrite_jsonl(path: Path, change: Callable[[list[dict]], list[dict]]) -> None:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in change(records)))


def _set_score(records: list[dict]) -> list[dict]:
    records[4]["explanation"]["score"] = 0.01
    return records


def _strip_body(records: list[dict]) -> list[dict]:
    del records[2]["explanation"]
    del records[2]["input"]
    return records


TAMPERED_FILES = {
    "edited score": (_set_score, 5, "body"),
    "deleted line": (lambda records: records[:3] + records[4:], 5, "expected sequence 4"),
    "swapped lines": (lambda records: [records[1], records[0], *records[2:]], 2, "expected sequence 1"),
    "hidden body": (_strip_body, 3, "body"),
    "truncated end": (lambda records: records[:-1], 12, "chain ends at sequence 12"),
}


@pytest.mark.parametrize("kind", list(TAMPERED_FILES))
def test_tampered_export_fails_offline(filled: AuditStore, tmp_path: Path, kind: str) -> None:
    out = tmp_path / "export"
    write_export(filled.export(), out, "jsonl")
    change, bad_sequence, reason = TAMPERED_FILES[kind]
    _rewrite_jsonl(out / "records.jsonl", change)
    report = verify_export(out)
    assert not report.ok and report.first_bad is not None
    assert report.first_bad.sequence == bad_sequence, report.summary()
    assert reason in report.first_bad.reason, report.summary()


def test_tampered_parquet_fails_offline(filled: AuditStore, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "export"
    write_export(filled.export(), out, "parquet")
    table = pq.read_table(out / "records.parquet").to_pylist()
    receipt = json.loads(table[6]["receipt_json"])
    receipt["explanation"]["decision"] = "pass" if receipt["explanation"]["decision"] == "refer" else "refer"
    table[6]["receipt_json"] = json.dumps(receipt)
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(table), out / "records.parquet")
    report = verify_export(out)
    assert not report.ok and report.first_bad.sequence == 7


def test_manifest_count_must_match(filled: AuditStore, tmp_path: Path) -> None:
    out = tmp_path / "export"
    write_export(filled.export(), out, "jsonl")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["count"] = "13"
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = verify_export(out)
    assert not report.ok and "counts 13" in report.first_bad.reason


def test_checkpoint_signature_is_checked_offline(filled: AuditStore, tmp_path: Path) -> None:
    out = tmp_path / "export"
    write_export(filled.export(), out, "jsonl")
    key = bytes.fromhex(public_key_hex(load_or_create_signing_key(tmp_path / "signing.pem")))
    assert verify_export(out, trusted_public_key=key).ok
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["checkpoints"][0]["sequence"] = "9"
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = verify_export(out, trusted_public_key=key)
    assert not report.ok and "signature is invalid" in report.first_bad.reason


def test_adverse_action_notices(store: AuditStore, make_entries: EntryFactory, tmp_path: Path) -> None:
    entries = make_entries(10)
    store.record(entries)
    out = tmp_path / "export"
    write_export(store.export(), out, "jsonl")
    with open(out / "adverse_action_notices.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["receipt_id"] for row in rows] == [e.receipt_id for e in entries]
    for row, entry in zip(rows, entries):
        explanation = entry.explanation
        raising = [code for code in explanation.reason_codes if code.direction == "raises"]
        assert row["claim_id"] == explanation.claim_id and row["decision"] == explanation.decision
        assert float(row["score"]) == pytest.approx(explanation.score)
        assert [row[f"reason_{i}_text"] for i in range(1, len(raising[:4]) + 1)] == [c.text for c in raising[:4]]
        assert all(row[f"reason_{i}_code"] == "" for i in range(len(raising) + 1, 5))
    assert any(row["reason_1_text"] for row in rows)


def test_purged_records_export_and_verify(store: AuditStore, make_entries: EntryFactory, tmp_path: Path) -> None:
    store.record(make_entries(3, created_at=datetime(2020, 1, 1, tzinfo=UTC), policy=RedactionPolicy()))
    store.record(make_entries(3))
    store.purge(before=datetime(2021, 1, 1, tzinfo=UTC))
    out = tmp_path / "export"
    manifest = write_export(store.export(), out, "csv")
    assert manifest.count == 3
    report = verify_export(out)
    assert report.ok and report.purged == 3 and report.bodies_checked == 3, report.summary()


def test_unknown_format_and_missing_manifest_are_refused(store: AuditStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="format"):
        write_export(store.export(), tmp_path / "x", "xml")
    with pytest.raises(InvalidRequest, match="manifest.json"):
        verify_export(tmp_path)

"""The audit store on both backends: round trip, atomicity, tamper evidence, checkpoints, purge."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import json_format

from risklens.audit import (AuditEntry, AuditStore, RedactionPolicy, SqliteAuditStore, input_sha256, load_or_create_signing_key,
                            new_receipt_id, new_receipt_ids, open_store, public_key_hex)
from risklens.audit._canonical import body_text, canonical_input, record_hash, to_value_map
from risklens.errors import DuplicateReceipt, InvalidRequest, ManifestError, ReceiptNotFound
from risklens.v1 import risklens_pb2

EntryFactory = Callable[..., list[AuditEntry]]


def raw_execute(store: AuditStore, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run SQL straight against the store's database, as an attacker with file/DB access would."""
    if isinstance(store, SqliteAuditStore):
        with sqlite3.connect(store.path, isolation_level=None) as connection:
            cursor = connection.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
    import psycopg

    with psycopg.connect(store.url, autocommit=True) as connection:
        cursor = connection.execute(sql.replace("?", "%s"), params)
        return cursor.fetchall() if cursor.description else []


def test_uuid7_receipt_ids_are_time_ordered() -> None:
    before_ms = int(datetime.now(UTC).timestamp() * 1000)
    ids = [new_receipt_id() for _ in range(5000)] + new_receipt_ids(5000) + [new_receipt_id()]
    parsed = [uuid.UUID(text) for text in ids]
    assert all(value.version == 7 and value.variant == uuid.RFC_4122 for value in parsed)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert abs((parsed[0].int >> 80) - before_ms) < 5000


def test_record_then_get_round_trips(store: AuditStore, make_entries: EntryFactory) -> None:
    entries = make_entries(5)
    assert store.record(entries[:2]) == [1, 2]
    assert store.record(entries[2:]) == [3, 4, 5]
    receipt = store.get(entries[3].receipt_id)
    assert receipt.sequence == 4
    assert receipt.explanation == entries[3].explanation
    assert receipt.model == entries[3].model
    assert receipt.created_at.endswith("Z")
    assert receipt.input == to_value_map(entries[3].input)
    assert receipt.input_sha256 == input_sha256(to_value_map(entries[3].input))
    assert receipt.prev_hash == store.get(entries[2].receipt_id).record_hash
    assert receipt.record_hash == record_hash(receipt)
    assert store.head() == (5, store.get(entries[4].receipt_id).record_hash)
    report = store.verify()
    assert report.ok and report.records_checked == 5 and report.bodies_checked == 5, report.summary()


def test_unknown_receipt_is_not_found(store: AuditStore) -> None:
    with pytest.raises(ReceiptNotFound):
        store.get(new_receipt_id())


def test_a_failed_call_writes_nothing(store: AuditStore, make_entries: EntryFactory) -> None:
    first = make_entries(3)
    store.record(first)
    head = store.head()
    retry = make_entries(2) + [first[1]]  # the third reuses a recorded receipt id
    with pytest.raises(DuplicateReceipt):
        store.record(retry)
    assert store.head() == head
    with pytest.raises(ReceiptNotFound):
        store.get(retry[0].receipt_id)
    store.record(retry[:2])
    assert store.head()[0] == 5 and store.verify().ok


def test_records_survive_reopening(store_url: str, make_entries: EntryFactory) -> None:
    entries = make_entries(4)
    first = open_store(store_url)
    first.record(entries)
    first.close()
    second = open_store(store_url)
    assert second.get(entries[2].receipt_id).explanation == entries[2].explanation
    assert second.verify().ok
    second.close()


def test_redaction_policy_applies_to_input_and_explanation(store: AuditStore, make_entries: EntryFactory) -> None:
    policy = RedactionPolicy.from_manifest(
        {"fields": {"claimant_age": "hmac", "claim_amount": "drop"}, "default": "raw"}, hmac_key=b"test-key")
    entries = make_entries(2, policy=policy)
    store.record(entries)
    receipt = store.get(entries[0].receipt_id)
    raw = entries[0].input
    assert receipt.dropped_fields == ["claim_amount"]
    assert "claim_amount" not in receipt.input
    hashed = receipt.input["claimant_age"].text
    assert hashed.startswith("hmac-sha256:") and str(raw["claimant_age"]) not in hashed
    assert receipt.input["fault"].text == raw["fault"]
    # The hash is of the raw input, so a holder of the original claim (and the key) can prove which
    # claim it was; keyed, so that a reader of the record cannot try an age or amount until it matches.
    canonical = canonical_input(to_value_map(raw))
    assert receipt.input_sha256 == "hmac-sha256:" + hmac.new(b"test-key", canonical, hashlib.sha256).hexdigest()
    assert input_sha256(to_value_map(raw)) == hashlib.sha256(canonical).hexdigest() != receipt.input_sha256
    by_feature = {c.feature: c for c in receipt.explanation.contributions}
    assert not by_feature["claim_amount"].HasField("value")
    assert by_feature["claimant_age"].value.text == hashed
    assert by_feature["fault"].value.text == raw["fault"]
    # The caller's explanation keeps its values; only the stored copy is redacted.
    caller = {c.feature: c for c in entries[0].explanation.contributions}
    assert caller["claim_amount"].value.number == raw["claim_amount"]
    # Same value, same key: same HMAC (linkable without being readable).
    same_age = make_entries(1, policy=policy)[0]
    assert same_age.input["claimant_age"] == raw["claimant_age"]
    store.record([same_age])
    assert store.get(same_age.receipt_id).input["claimant_age"].text == hashed
    assert store.verify().ok


@pytest.mark.parametrize("section, message", [
    ({"fields": {"a": "encrypt"}}, "expected one of"),
    ({"retention_days": 0}, "positive integer"),
    ({"keep": 1}, "unknown keys"),
])
def test_bad_policies_are_refused(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        RedactionPolicy.from_manifest(section)


@pytest.mark.parametrize("section", [{"fields": {"claimant_age": "hmac"}}, {"fields": {"claimant_age": "drop"}},
                                     {"default": "drop"}])
def test_a_withholding_policy_without_a_key_is_refused_at_load(monkeypatch: pytest.MonkeyPatch,
                                                               section: dict[str, Any]) -> None:
    """Dropping needs the key too: it keys the whole input's hash, which would give a dropped value away."""
    monkeypatch.delenv("RISKLENS_AUDIT_HMAC_KEY", raising=False)
    with pytest.raises(ManifestError, match="hashes or drops fields but RISKLENS_AUDIT_HMAC_KEY is not set"):
        RedactionPolicy.from_manifest(section)
    assert RedactionPolicy.from_manifest({"fields": {"claimant_age": "raw"}}).is_raw  # no key needed


def test_record_hash_follows_the_documented_canonical_form(store: AuditStore, make_entries: EntryFactory) -> None:
    """Recompute a record's hashes with nothing but hashlib, json and json_format (as a regulator would)."""
    entries = make_entries(2)
    store.record(entries)
    receipt = store.get(entries[1].receipt_id)
    document = json_format.MessageToDict(receipt, preserving_proto_field_name=True)

    def canonical(value: Any) -> bytes:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    body = {key: document[key] for key in ("input", "dropped_fields", "explanation") if key in document}
    assert hashlib.sha256(canonical(body)).hexdigest() == receipt.body_sha256
    header = {key: document[key] for key in ("receipt_id", "sequence", "created_at", "model", "input_sha256",
                                             "prev_hash", "body_sha256") if key in document}
    assert hashlib.sha256(canonical(header)).hexdigest() == receipt.record_hash


# ------------------------------------------------------------------------------- tamper evidence


def _edit_body(store: AuditStore, sequence: int) -> None:
    receipt_id = raw_execute(store, "SELECT receipt_id FROM audit_records WHERE sequence = ?", (sequence,))[0][0]
    receipt = store.get(receipt_id)
    body = risklens_pb2.Receipt(input=receipt.input, dropped_fields=receipt.dropped_fields)
    body.explanation.CopyFrom(receipt.explanation)
    body.explanation.decision = "pass" if body.explanation.decision == "refer" else "refer"
    # Bodies are stored as their canonical JSON; an editor who knows that writes a well-formed one.
    raw_execute(store, "UPDATE audit_records SET body = ? WHERE sequence = ?",
                (body_text(body).encode("utf-8"), sequence))


def _edit_body_as_text(store: AuditStore, sequence: int) -> None:
    """The edit a person makes with SQL's text functions (SQLite then stores text, not a blob)."""
    body = ("replace(body, '\"decision\":\"', '\"decision\":\"not-')" if isinstance(store, SqliteAuditStore) else
            "convert_to(replace(convert_from(body, 'UTF8'), '\"decision\":\"', '\"decision\":\"not-'), 'UTF8')")
    raw_execute(store, f"UPDATE audit_records SET body = {body} WHERE sequence = ?", (sequence,))


TAMPERING = {
    "edited explanation": (lambda store: _edit_body(store, 4), 4, "body"),
    "edited with SQL text functions": (lambda store: _edit_body_as_text(store, 7), 7, "body"),
    "edited into text that is not UTF-8": (lambda store: raw_execute(
        store, "UPDATE audit_records SET body = " + ("CAST(x'7bff22' AS TEXT)" if isinstance(store, SqliteAuditStore)
                                                     else "'\\x7bff22'::bytea") + " WHERE sequence = 3"), 3, "body"),
    "garbage body": (lambda store: raw_execute(store, "UPDATE audit_records SET body = ? WHERE sequence = 2",
                                               (b"\x00not json",)), 2, "body"),
    "edited timestamp": (lambda store: raw_execute(
        store, "UPDATE audit_records SET created_at = '2001-01-01T00:00:00.000000Z' WHERE sequence = 3"), 3,
        "record_hash"),
    "deleted record": (lambda store: raw_execute(store, "DELETE FROM audit_records WHERE sequence = 5"), 6,
                       "expected sequence 5"),
    "deleted last record": (lambda store: raw_execute(store, "DELETE FROM audit_records WHERE sequence = 8"), 8,
                            "chain ends at sequence 8"),
    "reordered records": (lambda store: [raw_execute(store, sql) for sql in (
        "UPDATE audit_records SET sequence = -1 WHERE sequence = 2",
        "UPDATE audit_records SET sequence = 2 WHERE sequence = 3",
        "UPDATE audit_records SET sequence = 3 WHERE sequence = -1")], 2, "prev_hash"),
    "inserted record": (lambda store: [raw_execute(store, sql) for sql in (
        "UPDATE audit_records SET sequence = sequence + 100 WHERE sequence >= 6",
        "INSERT INTO audit_records SELECT 6, 'forged-' || receipt_id, created_at, model_name, model_version, "
        "model_sha256, model_framework, input_sha256, body_sha256, prev_hash, record_hash, purged, retain_until, "
        "body FROM audit_records WHERE sequence = 5",
        "UPDATE audit_records SET sequence = sequence - 99 WHERE sequence >= 106")], 6, "prev_hash"),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_verify_names_the_first_bad_record(store: AuditStore, make_entries: EntryFactory, kind: str) -> None:
    store.record(make_entries(8))
    assert store.verify().ok
    tamper, bad_sequence, reason = TAMPERING[kind]
    tamper(store)
    report = store.verify()
    assert not report.ok
    assert report.first_bad is not None
    assert report.first_bad.sequence == bad_sequence, report.summary()
    assert reason in report.first_bad.reason, report.summary()
    assert f"sequence {bad_sequence}" in report.summary()


def test_a_body_turned_into_text_unchanged_still_reads_and_verifies(tmp_path: Any, make_entries: EntryFactory) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'audit.db'}")
    entries = make_entries(3)
    store.record(entries)
    raw_execute(store, "UPDATE audit_records SET body = CAST(body AS TEXT) WHERE sequence = 2")
    assert raw_execute(store, "SELECT typeof(body) FROM audit_records WHERE sequence = 2") == [("text",)]
    assert store.verify().ok  # the same bytes, so the same hash
    assert store.get(entries[1].receipt_id).explanation.receipt_id == entries[1].receipt_id
    store.close()


def test_signed_checkpoint_catches_a_rewritten_history(store: AuditStore, make_entries: EntryFactory,
                                                       tmp_path: Any) -> None:
    """An attacker who edits a record and re-hashes the whole chain still contradicts the signature."""
    key = load_or_create_signing_key(tmp_path / "signing.pem")
    store.record(make_entries(6))
    checkpoint = store.checkpoint(key)
    assert checkpoint.sequence == 6 and checkpoint.public_key == public_key_hex(key)
    store.record(make_entries(2))

    _edit_body(store, 3)
    previous = raw_execute(store, "SELECT record_hash FROM audit_records WHERE sequence = 2")[0][0]
    for sequence in range(3, 9):
        receipt_id = raw_execute(store, "SELECT receipt_id FROM audit_records WHERE sequence = ?", (sequence,))[0][0]
        receipt = store.get(receipt_id)
        from risklens.audit._canonical import body_sha256

        receipt.body_sha256 = body_sha256(receipt)
        receipt.prev_hash = previous
        previous = record_hash(receipt)
        raw_execute(store, "UPDATE audit_records SET body_sha256 = ?, prev_hash = ?, record_hash = ? "
                           "WHERE sequence = ?", (receipt.body_sha256, receipt.prev_hash, previous, sequence))
    raw_execute(store, "UPDATE audit_head SET head_hash = ? WHERE id = 1", (previous,))

    report = store.verify(trusted_public_key=bytes.fromhex(public_key_hex(key)))
    assert not report.ok and report.first_bad is not None
    assert report.first_bad.sequence == 6
    assert "history was rewritten" in report.first_bad.reason


def test_forged_checkpoint_signature_is_detected(store: AuditStore, make_entries: EntryFactory,
                                                 tmp_path: Any) -> None:
    key = load_or_create_signing_key(tmp_path / "signing.pem")
    other = load_or_create_signing_key(tmp_path / "other.pem")
    store.record(make_entries(3))
    store.checkpoint(key)
    assert store.verify(trusted_public_key=bytes.fromhex(public_key_hex(key))).ok
    untrusted = store.verify(trusted_public_key=bytes.fromhex(public_key_hex(other)))
    assert not untrusted.ok and "untrusted key" in untrusted.first_bad.reason
    raw_execute(store, "UPDATE audit_checkpoints SET head_hash = ?", ("0" * 64,))
    forged = store.verify()
    assert not forged.ok and "signature is invalid" in forged.first_bad.reason


def test_periodic_checkpoints(store_url: str, make_entries: EntryFactory, tmp_path: Any) -> None:
    key = load_or_create_signing_key(tmp_path / "signing.pem")
    periodic = open_store(store_url, signing_key=key, checkpoint_every=5)
    for _ in range(4):
        periodic.record(make_entries(3))
    report = periodic.verify(trusted_public_key=bytes.fromhex(public_key_hex(key)))
    periodic.close()
    assert report.ok and report.checkpoints_checked == 2, report.summary()  # crossed 5 and 10


def test_checkpoint_needs_a_key_and_records(store: AuditStore, make_entries: EntryFactory, tmp_path: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ManifestError):
        store.checkpoint()
    with pytest.raises(InvalidRequest, match="empty"):
        store.checkpoint(load_or_create_signing_key(tmp_path / "k.pem"))


# ------------------------------------------------------------------------------------- retention


def test_purge_keeps_the_chain_verifiable(store: AuditStore, make_entries: EntryFactory) -> None:
    old = datetime(2024, 1, 1, tzinfo=UTC)
    policy = RedactionPolicy.from_manifest({"retention_days": 30})
    aged = make_entries(4, policy=policy, created_at=old, step=timedelta(days=10))  # days 0, 10, 20, 30
    recent = make_entries(3, created_at=datetime.now(UTC))  # no retention: kept forever
    store.record(aged)
    store.record(recent)
    # At day 45 the first two (retain until day 30 and 40) have expired.
    assert store.purge(now=old + timedelta(days=45)) == 2
    purged = store.get(aged[0].receipt_id)
    assert purged.purged and not purged.input and not purged.HasField("explanation")
    assert purged.body_sha256 and purged.record_hash
    assert store.get(aged[2].receipt_id).HasField("explanation")
    # Nothing is left to replay against, with or without the original claim.
    from risklens.audit._replay import replay_input

    for raw in (None, aged[0].input):
        with pytest.raises(InvalidRequest, match="was purged by retention: its explanation is no longer stored"):
            replay_input(purged, raw)
    report = store.verify()
    assert report.ok and report.purged == 2 and report.bodies_checked == 5, report.summary()
    # An explicit purge by date.
    assert store.purge(before=old + timedelta(days=25), model="demo-xgb") == 1
    assert store.verify().purged == 3


def test_purged_body_is_gone_from_the_sqlite_file(tmp_path: Any, make_entries: EntryFactory) -> None:
    path = tmp_path / "audit.db"
    store = open_store(f"sqlite:///{path}")
    entry = make_entries(1, created_at=datetime(2020, 1, 1, tzinfo=UTC))[0]
    store.record([entry])
    rationale = entry.explanation.rationale.encode()
    assert store.purge(before=datetime(2021, 1, 1, tzinfo=UTC)) == 1
    store.close()
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("audit.db"))
    assert rationale not in on_disk


def test_a_trail_written_by_schema_1_stays_readable_verifiable_and_extendable(
        tmp_path: Any, make_entries: EntryFactory) -> None:
    """risklens.audit/1 kept bodies as protobuf bytes; upgrading must never strand an old trail."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = open_store(url)
    first = make_entries(4)
    store.record(first)
    old_receipts = [store.get(entry.receipt_id) for entry in first]
    store.close()
    with sqlite3.connect(tmp_path / "audit.db", isolation_level=None) as connection:  # what /1 wrote
        for receipt in old_receipts:
            body = risklens_pb2.Receipt(input=receipt.input, dropped_fields=receipt.dropped_fields)
            body.explanation.CopyFrom(receipt.explanation)
            connection.execute("UPDATE audit_records SET body = ? WHERE receipt_id = ?",
                               (body.SerializeToString(deterministic=True), receipt.receipt_id))
        connection.execute("UPDATE audit_meta SET value = 'risklens.audit/1' WHERE key = 'schema_version'")

    reopened = open_store(url)
    assert [reopened.get(entry.receipt_id) for entry in first] == old_receipts
    reopened.record(make_entries(3))
    report = reopened.verify()
    assert report.ok, report.summary()
    assert report.records_checked == 7 and report.bodies_checked == 7
    # An edited /1 body is still caught.
    receipt = old_receipts[1]
    body = risklens_pb2.Receipt(input=receipt.input)
    body.explanation.CopyFrom(receipt.explanation)
    body.explanation.score = 0.5
    raw_execute(reopened, "UPDATE audit_records SET body = ? WHERE receipt_id = ?",
                (body.SerializeToString(deterministic=True), receipt.receipt_id))
    report = reopened.verify()
    assert not report.ok and report.first_bad is not None and report.first_bad.sequence == 2
    reopened.close()


def test_the_sqlite_log_stays_bounded_under_steady_writes(tmp_path: Any, make_entries: EntryFactory) -> None:
    """Background checkpoints copy the whole write-ahead log, even while commits keep coming, so
    the next commit rewrites the log from its start instead of extending it forever (it grew by
    ~16 KB a record before: 143 MB after 5,000 records)."""
    path = tmp_path / "audit.db"
    store = open_store(f"sqlite:///{path}")
    wal = tmp_path / "audit.db-wal"
    sizes = []
    for _ in range(6):
        for _ in range(45):  # 495 records in commits of 10 and 1
            store.record(make_entries(10))
            store.record(make_entries(1))
        sizes.append(wal.stat().st_size)
    count = store.head()[0]
    store.close()
    assert count == 6 * 45 * 11
    # Written at a steady rate, the log reaches its working size early and stays there.
    assert sizes[-1] <= 1.25 * sizes[1], sizes


def test_closing_during_a_background_checkpoint_returns(tmp_path: Any, make_entries: EntryFactory) -> None:
    """close() used to join the checkpointer while holding the write lock that the checkpoint's
    second pass takes: an audit run hung at its end."""
    import threading

    entries = make_entries(260)
    for attempt in range(10):
        store = open_store(f"sqlite:///{tmp_path}/audit-{attempt}.db")
        store.record(entries)  # a background checkpoint is now due
        closer = threading.Thread(target=store.close, daemon=True)
        closer.start()
        closer.join(timeout=30)
        assert not closer.is_alive(), f"close() hung (attempt {attempt})"



def test_page_size_is_chosen_when_the_trail_is_created(tmp_path: Any, make_entries: EntryFactory) -> None:
    """SQLite's default pages for a new trail unless asked (the URL's page_size first); an existing
    trail keeps its own, and records round-trip and verify at any size."""
    from risklens.audit import BATCH_PAGE_SIZE

    def page_size(path: Any) -> int:
        with sqlite3.connect(path) as connection:
            return connection.execute("PRAGMA page_size").fetchone()[0]

    open_store(f"sqlite:///{tmp_path / 'default.db'}").close()
    assert page_size(tmp_path / "default.db") == 4096
    batch = f"sqlite:///{tmp_path / 'batch.db'}"
    entries = make_entries(5)
    store = open_store(batch, page_size=BATCH_PAGE_SIZE)
    store.record(entries)
    store.close()
    assert page_size(tmp_path / "batch.db") == BATCH_PAGE_SIZE == 32_768
    for url in (batch, f"{batch}?page_size=4096"):
        reopened = open_store(url, page_size=8192)
        assert reopened.get(entries[3].receipt_id).explanation == entries[3].explanation
        assert reopened.verify().ok
        reopened.close()
        assert page_size(tmp_path / "batch.db") == BATCH_PAGE_SIZE
    open_store(f"sqlite:///{tmp_path / 'url.db'}?page_size=8192", page_size=BATCH_PAGE_SIZE).close()
    assert page_size(tmp_path / "url.db") == 8192
    for bad in ("?page_size=1000", "?page_size=131072", "?page_size=big"):
        with pytest.raises(InvalidRequest, match="page_size must be a power of two") as refused:
            open_store(f"sqlite:///{tmp_path / 'bad.db'}{bad}")
        assert refused.value.field == "page_size"
    with pytest.raises(InvalidRequest, match="page_size"):
        open_store(f"sqlite:///{tmp_path / 'bad.db'}", page_size=3000)

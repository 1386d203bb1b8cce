"""Audit trail: every explanation durable, hash-chained, signed, exportable and verifiable offline."""

from ._canonical import (SCHEMA_VERSION, export_items, format_time, input_sha256, new_receipt_id, new_receipt_ids,
                         parse_time)
from ._export import AdverseNoticeWriter, read_export, verify_export, write_export
from ._policy import AuditEntry, RedactionPolicy
from ._signing import (configured_signing_key, load_or_create_signing_key, load_signing_key, public_key_hex,
                       sign_checkpoint)
from ._store import BATCH_PAGE_SIZE, AuditStore, PostgresAuditStore, SqliteAuditStore, open_store, store_location
from ._verify import BadRecord, ChainVerifier, VerifyReport

__all__ = [
    "BATCH_PAGE_SIZE", "SCHEMA_VERSION", "AdverseNoticeWriter", "export_items", "AuditEntry", "AuditStore", "BadRecord", "ChainVerifier",
    "configured_signing_key",
    "PostgresAuditStore", "RedactionPolicy", "SqliteAuditStore", "VerifyReport", "format_time", "input_sha256",
    "load_or_create_signing_key", "load_signing_key", "new_receipt_id", "new_receipt_ids", "open_store", "parse_time",
    "public_key_hex", "read_export", "sign_checkpoint", "store_location", "verify_export", "write_export",
]

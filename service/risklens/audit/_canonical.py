"""Canonical forms and hashes: the one definition every writer and every offline verifier shares.

A message's canonical form is its ``json_format`` dict (proto field names, defaults omitted) dumped
as sorted-key, compact, UTF-8 JSON. Hashes are sha256 hex of that form, so an export can be checked
with nothing but the records and this module.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from risklens.errors import InvalidRequest
from risklens.v1 import risklens_pb2

SCHEMA_VERSION = "risklens.audit/1"


def message_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def canonical_json(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_value(raw: Any) -> risklens_pb2.Value:
    """One claim value as a proto ``Value`` (numbers become doubles, as on the wire)."""
    if isinstance(raw, risklens_pb2.Value):
        return raw
    # A float NaN is a missing value, as on the wire (risklens.wire.value_to_proto).
    if raw is None or (isinstance(raw, float) and raw != raw):
        return risklens_pb2.Value(null=risklens_pb2.NULL_VALUE)
    # bool before numbers: bool is an int subclass (numpy.bool_ is not, but registers as no Real).
    if isinstance(raw, bool) or type(raw).__name__ == "bool_":
        return risklens_pb2.Value(flag=bool(raw))
    if isinstance(raw, numbers.Real):
        return risklens_pb2.Value(number=float(raw))
    if isinstance(raw, str):
        return risklens_pb2.Value(text=raw)
    raise InvalidRequest(f"audit input value of type {type(raw).__name__} is not a number, text, "
                         f"boolean or null")


def to_value_map(raw_input: Mapping[str, Any]) -> dict[str, risklens_pb2.Value]:
    return {str(name): to_value(value) for name, value in raw_input.items()}


def input_sha256(values: Mapping[str, risklens_pb2.Value]) -> str:
    """Hash of the canonical input (before redaction): the sorted-key JSON of the Value map."""
    document = message_dict(risklens_pb2.Receipt(input=values)).get("input", {})
    return sha256_hex(canonical_json(document))


def body_sha256(receipt: risklens_pb2.Receipt) -> str:
    """Hash of the purgeable part of a record: stored input, dropped field names, explanation."""
    body = risklens_pb2.Receipt(input=receipt.input, dropped_fields=receipt.dropped_fields)
    if receipt.HasField("explanation"):
        body.explanation.CopyFrom(receipt.explanation)
    return sha256_hex(canonical_json(message_dict(body)))


def record_hash(receipt: risklens_pb2.Receipt) -> str:
    """Chain hash of a record: its header, its body hash and the previous record's hash."""
    header = risklens_pb2.Receipt(
        receipt_id=receipt.receipt_id, sequence=receipt.sequence, created_at=receipt.created_at,
        model=receipt.model, input_sha256=receipt.input_sha256, prev_hash=receipt.prev_hash,
        body_sha256=receipt.body_sha256)
    return sha256_hex(canonical_json(message_dict(header)))


def checkpoint_payload(checkpoint: risklens_pb2.Checkpoint) -> bytes:
    """The bytes an Ed25519 checkpoint signature covers."""
    signed = risklens_pb2.Checkpoint(sequence=checkpoint.sequence, head_hash=checkpoint.head_hash,
                                     created_at=checkpoint.created_at)
    return canonical_json(message_dict(signed))


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``: fixed width, so text order is time order."""
    if moment.tzinfo is None:
        raise InvalidRequest("audit timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def export_items(store: Any, from_time: str = "", to_time: str = "", model: str = ""
                 ) -> Iterator[risklens_pb2.ExportItem]:
    """The ExportAudit stream: each record, then the manifest (empty bounds and model mean open)."""
    for item in store.export(parse_time(from_time) if from_time else None,
                             parse_time(to_time) if to_time else None, model or None):
        if isinstance(item, risklens_pb2.ExportManifest):
            yield risklens_pb2.ExportItem(manifest=item)
        else:
            yield risklens_pb2.ExportItem(record=item)


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 / ISO 8601 time; a naive value is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as error:
        raise InvalidRequest(f"not an RFC 3339 time: {text!r}") from error
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_uuid_lock = threading.Lock()
_uuid_last = (0, 0)


def new_receipt_id() -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then a counter, then random bits.

    Ids made in one process are strictly increasing, so they sort in issue order.
    """
    global _uuid_last
    with _uuid_lock:
        millis = time.time_ns() // 1_000_000
        last_millis, last_counter = _uuid_last
        if millis <= last_millis:
            millis, counter = last_millis, last_counter + 1
            if counter >= 1 << 12:  # counter exhausted within one millisecond: borrow the next one
                millis, counter = last_millis + 1, 0
        else:
            counter = 0
        _uuid_last = (millis, counter)
    random_bits = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (millis << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | random_bits
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"

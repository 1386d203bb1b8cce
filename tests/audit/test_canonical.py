"""The fast canonical writer must give exactly the documented form: json_format + json.dumps."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from risklens.audit._canonical import (body_sha256, canonical_message, checkpoint_payload, format_time,
                                       header_hash, input_sha256, record_hash, to_value_map)
from risklens.v1 import risklens_pb2




def documented_form(message: Message) -> bytes:
    """The canonical form exactly as docs/audit.md states it."""
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_of(message: Message) -> str:
    return hashlib.sha256(documented_form(message)).hexdigest()


# Values chosen to hit every special case of the JSON mapping: non-finite and negative-zero doubles,
# 64-bit integers beyond 2**53, JSON escapes, control characters and non-ASCII text.
DOUBLES = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e300, 5e-324, 0.1]))
TEXTS = st.one_of(st.text(max_size=12), st.sampled_from(["", "\"", "\\", "\n\t\x00\x1f", "é€😀", "</script>"]))


def fill(data: st.DataObject, message: Message, depth: int) -> None:
    """Set a random subset of the message's fields (recursing into sub-messages) from hypothesis."""
    for field in message.DESCRIPTOR.fields:
        if not data.draw(st.booleans()):
            continue
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            target = getattr(message, field.name)
            for key in data.draw(st.lists(TEXTS, max_size=3)):
                value_field = entry.fields_by_name["value"]
                if value_field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                    fill(data, target[key], depth + 1)
                else:
                    target[key] = data.draw(scalar(value_field))
        elif field.is_repeated:
            target = getattr(message, field.name)
            for _ in range(data.draw(st.integers(0, 3))):
                if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                    if depth < 3:
                        fill(data, target.add(), depth + 1)
                else:
                    target.append(data.draw(scalar(field)))
        elif field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            if depth < 3:
                sub = getattr(message, field.name)
                sub.SetInParent()
                fill(data, sub, depth + 1)
        else:
            setattr(message, field.name, data.draw(scalar(field)))


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_DOUBLE:
        return DOUBLES
    if kind == FieldDescriptor.CPPTYPE_STRING:
        return TEXTS
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.CPPTYPE_UINT64:
        return st.integers(0, 2**64 - 1)
    if kind == FieldDescriptor.CPPTYPE_UINT32:
        return st.integers(0, 2**32 - 1)
    if kind == FieldDescriptor.CPPTYPE_ENUM:
        # Open (proto3) enums also hold numbers they do not name; json_format writes those as numbers.
        return st.one_of(st.sampled_from([value.number for value in field.enum_type.values]), st.integers(0, 50))
    raise AssertionError(f"no strategy for {field.full_name}")


MESSAGE_TYPES = [risklens_pb2.Receipt, risklens_pb2.ExplainResponse, risklens_pb2.ExplainOptions,
                 risklens_pb2.ExportManifest, risklens_pb2.Checkpoint, risklens_pb2.Value, risklens_pb2.ModelInfo]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), message_type=st.sampled_from(MESSAGE_TYPES))
def test_canonical_writer_matches_json_format_on_random_messages(data: st.DataObject, message_type: type) -> None:
    message = message_type()
    fill(data, message, 0)
    assert canonical_message(message) == documented_form(message)
    # The round trip an offline verifier makes (export JSON -> message) gives the same form again.
    parsed = json_format.Parse(canonical_message(message).decode("utf-8"), message_type())
    assert canonical_message(parsed) == documented_form(parsed)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_record_hashes_match_the_documented_definitions(data: st.DataObject) -> None:
    receipt = risklens_pb2.Receipt()
    fill(data, receipt, 0)
    body = risklens_pb2.Receipt(input=receipt.input, dropped_fields=receipt.dropped_fields)
    if receipt.HasField("explanation"):
        body.explanation.CopyFrom(receipt.explanation)
    assert body_sha256(receipt) == sha256_of(body)
    header = risklens_pb2.Receipt(receipt_id=receipt.receipt_id, sequence=receipt.sequence,
                                  created_at=receipt.created_at, model=receipt.model,
                                  input_sha256=receipt.input_sha256, prev_hash=receipt.prev_hash,
                                  body_sha256=receipt.body_sha256)
    if not receipt.HasField("model"):
        header.ClearField("model")
    assert record_hash(receipt) == sha256_of(header)
    document = json_format.MessageToDict(risklens_pb2.Receipt(input=receipt.input),
                                         preserving_proto_field_name=True).get("input", {})
    expected_input = hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":"),
                                               ensure_ascii=False).encode("utf-8")).hexdigest()
    assert input_sha256(receipt.input) == expected_input


def test_checkpoint_payload_is_the_documented_form() -> None:
    checkpoint = risklens_pb2.Checkpoint(sequence=2**60, head_hash="ab" * 32, created_at="2026-01-01T00:00:00.000000Z",
                                         signature="00", public_key="11")
    signed = risklens_pb2.Checkpoint(sequence=2**60, head_hash="ab" * 32, created_at="2026-01-01T00:00:00.000000Z")
    assert checkpoint_payload(checkpoint) == documented_form(signed)


def test_canonical_writer_matches_json_format_on_real_explanations(explained: list[Any]) -> None:
    for item in explained:
        values = to_value_map(item.claim)
        receipt = risklens_pb2.Receipt(receipt_id="r", sequence=7, input=values, explanation=item.response)
        assert canonical_message(receipt) == documented_form(receipt)
        assert canonical_message(item.response) == documented_form(item.response)


@settings(max_examples=200, deadline=None)
@given(receipt_id=TEXTS, sequence=st.integers(0, 2**64 - 1), created_at=TEXTS, input_hash=TEXTS, prev_hash=TEXTS,
       body_hash=TEXTS, model_fields=st.lists(TEXTS, min_size=4, max_size=4))
# The usual record (every field present, nothing to escape) and near misses of it.
@example(receipt_id="0192f3a4-1234-7abc-8def-0123456789ab", sequence=12, created_at="2026-12-03T09:45:22.123456Z",
         input_hash="a" * 64, prev_hash="b" * 64, body_hash="c" * 64, model_fields=["m", "1.0.0", "d" * 64, "xgboost"])
@example(receipt_id='id"1', sequence=12, created_at="t", input_hash="a", prev_hash="b", body_hash="c",
         model_fields=["m", "1", "s", "f"])
@example(receipt_id="id\\1\x7f", sequence=12, created_at="t", input_hash="a", prev_hash="b", body_hash="c",
         model_fields=["m", "1", "s", "f"])
@example(receipt_id="id", sequence=0, created_at="t", input_hash="a", prev_hash="", body_hash="c",
         model_fields=["m", "1", "s", "f"])
def test_header_hash_is_record_hash(receipt_id: str, sequence: int, created_at: str, input_hash: str,
                                    prev_hash: str, body_hash: str, model_fields: list[str]) -> None:
    model = risklens_pb2.ModelRef(name=model_fields[0], version=model_fields[1], sha256=model_fields[2],
                                  framework=model_fields[3])
    receipt = risklens_pb2.Receipt(receipt_id=receipt_id, sequence=sequence, created_at=created_at, model=model,
                                   input_sha256=input_hash, prev_hash=prev_hash, body_sha256=body_hash)
    assert header_hash(receipt_id=receipt_id, sequence=sequence, created_at=created_at,
                       model_json=canonical_message(model).decode("utf-8"), input_sha256=input_hash,
                       prev_hash=prev_hash, body_sha256=body_hash) == record_hash(receipt)


@given(moment=st.datetimes(min_value=datetime(1000, 1, 1), timezones=st.just(UTC)))
def test_format_time_is_the_fixed_width_rfc3339_form(moment: datetime) -> None:
    assert format_time(moment) == moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

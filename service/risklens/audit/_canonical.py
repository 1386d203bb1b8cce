"""Canonical forms and hashes: the one definition every writer and every offline verifier shares.

A message's canonical form is its ``json_format`` dict (proto field names, defaults omitted) dumped
as sorted-key, compact, UTF-8 JSON. Hashes are sha256 hex of that form, so an export can be checked
with nothing but the records and this module (or ``json_format`` and ``json`` alone).

``canonical_message`` writes that form straight from the message, through one small function per
message type generated from its descriptor: ``json_format.MessageToDict`` followed by ``json.dumps``
walks every field through generic reflection, which cost most of an audit record's time. The
output is byte-for-byte the same (tests/audit/test_canonical.py checks it against
``json_format`` on real and randomly generated messages).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import numbers
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from json.encoder import encode_basestring
from typing import Any

from google.protobuf import descriptor as proto_descriptor
from google.protobuf import json_format
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message

from risklens.errors import InvalidRequest
from risklens.v1 import risklens_pb2

SCHEMA_VERSION = "risklens.audit/2"  # 2: bodies stored as their canonical JSON
# Upper bound of an export with no end: after every RFC 3339 timestamp in text order.
OPEN_END = "9999"

_Field = proto_descriptor.FieldDescriptor


def message_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def canonical_json(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ generated canonical writers

def _json_double(value: float) -> str:
    """A double as json_format + json.dumps write it: repr, or a quoted name when not finite."""
    if value - value == 0.0:  # finite (inf - inf and nan - nan are nan)
        return float.__repr__(value)
    if value != value:
        return '"NaN"'
    return '"-Infinity"' if value < 0 else '"Infinity"'


def _json_float(value: float) -> str:
    """A 32-bit float: json_format rounds it to the shortest repr that survives float32."""
    if not math.isfinite(value):
        return _json_double(value)
    return float.__repr__(float(type_checkers.ToShortestFloat(value)))


def _json_doubles(values: Any) -> str:
    items = list(values)
    if all(map(math.isfinite, items)):
        return ",".join(map(float.__repr__, items))
    return ",".join(map(_json_double, items))


def _json_bytes(value: bytes) -> str:
    return '"' + base64.b64encode(value).decode("ascii") + '"'


def _nonzero_double(value: float) -> bool:
    # Implicit-presence doubles are "set" when their bits are not all zero, so -0.0 counts.
    return value != 0.0 or math.copysign(1.0, value) < 0


_writers: dict[Any, Callable[[Message], str]] = {}
_writers_lock = threading.RLock()
_compiling: set[Any] = set()  # message types whose writer is being generated (recursion guard)


def _write_message(message: Message) -> str:
    descriptor = message.DESCRIPTOR
    writer = _writers.get(descriptor)
    if writer is None:
        writer = _compile_writer(descriptor)
    return writer(message)


def _value_expression(field: Any, var: str, env: dict[str, Any]) -> str:
    """A Python expression giving the JSON text of one value of ``field`` held in ``var``."""
    kind = field.cpp_type
    if kind == _Field.CPPTYPE_MESSAGE:
        sub_type = field.message_type
        if sub_type in _compiling or sub_type.full_name.startswith("google.protobuf."):
            return f"_message({var})"  # recursive or well-known type: dispatch at run time
        writer = f"_write_{len(env)}"
        env[writer] = _writers.get(sub_type) or _generate_writer(sub_type)
        return f"{writer}({var})"
    if kind == _Field.CPPTYPE_ENUM:
        enum = field.enum_type
        if enum.full_name == "google.protobuf.NullValue":
            return "'null'"
        names = f"_enum_{len(env)}"
        env[names] = {number: json.dumps(value.name) for number, value in enum.values_by_number.items()}
        # json_format writes unknown numbers of open enums as numbers and refuses them for closed ones.
        return f"{names}[{var}]" if enum.is_closed else f"({names}.get({var}) or str({var}))"
    if kind == _Field.CPPTYPE_STRING:
        return f"_bytes({var})" if field.type == _Field.TYPE_BYTES else f"_string({var})"
    if kind == _Field.CPPTYPE_BOOL:
        return f"('true' if {var} else 'false')"
    if kind in (_Field.CPPTYPE_INT64, _Field.CPPTYPE_UINT64):
        return f"('\"' + str({var}) + '\"')"  # 64-bit integers are JSON strings
    if kind == _Field.CPPTYPE_DOUBLE:
        return f"(_repr({var}) if {var} - {var} == 0.0 else _double({var}))"  # finite inline, else named
    if kind == _Field.CPPTYPE_FLOAT:
        return f"_float({var})"
    return f"str({var})"  # 32-bit integers


def _compile_writer(descriptor: Any, only: tuple[str, ...] = ()) -> Callable[[Message], str]:
    """Generate ``write(message) -> str`` for one message type: its fields in sorted-name order,
    each written only when json_format would list it (set, non-empty, or present).

    ``only``: write just these fields, as if the others were unset (a record's body or header).
    Writers of whole messages are cached per type.
    """
    with _writers_lock:  # one generator at a time: the recursion guard is shared
        return _generate_writer(descriptor, only)


def _generate_writer(descriptor: Any, only: tuple[str, ...] = ()) -> Callable[[Message], str]:
    fields = [descriptor.fields_by_name[name] for name in only] or list(descriptor.fields)
    if not only and (descriptor.full_name.startswith("google.protobuf.") or descriptor.extension_ranges):
        # Well-known types have their own JSON mappings, extensions their own keys: the generic path.
        def generic(message: Message) -> str:
            return canonical_json(message_dict(message)).decode("utf-8")
        writer = generic
    else:
        env: dict[str, Any] = {"_message": _write_message, "_string": encode_basestring, "_bytes": _json_bytes,
                               "_double": _json_double, "_float": _json_float, "_doubles": _json_doubles,
                               "_nonzero_double": _nonzero_double, "_repr": float.__repr__}
        _compiling.add(descriptor)
        lines = ["def write(m):", "    p = []"]
        for oneof in {field.containing_oneof for field in fields} - {None}:
            lines.append(f"    which_{oneof.index} = m.WhichOneof({oneof.name!r})")
        for field in sorted(fields, key=lambda f: f.name):
            name, key = field.name, json.dumps(field.name) + ":"
            entry = field.message_type
            if entry is not None and entry.GetOptions().map_entry:
                value = _value_expression(entry.fields_by_name["value"], "x", env)
                key_field = entry.fields_by_name["key"]
                as_text = ("('true' if k else 'false')" if key_field.cpp_type == _Field.CPPTYPE_BOOL
                           else "k" if key_field.cpp_type == _Field.CPPTYPE_STRING else "str(k)")
                lines += [f"    v = m.{name}", "    if v:",
                          f"        items = sorted([({as_text}, x) for k, x in v.items()])",
                          f"        p.append({key!r} + '{{' + ','.join([_string(k) + ':' + {value} "
                          f"for k, x in items]) + '}}')"]
            elif field.is_repeated:
                if field.cpp_type == _Field.CPPTYPE_DOUBLE:
                    items = "_doubles(v)"
                else:
                    items = f"','.join([{_value_expression(field, 'x', env)} for x in v])"
                lines += [f"    v = m.{name}", "    if v:", f"        p.append({key!r} + '[' + {items} + ']')"]
            elif field.containing_oneof is not None:
                lines += [f"    if which_{field.containing_oneof.index} == {name!r}:", f"        v = m.{name}",
                          f"        p.append({key!r} + {_value_expression(field, 'v', env)})"]
            elif field.has_presence:
                lines += [f"    if m.HasField({name!r}):", f"        v = m.{name}",
                          f"        p.append({key!r} + {_value_expression(field, 'v', env)})"]
            else:
                is_set = ("v or _nonzero_double(v)" if field.cpp_type in (_Field.CPPTYPE_DOUBLE, _Field.CPPTYPE_FLOAT)
                          else "v")
                lines += [f"    v = m.{name}", f"    if {is_set}:",
                          f"        p.append({key!r} + {_value_expression(field, 'v', env)})"]
        lines.append("    return '{' + ','.join(p) + '}'")
        _compiling.discard(descriptor)
        exec(compile("\n".join(lines), f"<canonical writer for {descriptor.full_name}>", "exec"), env)
        writer = env["write"]
    if not only:
        _writers[descriptor] = writer
    return writer


def canonical_message(message: Message) -> bytes:
    """``canonical_json(message_dict(message))``, written directly (same bytes, several times faster)."""
    return _write_message(message).encode("utf-8")


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


def canonical_input(values: Mapping[str, risklens_pb2.Value]) -> bytes:
    """The canonical input (before redaction): the sorted-key JSON of the Value map, UTF-8."""
    items = sorted(values.items())
    return ("{" + ",".join([encode_basestring(name) + ":" + _write_message(value) for name, value in items])
            + "}").encode("utf-8")


def input_sha256(values: Mapping[str, risklens_pb2.Value]) -> str:
    """Plain hash of the canonical input: a record's ``input_sha256`` under a policy that keeps every
    field raw (otherwise it is keyed: ``RedactionPolicy.input_digest``)."""
    return sha256_hex(canonical_input(values))


_BODY_FIELDS = ("input", "dropped_fields", "explanation")
_HEADER_FIELDS = ("receipt_id", "sequence", "created_at", "model", "input_sha256", "prev_hash", "body_sha256")
_write_body = _compile_writer(risklens_pb2.Receipt.DESCRIPTOR, _BODY_FIELDS)
_write_header = _compile_writer(risklens_pb2.Receipt.DESCRIPTOR, _HEADER_FIELDS)


def body_text(receipt: risklens_pb2.Receipt) -> str:
    """The canonical form of a record's purgeable part: stored input, dropped field names, explanation.

    The canonical form of ``Receipt(input=..., dropped_fields=..., explanation=...)``; stores keep
    exactly these bytes (UTF-8) as the record's body.
    """
    return _write_body(receipt)


def body_sha256(receipt: risklens_pb2.Receipt) -> str:
    """Hash of the purgeable part of a record: sha256 of ``body_text``."""
    return sha256_hex(_write_body(receipt).encode("utf-8"))


def record_hash(receipt: risklens_pb2.Receipt) -> str:
    """Chain hash of a record: its header, its body hash and the previous record's hash.

    The canonical form of ``Receipt(receipt_id, sequence, created_at, model, input_sha256,
    prev_hash, body_sha256)``.
    """
    return sha256_hex(_write_header(receipt).encode("utf-8"))


def checkpoint_payload(checkpoint: risklens_pb2.Checkpoint) -> bytes:
    """The bytes an Ed25519 checkpoint signature covers."""
    signed = risklens_pb2.Checkpoint(sequence=checkpoint.sequence, head_hash=checkpoint.head_hash,
                                     created_at=checkpoint.created_at)
    return canonical_message(signed)


@lru_cache(maxsize=64)  # the claims of one batch share their timestamp
def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``: fixed width, so text order is time order."""
    if moment.tzinfo is None:
        raise InvalidRequest("audit timestamps must be timezone-aware")
    # isoformat is the same text as strftime("%Y-%m-%dT%H:%M:%S.%fZ"), several times faster.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def header_hash(*, receipt_id: str, sequence: int, created_at: str, model_json: str, input_sha256: str,
                prev_hash: str, body_sha256: str) -> str:
    """``record_hash`` of a record whose ``model`` is set, written from plain fields.

    ``model_json``: the canonical form of its ModelRef. Fields in name order, empty ones left out,
    the uint64 sequence as a JSON string: exactly what the generated header writer produces
    (tests/audit/test_canonical.py checks it).
    """
    texts = (body_sha256, created_at, input_sha256, prev_hash, receipt_id)
    if sequence and all(texts) and _NEEDS_NO_ESCAPE.fullmatch("".join(texts)):
        # Every field present and written as is (hex hashes, RFC 3339 times and UUIDs always are):
        # one format instead of escaping each field (9 -> ~3 us a record, once per claim of a batch).
        return sha256_hex(f'{{"body_sha256":"{body_sha256}","created_at":"{created_at}","input_sha256":"{input_sha256}",'
                          f'"model":{model_json},"prev_hash":"{prev_hash}","receipt_id":"{receipt_id}",'
                          f'"sequence":"{sequence}"}}'.encode("utf-8"))
    parts = [*text_members(("body_sha256", body_sha256), ("created_at", created_at), ("input_sha256", input_sha256)),
             '"model":' + model_json, *text_members(("prev_hash", prev_hash), ("receipt_id", receipt_id))]
    if sequence:
        parts.append('"sequence":"' + str(sequence) + '"')
    return sha256_hex(("{" + ",".join(parts) + "}").encode("utf-8"))


# Text that JSON writes between quotes as it is: printable ASCII but the quote and the backslash.
_NEEDS_NO_ESCAPE = re.compile(r'[ !#-\[\]-~]*')


def text_members(*fields: tuple[str, str]) -> list[str]:
    """``"name":"value"`` for each non-empty string field (empty ones are left out, as json_format does).

    Callers pass the fields in name order, which is the canonical order.
    """
    return [encode_basestring(name) + ":" + encode_basestring(value) for name, value in fields if value]


def export_items(store: Any, from_time: str = "", to_time: str = "", model: str = ""
                 ) -> Iterator[risklens_pb2.ExportItem]:
    """The ExportAudit stream: each record, then the manifest (empty bounds and model mean open)."""
    for item in store.export(parse_time(from_time, "from_time") if from_time else None,
                             parse_time(to_time, "to_time") if to_time else None, model or None):
        if isinstance(item, risklens_pb2.ExportManifest):
            yield risklens_pb2.ExportItem(manifest=item)
        else:
            yield risklens_pb2.ExportItem(record=item)


def parse_time(text: str, field: str | None = None) -> datetime:
    """Parse an RFC 3339 / ISO 8601 time; a naive value is taken as UTC. ``field``: the request
    field or option it came from, named in the error."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as error:
        where = f"{field}: " if field else ""
        raise InvalidRequest(f"{where}not an RFC 3339 time: {text!r}", field=field) from error
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_uuid_lock = threading.Lock()
_uuid_last = (0, 0)


def new_receipt_id() -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then a counter, then random bits.

    Ids made in one process are strictly increasing, so they sort in issue order.
    """
    return new_receipt_ids(1)[0]


def new_receipt_ids(count: int) -> list[str]:
    """``count`` ids as ``new_receipt_id`` makes them, under one lock and one read of the random source."""
    global _uuid_last
    stamps = []
    with _uuid_lock:
        now = time.time_ns() // 1_000_000
        last_millis, last_counter = _uuid_last
        for _ in range(count):
            if now <= last_millis:
                millis, counter = last_millis, last_counter + 1
                if counter >= 1 << 12:  # counter exhausted within one millisecond: borrow the next one
                    millis, counter = last_millis + 1, 0
            else:
                millis, counter = now, 0
            stamps.append((millis << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62))
            last_millis, last_counter = millis, counter
        _uuid_last = (last_millis, last_counter)
    random = os.urandom(8 * count)
    ids = []
    for i, stamp in enumerate(stamps):
        text = f"{stamp | (int.from_bytes(random[8 * i:8 * i + 8], 'big') & ((1 << 62) - 1)):032x}"
        ids.append(f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}")
    return ids

"""Audit record bodies written straight from the core's results, in the canonical form.

A record body is the canonical JSON of ``Receipt(input=..., dropped_fields=..., explanation=...)``
(see ``_canonical``). Building that Receipt as protobuf messages, only to walk them again to
write JSON, cost most of an audit record's time: about 60 small messages per claim (the input
map and the contributions). ``write_body`` writes the same bytes from the core's plain
``Explanation``: values and contributions through small memoised string builders, the optional
methods' results through their (rarely present) messages. tests/audit/test_body.py checks the
output byte for byte against ``json_format`` on real explanations, every redaction action and
edge values (zero and negative-zero doubles, empty claim ids, non-ASCII text, all methods).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

from ._canonical import _json_double, canonical_message
from ._policy import RedactionPolicy

if TYPE_CHECKING:
    from risklens.core import Explanation

_NULL = '{"null":"NULL_VALUE"}'  # risklens.v1.NullValue is an ordinary enum
_OUTPUT_SPACE_NAMES = {"log_odds": '"LOG_ODDS"', "probability": '"PROBABILITY"', "raw": '"RAW"'}


def _double(value: float) -> str:
    return float.__repr__(value) if value - value == 0.0 else _json_double(value)


def _is_set(value: float) -> bool:
    """Implicit-presence doubles are written unless their bits are all zero (-0.0 is written)."""
    return value != 0.0 or math.copysign(1.0, value) < 0


def _value_text(value: Any) -> str:
    if value is None:
        return _NULL
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return '{"flag":true}' if value else '{"flag":false}'
    if isinstance(value, (int, float)) or hasattr(value, "__float__") and not isinstance(value, str):
        number = float(value)
        return _NULL if number != number else '{"number":' + _double(number) + "}"
    return '{"text":' + encode_basestring(str(value)) + "}"


# typed: True, 1 and 1.0 are equal as keys but are different values here.
_value_text_memo = lru_cache(maxsize=1 << 16, typed=True)(_value_text)


def value_json(value: Any) -> str:
    """A claim value as the canonical JSON of its ``Value`` message (None and NaN are null)."""
    if value == 0 and type(value) is float:  # 0.0 and -0.0 are equal keys but different values
        return _value_text(value)
    return _value_text_memo(value)


@lru_cache(maxsize=4096)
def _key(name: str) -> str:
    return encode_basestring(name) + ":"


def _stored_value(policy: RedactionPolicy, name: str, value_text: str) -> str | None:
    """The value as the policy stores it: as given, keyed hash, or None when dropped."""
    action = policy.action(name)
    if action == "raw":
        return value_text
    if action == "hmac":
        return '{"text":' + encode_basestring(policy.keyed_hash_text(value_text.encode("utf-8"))) + "}"
    return None


def input_json(claim: Mapping[str, Any]) -> str:
    """The canonical input (before redaction) whose sha256 is a record's ``input_sha256``."""
    return "{" + ",".join([_key(name) + value_json(claim[name]) for name in sorted(claim)]) + "}"


@lru_cache(maxsize=256)
def _model_json(name: str, version: str, sha256: str, framework: str) -> str:
    from risklens.v1 import risklens_pb2

    return canonical_message(risklens_pb2.ModelRef(name=name, version=version, sha256=sha256,
                                                   framework=framework)).decode("utf-8")


@lru_cache(maxsize=1)
def _library_versions_json() -> str:
    from risklens.core import library_versions

    versions = library_versions()
    return "{" + ",".join([_key(name) + encode_basestring(versions[name]) for name in sorted(versions)]) + "}"


def _settings_json(e: Explanation) -> str:
    parts = []
    if e.device:
        parts.append('"device":' + encode_basestring(e.device))
    parts.append('"library_versions":' + _library_versions_json())
    if e.lime_samples:
        parts.append('"lime_samples":' + str(e.lime_samples))
    if e.methods:
        parts.append('"methods":[' + ",".join(map(encode_basestring, e.methods)) + "]")
    if e.seed:
        parts.append('"seed":"' + str(e.seed) + '"')  # uint64 is a JSON string
    if e.shap_engine:
        parts.append('"shap_engine":' + encode_basestring(e.shap_engine))
    if e.top_k:
        parts.append('"top_k":' + str(e.top_k))
    return "{" + ",".join(parts) + "}"


def _reason_code_json(code: Any) -> str:
    parts = []
    if code.code:
        parts.append('"code":' + encode_basestring(code.code))
    if code.direction:
        parts.append('"direction":' + encode_basestring(code.direction))
    if code.features:
        parts.append('"features":[' + ",".join(map(encode_basestring, code.features)) + "]")
    if code.text:
        parts.append('"text":' + encode_basestring(code.text))
    if _is_set(code.weight):
        parts.append('"weight":' + _double(code.weight))
    return "{" + ",".join(parts) + "}"


def _contributions_json(e: Explanation, policy: RedactionPolicy, raw: bool) -> str:
    items = []
    for feature, value, shap in e.contributions:
        text = '{"feature":' + encode_basestring(feature)
        if _is_set(shap):
            text += ',"shap":' + _double(shap)
        stored = value_json(value) if raw else _stored_value(policy, feature, value_json(value))
        items.append(text + (',"value":' + stored + "}" if stored is not None else "}"))
    return "[" + ",".join(items) + "]"


def _method_json(e: Explanation, method: str, policy: RedactionPolicy, raw: bool) -> str:
    message = e.method_results[method].to_proto()
    if not raw and method == "ice":
        policy.redact_holders(message.features)
    return canonical_message(message).decode("utf-8")


def explanation_json(e: Explanation, policy: RedactionPolicy) -> str:
    """Canonical JSON of ``risklens.wire.explanation_to_proto(e)`` after the policy's redaction."""
    raw = policy.is_raw
    fields: dict[str, str] = {
        "contributions": _contributions_json(e, policy, raw) if e.contributions else "",
        "model": _model_json(e.model.manifest.name, e.model.manifest.version, e.model.manifest.sha256,
                             e.model.manifest.framework),
        "output_space": _OUTPUT_SPACE_NAMES[e.output_space],
        "reason_codes": "[" + ",".join(map(_reason_code_json, e.reason_codes)) + "]" if e.reason_codes else "",
        "settings": _settings_json(e),
    }
    for name in ("claim_id", "decision", "rationale", "receipt_id"):
        text = getattr(e, name)
        fields[name] = encode_basestring(text) if text else ""
    for name in ("base_value", "raw_score", "score", "threshold"):
        number = getattr(e, name)
        fields[name] = _double(number) if _is_set(number) else ""
    for method in e.method_results:
        fields[method] = _method_json(e, method, policy, raw)
    return "{" + ",".join([_key(name) + fields[name] for name in sorted(fields) if fields[name]]) + "}"


def write_body(e: Explanation, claim: Mapping[str, Any], policy: RedactionPolicy) -> tuple[str, str]:
    """(canonical body JSON, canonical input JSON) of the audit record of ``claim``'s explanation."""
    source = input_json(claim)
    parts = []
    if policy.is_raw:
        stored_input = source
    else:
        dropped = sorted(name for name in claim if policy.action(name) == "drop")
        if dropped:
            parts.append('"dropped_fields":[' + ",".join(map(encode_basestring, dropped)) + "]")
        kept = [(name, _stored_value(policy, name, value_json(claim[name]))) for name in sorted(claim)]
        stored_input = "{" + ",".join([_key(name) + text for name, text in kept if text is not None]) + "}"
    parts.append('"explanation":' + explanation_json(e, policy))
    if stored_input != "{}":
        parts.append('"input":' + stored_input)
    return "{" + ",".join(parts) + "}", source

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

from ._canonical import _json_double, canonical_message, text_members
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


@lru_cache(maxsize=256)
def model_json(name: str, version: str, sha256: str, framework: str) -> str:
    from risklens.v1 import risklens_pb2

    return canonical_message(risklens_pb2.ModelRef(name=name, version=version, sha256=sha256,
                                                   framework=framework)).decode("utf-8")


@lru_cache(maxsize=1)
def _library_versions_json() -> str:
    from risklens.core import library_versions

    versions = library_versions()
    return "{" + ",".join([_key(name) + encode_basestring(versions[name]) for name in sorted(versions)]) + "}"


@lru_cache(maxsize=1024)
def _settings_parts(device: str, lime_samples: int, methods: tuple[str, ...], shap_engine: str,
                    top_k: int) -> tuple[str, str]:
    """ExplainSettings' canonical JSON around its one per-claim field, the seed: (before, after)."""
    before = []
    if device:
        before.append('"device":' + encode_basestring(device))
    before.append('"library_versions":' + _library_versions_json())
    if lime_samples:
        before.append('"lime_samples":' + str(lime_samples))
    if methods:
        before.append('"methods":[' + ",".join(map(encode_basestring, methods)) + "]")
    after = []
    if shap_engine:
        after.append('"shap_engine":' + encode_basestring(shap_engine))
    if top_k:
        after.append('"top_k":' + str(top_k))
    return "{" + ",".join(before), ",".join(after) + "}"


def _settings_json(e: Explanation) -> str:
    before, after = _settings_parts(e.device, e.lime_samples, e.methods, e.shap_engine, e.top_k)
    seed = ',"seed":"' + str(e.seed) + '"' if e.seed else ""  # uint64 is a JSON string
    return before + seed + ("," + after if after != "}" else after)


class _Prefixes(dict):  # type: ignore[type-arg]
    """name -> JSON text that starts an object for it, made on first use (a plain dict lookup after)."""

    def __init__(self, make: Any) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, key: Any) -> str:
        self[key] = text = self._make(key)
        return text


def _reason_code_start(key: tuple[str, str, tuple[str, ...]]) -> str:
    code, direction, features = key
    parts = text_members(("code", code), ("direction", direction))
    if features:
        parts.append('"features":[' + ",".join(map(encode_basestring, features)) + "]")
    return "{" + ",".join(parts)


def _reason_code_json(code: Any) -> str:
    prefix = _REASON_CODE_START[code.code, code.direction, code.features]
    if code.text and prefix != "{" and code.weight and code.weight - code.weight == 0.0:  # the usual code
        return prefix + ',"text":' + encode_basestring(code.text) + ',"weight":' + float.__repr__(code.weight) + "}"
    separator = "," if prefix != "{" else ""
    text = ""
    if code.text:
        text, separator = separator + '"text":' + encode_basestring(code.text), ","
    weight = separator + '"weight":' + _double(code.weight) if _is_set(code.weight) else ""
    return prefix + text + weight + "}"


_REASON_CODE_START = _Prefixes(_reason_code_start)
_CONTRIBUTION_SHAP = _Prefixes(lambda feature: '{"feature":' + encode_basestring(feature) + ',"shap":')


def _contributions_json(contributions: list[tuple[str, Any, float]], stored: Mapping[str, str | None]) -> str:
    """``stored``: each feature's value as the record keeps it (None: dropped)."""
    shaps = [shap for _, _, shap in contributions]
    if 0.0 not in shaps and all(map(math.isfinite, shaps)) and None not in stored.values() \
            and all(feature in stored for feature, _, _ in contributions):
        # The usual claim: every contribution non-zero and finite, every value kept.
        prefix, repr_ = _CONTRIBUTION_SHAP, float.__repr__
        return "[" + ",".join([prefix[feature] + repr_(shap) + ',"value":' + stored[feature] + "}"  # type: ignore[operator]
                               for feature, _, shap in contributions]) + "]"
    items = []
    for feature, value, shap in contributions:
        text = stored[feature] if feature in stored else value_json(value)
        items.append('{"feature":' + encode_basestring(feature)
                     + (',"shap":' + _double(shap) if _is_set(shap) else "")
                     + (',"value":' + text + "}" if text is not None else "}"))
    return "[" + ",".join(items) + "]"


def _method_json(e: Explanation, method: str, policy: RedactionPolicy) -> str:
    message = e.method_results[method].to_proto()
    if method == "ice" and not policy.is_raw:
        policy.redact_holders(message.features)
    return canonical_message(message).decode("utf-8")


# ExplainResponse's fields in name order (the canonical order; tests/audit/test_body.py checks it).
_EXPLANATION_FIELDS = ("agreement", "base_value", "claim_id", "contributions", "decision", "ebm", "ice", "lime",
                       "model", "output_space", "permutation", "rationale", "raw_score", "reason_codes",
                       "receipt_id", "score", "settings", "threshold")


def _text(name: str, text: str) -> str:
    return "," + _key(name) + encode_basestring(text) if text else ""


def _number(name: str, number: float) -> str:
    return "," + _key(name) + _double(number) if number or _is_set(number) else ""


def explanation_json(e: Explanation, policy: RedactionPolicy, stored: Mapping[str, str | None]) -> str:
    """Canonical JSON of ``risklens.wire.explanation_to_proto(e)`` after the policy's redaction.

    ``stored``: each claim value's JSON as the policy stores it (None: dropped). Written field
    by field in ``_EXPLANATION_FIELDS`` order (every optional method's result is a message field
    written only when present).
    """
    extras = e.method_results

    def method(name: str) -> str:
        return "," + _key(name) + _method_json(e, name, policy) if name in extras else ""

    manifest = e.model.manifest
    text = (method("agreement") + _number("base_value", e.base_value) + _text("claim_id", e.claim_id)
            + (',"contributions":' + _contributions_json(e.contributions, stored) if e.contributions else "")
            + _text("decision", e.decision) + method("ebm") + method("ice") + method("lime")
            + ',"model":' + model_json(manifest.name, manifest.version, manifest.sha256, manifest.framework)
            + ',"output_space":' + _OUTPUT_SPACE_NAMES[e.output_space] + method("permutation")
            + _text("rationale", e.rationale) + _number("raw_score", e.raw_score)
            + (',"reason_codes":[' + ",".join(map(_reason_code_json, e.reason_codes)) + "]" if e.reason_codes else "")
            + _text("receipt_id", e.receipt_id) + _number("score", e.score)
            + ',"settings":' + _settings_json(e) + _number("threshold", e.threshold))
    return "{" + text[1:] + "}"  # every part starts with a comma; "model" is always present


def _layout(names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """A claim's field names in canonical (sorted) order and their JSON keys."""
    ordered = sorted(names)
    return ordered, [_key(name) for name in ordered]


_LAYOUTS = _Prefixes(_layout)  # by the claim's own field order: one entry per model schema


def write_body(e: Explanation, claim: Mapping[str, Any], policy: RedactionPolicy) -> tuple[str, str]:
    """(canonical body JSON, canonical input JSON) of the audit record of ``claim``'s explanation."""
    names, keys = _LAYOUTS[tuple(claim)]
    # value_json inlined: the memo, except for float zeros (0.0 and -0.0 are equal keys).
    texts = [_value_text(value) if value == 0 and type(value) is float else _value_text_memo(value)
             for value in map(claim.__getitem__, names)]
    source = "{" + ",".join(map(str.__add__, keys, texts)) + "}"
    parts = []
    if policy.is_raw:
        stored: Mapping[str, str | None] = dict(zip(names, texts))
        stored_input = source
    else:
        stored = {name: _stored_value(policy, name, text) for name, text in zip(names, texts)}
        dropped = [name for name in names if stored[name] is None]
        if dropped:
            parts.append('"dropped_fields":[' + ",".join(map(encode_basestring, dropped)) + "]")
        stored_input = "{" + ",".join([_key(name) + stored[name] for name in names  # type: ignore[operator]
                                       if stored[name] is not None]) + "}"
    parts.append('"explanation":' + explanation_json(e, policy, stored))
    if stored_input != "{}":
        parts.append('"input":' + stored_input)
    return "{" + ",".join(parts) + "}", source

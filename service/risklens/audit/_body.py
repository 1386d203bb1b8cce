"""Audit record bodies written straight from the core's results, in the canonical form.

A record body is the canonical JSON of ``Receipt(input=..., dropped_fields=..., explanation=...)``
(see ``_canonical``). Building that Receipt as protobuf messages, only to walk them again to
write JSON, cost most of an audit record's time: about 60 small messages per claim (the input
map and the contributions). ``write_body`` builds plain dicts from the core's ``Explanation`` and
dumps them with orjson (``OPT_SORT_KEYS``): the same bytes as ``json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False)`` for these documents, written in native code.

Where orjson's text could differ from ``json.dumps``, the writer hands it finished text instead
(``orjson.Fragment``): claim values (``Value`` messages, memoised), the ModelRef, the settings and
the optional methods' results (their canonical message JSON), and doubles outside
``1e-4 <= |x| < 1e16``, where orjson lays out the same shortest digits without an exponent (or with
an unpadded one) while ``repr`` writes ``1e-05``. Inside that range, and for 0.0 and -0.0,
orjson's shortest round-trip digits are ``repr``'s (checked on half a million doubles while
writing this). tests/audit/test_body.py checks the output byte for byte against ``json_format``
on real explanations, every redaction action and edge values (zero and negative-zero doubles, tiny
and huge doubles, empty claim ids, non-ASCII text, all methods).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from operator import itemgetter
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from ._canonical import _json_double, canonical_message
from ._policy import RedactionPolicy

if TYPE_CHECKING:
    from risklens.core import Explanation

Fragment = orjson.Fragment
_SORTED = orjson.OPT_SORT_KEYS
_FEATURE = itemgetter(0)  # of a (feature, value, contribution) triple
_NULL = '{"null":"NULL_VALUE"}'  # risklens.v1.NullValue is an ordinary enum
_OUTPUT_SPACE_NAMES = {"log_odds": "LOG_ODDS", "probability": "PROBABILITY", "raw": "RAW"}


def _double(value: float) -> str:
    return float.__repr__(value) if value - value == 0.0 else _json_double(value)


def _number(value: float) -> float | Fragment:
    """A double for orjson: as is where orjson writes ``repr``'s text, else that text as a fragment."""
    if value == 0.0 or (1e-4 <= abs(value) < 1e16):  # NaN fails both tests; inf fails the second
        return value
    return Fragment(_double(value).encode("ascii"))


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


def _value_fragment(value: Any) -> Fragment:
    return Fragment(_value_text(value).encode("utf-8"))


# typed: True, 1 and 1.0 are equal as keys but are different values here.
_value_fragment_memo = lru_cache(maxsize=1 << 16, typed=True)(_value_fragment)


def value_fragment(value: Any) -> Fragment:
    """A claim value as the canonical JSON of its ``Value`` message (None and NaN are null)."""
    if value == 0 and type(value) is float:  # 0.0 and -0.0 are equal keys but different values
        return _value_fragment(value)
    return _value_fragment_memo(value)


@lru_cache(maxsize=256)
def model_json(name: str, version: str, sha256: str, framework: str) -> str:
    from risklens.v1 import risklens_pb2

    return canonical_message(risklens_pb2.ModelRef(name=name, version=version, sha256=sha256,
                                                   framework=framework)).decode("utf-8")


@lru_cache(maxsize=256)
def _model_fragment(name: str, version: str, sha256: str, framework: str) -> Fragment:
    return Fragment(model_json(name, version, sha256, framework).encode("utf-8"))


@lru_cache(maxsize=1)
def _library_versions_json() -> str:
    from risklens.core import library_versions

    versions = library_versions()
    return "{" + ",".join([encode_basestring(name) + ":" + encode_basestring(versions[name])
                           for name in sorted(versions)]) + "}"


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


def _settings_text(e: Explanation) -> str:
    before, after = _settings_parts(e.device, e.lime_samples, e.methods, e.shap_engine, e.top_k)
    seed = ',"seed":"' + str(e.seed) + '"' if e.seed else ""  # uint64 is a JSON string
    return before + seed + ("," + after if after != "}" else after)


def _settings_fragment(e: Explanation) -> Fragment:
    return Fragment(_settings_text(e).encode("utf-8"))


def _reason_code(code: Any) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if code.code:
        item["code"] = code.code
    if code.direction:
        item["direction"] = code.direction
    if code.features:
        item["features"] = list(code.features)
    if code.text:
        item["text"] = code.text
    if _is_set(code.weight):
        item["weight"] = _number(code.weight)
    return item


def _contributions(contributions: list[tuple[str, Any, float]], stored: Mapping[str, Fragment | None],
                   complete: bool) -> list[dict[str, Any]]:
    """``stored``: each claim value as the record keeps it (None: dropped); ``complete``: every
    contribution's feature is in ``stored`` and kept."""
    if complete:
        magnitudes = [abs(shap) for _, _, shap in contributions]
        # (min and max skip NaN, the sum does not)
        if math.isfinite(sum(magnitudes)) and 1e-4 <= min(magnitudes) and max(magnitudes) < 1e16:
            # The usual claim: every contribution in the range orjson writes as repr, every value kept.
            return [{"feature": feature, "shap": shap, "value": stored[feature]}
                    for feature, _, shap in contributions]
    items = []
    for feature, value, shap in contributions:
        item: dict[str, Any] = {"feature": feature}
        if _is_set(shap):
            item["shap"] = _number(shap)
        kept = stored[feature] if feature in stored else value_fragment(value)
        if kept is not None:
            item["value"] = kept
        items.append(item)
    return items


def _method_fragment(e: Explanation, method: str, policy: RedactionPolicy) -> Fragment:
    message = e.method_results[method].to_proto()
    if method == "ice" and not policy.is_raw:
        policy.redact_holders(message.features)
    elif method == "lime" and not policy.is_raw:
        policy.redact_conditions(message.weights)
    return Fragment(canonical_message(message))


# ExplainResponse's fields (tests/audit/test_body.py checks this against the message).
_EXPLANATION_FIELDS = ("agreement", "base_value", "claim_id", "contributions", "decision", "ebm", "ice", "lime",
                       "model", "output_space", "permutation", "rationale", "raw_score", "reason_codes",
                       "receipt_id", "score", "settings", "threshold")


def explanation_document(e: Explanation, policy: RedactionPolicy, stored: Mapping[str, Fragment | None],
                         complete: bool = False) -> dict[str, Any]:
    """``json_format``'s dict of ``risklens.wire.explanation_to_proto(e)`` after the policy's redaction,
    with fragments where orjson's text could differ (dump it with ``OPT_SORT_KEYS``). Reason codes
    and rationale are ``e.withheld_texts`` where the core set them.

    ``stored``: each claim value's JSON as the policy stores it (None: dropped); ``complete``:
    every feature is in ``stored`` and kept. Fields at their default are left out, as json_format does.
    """
    manifest = e.model.manifest
    doc: dict[str, Any] = {
        "model": _model_fragment(manifest.name, manifest.version, manifest.sha256, manifest.framework),
        "output_space": _OUTPUT_SPACE_NAMES[e.output_space],
        "settings": _settings_fragment(e),
    }
    for name, number in (("base_value", e.base_value), ("raw_score", e.raw_score), ("score", e.score),
                         ("threshold", e.threshold)):
        if number or _is_set(number):
            doc[name] = _number(number)
    reason_codes, rationale = e.withheld_texts or (e.reason_codes, e.rationale)
    for name, text in (("claim_id", e.claim_id), ("decision", e.decision), ("rationale", rationale),
                       ("receipt_id", e.receipt_id)):
        if text:
            doc[name] = text
    if e.contributions:
        doc["contributions"] = _contributions(e.contributions, stored, complete)
    if reason_codes:
        doc["reason_codes"] = [_reason_code(code) for code in reason_codes]
    for method in e.method_results:
        doc[method] = _method_fragment(e, method, policy)
    return doc


def _stored_value(policy: RedactionPolicy, name: str, value: Any) -> Fragment | None:
    """The value as the policy stores it: as given, keyed hash, or None when dropped."""
    action = policy.action(name)
    if action == "raw":
        return value_fragment(value)
    if action == "hmac":
        text = _value_text(value).encode("utf-8")
        return Fragment(('{"text":' + encode_basestring(policy.keyed_hash_text(text)) + "}").encode("utf-8"))
    return None


def _redacted(policy: RedactionPolicy, claim: Mapping[str, Any], values: dict[str, Fragment]
              ) -> dict[str, Fragment | None]:
    """Each claim value as the policy stores it (None: dropped), given ``values``, their raw fragments.
    Under a policy that keeps fields raw by default, only the fields it names are looked at."""
    if policy.default != "raw":
        return {name: _stored_value(policy, name, value) for name, value in claim.items()}
    stored: dict[str, Fragment | None] = dict(values)
    for name, action in policy.fields.items():
        if action != "raw" and name in stored:
            stored[name] = _stored_value(policy, name, claim[name])
    return stored


def write_body(e: Explanation, claim: Mapping[str, Any], policy: RedactionPolicy) -> tuple[bytes, bytes]:
    """(canonical body JSON, canonical input JSON), UTF-8, of the audit record of ``claim``'s explanation."""
    values = {name: value_fragment(value) for name, value in claim.items()}
    source = orjson.dumps(values, option=_SORTED)
    body: dict[str, Any] = {}
    if policy.is_raw:
        stored: Mapping[str, Fragment | None] = values
        if values:
            body["input"] = Fragment(source)  # the input as given, already written
    else:
        stored = _redacted(policy, claim, values)
        dropped = sorted(name for name, fragment in stored.items() if fragment is None)
        if dropped:
            body["dropped_fields"] = dropped
        kept = {name: fragment for name, fragment in stored.items() if fragment is not None}
        if kept:
            body["input"] = kept
    # every contribution's value kept (fragments are never falsy): 2 us a claim instead of 4 as a generator
    complete = all(map(stored.get, map(_FEATURE, e.contributions)))
    body["explanation"] = explanation_document(e, policy, stored, complete)
    return orjson.dumps(body, option=_SORTED), source


# ------------------------------------------------------------------ many bodies at once

def _double_texts(values: np.ndarray) -> list[bytes]:
    """Each double's text as ``_number`` has orjson write it, for a whole array in one orjson call."""
    flat = np.ascontiguousarray(values, dtype=np.float64).ravel()
    if not flat.size:
        return []
    texts = orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    magnitude = np.abs(flat)
    # Outside orjson's repr range (and NaN, which it writes as null): repr's text, as _number gives it.
    for i in np.flatnonzero(~((flat == 0.0) | ((magnitude >= 1e-4) & (magnitude < 1e16)))).tolist():
        texts[i] = _double(float(flat[i])).encode("ascii")
    return texts


def _is_set_array(values: np.ndarray) -> np.ndarray:
    return (values != 0.0) | np.signbit(values)


def _distinct_value_texts(column: Sequence[Any]) -> tuple[list[bytes], np.ndarray]:
    """(each distinct value's ``Value`` JSON, each row's position in that list): one text per value."""
    kinds = set(map(type, column))
    # Distinct as dict keys only within one type (True, 1 and 1.0 are equal keys) and without -0.0
    # (equal to 0.0); NaN is its own key, and its text (null) is None's anyway.
    if len(kinds) == 1 and (kinds != {float} or not _has_negative_zero(column)):
        positions = {value: i for i, value in enumerate(dict.fromkeys(column))}
        texts = [_value_text(value).encode("utf-8") for value in positions]
        return texts, np.fromiter(map(positions.__getitem__, column), dtype=np.intp, count=len(column))
    return [_value_text(value).encode("utf-8") for value in column], np.arange(len(column))


def _has_negative_zero(column: Sequence[float]) -> bool:
    values = np.fromiter(column, dtype=np.float64, count=len(column))
    return bool(np.any((values == 0.0) & np.signbit(values)))


# Below this many claims the arrays' set-up costs more than writing each body on its own.
_COLUMNAR_FROM = 16


def write_bodies(explanations: Sequence[Explanation], claims: Sequence[Mapping[str, Any]], policy: RedactionPolicy
                 ) -> list[tuple[bytes, bytes]]:
    """``write_body`` for many explanations of one model (a batch run's chunk): the same bytes.

    Per claim, ``write_body`` builds ~40 small dicts and the values' fragments for orjson (~55 us a
    fraud_oracle claim). Here the texts are made column by column (each distinct claim value's JSON
    once, every double of the chunk in one orjson call, the pieces placed with numpy's object
    arrays) and each body is one ``join``. Claims this does not cover take ``write_body``: under a
    policy that is not all raw, with the optional methods' results, with fields left at their
    default (zero doubles other than contributions, empty texts, zero reason-code weights), or
    whose claim or contributions are not exactly the model's features.
    """
    if len(explanations) < _COLUMNAR_FROM or not policy.is_raw:
        return [write_body(e, claim, policy) for e, claim in zip(explanations, claims)]
    names = explanations[0].model.manifest.feature_names
    covered, scalars = _columnar_rows(explanations, claims, names)
    if not covered:
        return [write_body(e, claim, policy) for e, claim in zip(explanations, claims)]
    # np.array of a list of equal rows: ~0.3 us a row; np.vstack ~0.9 (a Python call per row).
    order = np.array([explanations[i].contribution_order for i in covered])
    shap = np.take_along_axis(np.array([explanations[i].shap_values for i in covered]), order, axis=1)
    # Every feature once (a permutation): the contributions are exactly the model's features.
    exact = (np.sort(order, axis=1) == np.arange(len(names))).all(axis=1)
    bodies: list[tuple[bytes, bytes] | None] = [None] * len(explanations)
    if exact.any():
        rows = [covered[k] for k in np.flatnonzero(exact).tolist()]
        written = _write_columnar([explanations[i] for i in rows], [claims[i] for i in rows], order[exact], shap[exact],
                                  scalars[rows])
        for i, body in zip(rows, written):
            bodies[i] = body
    return [body if body is not None else write_body(e, claim, policy)
            for body, e, claim in zip(bodies, explanations, claims)]


def _columnar_rows(explanations: Sequence[Explanation], claims: Sequence[Mapping[str, Any]], names: list[str]
                   ) -> tuple[list[int], np.ndarray]:
    """The rows whose every field ``_write_columnar`` writes as ``write_body`` would (see ``write_bodies``),
    and every row's (base value, raw score, score, threshold)."""
    model = explanations[0].model
    features = dict.fromkeys(names).keys()
    scalars = np.array([(e.base_value, e.raw_score, e.score, e.threshold) for e in explanations], dtype=np.float64)
    weights = np.array([code[3] for e in explanations for code in e.reason_codes], dtype=np.float64)
    unset = np.flatnonzero(~_is_set_array(weights))
    excluded: set[int] = set(np.flatnonzero(~_is_set_array(scalars).all(axis=1)).tolist())
    if unset.size:  # a reason code whose weight is zero (rare): its row is left to write_body
        counts = np.fromiter(map(len, (e.reason_codes for e in explanations)), dtype=np.intp, count=len(explanations))
        excluded.update(np.repeat(np.arange(len(explanations)), counts)[unset].tolist())
    rows = [i for i, (e, claim) in enumerate(zip(explanations, claims))
            if e.model is model and not e.method_results and e.claim_id and e.decision and e.rationale
            and e.receipt_id and len(e.contribution_order) == len(e.shap_values) == len(names)
            and claim.keys() == features and i not in excluded]
    return rows, scalars


def _json_strings(texts: Sequence[str]) -> list[bytes]:
    """Each text as orjson writes it, a JSON string, in a bytes object of its own size.

    orjson returns even a short text in a 4 KiB allocation. Kept for a chunk's five per-claim text
    columns, those held 41 MB for 2,000 claims: the bodies' peak memory was 64 MB, 24 with the
    copies, and a process's first chunk took 16,500 page faults instead of 6,800. (Throughput did
    not change measurably: later chunks reuse the memory.)
    """
    distinct = {text: memoryview(orjson.dumps(text)).tobytes() for text in dict.fromkeys(texts)}
    return list(map(distinct.__getitem__, texts))


class _Pieces:
    """Every text of a batch of bodies, each once; a body is a row of positions in ``texts``."""

    def __init__(self) -> None:
        self.texts: list[bytes] = [b""]  # position 0: nothing (a field left out of this body)

    def add(self, texts: Sequence[bytes]) -> int:
        """Append ``texts``; returns the position of the first."""
        start = len(self.texts)
        self.texts.extend(texts)
        return start

    def column(self, texts: Sequence[bytes]) -> np.ndarray:
        """Append one text per row; returns each row's position (a column of the index)."""
        start = self.add(texts)
        return np.arange(start, start + len(texts), dtype=np.int32)

    def same(self, text: bytes, count: int) -> np.ndarray:
        """One text shared by every row: a column of its position."""
        return np.full(count, self.add([text]), dtype=np.int32)


def join_rows_python(pieces: list[bytes], index: np.ndarray) -> list[bytes]:
    """Row r is ``b"".join(pieces[i] for i in index[r])``: what the native ``join_rows`` does."""
    return [b"".join(map(pieces.__getitem__, row)) for row in index.tolist()]


try:  # compiled at install (setup.py); without a C compiler the same joins are done in Python
    from risklens.audit._join import join_rows
except ImportError:  # pragma: no cover - exercised where the extension is absent
    join_rows = join_rows_python


_CODE_KEY = itemgetter(0, 1, 2)  # a ReasonCode's code, text and direction (which fix its features): all but the weight


def _reason_code_opening(code: Any) -> bytes:
    """A reason code's canonical JSON up to its weight's value."""
    item = _reason_code(code._replace(weight=0.0))
    return orjson.dumps(item, option=_SORTED)[:-1] + (b',"weight":' if item else b'"weight":')


def _reason_code_columns(pieces: _Pieces, codes_by_row: list[list[Any]]) -> list[np.ndarray]:
    """Each row's reason codes, the canonical JSON list's members (see ``_reason_code``): for each code
    slot a separator, the code up to its weight, the weight and ``}`` (position 0 where a row has fewer)."""
    counts = np.fromiter(map(len, codes_by_row), dtype=np.intp, count=len(codes_by_row))
    slots = int(counts.max()) if len(counts) else 0
    if not slots:
        return []
    codes = [code for row in codes_by_row for code in row]
    keys = list(map(_CODE_KEY, codes))
    distinct = dict(zip(keys, codes))  # each distinct key with one of its codes (only weights differ)
    positions = {key: pieces.add([_reason_code_opening(code)]) for key, code in distinct.items()}
    prefix_of = np.fromiter(map(positions.__getitem__, keys), dtype=np.int32, count=len(keys))
    weights = np.arange(len(codes), dtype=np.int32) + pieces.add(
        _double_texts(np.array([code[3] for code in codes], dtype=np.float64)))
    comma, close = pieces.add([b","]), pieces.add([b"}"])
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    columns = []
    for slot in range(slots):
        present = counts > slot
        flat = np.where(present, first + slot, 0)
        columns += [np.where(present, comma, 0) if slot else np.zeros(len(counts), np.int32),
                    np.where(present, prefix_of[flat], 0), np.where(present, weights[flat], 0),
                    np.where(present, close, 0)]
    return columns


def _write_columnar(explanations: list[Explanation], claims: list[Mapping[str, Any]], order: np.ndarray,
                    shap: np.ndarray, scalars: np.ndarray) -> list[tuple[bytes, bytes]]:
    """The bodies; ``order`` and ``shap``: each row's contributions (feature positions, SHAP values);
    ``scalars``: each row's (base value, raw score, score, threshold).

    Every distinct text goes into one list once (a claim value's JSON once per column, the doubles
    from one orjson call, the fixed parts of the layout) and each body is a row of positions in it,
    built with array arithmetic; ``join_rows`` then writes every body in one native pass.
    """
    manifest = explanations[0].model.manifest
    names = manifest.feature_names
    width, count = len(names), len(explanations)
    columns = list(zip(*map(itemgetter(*names), claims))) if width > 1 else [tuple(c[names[0]] for c in claims)]
    distinct = dict(zip(names, map(_distinct_value_texts, columns)))
    pieces = _Pieces()

    # The input, {"name":value,...} in name order; its text is hashed on its own too.
    members = np.empty((count, width), dtype=np.int32)
    for j, name in enumerate(sorted(names)):
        texts, rows = distinct[name]
        opening = (b"{" if j == 0 else b",") + orjson.dumps(name) + b":"
        closing = b"}" if j == width - 1 else b""
        members[:, j] = pieces.add([opening + text + closing for text in texts]) + rows

    # The contributions, in their order: {"feature":name,"shap":x,"value":v}, "shap" left out when zero;
    # openings by (first or not, zero or not, feature).
    zero = ~_is_set_array(shap)
    named = [orjson.dumps(name) for name in names]
    openings = pieces.add([b'{"feature":' + n + b',"shap":' for n in named] + [b'{"feature":' + n for n in named]
                          + [b',{"feature":' + n + b',"shap":' for n in named] + [b',{"feature":' + n for n in named])
    contributions = np.empty((count, width, 3), dtype=np.int32)
    contributions[:, :, 0] = openings + order + width * zero
    contributions[:, 1:, 0] += 2 * width
    contributions[:, :, 1] = np.where(zero, 0, pieces.add(_double_texts(shap))
                                      + np.arange(count * width, dtype=np.int32).reshape(count, width))
    values = np.empty((count, width), dtype=np.int32)
    for j, name in enumerate(names):
        texts, rows = distinct[name]
        values[:, j] = pieces.add([b',"value":' + text + b"}" for text in texts]) + rows
    contributions[:, :, 2] = np.take_along_axis(values, order, axis=1)

    # The explanation's members in name order, then the input.
    scalar = pieces.add(_double_texts(scalars)) + 4 * np.arange(count, dtype=np.int32)
    model = model_json(manifest.name, manifest.version, manifest.sha256, manifest.framework).encode("utf-8")
    codes = _reason_code_columns(pieces, [e.reason_codes for e in explanations])
    listed = np.flatnonzero([bool(e.reason_codes) for e in explanations])
    codes_open, codes_close = np.zeros(count, np.int32), np.zeros(count, np.int32)
    codes_open[listed], codes_close[listed] = pieces.add([b',"reason_codes":[']), pieces.add([b"]"])
    layout = [
        pieces.same(b'{"explanation":{"base_value":', count), scalar,
        pieces.same(b',"claim_id":', count), pieces.column(_json_strings([e.claim_id for e in explanations])),
        pieces.same(b',"contributions":[', count), contributions.reshape(count, 3 * width),
        pieces.same(b'],"decision":', count), pieces.column(_json_strings([e.decision for e in explanations])),
        pieces.same(b',"model":' + model + b',"output_space":', count),
        pieces.column(_json_strings([_OUTPUT_SPACE_NAMES[e.output_space] for e in explanations])),
        pieces.same(b',"rationale":', count), pieces.column(_json_strings([e.rationale for e in explanations])),
        pieces.same(b',"raw_score":', count), scalar + 1, codes_open, *codes, codes_close,
        pieces.same(b',"receipt_id":', count), pieces.column(_json_strings([e.receipt_id for e in explanations])),
        pieces.same(b',"score":', count), scalar + 2,
        pieces.same(b',"settings":', count),
        pieces.column([_settings_text(e).encode("utf-8") for e in explanations]),
        pieces.same(b',"threshold":', count), scalar + 3, pieces.same(b'},"input":', count), members,
        pieces.same(b"}", count),
    ]
    index = np.column_stack(layout).astype(np.int32, copy=False)
    return list(zip(join_rows(pieces.texts, index), join_rows(pieces.texts, members)))

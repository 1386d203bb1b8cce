"""The audit body writer: byte for byte the canonical JSON that json_format gives for the same record."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format
from hypothesis import example, given
from hypothesis import strategies as st

from risklens.audit import RedactionPolicy
from risklens.audit._body import _EXPLANATION_FIELDS, write_body
from risklens.audit._canonical import to_value_map
from risklens.core import ClaimInput, ExplainOptions, ExplainService, Explanation
from risklens.v1 import risklens_pb2
from risklens.wire import explanation_to_proto


REPO_ROOT = Path(__file__).resolve().parents[2]
HMAC_KEY = b"test-body-key"


def documented(message: Any) -> str:
    """The documented canonical form: json_format's dict, dumped sorted and compact."""
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def reference_body(explanation: Explanation, claim: dict[str, Any], policy: RedactionPolicy) -> str:
    values = to_value_map(claim)
    stored, dropped = policy.redact_input(values)
    body = risklens_pb2.Receipt(input=stored, dropped_fields=dropped)
    body.explanation.CopyFrom(policy.redact_explanation(explanation_to_proto(explanation)))
    return documented(body)


@pytest.fixture(scope="module")
def explanations() -> list[Explanation]:
    """Real explanations: SHAP only, and every method (LIME, ICE, EBM surrogate, permutation, agreement)."""
    from risklens.datasets import generate_claims
    from risklens.registry import ModelRegistry

    service = ExplainService(ModelRegistry.from_directory(REPO_ROOT / "models"))
    frame, _ = generate_claims(12, 5)
    claims = [ClaimInput(frame.iloc[i].to_dict(), f"claim-{i}") for i in range(len(frame))]
    plain = service.explain_batch("demo-xgb", claims[:8])
    every = service.explain_batch("demo-xgb", claims[8:], options=ExplainOptions(methods=("all",),
                                                                                  lime_samples=300))
    outcomes = [*plain, *every]
    assert all(isinstance(o, Explanation) for o in outcomes)
    assert {"lime", "ice", "ebm", "agreement"} <= set(outcomes[-1].method_results)
    return outcomes  # type: ignore[return-value]


def edge_cases(explanation: Explanation) -> list[Explanation]:
    """Values the writer must treat exactly as json_format does: zeros, -0.0, empty text, non-ASCII."""
    claim = dict(explanation.claim)
    text_feature = next((name for name, value in claim.items() if isinstance(value, str)), None)
    if text_feature is not None:
        claim[text_feature] = 'Zürich "north" \\ \u2028 ☃ \x01\x1f\x7f\t\U0001F600'
    numeric = [name for name, value in claim.items() if isinstance(value, float)]
    for name, value in zip(numeric, (0.0, -0.0, 1e-300, 12345678901234.5)):
        claim[name] = value
    order = explanation.contribution_order
    zeros = explanation.shap_values.copy()
    zeros[order[0]], zeros[order[-1]] = 0.0, -0.0
    odd = explanation.shap_values.copy()
    odd[order[:7]] = (-1.0338667223549826e-05, 1e-300, 3e16, float("nan"), float("-inf"), 0.0001, 9999999999999998.0)
    codes = [code._replace(weight=0.0, text="") for code in explanation.reason_codes[:1]]
    return [
        dataclasses.replace(explanation, claim=claim, shap_values=zeros),
        dataclasses.replace(explanation, claim_id="", score=0.0, base_value=-0.0, raw_score=float("1e-17"),
                            seed=0, top_k=0, rationale="", reason_codes=codes, methods=(), device=""),
        dataclasses.replace(explanation, seed=2**64 - 1, lime_samples=5000, reason_codes=[]),
        # Doubles where orjson's layout differs from repr (1e-05, 1e+16) or that JSON cannot hold,
        # and only the first seven contributions.
        dataclasses.replace(
            explanation, score=4.6956809874749345e-05, raw_score=2.5e16, base_value=-9.999999999999999e-05,
            shap_values=odd, contribution_order=order[:7],
            reason_codes=[code._replace(weight=weight) for code, weight in zip(
                explanation.reason_codes, (5e-05, float("inf"), 1e-4))]),
    ]


POLICIES = {
    "raw": RedactionPolicy(),
    "hmac-all": RedactionPolicy(default="hmac", hmac_key=HMAC_KEY),
    "drop-all": RedactionPolicy(default="drop"),
    "mixed": RedactionPolicy(fields={"claim_amount": "hmac", "policy_tenure_months": "drop", "fault": "hmac",
                                     "claimant_age": "hmac", "vehicle_age_years": "drop"}, hmac_key=HMAC_KEY),
}


@pytest.mark.parametrize("policy_name", sorted(POLICIES))
def test_body_matches_json_format_on_real_and_edge_explanations(explanations: list[Explanation],
                                                                 policy_name: str) -> None:
    policy = POLICIES[policy_name]
    cases = [*explanations, *[case for e in explanations[:2] + explanations[-1:] for case in edge_cases(e)]]
    for explanation in cases:
        body, source = write_body(explanation, explanation.claim, policy)
        assert body.decode("utf-8") == reference_body(explanation, explanation.claim, policy)
        expected_input = documented(risklens_pb2.Receipt(input=to_value_map(explanation.claim)))
        expected_source = (json.dumps(json.loads(expected_input)["input"], sort_keys=True, separators=(",", ":"),
                                      ensure_ascii=False) if expected_input != "{}" else "{}")
        assert source.decode("utf-8") == expected_source
    # The redaction really happened: no raw text of a redacted field survives.
    if policy_name != "raw":
        body, _ = write_body(cases[-4], cases[-4].claim, policy)
        parsed = json_format.Parse(body, risklens_pb2.Receipt())
        for contribution in parsed.explanation.contributions:
            if policy.action(contribution.feature) == "drop":
                assert not contribution.HasField("value")
            elif policy.action(contribution.feature) == "hmac":
                assert contribution.value.text.startswith("hmac-sha256:")


@given(st.floats(allow_nan=True, allow_infinity=True, width=64))
@example(-0.0)
@example(0.0)
@example(1e-05)
@example(-4.6956809874749345e-05)
@example(1e-4)
@example(1e16)
@example(9999999999999998.0)
@example(5e-324)
@example(float("nan"))
@example(float("-inf"))
def test_doubles_are_written_as_json_format_writes_them(value: float) -> None:
    import orjson

    from risklens.audit._body import _is_set, _number

    written = orjson.dumps({"score": _number(value)}).decode() if _is_set(value) else "{}"
    assert written == documented(risklens_pb2.ExplainResponse(score=value))


def test_explanation_fields_are_written_in_name_order() -> None:
    assert list(_EXPLANATION_FIELDS) == sorted(f.name for f in risklens_pb2.ExplainResponse.DESCRIPTOR.fields)


def test_values_of_equal_keys_but_different_types_stay_apart(explanations: list[Explanation]) -> None:
    def input_json(claim: dict[str, Any]) -> str:
        explanation = dataclasses.replace(explanations[0], claim=claim, contribution_order=np.empty(0, dtype=np.intp))
        return write_body(explanation, claim, RedactionPolicy())[1].decode("utf-8")

    # True == 1 == 1.0 as dict keys: the memo must still tell them apart.
    assert input_json({"a": True}) == '{"a":{"flag":true}}'
    assert input_json({"a": 1}) == '{"a":{"number":1.0}}'
    assert input_json({"a": 1.0, "b": float("nan"), "c": None}) == \
        '{"a":{"number":1.0},"b":{"null":"NULL_VALUE"},"c":{"null":"NULL_VALUE"}}'


def test_hmac_policy_without_a_key_is_refused(explanations: list[Explanation]) -> None:
    from risklens.errors import ManifestError

    with pytest.raises(ManifestError, match="HMAC"):
        write_body(explanations[0], explanations[0].claim, RedactionPolicy(default="hmac"))


@pytest.fixture(scope="module")
def chunk() -> list[Explanation]:
    """A batch of real SHAP-only explanations, as a batch run's chunk has them."""
    from risklens.datasets import generate_claims
    from risklens.registry import ModelRegistry

    service = ExplainService(ModelRegistry.from_directory(REPO_ROOT / "models"))
    frame, _ = generate_claims(48, 11)
    explained = service.explain_frame("demo-xgb", frame, claim_ids=[f"c-{i}" for i in range(len(frame))])
    assert all(isinstance(e, Explanation) for e in explained)
    return explained  # type: ignore[return-value]


def value_type_cases(chunk: list[Explanation]) -> list[Explanation]:
    """Claims whose one column mixes equal keys of different types, -0.0 and NaN, a text column with
    None, and a column of floats only with 0.0 and -0.0 (equal keys, different values)."""
    numeric, floats = [name for name, value in chunk[0].claim.items() if isinstance(value, float)][:2]
    text = next(name for name, value in chunk[0].claim.items() if isinstance(value, str))
    cases = []
    for i, (e, (number, words)) in enumerate(zip(chunk, [(True, None), (1, "x"), (1.0, None), (-0.0, "x"), (0.0, ""),
                                                        (float("nan"), "ü"), (None, "x")])):
        claim = {**e.claim, numeric: number, text: words, floats: -0.0 if i % 2 else 0.0}
        cases.append(dataclasses.replace(e, claim=claim))
    return cases


def joiners() -> list[Any]:
    """The native joiner where it was compiled at install, and the Python one that stands in for it."""
    from risklens.audit import _body

    native = [pytest.param(_body.join_rows, id="native")] if _body.join_rows is not _body.join_rows_python else \
        [pytest.param(None, id="native", marks=pytest.mark.skip(reason="risklens.audit._join was not compiled "
                                                                     "(no C compiler at install)"))]
    return [*native, pytest.param(_body.join_rows_python, id="python")]


def test_native_joiner_is_built_wherever_a_c_compiler_is() -> None:
    """setup.py builds the joiner as an optional extension (Python stands in where it cannot be
    compiled): here a failed build fails, instead of the native joiner's checks being skipped."""
    from toolchain import c_compiler

    from risklens.audit import _body

    if c_compiler() is None:
        pytest.skip("no C compiler: the Python joiner serves, as documented")
    assert _body.join_rows is not _body.join_rows_python, "a C compiler is here but risklens.audit._join is missing"


@pytest.mark.parametrize("join_rows", joiners())
def test_join_rows_joins_each_row_of_positions(join_rows: Any) -> None:
    rng = np.random.default_rng(3)
    pieces = [b"", b"{", "ü".encode(), b"\x00", *(bytes(rng.integers(0, 256, size=n, dtype=np.uint8)) for n in range(40))]
    index = rng.integers(0, len(pieces), size=(25, 17), dtype=np.int32)
    assert join_rows(pieces, index) == [b"".join(pieces[i] for i in row) for row in index.tolist()]
    assert join_rows(pieces, np.zeros((3, 0), dtype=np.int32)) == [b"", b"", b""]
    assert join_rows(pieces, np.zeros((0, 5), dtype=np.int32)) == []


def test_native_join_rows_refuses_what_it_cannot_join() -> None:
    from risklens.audit import _body

    if _body.join_rows is _body.join_rows_python:
        pytest.skip("risklens.audit._join was not compiled (no C compiler at install)")
    with pytest.raises(IndexError, match="not a position"):
        _body.join_rows([b"a"], np.array([[0, 1]], dtype=np.int32))
    with pytest.raises(IndexError, match="not a position"):
        _body.join_rows([b"a"], np.array([[-1]], dtype=np.int32))
    with pytest.raises(TypeError, match="int32"):
        _body.join_rows([b"a"], np.zeros((1, 1), dtype=np.int64))
    with pytest.raises(TypeError, match="int32"):
        _body.join_rows([b"a"], np.zeros(3, dtype=np.int32))
    with pytest.raises(TypeError, match="not bytes"):
        _body.join_rows([b"a", "b"], np.zeros((1, 1), dtype=np.int32))
    with pytest.raises(ValueError, match="C-contiguous"):  # a view that skips columns
        _body.join_rows([b"a"], np.zeros((4, 4), dtype=np.int32)[:, ::2])


@pytest.mark.parametrize("join_rows", joiners())
@pytest.mark.parametrize("policy_name", sorted(POLICIES))
def test_bodies_of_a_chunk_are_each_claims_body(chunk: list[Explanation], explanations: list[Explanation],
                                                policy_name: str, join_rows: Any, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    """write_bodies, column by column, gives each claim's write_body bytes: on a real chunk, with
    claims it leaves to write_body (edge values, other methods) among them, and mixed value types;
    with the native joiner and with the Python one."""
    from risklens.audit import _body
    from risklens.audit._body import _COLUMNAR_FROM, write_bodies

    monkeypatch.setattr(_body, "join_rows", join_rows)
    policy = POLICIES[policy_name]
    edges = [case for e in chunk[:2] for case in edge_cases(e)]
    # a claim like the others but for one reason code's weight (zero: left out of the JSON)
    zero_weight = dataclasses.replace(chunk[3], reason_codes=[chunk[3].reason_codes[0]._replace(weight=0.0),
                                                              *chunk[3].reason_codes[1:]])
    # and claims like the others but for a zero score (left out) or a -0.0 base value (written)
    zeros = [dataclasses.replace(chunk[4], score=0.0), dataclasses.replace(chunk[5], base_value=-0.0)]
    # and claims with fewer reason codes than the others, or none
    fewer = [dataclasses.replace(chunk[6], reason_codes=[]), dataclasses.replace(chunk[7], reason_codes=chunk[7].reason_codes[:1])]
    # and texts JSON must escape (quotes, backslashes, control characters), non-ASCII, a repeated id
    escaped = [dataclasses.replace(chunk[8], claim_id='claim "8"\\\x01 ü', rationale=chunk[8].rationale + '\n"q" — ü\x1f'),
               dataclasses.replace(chunk[9], claim_id='claim "8"\\\x01 ü')]
    mixed = [*chunk[:20], edges[0], *chunk[20:30], zero_weight, *zeros, *fewer, *escaped, *edges[1:],
             explanations[-1], *chunk[30:]]
    for batch in (chunk, mixed, [*value_type_cases(chunk), *chunk[7:]], chunk[:_COLUMNAR_FROM - 1]):
        assert write_bodies(batch, [e.claim for e in batch], policy) == \
            [write_body(e, e.claim, policy) for e in batch]
    # The real chunk is written from its columns, and matches json_format's canonical form.
    if policy.is_raw:
        from risklens.audit import _body

        covered, _ = _body._columnar_rows(chunk, [e.claim for e in chunk], chunk[0].model.manifest.feature_names)
        assert covered == list(range(len(chunk)))
    body, _ = write_bodies(chunk, [e.claim for e in chunk], policy)[5]
    assert body.decode("utf-8") == reference_body(chunk[5], chunk[5].claim, policy)

"""Tables and single claims go through one core: explain_frame agrees with explain_batch row by row."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from risklens.core import ClaimInput, ExplainService, Explanation
from risklens.errors import RiskLensError, SchemaError
from risklens.registry import ModelRegistry, frame_to_claims, validate_claim
from risklens.registry.schema import validate_columns

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def service() -> ExplainService:
    return ExplainService(ModelRegistry.from_directory(REPO_ROOT / "models"))


def messy_table(manifest: Any, rows: int, seed: int) -> pd.DataFrame:
    """Real synthetic claims with a bad value planted in some rows (each kind the schema refuses)."""
    from risklens.datasets import generate_claims

    frame, _ = generate_claims(rows, seed)
    frame = frame[manifest.feature_names].astype(object)
    numeric = next(f.name for f in manifest.features if f.type == "numeric" and f.max is not None)
    category = next(f.name for f in manifest.features if f.type == "categorical")
    flag = next(f.name for f in manifest.features if f.type == "boolean")
    frame.loc[3, numeric] = "12 thousand"
    frame.loc[5, category] = "not-a-category"
    frame.loc[8, flag] = 1.0
    frame.loc[9, numeric] = math.inf
    frame.loc[11, numeric] = manifest.feature(numeric).max + 1
    frame.loc[12, numeric] = None
    frame.loc[13, numeric] = -0.0
    frame.loc[14, category] = None
    return frame


def test_explain_frame_matches_explain_batch_row_by_row(service: ExplainService) -> None:
    model = service.registry.get("demo-xgb")
    frame = messy_table(model.manifest, 60, 21)
    ids = [f"c{i}" for i in range(len(frame))]
    table_outcomes = service.explain_frame("demo-xgb", frame, claim_ids=ids)
    claim_outcomes = service.explain_batch("demo-xgb", [ClaimInput(c, i) for c, i in zip(frame_to_claims(frame), ids)])
    rejected = [i for i, o in enumerate(table_outcomes) if isinstance(o, RiskLensError)]
    assert 3 in rejected and 5 in rejected and 8 in rejected and 13 not in rejected
    for table, single in zip(table_outcomes, claim_outcomes):
        assert type(table) is type(single)
        if isinstance(table, RiskLensError):
            assert (table.code, table.field, table.message) == (single.code, single.field, single.message)
            continue
        assert isinstance(table, Explanation) and isinstance(single, Explanation)
        assert table.claim_id == single.claim_id
        assert table.claim == single.claim
        assert [math.copysign(1, v) for v in table.claim.values() if isinstance(v, float)] == \
            [math.copysign(1, v) for v in single.claim.values() if isinstance(v, float)]
        assert table.score == single.score and table.decision == single.decision
        assert table.contributions == single.contributions
        assert table.reason_codes == single.reason_codes
        assert table.rationale == single.rationale
        np.testing.assert_array_equal(table.shap_values, [dict((f, s) for f, _, s in table.contributions)[n]
                                                          for n in model.manifest.feature_names])


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 200_000), st.text(max_size=8),
                   st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, 1e12, -1.0, "third_party", "urban", "holder", np.float64(3.5),
                                    np.int64(4), np.bool_(True), float("nan")]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_validate_columns_is_validate_claim_on_every_row(service: ExplainService, data: st.DataObject) -> None:
    manifest = service.registry.get("demo-xgb").manifest
    base = messy_table(manifest, 6, 3)
    for _ in range(data.draw(st.integers(1, 10))):
        row = data.draw(st.integers(0, len(base) - 1))
        column = data.draw(st.sampled_from(manifest.feature_names))
        base.iat[row, base.columns.get_loc(column)] = data.draw(VALUES)
    columns, valid, errors = validate_columns(manifest, base)
    claims = frame_to_claims(base)
    for row, claim in enumerate(claims):
        try:
            expected = validate_claim(manifest, claim)
        except SchemaError as error:
            assert row in errors and errors[row].message == error.message and errors[row].field == error.field
            continue
        assert row not in errors
        position = int(np.flatnonzero(valid == row)[0])
        got = {name: columns[name][position] for name in manifest.feature_names}
        assert repr(got) == repr(expected)
    # Text columns as a CSV read gives them (pandas' str dtype, NA for missing): the same outcome.
    text_only = [name for name in base.columns if all(isinstance(v, str) or v is None for v in base[name])]
    as_read = base.astype({name: "str" for name in text_only})
    assert all(isinstance(as_read[name].dtype, pd.StringDtype) for name in text_only)
    text_columns, text_valid, text_errors = validate_columns(manifest, as_read)
    assert repr(text_columns) == repr(columns) and text_valid.tolist() == valid.tolist()
    assert {row: (e.field, e.message) for row, e in text_errors.items()} == \
        {row: (e.field, e.message) for row, e in errors.items()}


def test_a_method_the_model_cannot_run_is_invalid_argument(service: ExplainService) -> None:
    """A model registered without PDP grids cannot have ICE: asked for by name, the call names the
    field; asked for as "all", the method is left out."""
    import dataclasses

    from risklens.core import ExplainOptions
    from risklens.datasets import generate_claims
    from risklens.errors import InvalidRequest
    from risklens.registry.manifest import PDP_ARTIFACT

    model = service.registry.get("demo-xgb")
    without_grids = dataclasses.replace(model, extras={k: v for k, v in model.extras.items() if k != PDP_ARTIFACT})
    bare = ExplainService(ModelRegistry([without_grids]))
    frame, _ = generate_claims(1, 5)
    claim = frame_to_claims(frame[model.manifest.feature_names])[0]
    with pytest.raises(InvalidRequest, match="method 'ice' cannot explain model 'demo-xgb'") as info:
        bare.explain("demo-xgb", claim, options=ExplainOptions(methods=("ice",)))
    assert info.value.field == "methods"
    explained = bare.explain("demo-xgb", claim, options=ExplainOptions(methods=("all",)))
    assert "ice" not in explained.methods and "lime" in explained.methods


@pytest.mark.parametrize("model_name", ["demo-xgb", "demo-logreg"])
def test_a_rows_explanation_does_not_depend_on_the_table_around_it(service: ExplainService, model_name: str) -> None:
    """What replay relies on: a claim in a table of any size gets the bits it gets in a small table
    of its own copies, every method's. (Summing one-hot columns with a matrix product did not: BLAS
    changed the order of the sum with the table's size, and the last row of 5-, 9-, 15- and 25-row
    tables differed in the last bit; so did a logistic regression's ICE scores.)"""
    from google.protobuf.json_format import MessageToDict

    from risklens.core import ExplainOptions
    from risklens.datasets import generate_claims
    from risklens.trees import TABLE_KERNEL_MIN_ROWS

    model = service.registry.get(model_name)
    frame = generate_claims(33, 5)[0][model.manifest.feature_names].astype(object)
    options = ExplainOptions(methods=("shap", "ebm", "ice", "lime"), seed=11, lime_samples=200)

    def content(explanation: Any) -> dict[str, Any]:
        message = MessageToDict(explanation.response)
        message.pop("receiptId", None)
        return message

    whole = [content(e) for e in service.explain_frame(model_name, frame, claim_ids=[str(i) for i in range(33)],
                                                       options=options)]
    for rows in (TABLE_KERNEL_MIN_ROWS, 5, 7, 9, 15, 16, 25):
        part = service.explain_frame(model_name, frame.iloc[:rows], claim_ids=[str(i) for i in range(rows)],
                                     options=options)
        assert [content(e) for e in part] == whole[:rows], f"a {rows}-row table"
    for row in (4, 8, 14, 24, 32):
        copies = service.explain_frame(model_name, frame.iloc[[row] * TABLE_KERNEL_MIN_ROWS],
                                       claim_ids=[str(row)] * TABLE_KERNEL_MIN_ROWS, options=options)
        assert content(copies[0]) == whole[row], f"row {row} among its own copies"

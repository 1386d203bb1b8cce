"""The shared-data loader checks sha256; the synthetic generator is deterministic and plants its rules."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from risklens.datasets import PLANTED_RULES, DatasetIntegrityError, generate_claims, load_shared, shared_data_dir
from risklens.datasets.synthetic import fraud_log_odds


@pytest.mark.parametrize(("name", "rows", "positives"), [
    ("fraud_oracle", 15420, 923), ("carclaims", 15420, 923), ("insurance_claims", 1000, 247),
    ("german", 1000, 300), ("german_numeric", 1000, 300)])
def test_shared_datasets_load_with_documented_shape(name, rows, positives):
    X, y = load_shared(name)
    assert len(X) == len(y) == rows
    assert int(y.sum()) == positives


def test_text_targets_map_to_the_same_labels():
    _, numeric = load_shared("fraud_oracle")
    _, text = load_shared("carclaims")
    assert (numeric.to_numpy() == text.to_numpy()).all()


def test_messy_columns_are_cleaned():
    X, _ = load_shared("insurance_claims")
    assert "_c39" not in X.columns
    assert X["collision_type"].isna().sum() > 0  # "?" became missing
    assert pd.api.types.is_numeric_dtype(X["days_policy_to_incident"])


def test_loader_refuses_a_modified_file(tmp_path: Path):
    shutil.copy(shared_data_dir() / "german.data", tmp_path / "german.data")
    with (tmp_path / "german.data").open("ab") as fh:
        fh.write(b"\n")
    with pytest.raises(DatasetIntegrityError, match="sha256"):
        load_shared("german", data_dir=tmp_path)
    with pytest.raises(DatasetIntegrityError, match="not found"):
        load_shared("fraud_oracle", data_dir=tmp_path)


def test_generator_is_deterministic_and_plants_rules():
    a, ya = generate_claims(3000, seed=11)
    b, yb = generate_claims(3000, seed=11)
    pd.testing.assert_frame_equal(a, b)
    assert (ya == yb).all()
    assert not (generate_claims(3000, seed=12)[1] == ya).all()
    for rule in PLANTED_RULES:
        applies = rule.applies(a)
        assert 0 < applies.mean() < 1, rule.name
        rate_with, rate_without = ya[applies].mean(), ya[~applies].mean()
        assert (rate_with > rate_without) == (rule.log_odds > 0), rule.name
    assert np.corrcoef(fraud_log_odds(a), ya)[0, 1] > 0.3

"""FeatureSums: per-feature sums of column attributions whose bits do not depend on the table's size."""

from __future__ import annotations

import numpy as np

from risklens.explainers.base import FeatureSums


def test_feature_sums_are_the_weighted_sums_and_each_row_is_its_own() -> None:
    rng = np.random.default_rng(3)
    # 12 columns onto 5 features: one-hot groups of 1-4 columns, a pair term split in halves, a
    # feature no column weighs on
    weights = np.zeros((12, 5))
    for column, feature in enumerate([0, 1, 1, 1, 1, 2, 2, 3, 0, 3, 2, 1]):
        weights[column, feature] = 1.0
    weights[7] = [0.0, 0.5, 0.0, 0.5, 0.0]
    sums = FeatureSums(weights)
    values = rng.normal(size=(37, 12)) * 10.0 ** rng.integers(-8, 8, size=(37, 12))
    table = sums(values)
    assert table.shape == (37, 5)
    np.testing.assert_allclose(table, values @ weights, rtol=1e-12, atol=1e-12 * np.abs(values).max())
    assert np.all(table[:, 4] == 0.0)
    # a row's sums are the same bits alone, in any slice of the table, or among its own copies
    for row in range(37):
        assert np.array_equal(sums(values[row:row + 1])[0], table[row])
        assert np.array_equal(sums(np.repeat(values[row:row + 1], 5, axis=0))[3], table[row])
    for rows in (2, 5, 9, 15, 25):
        assert np.array_equal(sums(values[:rows]), table[:rows])

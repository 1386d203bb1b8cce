"""The ahead-of-time compiled kernels against numba's JIT kernels: the same bits, or the JIT serves."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numba
import numpy as np
import pandas as pd
import pytest
from toolchain import c_compiler
from treeshap_cases import CASES

from risklens.trees import TreeShap, _aot

needs_kernels = pytest.mark.skipif(_aot.load() is None, reason="ahead-of-time kernels not built here (`make setup` "
                                                               "builds them; it needs a C compiler)")


def test_kernels_are_built_wherever_a_c_compiler_is() -> None:
    """`make setup` only warns when the build fails (the JIT serves): here a failed build fails,
    instead of every bit-for-bit check below being skipped."""
    if c_compiler() is None:
        pytest.skip("no C compiler: the JIT serves, as documented")
    assert _aot.load() is not None, "a C compiler is here but the ahead-of-time kernels are missing or stale"


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Kernels on one thread, as in batch workers: where the compiled row-block kernel serves."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


def _everything(model: Any, X: pd.DataFrame) -> dict[str, np.ndarray]:
    """What the kernels compute for ``X``: structure, predictions, SHAP for a table and for one row."""
    ts = TreeShap(model)
    s = ts._structure
    return {"edge_feature": s.edge_feature, "is_left": s.is_left, "zm": s.zm, "prev": s.prev,
            "inv_hot": s.inv_hot, "coef_hot": s.coef_hot,
            "predict": ts.predict_raw(X), "predict_one": ts.predict_raw(X.iloc[:1]),
            "shap": ts.shap_values(X, device="cpu")[0], "shap_one": ts.shap_values(X.iloc[[7]], device="cpu")[0]}


def _compare(model: Any, X: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = _everything(model, X)
    with monkeypatch.context() as patch:
        patch.setattr(_aot, "load", lambda: None)
        jit = _everything(model, X)
    for name, values in jit.items():
        assert np.array_equal(compiled[name], values, equal_nan=True), name


@needs_kernels
@pytest.mark.parametrize("family,dataset,depth", CASES, ids=[f"{f}-{d}-d{k}" for f, d, k in CASES])
def test_compiled_kernels_give_the_jit_kernels_bits(case_factory, family, dataset, depth, one_thread, monkeypatch):
    case = case_factory(family, dataset, depth)
    _compare(case.model, case.X_explain, monkeypatch)


@needs_kernels
def test_compiled_kernels_on_categorical_splits_and_missing_values(categorical_claims, one_thread, monkeypatch):
    import lightgbm as lgb
    import xgboost as xgb

    X, y = categorical_claims
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = [xgb.XGBClassifier(n_estimators=15, max_depth=4, enable_categorical=True, tree_method="hist",
                                    max_cat_to_onehot=1, n_jobs=1).fit(X, y),
                  lgb.LGBMClassifier(n_estimators=15, max_depth=4, num_leaves=15, verbose=-1, n_jobs=1).fit(X, y)]
    for model in models:
        assert (TreeShap(model).ensemble.kind == 2).any(), "the model should contain categorical splits"
        _compare(model, X.iloc[:100], monkeypatch)


@needs_kernels
def test_compiled_row_blocks_serve_only_single_threaded_processes(case_factory, monkeypatch):
    """With more than one kernel thread the JIT's parallel kernel serves; with one, the compiled one."""
    case = case_factory("xgboost", "german", 3)
    ts = TreeShap(case.model)
    served = []
    compiled = _aot.load()
    monkeypatch.setattr(_aot, "load", lambda: _Recorder(compiled, served))
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        ts.shap_values(case.X_explain, device="cpu")
        assert served == ["shap_blocks"]
        if threads > 1:
            served.clear()
            numba.set_num_threads(threads)
            ts.shap_values(case.X_explain, device="cpu")
            assert served == []
    finally:
        numba.set_num_threads(threads)


class _Recorder:
    def __init__(self, module: Any, served: list[str]) -> None:
        self._module, self._served = module, served

    def __getattr__(self, name: str) -> Any:
        self._served.append(name)
        return getattr(self._module, name)


@needs_kernels
def test_stale_build_is_not_used(monkeypatch, caplog):
    """Kernels built from other sources (or for another CPU) are never loaded: the JIT serves."""
    _aot.load.cache_clear()
    monkeypatch.setattr(_aot, "stamp", lambda: "0" * 64)
    try:
        with caplog.at_level(logging.WARNING, logger="risklens.trees._aot"):
            assert _aot.load() is None
        assert "JIT serves" in caplog.text
    finally:
        monkeypatch.undo()
        _aot.load.cache_clear()
    assert _aot.load() is not None


@needs_kernels
def test_current_build_is_not_compiled_again():
    """`make setup` asks for the kernels on every run: current ones (same sources and CPU) are kept."""
    built = next(_aot.HERE.glob(f"{_aot.MODULE}.*.so"))
    before = built.stat().st_mtime_ns
    assert _aot.ensure_built() is False
    assert built.stat().st_mtime_ns == before

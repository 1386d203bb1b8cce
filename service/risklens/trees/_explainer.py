"""Public entry point: :class:`TreeShap`."""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

import numpy as np

from risklens.errors import DeviceUnavailable, InvalidRequest, SchemaError
from risklens.trees import _cpu
from risklens.trees._ensemble import (
    OUTPUT_LOG_ODDS,
    OUTPUT_PROBABILITY,
    TreeEnsemble,
    normalize_model,
)

logger = logging.getLogger(__name__)

_DEVICES = ("auto", "cpu", "gpu")
_MODEL_OUTPUTS = ("raw", "probability")
# memory budget per chunk: a fraction of what is free, so a 100k-row request never runs the host or
# the GPU out of memory
_FREE_MEMORY_FRACTION = 0.25
_MAX_BACKGROUND_ROWS = 10_000
_ALWAYS_FITS_BYTES = 64 * 1024**2


@functools.cache
def _gpu_available() -> bool:
    """Checked once per process: a failed ``import cupy`` costs ~50 us, too much per single-claim call."""
    try:
        import cupy  # noqa: PLC0415 - optional dependency, imported only when a GPU is asked for

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any import/driver failure means "no usable GPU"
        return False


def _name_key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "_", str(name))


def _host_free_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 * 1024**3


class TreeShap:
    """Exact TreeSHAP for XGBoost, LightGBM and scikit-learn tree ensembles.

    ``background=None``: path-dependent TreeSHAP (the trees' covers stand in for the data).
    ``background`` given: interventional TreeSHAP averaged over its rows; with
    ``model_output="probability"`` (binary classifiers whose raw output is log-odds) each
    (row, background row) attribution is rescaled by ``(sigmoid(f(x)) - sigmoid(f(r))) / (f(x) - f(r))``,
    so ``base_value + values.sum(1) == sigmoid(f(x))`` exactly, with
    ``base_value = mean_r sigmoid(f(r))``.

    In every mode ``base_value + values.sum(axis=1)`` equals :meth:`predict_raw` (or its sigmoid for
    probability output) to float64 rounding.
    """

    def __init__(self, model: Any, background: Any = None, *, model_output: str = "raw") -> None:
        if model_output not in _MODEL_OUTPUTS:
            raise InvalidRequest(f"model_output must be one of {_MODEL_OUTPUTS}, got {model_output!r}",
                                 field="model_output")
        self.ensemble: TreeEnsemble = normalize_model(model)
        self._structure = _cpu.CpuStructure(self.ensemble)
        self._gpu_tables: Any = None
        if model_output == "probability":
            if background is None:
                raise InvalidRequest("model_output='probability' needs a background sample (interventional SHAP)",
                                     field="background")
            if self.ensemble.output_space != OUTPUT_LOG_ODDS:
                raise InvalidRequest(
                    f"model_output='probability' needs a log-odds model; this one outputs {self.ensemble.output_space!r}",
                    field="model_output")
        self.model_output = model_output
        self.background: np.ndarray | None = None
        if background is not None:
            bg = self._as_matrix(background, "background")
            if bg.shape[0] == 0:
                raise SchemaError("background has no rows", field="background")
            if bg.shape[0] > _MAX_BACKGROUND_ROWS:
                raise InvalidRequest(
                    f"background has {bg.shape[0]} rows; at most {_MAX_BACKGROUND_ROWS} are supported",
                    field="background")
            self.background = bg
            self._background_raw = _cpu.predict_raw(self._structure, bg)

    # ------------------------------------------------------------------ properties

    @property
    def output_space(self) -> str:
        """What the values explain: "log_odds", "probability" or "raw"."""
        if self.model_output == "probability":
            return OUTPUT_PROBABILITY
        return self.ensemble.output_space

    @property
    def feature_names(self) -> list[str] | None:
        return self.ensemble.feature_names

    @property
    def expected_value(self) -> float:
        if self.background is None:
            return self._structure.expected_value
        if self.model_output == "probability":
            return float(np.mean(1.0 / (1.0 + np.exp(-self._background_raw))))
        return float(np.mean(self._background_raw))

    # ------------------------------------------------------------------ input

    def _as_matrix(self, X: Any, name: str = "X") -> np.ndarray:
        ens = self.ensemble
        if hasattr(X, "columns") and hasattr(X, "dtypes"):
            X = self._frame_to_matrix(X, name)
        else:
            X = np.asarray(X)
            if X.ndim == 1:
                X = X.reshape(1, -1)
            if X.ndim != 2:
                raise SchemaError(f"{name} must be 2-D (rows, features); got shape {X.shape}", field=name)
            if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
                raise SchemaError(f"{name} must be numeric; got dtype {X.dtype}", field=name)
        if X.shape[1] != ens.n_features:
            raise SchemaError(
                f"{name} has {X.shape[1]} feature(s) (shape={X.shape}) but the model expects {ens.n_features}",
                field=name)
        X = np.ascontiguousarray(X, dtype=np.float64)
        if ens.input_float32:
            # XGBoost and scikit-learn compare float32 copies of the inputs against their thresholds
            X = X.astype(np.float32).astype(np.float64)
        return X

    def _frame_to_matrix(self, frame: Any, name: str) -> np.ndarray:
        import pandas as pd

        ens = self.ensemble
        names = ens.feature_names
        if names is not None and list(frame.columns) != names and all(isinstance(c, str) for c in frame.columns):
            # LightGBM stores names with spaces and JSON-special characters replaced by "_"
            by_key = {_name_key(c): c for c in frame.columns}
            missing = [c for c in names if c not in frame.columns and _name_key(c) not in by_key]
            if missing:
                raise SchemaError(f"{name} lacks the model's column(s) {missing[:5]}", field=missing[0])
            frame = frame[[c if c in frame.columns else by_key[_name_key(c)] for c in names]]
        # dtype.kind (numpy and pandas extension dtypes alike) is ~50x cheaper than pd.api.types per column
        if all(getattr(t, "kind", "O") in "biuf" for t in frame.dtypes):
            # one conversion for the common all-numeric frame (per-column work costs ~1 ms per request)
            return frame.to_numpy(dtype=np.float64, na_value=np.nan)
        columns = []
        ordered = iter(ens.ordered_categories)
        for col in frame.columns:
            series = frame[col]
            if isinstance(series.dtype, pd.CategoricalDtype):
                known = ens.feature_categories.get(str(col))
                if known is None:
                    known = next(ordered, None)
                if known is None:
                    codes = series.cat.codes.to_numpy().astype(np.float64)
                else:
                    codes = pd.Categorical(series, categories=known).codes.astype(np.float64)
                codes[codes < 0] = np.nan
                columns.append(codes)
            elif pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
                columns.append(series.to_numpy(dtype=np.float64, na_value=np.nan))
            else:
                raise SchemaError(f"{name} column {col!r} is not numeric (dtype {series.dtype})", field=str(col))
        return np.column_stack(columns) if columns else np.zeros((len(frame), 0))

    def resolve_device(self, device: str) -> str:
        """The device a call with ``device`` ("auto", "cpu" or "gpu") runs on; raises if "gpu" is unavailable."""
        if device not in _DEVICES:
            raise InvalidRequest(f"device must be one of {_DEVICES}, got {device!r}", field="device")
        if device == "cpu":
            return "cpu"
        available = _gpu_available()
        if device == "gpu" and not available:
            raise DeviceUnavailable("device='gpu' was requested but no CUDA device with CuPy is available",
                                    field="device")
        return "gpu" if available else "cpu"

    # ------------------------------------------------------------------ public API

    def predict_raw(self, X: Any) -> np.ndarray:
        """The model's output in :attr:`output_space`, computed from the normalized trees."""
        raw = _cpu.predict_raw(self._structure, self._as_matrix(X))
        if self.model_output == "probability":
            return 1.0 / (1.0 + np.exp(-raw))
        return raw

    def shap_values(self, X: Any, device: str = "auto") -> tuple[np.ndarray, float]:
        """SHAP values (n_rows, n_features) float64 and the base value."""
        resolved = self.resolve_device(device)
        Xm = self._as_matrix(X)
        if self.background is not None:
            values = self._interventional(Xm)
        elif resolved == "gpu":
            values = self._shap_gpu(Xm)
        else:
            values = self._chunked(Xm, lambda chunk: _cpu.shap_values(self._structure, chunk),
                                   bytes_per_row=8 * (self.ensemble.n_features + self._structure.max_tree_nodes))
        return values, self.expected_value

    def interaction_values(self, X: Any) -> np.ndarray:
        """Path-dependent SHAP interaction values (n_rows, n_features, n_features)."""
        if self.background is not None:
            raise InvalidRequest("interaction values are path-dependent only; build TreeShap without background",
                                 field="background")
        Xm = self._as_matrix(X)
        f = self.ensemble.n_features
        return self._chunked(Xm, lambda chunk: _cpu.interaction_values(self._structure, chunk)[0],
                             bytes_per_row=8 * (2 * f * f + f))

    # ------------------------------------------------------------------ internals

    def _chunked(self, X: np.ndarray, fn: Any, *, bytes_per_row: int) -> np.ndarray:
        if X.shape[0] * bytes_per_row <= _ALWAYS_FITS_BYTES:  # skip reading /proc/meminfo for small calls
            return fn(X)
        budget = int(_host_free_bytes() * _FREE_MEMORY_FRACTION)
        rows = max(1, budget // max(1, bytes_per_row))
        if X.shape[0] <= rows:
            return fn(X)
        return np.concatenate([fn(X[i:i + rows]) for i in range(0, X.shape[0], rows)], axis=0)

    def _interventional(self, X: np.ndarray) -> np.ndarray:
        background = self.background
        if background is None:
            raise InvalidRequest("interventional SHAP needs a background sample", field="background")
        logistic = self.model_output == "probability"

        def run(chunk: np.ndarray) -> np.ndarray:
            fx = _cpu.predict_raw(self._structure, chunk)
            return _cpu.interventional_values(self._structure, chunk, background, fx,
                                              self._background_raw, logistic)

        return self._chunked(X, run, bytes_per_row=self.ensemble.n_nodes + 8 * self.ensemble.n_features)

    def _shap_gpu(self, X: np.ndarray) -> np.ndarray:
        import cupy  # noqa: PLC0415 - optional, only on request

        from risklens.trees._xp import PathTables

        if self._gpu_tables is None:
            self._gpu_tables = PathTables(self._structure, cupy)
        tables = self._gpu_tables
        free, _total = cupy.cuda.runtime.memGetInfo()
        rows = max(1, int(free * _FREE_MEMORY_FRACTION) // tables.bytes_per_row())
        parts = []
        for i in range(0, X.shape[0], rows):
            chunk = cupy.asarray(X[i:i + rows])
            parts.append(cupy.asnumpy(tables.shap_values(chunk)))
        logger.debug("gpu treeshap: %d rows in %d chunk(s)", X.shape[0], len(parts))
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, self.ensemble.n_features))


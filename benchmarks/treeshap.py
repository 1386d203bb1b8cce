"""TreeSHAP throughput: risklens vs shap TreeExplainer vs XGBoost pred_contribs vs LightGBM pred_contrib.

Same models, same rows, one process. Prints a Markdown table (engine, model, rows, rows/s, ratio vs shap).

    python benchmarks/treeshap.py              # full: rows 1 / 1,000 / 100,000, all model sizes
    python benchmarks/treeshap.py --quick      # smaller models and row counts
    python benchmarks/treeshap.py --device gpu # risklens on the GPU (needs CuPy and a CUDA device)

Timings that would exceed --budget seconds (estimated from the 1,000-row rate) are not run and are
marked "skipped" rather than guessed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("MPLCONFIGDIR", os.path.join(os.path.dirname(__file__), "..", ".cache", "matplotlib"))
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache", "numba"))


def claims_matrix(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    from risklens.datasets import generate_claims

    X, y = generate_claims(n, seed)
    text = [c for c in X.columns if not (pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c]))]
    X = pd.get_dummies(X, columns=text, dtype=float).astype(float)
    X.columns = [c.replace(" ", "_") for c in X.columns]
    return X, y


def train_models(quick: bool, X: pd.DataFrame, y: pd.Series) -> dict[str, Any]:
    import lightgbm as lgb
    import xgboost as xgb

    specs = [
        ("xgboost 100x d6", lambda: xgb.XGBClassifier(n_estimators=100, max_depth=6, n_jobs=2)),
        ("xgboost 500x d8", lambda: xgb.XGBClassifier(n_estimators=500, max_depth=8, n_jobs=2)),
        ("lightgbm 500x 63 leaves", lambda: lgb.LGBMClassifier(n_estimators=500, num_leaves=63,
                                                               min_child_samples=5, verbose=-1, n_jobs=2)),
        ("lightgbm 1000x d10", lambda: lgb.LGBMClassifier(n_estimators=1000, max_depth=10, num_leaves=1023,
                                                          min_child_samples=5, verbose=-1, n_jobs=2)),
    ]
    if quick:
        specs = specs[:1] + [("lightgbm 100x 31 leaves", lambda: lgb.LGBMClassifier(
            n_estimators=100, num_leaves=31, verbose=-1, n_jobs=2))]
    models = {}
    for name, make in specs:
        t0 = time.perf_counter()
        models[name] = make().fit(X, y)
        print(f"# trained {name} in {time.perf_counter() - t0:.1f}s", flush=True)
    return models


def engines(model: Any, device: str) -> dict[str, Callable[[pd.DataFrame], Any]]:
    import shap
    import xgboost as xgb

    from risklens.trees import TreeShap

    ts = TreeShap(model)
    explainer = shap.TreeExplainer(model)
    out: dict[str, Callable[[pd.DataFrame], Any]] = {
        f"risklens {device}": lambda X: ts.shap_values(X, device=device),
        "shap TreeExplainer": lambda X: explainer.shap_values(X, check_additivity=False),
    }
    if isinstance(model, xgb.XGBModel):
        booster = model.get_booster()
        out["xgboost pred_contribs"] = lambda X: booster.predict(xgb.DMatrix(X), pred_contribs=True)
    else:
        out["lightgbm pred_contrib"] = lambda X: model.booster_.predict(X, pred_contrib=True)
    return out


def time_rows(fn: Callable[[pd.DataFrame], Any], X: pd.DataFrame) -> float:
    """Seconds per call; single rows are repeated and the median taken."""
    fn(X)  # warm-up: JIT compile, caches
    if len(X) == 1:
        samples = []
        for _ in range(30):
            t0 = time.perf_counter()
            fn(X)
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)
    repeats = 3 if len(X) <= 1000 else 1
    samples = []
    for _ in range(repeats):  # median, not best: the machine is shared with other jobs
        t0 = time.perf_counter()
        fn(X)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def machine() -> str:
    def sh(cmd: str) -> str:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()

    return (f"date: {sh('date -u')}\nnproc: {sh('nproc')}\n{sh('lscpu | grep \"Model name\"')}\n"
            f"python {platform.python_version()}\nload average at start: {sh('cat /proc/loadavg')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller models, rows 1 / 1,000 / 10,000")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--budget", type=float, default=120.0, help="max seconds for one timing")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import lightgbm
    import shap
    import xgboost

    print(machine())
    print(f"xgboost {xgboost.__version__}, lightgbm {lightgbm.__version__}, shap {shap.__version__}")
    X_train, y_train = claims_matrix(5_000 if args.quick else 20_000, seed=1)
    row_counts = [1, 1_000, 10_000] if args.quick else [1, 1_000, 100_000]
    X_all, _ = claims_matrix(max(row_counts), seed=2)
    models = train_models(args.quick, X_train, y_train)

    lines = ["| engine | model | rows | rows/s | ratio vs shap | max abs diff vs risklens |",
             "|---|---|---:|---:|---:|---:|"]
    for model_name, model in models.items():
        fns = engines(model, args.device)
        reference = fns[f"risklens {args.device}"](X_all.iloc[:200])[0]
        rates: dict[tuple[str, int], float] = {}
        for rows in row_counts:
            X = X_all.iloc[:rows]
            for engine, fn in fns.items():
                rate_1k = rates.get((engine, 1_000))
                if rows > 1_000 and rate_1k and rows / rate_1k > args.budget:
                    lines.append(f"| {engine} | {model_name} | {rows:,} | skipped (est. {rows / rate_1k:.0f}s) | | |")
                    continue
                seconds = time_rows(fn, X)
                rates[(engine, rows)] = rows / seconds
                out = fn(X_all.iloc[:200]) if rows == row_counts[0] else None
                diff = ""
                if out is not None:
                    values = out[0] if isinstance(out, tuple) else np.asarray(out)
                    values = values[..., 1] if values.ndim == 3 else values
                    values = values[:, :reference.shape[1]]
                    diff = f"{np.abs(values - reference).max():.1e}"
                shap_rate = rates.get(("shap TreeExplainer", rows))
                ratio = f"{rates[(engine, rows)] / shap_rate:.2f}x" if shap_rate else ""
                lines.append(f"| {engine} | {model_name} | {rows:,} | {rates[(engine, rows)]:,.0f} | {ratio} | {diff} |")
                print(lines[-1], flush=True)
        # ratios for risklens are only known once shap ran: rewrite them
        for i, line in enumerate(lines):
            cells = line.split(" | ")
            if len(cells) == 6 and cells[0] == f"| risklens {args.device}" and cells[1] == model_name:
                rows = int(cells[2].replace(",", ""))
                shap_rate = rates.get(("shap TreeExplainer", rows))
                mine = rates.get((f"risklens {args.device}", rows))
                if shap_rate and mine:
                    cells[4] = f"{mine / shap_rate:.2f}x"
                    lines[i] = " | ".join(cells)
    print()
    print(f"load average at end: {open('/proc/loadavg').read().strip()}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

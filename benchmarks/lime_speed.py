"""LIME speed and fidelity: risklens' batched LIME against plain ``lime`` in the same run.

Run: ``.venv/bin/python benchmarks/lime_speed.py`` (writes benchmarks/results/lime_speed.md).

Model: the bundled demo-xgb; claims: 30 synthetic claims it never saw. "Plain lime" is
``LimeTabularExplainer`` configured from the same background and schema (categoricals declared),
``explain_instance`` with its defaults (5,000 samples, 10 features). Fidelity columns:
- fit R^2: the local model's weighted R^2 on its neighbourhood (lime's ``score``), mean over claims;
- vs lime@5000: top-3 rank agreement with plain lime at 5,000 samples under another seed;
- stability: top-3 rank agreement of the same method across two seeds.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLCONFIGDIR", str(ROOT / ".cache" / "matplotlib"))
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))

from risklens.datasets import generate_claims  # noqa: E402
from risklens.explainers.agreement import rank_agreement  # noqa: E402
from risklens.explainers.lime import DEFAULT_SAMPLES, STABILITY_RERUNS, LimeExplainer  # noqa: E402
from risklens.registry import load_model_dir  # noqa: E402

CLAIMS = 30
TOP_K = 3


REPEATS = 3


def per_claim_ms(fn, rows: range) -> float:
    """Median over claims of the fastest of ``REPEATS`` runs: other jobs on a shared machine only ever
    add time, so the minimum is the cleanest estimate of the work itself."""
    best = []
    for row in rows:
        runs = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            fn(row)
            runs.append(time.perf_counter() - start)
        best.append(min(runs))
    return 1000 * float(np.median(best))


def main() -> None:
    from lime.lime_tabular import LimeTabularExplainer

    model = load_model_dir(ROOT / "models" / "demo-xgb")
    ours = LimeExplainer(model)
    space = ours.space
    plain = LimeTabularExplainer(space.training, mode="classification", feature_names=space.names,
                                 categorical_features=space.categorical, categorical_names=space.category_names,
                                 random_state=0)
    claims, _ = generate_claims(CLAIMS, seed=2024)
    table = space.encode(claims)
    rows = range(CLAIMS)

    def plain_weights(row: int, seed: int, num_samples: int = 5000) -> tuple[np.ndarray, float]:
        state = np.random.RandomState(seed)
        plain.random_state = plain.base.random_state = plain.discretizer.random_state = state
        exp = plain.explain_instance(table[row], space.predict_proba, num_samples=num_samples)
        weights = np.zeros(table.shape[1])
        for j, w in exp.local_exp[1]:
            weights[j] = w
        return weights, float(exp.score)

    plain_weights(0, 0)  # warm-up
    reference = [plain_weights(row, 10_000 + row) for row in rows]
    lines = []

    def add(label: str, ms: float, ms_claim: float | None, fits: list[float], vs_ref: list[float],
            stable: list[float]) -> None:
        lines.append(f"| {label} | {ms:.1f} | {'' if ms_claim is None else f'{ms_claim:.1f}'} | "
                     f"{np.mean(fits):.3f} | {np.mean(vs_ref):.3f} | {np.mean(stable):.3f} |")

    # Plain lime, default settings.
    ms = per_claim_ms(lambda row: plain_weights(row, row), rows)
    runs_a = [plain_weights(row, row) for row in rows]
    runs_b = [plain_weights(row, 20_000 + row) for row in rows]
    add("plain lime, 5000 samples", ms, None, [s for _, s in runs_a],
        [rank_agreement(reference[r][0], runs_a[r][0], TOP_K) for r in rows],
        [rank_agreement(runs_a[r][0], runs_b[r][0], TOP_K) for r in rows])

    for n in (5000, 2000, 1000, 500):
        ours.explain_table(table[:1], [0], n, TOP_K, reruns=0)  # warm-up
        ms = per_claim_ms(lambda row: ours.explain_table(table[row:row + 1], [row], n, TOP_K, reruns=0), rows)
        ms_claim = per_claim_ms(lambda row: ours.explain_table(table[row:row + 1], [row], n, TOP_K), rows)
        a = ours.explain_table(table, list(rows), n, TOP_K, reruns=0)
        b = ours.explain_table(table, [20_000 + r for r in rows], n, TOP_K, reruns=0)
        marker = " (default)" if n == DEFAULT_SAMPLES else ""
        add(f"risklens, {n} samples{marker}", ms, ms_claim, [x.fit_score for x in a],
            [rank_agreement(reference[r][0], a[r].feature_contributions, TOP_K) for r in rows],
            [rank_agreement(a[r].feature_contributions, b[r].feature_contributions, TOP_K) for r in rows])

    batch_ms = per_claim_ms(lambda _: ours.explain_table(table, list(rows), DEFAULT_SAMPLES, TOP_K), range(1)) / CLAIMS

    header = [
        "# LIME: risklens vs plain lime (same run)",
        "",
        f"Model demo-xgb, {CLAIMS} unseen synthetic claims, top-{TOP_K} agreement. Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}; other jobs may share the CPUs, so each time is "
        f"the median over claims of the fastest of {REPEATS} runs. OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}.",
        "",
        "| method | ms / explanation | ms / claim with stability (1 + "
        f"{STABILITY_RERUNS} reruns) | fit R^2 | vs lime@5000 | stability |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    footer = ["", f"A batch of {CLAIMS} claims at the default (one model call for all neighbourhoods, stability "
                  f"included): {batch_ms:.1f} ms per claim."]
    text = "\n".join(header + lines + footer) + "\n"
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "lime_speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

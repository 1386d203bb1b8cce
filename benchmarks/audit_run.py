"""Batch audit run throughput: the whole pipeline vs shap's TreeExplainer alone, on fraud_oracle.

Trains a 500-tree XGBoost (depth 4) on fraud_oracle, then on the same rows measures claims/s of

* shap.TreeExplainer(model).shap_values on the model matrix (attributions only), and
* ``run_audit`` (table read + validation, SHAP via the service's engine, reason codes, rationale,
  Parquet output, audit records in SQLite, checkpoints) with 1 and 2 local workers, SHAP only
  (no extra methods, no report), timed end to end: model load, worker start-up and the merge included.

Each measurement also records the share of the machine's CPU time the hypervisor gave to other
guests meanwhile (steal) and the CPU time it took, for claims per CPU second.

Every measurement runs in a fresh Python process, as ``risklens audit run`` does: a process that
has already run OpenMP or numba kernels (this one trained the model) would have to spawn its
workers instead of forking them (see ``risklens.reports._runner``). Imports happen before the clock
starts in both: ``import shap``, and what ``risklens audit run`` has imported when it calls ``run_audit``
(``risklens.cli``, which brings in the audit package, and XGBoost). The configurations
alternate for ``--repeat`` rounds, so a change in the machine's speed hits all of them alike.

    python benchmarks/audit_run.py [--rows 15420] [--trees 500] [--repeat 3] [--out benchmarks/results/audit_run.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _machine import cpu_ticks, steal_note, steal_share

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLCONFIGDIR", str(REPO / ".cache" / "matplotlib"))
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".cache" / "numba"))
MODEL = "fraud-oracle"


def train(models_dir: Path, trees: int):
    import xgboost as xgb

    from risklens.datasets import load_shared
    from risklens.registry import infer_schema, load_model_dir, write_model_dir
    from risklens.registry.manifest import Manifest
    from risklens.registry.schema import encode_frame

    X, y = load_shared("fraud_oracle")
    features = infer_schema(X)
    schema = Manifest(name="_", version="0", framework="xgboost", artifact="_", sha256="_", features=features)
    model = xgb.XGBClassifier(n_estimators=trees, max_depth=4, learning_rate=0.05, n_jobs=2, random_state=0)
    model.fit(encode_frame(schema, X), y.to_numpy())
    write_model_dir(models_dir / MODEL, model, name=MODEL, version="1.0.0", features=features,
                    background=X, threshold=0.15)
    return load_model_dir(models_dir / MODEL)


def measure_shap(work: Path) -> dict:
    import pandas as pd
    import shap

    from risklens.registry import load_model_dir

    model = load_model_dir(work / "models" / MODEL)
    X = pd.read_csv(work / "claims.csv")[model.manifest.feature_names]
    matrix = model.model_matrix(X)
    explainer = shap.TreeExplainer(model.estimator, feature_perturbation="tree_path_dependent")
    ticks, started, cpu = cpu_ticks(), time.perf_counter(), time.process_time()
    explainer.shap_values(matrix, check_additivity=False)
    return {"rate": len(matrix) / (time.perf_counter() - started), "steal": steal_share(ticks, cpu_ticks()),
            "per_cpu_second": len(matrix) / (time.process_time() - cpu)}


def process_tree_cpu() -> float:
    """CPU seconds (user and system) of this process and of its children that have been waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure_run(work: Path, workers: int, tag: str) -> dict:
    import pandas as pd
    import xgboost  # noqa: F401 - imported before the clock, as shap is for its row

    import risklens.cli  # noqa: F401 - the modules `risklens audit run` has loaded when the run starts
    from risklens.reports import AuditRunConfig, run_audit

    out = work / f"run-{tag}"
    ticks, started, cpu = cpu_ticks(), time.perf_counter(), process_tree_cpu()
    result = run_audit(AuditRunConfig(
        model=MODEL, data=work / "claims.csv", out=out, models_dir=work / "models", workers=workers,
        methods=(), audit_url=f"sqlite:///{work / f'audit-{tag}.db'}", progress=False, report=False))
    wall = time.perf_counter() - started
    steal = steal_share(ticks, cpu_ticks())
    cpu = process_tree_cpu() - cpu  # the worker processes have been joined: their time is counted
    run = json.loads((out / "run.json").read_text())
    engine = pd.read_parquet(result.claims_path, columns=["shap_engine"])["shap_engine"].iloc[0]
    return {"rate": result.explained / wall, "phase": result.claims_per_second,
            "warm": result.warm_claims_per_second, "steal": steal, "per_cpu_second": result.explained / cpu,
            "engine": engine, "start": run.get("worker_start") or "-",
            "chunks_by_worker": json.loads((out / "summary.json").read_text())["chunks_by_worker"]}


def in_fresh_process(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=15420,
                        help="fraud_oracle rows to explain (beyond its 15,420: the table repeated)")
    parser.add_argument("--trees", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds of all configurations")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "audit_run.md")
    parser.add_argument("--measure", choices=["shap", "run"], help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure == "shap":
        print(json.dumps(measure_shap(args.work)))
        return
    if args.measure == "run":
        print(json.dumps(measure_run(args.work, args.workers, args.tag)))
        return

    import pandas as pd

    from risklens.datasets.shared import shared_data_dir

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = train(work / "models", args.trees)
        claims = pd.read_csv(shared_data_dir() / "fraud_oracle.csv")
        copies = -(-args.rows // len(claims))  # more rows than the table: the table repeated (a longer run)
        pd.concat([claims] * copies, ignore_index=True).iloc[:args.rows].to_csv(work / "claims.csv", index=False)
        columns = len(model.model_matrix(pd.read_csv(work / "claims.csv").iloc[:1][model.manifest.feature_names]).T)
        shap_rates: list[float] = []
        shap_steals: list[float | None] = []
        shap_cpu_rates: list[float] = []
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for round_ in range(args.repeat):
            shap_run = in_fresh_process("--measure", "shap", "--work", str(work))
            shap_rates.append(shap_run["rate"])
            shap_steals.append(shap_run["steal"])
            shap_cpu_rates.append(shap_run["per_cpu_second"])
            for workers in (1, 2):
                runs[workers].append(in_fresh_process("--measure", "run", "--work", str(work), "--workers",
                                                      str(workers), "--tag", f"{workers}-{round_}"))
            print(f"round {round_ + 1}: shap {shap_rates[-1]:,.0f} rows/s, runs "
                  + ", ".join(f"{w} worker(s) {runs[w][-1]['rate']:,.0f}" for w in runs), file=sys.stderr)

    shap_rate = statistics.median(shap_rates)
    shap_cpu_rate = statistics.median(shap_cpu_rates)
    lines = [
        "# Batch audit run throughput (fraud_oracle)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()} with {os.cpu_count()} cores "
        f"(CPython {platform.python_version()}), `python benchmarks/audit_run.py --rows {args.rows} "
        f"--trees {args.trees} --repeat {args.repeat}`. XGBoost, {args.trees} trees of depth 4, {args.rows:,} "
        f"fraud_oracle claims{' (the 15,420-claim table repeated)' if args.rows > 15420 else ''} "
        f"({columns} model columns). The pipeline rows include reading and validating the "
        "table, loading the model, SHAP, reason codes, rationale, Parquet output and SQLite audit records "
        "(WAL, synchronous=FULL), timed end to end (worker start-up and the merge included); 'explain phase' "
        "leaves out the table read and the merge; 'warm' is the rate from the first finished chunk to the "
        "last; 'claims per CPU second' divides the claims by the CPU time (user and system, every thread and "
        "worker process) that the timed part took, which the hypervisor's steal does not inflate. Each "
        "measurement in a fresh process; medians over the rounds, ratios to shap's median rows/s; every round is "
        "listed below the table. No GPU on this machine.",
        "",
        "| what | workers | claims/s end to end | vs TreeExplainer | explain phase | warm | warm vs TreeExplainer "
        "| claims per CPU second | vs TreeExplainer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| shap.TreeExplainer alone (attributions only) | - | {shap_rate:,.0f} | 1.00x |  |  |  "
        f"| {shap_cpu_rate:,.0f} | 1.00x |",
    ]
    for workers, measured in runs.items():
        rate, phase, warm, cpu_rate = (statistics.median(m[key] for m in measured)
                                       for key in ("rate", "phase", "warm", "per_cpu_second"))
        start = ", ".join(sorted({m["start"] for m in measured}))
        lines.append(f"| risklens audit run, {workers} local worker(s) (start: {start}), SHAP engine "
                     f"`{measured[0]['engine']}` | {workers} | {rate:,.0f} | {rate / shap_rate:.2f}x | "
                     f"{phase:,.0f} | {warm:,.0f} | {warm / shap_rate:.2f}x | {cpu_rate:,.0f} | "
                     f"{cpu_rate / shap_cpu_rate:.2f}x |")
    lines += ["", "Rounds (claims/s end to end; in brackets the share of CPU time the hypervisor gave to other "
              "guests meanwhile, 'steal'; chunks per process for two workers):", ""]
    for round_ in range(args.repeat):
        one, two = runs[1][round_], runs[2][round_]
        shap_round = shap_rates[round_]
        lines.append(f"- round {round_ + 1}: shap {shap_round:,.0f}{steal_note(shap_steals[round_])}; "
                     f"1 worker {one['rate']:,.0f} ({one['rate'] / shap_round:.2f}x){steal_note(one['steal'])}; "
                     f"2 workers {two['rate']:,.0f} ({two['rate'] / shap_round:.2f}x){steal_note(two['steal'])}, "
                     f"chunks {sorted(two['chunks_by_worker'].values())}")
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


if __name__ == "__main__":
    main()

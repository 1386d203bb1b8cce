"""``risklens audit run``: explain a whole claims table, resumably, and write the audit report."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from risklens.errors import RiskLensError
from risklens.reports import DEFAULT_CHUNK_SIZE


def audit_run(
    model: Annotated[str, typer.Option(help="Model name in the models directory.")],
    data: Annotated[Path, typer.Option(help="Claims table: a .csv or .parquet file, one claim per row.")],
    out: Annotated[Path, typer.Option(help="Output directory; rerun the same command on it to resume.")],
    models: Annotated[Optional[Path], typer.Option(
        help="Directory holding one sub-directory per model (default RISKLENS_MODELS_DIR or ./models).")] = None,
    version: Annotated[str, typer.Option(help="Model version (default: the newest).")] = "",
    scheduler: Annotated[str, typer.Option(
        help="'local' (worker processes on this machine) or a Dask scheduler address tcp://HOST:PORT.")] = "local",
    workers: Annotated[int, typer.Option(
        help="Local workers: this process plus N-1 worker processes, all taking chunks from one "
             "queue; 0 (default): one per CPU core this process may use. Ignored for a Dask address.")] = 0,
    worker_start: Annotated[str, typer.Option(
        help="How local worker processes start: 'fork' (from this process once it has loaded the model; they "
             "skip the imports and join after ~1 s; Linux), 'spawn' (fresh interpreters: ~2-2.5 s of imports "
             "and model load each), or 'auto' (fork where it is safe).")] = "auto",
    methods: Annotated[str, typer.Option(
        help="Extra methods for the sample, comma-separated (lime,ice,ebm,permutation,agreement); "
             "'auto': every method the model supports; 'shap': SHAP only.")] = "auto",
    sample: Annotated[int, typer.Option(help="Claims that get the extra methods (0: every claim).")] = 200,
    label: Annotated[Optional[str], typer.Option(help="Column with the 0/1 outcome, for AUC / PR-AUC.")] = None,
    id_column: Annotated[Optional[str], typer.Option(help="Column with the claim id (default: row number).")] = None,
    chunk_size: Annotated[int, typer.Option(
        help="Claims per chunk (the unit of checkpointing).")] = DEFAULT_CHUNK_SIZE,
    seed: Annotated[int, typer.Option(help="Seed that picks the sample.")] = 0,
    top_k: Annotated[int, typer.Option(help="Reasons per claim (0: settings default).")] = 0,
    device: Annotated[str, typer.Option(help="TreeSHAP device: auto, cpu or gpu (empty: settings).")] = "",
    audit_url: Annotated[Optional[str], typer.Option(
        help="Audit store URL (default RISKLENS_AUDIT_URL, else sqlite:///DATA_DIR/audit.db with DATA_DIR from "
             "RISKLENS_DATA_DIR, ./var if unset).")] = None,
    no_audit: Annotated[bool, typer.Option("--no-audit", help="Do not record the claims in the audit trail.")] = False,
    report: Annotated[bool, typer.Option(help="Write report.html when the run is complete.")] = True,
    pdf: Annotated[bool, typer.Option(help="Also print report.pdf (needs Chromium).")] = False,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Explain every claim of the --data table with --model: per-claim Parquet, rejects, audit records, an HTML report."""
    from risklens.reports import AuditRunConfig, run_audit
    from risklens.settings import Settings

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if workers == 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    chosen = methods.strip().lower()
    extra = None if chosen == "auto" else tuple(m for m in chosen.split(",") if m and m != "shap")
    settings = Settings()
    config = AuditRunConfig(
        model=model, data=data, out=out, models_dir=models or settings.models_dir, version=version, scheduler=scheduler, workers=workers,
        worker_start=worker_start,
        methods=extra, sample=sample, label_column=label, id_column=id_column, chunk_size=chunk_size, seed=seed,
        top_k=top_k, device=device, audit_url=audit_url, record_audit=not no_audit, progress=progress,
        report=report, pdf=pdf)
    try:
        result = run_audit(config, settings)
    except RiskLensError as error:
        typer.echo(f"error: {error.message}", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"explained {result.explained:,} claims, rejected {result.rejected:,} "
               f"({result.claims_per_second:,.1f} claims/s this run; {result.chunks_resumed} of "
               f"{result.chunks_total} chunks were already done)")
    typer.echo(f"claims   {result.claims_path}")
    typer.echo(f"rejects  {result.rejects_path}")
    if result.chain_head:
        typer.echo(f"audit    chain head {result.chain_head[0]} {result.chain_head[1]}")
    if result.report_path:
        typer.echo(f"report   {result.report_path}")

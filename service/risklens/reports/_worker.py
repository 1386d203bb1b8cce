"""What one worker does with one chunk of claims: the core's ``explain_frame``, then the chunk's files.

Runs in the driver process (one worker), in local worker processes, or on Dask workers: everything
it needs travels in a ``ChunkTask`` (plain, picklable data); the model is loaded from ``models_dir``
once per worker process and the audit store opened once per process. The worker writes the chunk's
rejects and its *pending* results file, then records the chunk's audit entries (built by the core)
in one transaction; the driver commits the chunk by renaming the pending file. Recording on the
workers keeps the audit trail's per-record cost off the driver, so it scales with the workers.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from risklens.core import ExplainOptions, ExplainService, Explanation, library_versions
from risklens.errors import ArtifactIntegrityError, ReceiptNotFound, RiskLensError
from risklens.registry import LoadedModel, ModelRegistry
from risklens.settings import Settings

log = logging.getLogger(__name__)

# Flat per-claim columns: a contribution column per feature is "<method>__<feature>".
CONTRIBUTION_SEPARATOR = "__"


@dataclass(frozen=True)
class ChunkTask:
    index: int
    models_dir: str
    model: str
    version: str
    features: pd.DataFrame  # normalised feature values, index = source row positions
    claim_ids: list[str]
    labels: list[float] | None
    sampled: list[bool]  # rows that also get the extra methods
    methods: tuple[str, ...]  # extra methods for sampled rows ("shap" always runs)
    top_k: int = 0
    device: str = ""
    lime_samples: int = 0
    agreement_threshold: float | None = None  # None: the worker's setting
    run_seed: int | None = None  # with each claim's row, its seed for the randomised methods (None: from the receipts)
    out_dir: str = ""  # where the chunk's files go (shared storage when workers run elsewhere)
    audit_url: str | None = None  # None: no audit records
    model_sha256: str = ""  # the artifact the run was started with ("": whatever is loaded)


def claim_seeds(run_seed: int, rows: list[int]) -> list[int]:
    """Each claim's seed for the randomised methods (LIME): from the run's seed and the claim's row.

    A server call's default seed comes from its receipt id, new every call; a batch run's cannot,
    or rerunning the same command on the same table would not reproduce its explanations. Computed
    by the worker, for its chunk: on the driver, before the first chunk, they took 35 ms of a
    15,420-claim run's set-up.
    """
    prefix = f"risklens-run-seed:{run_seed}:".encode()
    return [int.from_bytes(hashlib.sha256(prefix + str(row).encode()).digest()[:4], "big") for row in rows]


@dataclass(frozen=True)
class ChunkOutcome:
    index: int
    explained: int
    rejected: int
    worker: str  # host:pid of the process that explained the chunk


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _EntryCollector:
    """Stands in for the audit store inside a worker: keeps what the core records, per thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    def record(self, entries: list[Any]) -> list[int]:
        kept = self._pending()
        kept.extend(entries)
        return list(range(len(kept) - len(entries), len(kept)))

    def _pending(self) -> list[Any]:
        if not hasattr(self._local, "entries"):
            self._local.entries = []
        return self._local.entries

    def take(self) -> list[Any]:
        taken, self._local.entries = self._pending(), []
        return taken


_services: dict[tuple[str, bool], tuple[ExplainService, _EntryCollector]] = {}
_stores: dict[str, Any] = {}
_cache_lock = threading.Lock()


def _new_service(models_dir: str, audited: bool, registry: ModelRegistry | None
                 ) -> tuple[ExplainService, _EntryCollector]:
    collector = _EntryCollector()
    settings = Settings(models_dir=models_dir)
    return (ExplainService(registry or ModelRegistry.from_directory(settings.models_dir), settings,
                           audit=collector if audited else None), collector)


def _service(models_dir: str, audited: bool) -> tuple[ExplainService, _EntryCollector]:
    """One service per worker process and models directory: explainers are built once, then reused.

    Without an audit trail the service gets no collector, so the core builds no audit entries.
    """
    key = (models_dir, audited)
    with _cache_lock:
        if key not in _services:
            _services[key] = _new_service(models_dir, audited, None)
        return _services[key]


def use_registry(models_dir: str, audited: bool, registry: ModelRegistry) -> None:
    """Explain this process's chunks of ``models_dir`` with ``registry``, whose models the caller has
    just loaded from it, and not with a second copy (or one cached by an earlier run, which the
    directory may have outgrown). Local workers forked afterwards inherit it: a 500-tree model
    took ~0.2 s to load again in each process."""
    with _cache_lock:
        _services[(models_dir, audited)] = _new_service(models_dir, audited, registry)


def _service_with_model(task: ChunkTask) -> tuple[ExplainService, _EntryCollector, LoadedModel]:
    """This process's service and the task's model: the artifact the run was started with.

    A process that loaded the directory for an earlier run (a Dask worker lives for many) loads it
    again when the model has been replaced since; the run stops if it changed during the run.
    """
    audited = task.audit_url is not None
    service, collector = _service(task.models_dir, audited)
    model = service.registry.get(task.model, task.version)
    if task.model_sha256 and model.manifest.sha256 != task.model_sha256:
        log.info("model %r changed in %s since this process loaded it; loading it again", task.model,
                 task.models_dir)
        with _cache_lock:
            service, collector = _services[(task.models_dir, audited)] = _new_service(task.models_dir, audited, None)
        model = service.registry.get(task.model, task.version)
        if model.manifest.sha256 != task.model_sha256:
            raise ArtifactIntegrityError(
                f"model {task.model!r} in {task.models_dir} has artifact sha256 {model.manifest.sha256}, but "
                f"this run was started with {task.model_sha256}: it was replaced during the run", field="model")
    return service, collector, model


def warm_up(models_dir: str, model: str, version: str, audited: bool) -> None:
    """Build this process's service, model and SHAP explainer before its first chunk, and import the
    audit package its records need (~0.08 s, which the first chunk paid otherwise; a forked worker waits
    for the driver's table read anyway). A model that cannot be loaded is left for the chunk to report
    (the driver raises the chunk's error)."""
    if audited:
        import risklens.audit  # noqa: F401

        library_versions()  # stated in every record; read from package metadata (~20 ms) once per process
    try:
        service, _ = _service(models_dir, audited)
        service.explainer(service.registry.get(model, version), "shap")
    except RiskLensError as error:
        log.debug("warm-up of model %r skipped: %s", model, error)


def _store(url: str) -> Any:
    from risklens.audit import open_store

    with _cache_lock:
        if url not in _stores:
            _stores[url] = open_store(url)
        return _stores[url]


def close_stores(url: str | None = None) -> None:
    """Close this process's audit store connections: all, or the one of ``url`` (a Dask worker may
    be serving another run's chunks meanwhile: its store stays open)."""
    with _cache_lock:
        for key in [key for key in _stores if url is None or key == url]:
            _stores.pop(key).close()


# A chunk's rows that failed validation (the same columns whether there are any or not).
REJECTS_SCHEMA = pa.schema([("row", pa.int64()), ("claim_id", pa.large_string()), ("code", pa.large_string()),
                           ("field", pa.large_string()), ("reason", pa.large_string())])


def chunk_file(out_dir: Path, index: int, kind: str = "chunk", suffix: str = ".parquet") -> Path:
    return Path(out_dir) / "chunks" / f"{kind}-{index:06d}{suffix}"


# Text columns that hold one value per claim: dictionary encoding finds no repeats in them and
# only costs time (writing a fraud_oracle run's claims.parquet: 86 -> 45 ms, the file no larger).
PER_CLAIM_TEXT = ("claim_id", "receipt_id", "rationale")


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The text and text-list columns whose values repeat across claims (decisions, codes, names)."""
    def is_text(kind: pa.DataType) -> bool:
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            kind = kind.value_type
        return pa.types.is_string(kind) or pa.types.is_large_string(kind)

    return [f.name for f in schema if is_text(f.type) and f.name not in PER_CLAIM_TEXT]


def write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, use_dictionary=dictionary_columns(table.schema))


def atomic_parquet(table: pa.Table, path: Path) -> None:
    """Write whole or not at all: a tmp file, fsync, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    write_parquet(table, tmp)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _method_columns(explanation: Explanation, feature_names: list[str]) -> dict[str, Any]:
    """Extra methods' results: their proto bytes (full detail for the report) and a few flat columns."""
    columns: dict[str, Any] = {}
    for method in explanation.method_results:
        message = getattr(explanation.response, method)
        columns[f"{method}_result"] = message.SerializeToString()
        if method == "lime":
            weights = {name: 0.0 for name in feature_names}
            for weight in message.weights:
                if weight.feature in weights:
                    weights[weight.feature] += weight.weight
            columns.update({f"lime{CONTRIBUTION_SEPARATOR}{n}": w for n, w in weights.items()})
            columns["lime_stability"] = message.stability
            columns["lime_fit_score"] = message.fit_score
        elif method == "ebm":
            terms = {name: 0.0 for name in feature_names}
            for term in message.terms:
                if len(term.features) == 1 and term.features[0] in terms:
                    terms[term.features[0]] += term.contribution
            columns.update({f"ebm{CONTRIBUTION_SEPARATOR}{n}": w for n, w in terms.items()})
        elif method == "agreement":
            columns["agreement_min"] = min((p.agreement for p in message.pairs), default=np.nan)
            columns["agreement_disagree"] = message.disagree
    return columns


def _results_table(explained: list[tuple[int, Explanation]], source_rows: list[int], labels: list[float] | None,
                   feature_names: list[str]) -> pa.Table:
    """One row per explained claim (``(position in chunk, explanation)``), built column by column as
    Arrow arrays (through pandas, a 2,000-claim chunk took ~14 us a claim to become a table; ~6 this way)."""
    rows = [e for _, e in explained]
    text = pa.large_string()
    columns: dict[str, Any] = {
        "row": pa.array([source_rows[position] for position, _ in explained], pa.int64()),
        "claim_id": pa.array([e.claim_id for e in rows], text), "receipt_id": pa.array([e.receipt_id for e in rows], text),
        "model": pa.array([e.model.name for e in rows], text),
        "model_version": pa.array([e.model.version for e in rows], text),
        "score": pa.array([e.score for e in rows], pa.float64()),
        "raw_score": pa.array([e.raw_score for e in rows], pa.float64()),
        "base_value": pa.array([e.base_value for e in rows], pa.float64()),
        "threshold": pa.array([e.threshold for e in rows], pa.float64()),
        "decision": pa.array([e.decision for e in rows], text),
        "reason_codes": pa.array([[c.code for c in e.reason_codes] for e in rows], pa.list_(pa.string())),
        "reason_texts": pa.array([[c.text for c in e.reason_codes] for e in rows], pa.list_(pa.string())),
        "rationale": pa.array([e.rationale for e in rows], text),
        "seed": _seed_array([e.seed for e in rows]),
        "shap_engine": pa.array([e.shap_engine for e in rows], text), "device": pa.array([e.device for e in rows], text),
        "methods": pa.array([",".join(e.methods) for e in rows], text),
    }
    if labels is not None:
        columns["label"] = pa.array([labels[position] for position, _ in explained], pa.float64())
    shap = np.array([e.shap_values for e in rows]) if rows else np.empty((0, len(feature_names)))
    columns.update({f"shap{CONTRIBUTION_SEPARATOR}{name}": pa.array(shap[:, j]) for j, name in enumerate(feature_names)})
    table = pa.table(columns)
    extras = [_method_columns(e, feature_names) for e in rows]
    if any(extras):  # only the sampled rows carry them; the others are empty (NaN / None)
        methods = pa.Table.from_pandas(pd.DataFrame(extras), preserve_index=False)
        for field_, column in zip(methods.schema, methods.columns):
            table = table.append_column(field_, column)
    return table


def _seed_array(seeds: list[int]) -> pa.Array:
    """Seeds are uint64: int64 while they fit (as pandas typed the column), else uint64."""
    return pa.array(seeds, pa.uint64() if seeds and max(seeds) > np.iinfo(np.int64).max else pa.int64())


_heap_frozen = False


@contextmanager
def _collection_between_chunks() -> Iterator[None]:
    """Run the cyclic garbage collector between chunks, not inside them.

    A chunk allocates tens of thousands of short-lived objects, nearly all freed by reference
    counting when it ends; collecting while they are alive only re-scans and promotes them (and
    each full collection re-scanned the whole imported stack and model: 1.1 s of a 10 s
    fraud_oracle run went to collections). So the collector pauses during a chunk, the young
    generations are collected after it, and after a process's first chunk everything alive then
    (the stack, the model, its explainers: kept for the process's life) is frozen out of the
    collector's generations (``gc.freeze``).
    """
    global _heap_frozen
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.collect(1)
        with _cache_lock:
            if not _heap_frozen:
                # No full collection first: it scanned the whole heap (0.13-0.15 s a process) to
                # free the few import-time cycles that freezing now keeps for the process's life.
                gc.freeze()
                _heap_frozen = True


def explain_chunk(task: ChunkTask) -> ChunkOutcome:
    """Explain one chunk with the core and write its pending files; per-row errors become rejects."""
    recorded = _recorded_before(task)
    if recorded is not None:
        return recorded
    with _collection_between_chunks():
        return _explain_chunk(task)


def pending_receipts(pending: Path) -> list[str]:
    """The receipt ids of a pending chunk file (none for a chunk explained without audit records)."""
    if "receipt_id" not in pq.read_schema(pending).names:
        return []
    return pq.read_table(pending, columns=["receipt_id"]).column(0).to_pylist()


def is_recorded(receipts: list[str], store: Any) -> bool:
    """Whether a chunk's receipts are in the trail: its records are one transaction, so one present
    means all present."""
    try:
        store.get(receipts[0])
    except ReceiptNotFound:
        return False
    return True


def _recorded_before(task: ChunkTask) -> ChunkOutcome | None:
    """The outcome of an earlier execution of this chunk that recorded it, or None.

    A Dask task runs again when its worker is lost; if that worker had already recorded the chunk
    (its pending file written, its receipts in the trail) and died before answering, explaining the
    chunk again would record every claim twice. The earlier execution's files stand instead, as a
    rerun's recovery (``_recover_pending``) would take them.
    """
    pending = chunk_file(Path(task.out_dir), task.index, suffix=".pending.parquet")
    if not task.audit_url or not pending.exists():
        return None
    receipts = pending_receipts(pending)
    if not receipts or not is_recorded(receipts, _store(task.audit_url)):
        return None
    rejected = pq.read_metadata(chunk_file(Path(task.out_dir), task.index, "rejects")).num_rows
    log.warning("chunk %d was explained and recorded by an earlier execution: its results stand", task.index)
    return ChunkOutcome(task.index, len(receipts), rejected, worker_name())


def _explain_chunk(task: ChunkTask) -> ChunkOutcome:
    service, collector, model = _service_with_model(task)
    feature_names = model.manifest.feature_names
    rows = task.features.index.to_list()
    sampled = np.asarray(task.sampled, dtype=bool)
    seeds = None if task.run_seed is None else claim_seeds(task.run_seed, rows)
    base = dict(top_k=task.top_k, device=task.device, lime_samples=task.lime_samples,
                agreement_threshold=task.agreement_threshold)
    outcomes: list[Explanation | RiskLensError | None] = [None] * len(rows)
    collector.take()  # nothing from an earlier, failed call may leak into this chunk's entries
    # Two calls at most: SHAP-only rows, and the sampled rows with the extra methods.
    for selected, methods in ((~sampled, ()), (sampled, task.methods)):
        positions = np.flatnonzero(selected)
        if not len(positions):
            continue
        explained = service.explain_frame(task.model, task.features.iloc[positions],
                                          claim_ids=[task.claim_ids[p] for p in positions],
                                          seeds=None if seeds is None else [seeds[p] for p in positions],
                                          version=task.version,
                                          options=ExplainOptions(methods=methods, **base))
        for p, outcome in zip(positions.tolist(), explained):
            outcomes[p] = outcome
    entries = collector.take()
    rejects = [{"row": rows[p], "claim_id": task.claim_ids[p], "code": outcome.code, "field": outcome.field or "",
                "reason": outcome.message}
               for p, outcome in enumerate(outcomes) if isinstance(outcome, RiskLensError)]
    explained_rows = [(p, outcome) for p, outcome in enumerate(outcomes) if isinstance(outcome, Explanation)]
    results = _results_table(explained_rows, rows, task.labels, feature_names)
    out = Path(task.out_dir)
    # Order matters for resume: rejects, then the whole pending file, then the audit records.
    atomic_parquet(pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA), chunk_file(out, task.index, "rejects"))
    atomic_parquet(results, chunk_file(out, task.index, suffix=".pending.parquet"))
    if task.audit_url and entries:
        _store(task.audit_url).record(entries)
    return ChunkOutcome(task.index, len(explained_rows), len(rejects), worker_name())

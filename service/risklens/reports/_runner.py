"""Batch audit runs: explain every row of a claims table in chunks, resumably, on one or many workers.

Layout of an output directory::

    run.json            what the run is (model, data hash, options): a rerun must match it to resume
    checkpoint.json     progress for people and tools (chunks done, rows explained / rejected)
    chunks/             one committed Parquet file per chunk, plus its rejects
    claims.parquet      every explained claim, one row each, in source order (written at the end)
    rejects.csv         every row that failed schema validation, with the field and the reason
    report.html         the audit report (see ``risklens.reports.build_report``)

Commit protocol for a chunk::

    worker: write rejects-N.parquet          (idempotent: the same rows fail the same way)
    worker: write chunk-N.pending.parquet    (tmp file + rename, so it is whole or absent)
    worker: record the chunk's audit entries (one transaction)
    driver: rename to chunk-N.parquet        (the commit point)

A rerun treats ``chunk-N.parquet`` as done. A ``.pending`` file whose receipts are in the audit
trail was recorded before the kill and is committed; otherwise it is discarded and the chunk redone.
So every claim ends up explained and recorded exactly once.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import logging
import multiprocessing
import os
import queue
import sys
import threading
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from risklens.core import ExplainService, library_versions
from risklens.errors import DeviceUnavailable, InvalidRequest
from risklens.registry import LoadedModel, ModelRegistry
from risklens.reports import DEFAULT_CHUNK_SIZE
from risklens.reports._pool import start_forked_worker, start_local_worker
from risklens.reports._table import ClaimsTable, read_claims_table
from risklens.reports._worker import (ChunkOutcome, ChunkTask, chunk_file, close_stores, explain_chunk, is_recorded,
                                      pending_receipts, use_registry, worker_name, write_parquet)
from risklens.settings import Settings

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.json"
CHUNKS_DIR = "chunks"
CLAIMS_FILE = "claims.parquet"
REJECTS_FILE = "rejects.csv"
DASK_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://")  # --scheduler addresses of a Dask cluster
DEFAULT_SAMPLE = 200


@dataclass(frozen=True)
class AuditRunConfig:
    """One batch audit run. ``methods=None``: every extra method the model supports, on the sample."""

    model: str
    data: Path
    out: Path
    models_dir: Path = Path("models")
    version: str = ""
    scheduler: str = "local"  # "local" (processes on this machine) or a Dask scheduler "tcp://host:port"
    workers: int = 1
    methods: tuple[str, ...] | None = None
    sample: int = DEFAULT_SAMPLE  # rows that get the extra methods; 0 = every row
    label_column: str | None = None
    id_column: str | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    seed: int = 0  # picks the sample and, with each claim's row, that claim's seed (see _worker.claim_seeds)
    top_k: int = 0
    device: str = ""
    lime_samples: int = 0
    audit_url: str | None = None  # None: the settings' audit store
    record_audit: bool = True
    progress: bool = True
    report: bool = True
    pdf: bool = False  # also print report.pdf when Chromium is installed
    worker_start: str = "auto"  # local workers: "fork" (where safe, see _why_not_fork), "spawn", or "auto"


@dataclass
class AuditRunResult:
    out: Path
    claims_path: Path
    rejects_path: Path
    report_path: Path | None
    explained: int
    rejected: int
    chunks_total: int
    chunks_resumed: int  # chunks already done (or recovered) when this invocation started
    seconds: float
    claims_per_second: float  # rows handled by this invocation / its explain time
    # Rows/s once every worker was running: from the first finished chunk to the last, so worker
    # start-up (imports, model load) is left out. 0.0 when fewer than two chunks ran.
    warm_claims_per_second: float = 0.0
    chain_head: tuple[int, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Whole file or the previous one: a tmp file, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _explain_settings(config: AuditRunConfig, service: ExplainService) -> dict[str, Any]:
    """The settings every chunk is explained with: the run's options, else the service's settings
    (resolved here, once, so that workers elsewhere, whose environment may differ, use the same)."""
    from risklens.trees import gpu_available

    lime_samples = service.resolve_lime_samples(config.lime_samples)
    device = service.resolve_device(config.device)
    if device == "gpu" and config.scheduler == "local" and not gpu_available():  # Dask workers may have one
        raise DeviceUnavailable("device 'gpu' was asked for but this machine has no CUDA device with CuPy",
                                field="device")
    return {"top_k": service.resolve_top_k(config.top_k), "device": device,
            "lime_samples": lime_samples,
            "agreement_threshold": service.settings.agreement_threshold}


def _identity(config: AuditRunConfig, model: LoadedModel, table: ClaimsTable, methods: tuple[str, ...],
              settings: dict[str, Any], audit_url: str | None) -> dict:
    """What must be equal for a rerun to continue this run (anything else would mix two runs): the
    artifact and the whole manifest (threshold, audit policy), the table, the options and settings,
    and where the records go (a pending chunk is recovered by looking its receipts up there)."""
    from risklens.audit import RedactionPolicy, store_location

    return {
        "model": model.name, "version": model.version, "model_sha256": model.manifest.sha256,
        "manifest_sha256": hashlib.sha256(model.manifest.model_dump_json().encode()).hexdigest(),
        "audit": store_location(audit_url) if audit_url else None,
        "redaction_key": RedactionPolicy.from_manifest(model.manifest.audit).key_fingerprint if audit_url else "",
        "data": str(Path(config.data).resolve()), "data_sha256": table.data_sha256, "rows": len(table),
        "chunk_size": config.chunk_size, "methods": list(methods), "sample": config.sample,
        "seed": config.seed, "settings": settings,
        "label_column": config.label_column, "id_column": config.id_column,
    }


def _check_run(out: Path, identity: dict) -> None:
    """Refuse to continue a run in ``out`` that is not this one (anything else would mix two runs)."""
    run_file = out / RUN_FILE
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        differing = sorted(k for k in identity if previous.get("identity", {}).get(k) != identity[k])
        if differing:
            raise InvalidRequest(f"{out} holds a different audit run (differs in {differing}); "
                                 f"use a new --out directory to start another run", field="out")


def _extra_methods(config: AuditRunConfig, service: ExplainService, model: LoadedModel) -> tuple[str, ...]:
    if config.methods is None:
        wanted = [m for m in service.supported_methods(model) if m != "shap"]
    else:
        wanted = [m for m in config.methods if m.strip()]
    # Validates names and support now, before any work: unknown or unsupported methods fail the run.
    return tuple(m for m in service.resolve_methods(model, wanted) if m != "shap")


def _sample_mask(n: int, sample: int, seed: int, methods: tuple[str, ...]) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    if not methods:
        return mask
    if sample <= 0 or sample >= n:
        mask[:] = True
    else:
        mask[np.random.default_rng(seed).choice(n, size=sample, replace=False)] = True
    return mask


def _audit_url(config: AuditRunConfig, settings: Settings) -> str | None:
    if not config.record_audit or not settings.audit_enabled:
        return None
    return config.audit_url or settings.resolved_audit_url()


def _recover_pending(out: Path, store: Any) -> int:
    """Commit pending chunks whose audit records exist; discard the others. Returns chunks committed."""
    committed = 0
    for pending in sorted((out / CHUNKS_DIR).glob("chunk-*.pending.parquet")):
        final = pending.with_name(pending.name.replace(".pending", ""))
        receipts = pending_receipts(pending)
        if store is None or not receipts or is_recorded(receipts, store):
            os.replace(pending, final)
            committed += 1
        else:
            pending.unlink()
    for stale in (out / CHUNKS_DIR).glob("*.tmp"):
        stale.unlink()
    return committed


class _ChunkQueue:
    """Chunks not yet started, taken in order by whoever is free: this process or a pool's submit loop."""

    def __init__(self, tasks: Sequence[ChunkTask]) -> None:
        self._tasks = deque(tasks)
        self._lock = threading.Lock()

    def take(self) -> ChunkTask | None:
        with self._lock:
            return self._tasks.popleft() if self._tasks else None


def _submitted_outcomes(submit: Callable[[ChunkTask], Any],
                        wait_first: Callable[[set[Any]], tuple[set[Any], set[Any]]], chunks: _ChunkQueue,
                        in_flight_limit: int, stop: threading.Event | None = None) -> Iterator[ChunkOutcome]:
    """Chunks explained by a pool of workers (Dask or local processes), ``in_flight_limit`` at a
    time (the driver holds a few chunks, not the whole table twice), taken from ``chunks`` until it
    is empty or ``stop`` is set. ``wait_first(futures)`` returns (done, not done) once one is done."""

    def next_future() -> Any:
        task = None if stop is not None and stop.is_set() else chunks.take()
        return None if task is None else submit(task)

    in_flight = {f for f in (next_future() for _ in range(in_flight_limit)) if f is not None}
    while in_flight:
        done, in_flight = wait_first(in_flight)
        in_flight = set(in_flight)
        for future in done:
            yield future.result()
            following = next_future()
            if following is not None:
                in_flight.add(following)


WORKER_START_METHODS = ("auto", "fork", "spawn")


def _why_not_fork() -> str | None:
    """Why this process should not fork its local workers now, or None when it may.

    Forking copies only the calling thread. Python threads of this process (a server, a caller's
    pool) could hold locks the child then waits on forever; numba's OpenMP pool, once running, is
    refused in a child by numba itself. The native pools of OpenBLAS, Arrow and jemalloc handle a
    fork themselves, and OpenMP pools are used single-threaded in the child (``start_forked_worker``).
    """
    if sys.platform != "linux":
        return "fork is used on Linux only"
    if threading.active_count() > 1:
        return f"{threading.active_count() - 1} other Python thread(s) are running"
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if parallel is not None and getattr(parallel, "_is_initialized", False):
        return "numba's thread pool is running"
    return None


def _local_start_method(requested: str) -> str:
    """'fork' or 'spawn' for ``requested`` ('auto': fork where it is safe, see ``_why_not_fork``)."""
    if requested not in WORKER_START_METHODS:
        raise InvalidRequest(f"worker start must be one of {', '.join(WORKER_START_METHODS)}, got {requested!r}",
                             field="worker_start")
    if requested == "spawn":
        return "spawn"
    reason = _why_not_fork()
    if reason is None:
        return "fork"
    if requested == "fork":
        raise InvalidRequest(f"cannot fork local workers here: {reason}", field="worker_start")
    log.info("local workers are spawned, not forked: %s", reason)
    return "spawn"


def _start_local_workers(n: int, method: str, models_dir: Path, model: str, version: str,
                         audited: bool) -> ProcessPoolExecutor:
    """``n`` worker processes, started at once.

    Spawned, each imports the stack and loads the model (``start_local_worker``, ~2 s on 2 cores)
    while this process reads the table and explains its first chunk. Forked, they start with this
    process's imports and only load the model and build the explainer (~0.7 s), as this process
    does; on a 15k-claim table that is most of the difference between one worker and two.
    """
    if method == "fork":
        pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork"),
                                   initializer=start_forked_worker, initargs=(str(models_dir), model, version, audited))
        with warnings.catch_warnings():
            # Python warns about forking a process with threads; the only ones here are native
            # pools that survive a fork (see _why_not_fork), and the children use OpenMP single-threaded.
            warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
            # Frozen, what the children inherit is outside their collector's generations: their
            # collections never touch (and so never copy) those pages. This process thaws at once.
            gc.freeze()
            release_free_heap()
            try:
                pool.submit(os.getpid)  # forks all n processes now, before this process starts threads
            finally:
                gc.unfreeze()
        return pool
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=start_local_worker,
                               initargs=(str(models_dir), model, version, audited))
    for _ in range(n):  # a process is spawned per task submitted while none is idle
        pool.submit(os.getpid)
    return pool


def release_free_heap() -> bool:
    """Hand the C heap's free pages back to the OS (glibc's ``malloc_trim``); False where there is
    no such call (another C library) or nothing was released.

    Called just before forking the local workers: loading the model leaves free memory in the heap
    (8.5 MiB of a 305 MiB process with fraud_oracle's 500-tree model), which both processes then reuse. Shared with a child, each of those pages is copied by
    whichever process writes it first (and by the other one too, later); released, it comes back as
    a fresh page to each. Two-worker runs on 15,420 fraud_oracle claims were +6.6% in the median of 8
    alternated pairs (faster in 7).
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    return bool(trim(0))


@contextmanager
def _single_threaded_native_pools() -> Iterator[None]:
    """numba's kernels (in this thread) and the OpenMP / BLAS pools (XGBoost's prediction) on one
    thread, as in the worker processes. With this process's pools as wide as the machine
    next to a busy worker process, both ran about 1.8x slower per chunk (fraud_oracle, 2 cores)."""
    import numba
    from threadpoolctl import threadpool_limits

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        numba.set_num_threads(threads)


def _local_outcomes(tasks: Sequence[ChunkTask], pool: ProcessPoolExecutor, n_processes: int
                    ) -> Iterator[ChunkOutcome]:
    """Local workers: this process and the ``n_processes`` of ``pool``, on one queue of chunks.

    This process has the stack imported and the model loaded, so it explains chunks from the
    start; the worker processes join as soon as they are up (on a short table, they may get none).
    """
    chunks = _ChunkQueue(tasks)
    finished: queue.SimpleQueue[ChunkOutcome | BaseException | None] = queue.SimpleQueue()
    stop = threading.Event()

    def feed_processes() -> None:
        try:
            # One chunk per process in flight: a process still starting up holds back no chunk
            # that this process could be explaining meanwhile.
            for outcome in _submitted_outcomes(partial(pool.submit, explain_chunk),
                                               partial(futures_wait, return_when=FIRST_COMPLETED), chunks,
                                               n_processes, stop):
                finished.put(outcome)
        except BaseException as error:  # handed to the driver, which raises it
            finished.put(error)
        finally:
            finished.put(None)

    feeder = threading.Thread(target=feed_processes, name="risklens-local-workers", daemon=True)
    feeder.start()
    processes_done = False

    def collect(block: bool) -> Iterator[ChunkOutcome]:
        nonlocal processes_done
        while not processes_done and (block or not finished.empty()):
            item = finished.get()
            if item is None:
                processes_done = True
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    with _single_threaded_native_pools():  # the worker processes have the other cores
        try:
            while (task := chunks.take()) is not None:
                yield explain_chunk(task)
                yield from collect(block=False)
            yield from collect(block=True)
        finally:
            stop.set()
            feeder.join()
            close_stores()


def _iter_outcomes(tasks: Sequence[ChunkTask], scheduler: str, workers: int,
                   local_pool: ProcessPoolExecutor | None) -> Iterator[ChunkOutcome]:
    """Chunks explained in this process (and ``local_pool``'s processes), or on a Dask cluster, as they finish."""
    if not tasks:
        return
    if scheduler == "local":
        if local_pool is not None:
            yield from _local_outcomes(tasks, local_pool, workers - 1)
            return
        try:
            for task in tasks:
                yield explain_chunk(task)
        finally:
            close_stores()
        return
    from distributed import Client
    from distributed import wait as dask_wait

    client = Client(scheduler)
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or workers)
        yield from _submitted_outcomes(partial(client.submit, explain_chunk, pure=False),
                                       partial(dask_wait, return_when="FIRST_COMPLETED"), _ChunkQueue(tasks),
                                       2 * n_workers)  # two per worker: one runs while the next travels
    finally:
        if tasks[0].audit_url:
            client.run(close_stores, tasks[0].audit_url)
        client.close()


def _write_checkpoint(out: Path, total: int, done: set[int], explained: int, rejected: int) -> None:
    state = {"chunks_total": total, "chunks_done": len(done), "explained": explained, "rejected": rejected,
             "complete": len(done) == total, "updated_at": datetime.now(UTC).isoformat()}
    _atomic_write_bytes(out / CHECKPOINT_FILE, json.dumps(state, indent=2).encode())


def _merge(out: Path, n_chunks: int, read: dict[int, pa.Table] | None = None) -> tuple[int, int]:
    """claims.parquet and rejects.csv from the committed chunks, in source row order.

    ``read``: chunk files already read during the run (by index); the others are read here.
    """
    read = read or {}
    read_tables = [read[i] if i in read else pq.read_table(chunk_file(out, i)) for i in range(n_chunks)]
    tables = [t for t in read_tables if t.num_rows]
    if tables:
        claims = pa.concat_tables(tables, promote_options="default")
        rows = claims["row"]
        # Chunks hold row ranges in chunk order, so the concatenation is usually sorted already.
        if len(rows) > 1 and not pc.all(pc.greater(rows[1:], rows[:-1])).as_py():
            claims = claims.sort_by("row")
    else:  # nothing explained (an empty table, or every row rejected): no rows, the same columns
        claims = read_tables[0]
    write_parquet(claims, out / CLAIMS_FILE)
    reject_files = [chunk_file(out, i, "rejects") for i in range(n_chunks)]
    rejects = ([pd.read_parquet(f) for f in reject_files if pq.read_metadata(f).num_rows]
               or [pd.read_parquet(reject_files[0])])
    rejects_frame = pd.concat(rejects, ignore_index=True)
    rejects_frame = rejects_frame.sort_values("row", kind="stable")
    rejects_frame.to_csv(out / REJECTS_FILE, index=False)
    return claims.num_rows, len(rejects_frame)


def run_audit(config: AuditRunConfig, settings: Settings | None = None) -> AuditRunResult:
    """Explain every row of ``config.data`` with ``config.model``; resumable in ``config.out``."""
    settings = settings or Settings()
    if config.chunk_size < 1:
        raise InvalidRequest("chunk size must be at least 1", field="chunk_size")
    if config.workers < 1:
        raise InvalidRequest("workers must be at least 1", field="workers")
    if config.sample < 0:
        raise InvalidRequest("sample must be 0 (every claim) or a positive number of claims", field="sample")
    if config.scheduler != "local" and not config.scheduler.startswith(DASK_SCHEMES):
        raise InvalidRequest(f"scheduler must be 'local' or a Dask address like tcp://HOST:PORT, got "
                             f"{config.scheduler!r}", field="scheduler")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise InvalidRequest(f"--out {out} is a file, not a directory", field="out")
    models_dir = Path(config.models_dir).resolve()
    audit_url = _audit_url(config, settings)
    audited = audit_url is not None
    local_workers = config.workers - 1 if config.scheduler == "local" else 0
    start_method = _local_start_method(config.worker_start) if local_workers else ""
    # Spawned workers start first: their imports and model load overlap this process's own.
    local_pool = (_start_local_workers(local_workers, "spawn", models_dir, config.model, config.version, audited)
                  if start_method == "spawn" else None)
    store = None
    try:
        registry = ModelRegistry.from_directory(models_dir)
        service = ExplainService(registry, settings)
        model = registry.get(config.model, config.version)
        use_registry(str(models_dir), audited, registry)  # this process's chunks, and forked workers'
        if start_method == "fork":
            # Forked now, the workers inherit the stack this process has imported to load the model
            # (XGBoost and scikit-learn alone take over a second), and build their explainers while
            # this process reads the table; before the table read and the audit store open files
            # and start threads.
            local_pool = _start_local_workers(local_workers, "fork", models_dir, config.model, config.version,
                                              audited)
        methods = _extra_methods(config, service, model)
        explain_settings = _explain_settings(config, service)
        table = read_claims_table(Path(config.data), model.manifest, id_column=config.id_column,
                                  label_column=config.label_column)
        identity = _identity(config, model, table, methods, explain_settings, audit_url)
        _check_run(out, identity)
        if audit_url:  # before the run is claimed: a store that cannot be opened leaves no run behind
            from risklens.audit import BATCH_PAGE_SIZE, open_store

            store = open_store(audit_url, page_size=BATCH_PAGE_SIZE)  # a new trail: pages for 2,000-record commits
        (out / CHUNKS_DIR).mkdir(parents=True, exist_ok=True)
        if not (out / RUN_FILE).exists():
            _atomic_write_bytes(out / RUN_FILE, json.dumps({
                "identity": identity, "created_at": datetime.now(UTC).isoformat(), "scheduler": config.scheduler,
                "workers": config.workers, "worker_start": start_method, "ignored_columns": table.ignored_columns,
                "models_dir": str(models_dir), "library_versions": library_versions()}, indent=2).encode())
        return _run(config, out, models_dir, model, methods, explain_settings, table, store, audit_url, local_pool)
    finally:
        if local_pool is not None:
            local_pool.shutdown(cancel_futures=True)
        if store is not None:
            store.close()


def _run(config: AuditRunConfig, out: Path, models_dir: Path, model: LoadedModel, methods: tuple[str, ...],
         explain_settings: dict[str, Any], table: ClaimsTable, store: Any, audit_url: str | None,
         local_pool: ProcessPoolExecutor | None) -> AuditRunResult:
    from tqdm import tqdm

    n = len(table)
    n_chunks = max(1, -(-n // config.chunk_size))
    recovered = _recover_pending(out, store)
    done = {i for i in range(n_chunks) if chunk_file(out, i).exists()}
    if recovered:
        log.info("recovered %d chunk(s) recorded just before the previous run stopped", recovered)
    sampled = _sample_mask(n, config.sample, config.seed, methods)
    labels = table.labels

    def task(index: int) -> ChunkTask:
        lo, hi = index * config.chunk_size, min(n, (index + 1) * config.chunk_size)
        return ChunkTask(
            index=index, models_dir=str(models_dir), model=model.name, version=model.version,
            features=table.features.iloc[lo:hi], claim_ids=table.claim_ids[lo:hi],
            labels=None if labels is None else labels[lo:hi].tolist(), sampled=sampled[lo:hi].tolist(),
            methods=methods, top_k=explain_settings["top_k"], device=explain_settings["device"],
            lime_samples=explain_settings["lime_samples"], agreement_threshold=explain_settings["agreement_threshold"],
            run_seed=config.seed,
            out_dir=str(out.resolve()), audit_url=audit_url, model_sha256=model.manifest.sha256)

    def rows_in(index: int) -> int:
        return min(n, (index + 1) * config.chunk_size) - index * config.chunk_size

    todo = [i for i in range(n_chunks) if i not in done]
    resumed = len(done)
    explained = rejected = 0
    for i in done:
        explained += pq.read_metadata(chunk_file(out, i)).num_rows
        rejected += pq.read_metadata(chunk_file(out, i, "rejects")).num_rows
    if resumed:
        log.info("resuming: %d of %d chunks already done", resumed, n_chunks)
    started = time.perf_counter()
    handled = 0
    chunks_by_worker: Counter[str] = Counter()  # this run's chunks (not resumed ones), by host:pid
    first_done: tuple[float, int] | None = None  # (time, rows handled) when the first chunk finished
    bar = tqdm(total=n, initial=sum(rows_in(i) for i in done), unit="claim", unit_scale=True, smoothing=0.1,
               desc=f"explaining {model.name}", disable=not config.progress, dynamic_ncols=True)
    # Each committed chunk is read back for the final merge as it arrives, between this process's own
    # chunks and while it waits for the last ones, instead of all at the end with every other core
    # idle (reading eight fraud_oracle chunks took 0.05-0.13 s of a 0.12-0.16 s merge).
    merged: dict[int, pa.Table] = {}
    try:
        for outcome in _iter_outcomes([task(i) for i in todo], config.scheduler, config.workers, local_pool):
            os.replace(chunk_file(out, outcome.index, suffix=".pending.parquet"), chunk_file(out, outcome.index))
            merged[outcome.index] = pq.read_table(chunk_file(out, outcome.index))
            done.add(outcome.index)
            chunks_by_worker[outcome.worker] += 1
            explained += outcome.explained
            rejected += outcome.rejected
            handled += rows_in(outcome.index)
            if first_done is None:
                first_done = (time.perf_counter(), handled)
            bar.update(rows_in(outcome.index))
            bar.set_postfix(rejected=rejected, refresh=False)
            _write_checkpoint(out, n_chunks, done, explained, rejected)
    finally:
        bar.close()
    finished = time.perf_counter()
    seconds = finished - started
    warm_rate = 0.0
    if first_done is not None and handled > first_done[1] and finished > first_done[0]:
        warm_rate = (handled - first_done[1]) / (finished - first_done[0])
    n_claims, n_rejects = _merge(out, n_chunks, merged)
    _write_checkpoint(out, n_chunks, done, n_claims, n_rejects)
    head = store.head() if store is not None else None
    summary = {"explained": n_claims, "rejected": n_rejects, "chunks": n_chunks,
               "finished_at": datetime.now(UTC).isoformat(),
               "chain_head": {"sequence": head[0], "hash": head[1]} if head else None,
               "audit_store": type(store).__name__ if store is not None else None,
               "sampled_rows": int(sampled.sum()), "methods": list(methods),
               "chunks_by_worker": {"driver" if worker == worker_name() else worker: count
                                    for worker, count in sorted(chunks_by_worker.items())}}
    _atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
    result = AuditRunResult(out=out, claims_path=out / CLAIMS_FILE, rejects_path=out / REJECTS_FILE,
                            report_path=None, explained=n_claims, rejected=n_rejects, chunks_total=n_chunks,
                            chunks_resumed=resumed, seconds=seconds,
                            claims_per_second=handled / seconds if seconds > 0 and handled else 0.0,
                            warm_claims_per_second=warm_rate, chain_head=head)
    log.info("audit run done: %d explained, %d rejected, %.1f claims/s; chunks by worker: %s", n_claims, n_rejects,
             result.claims_per_second, summary["chunks_by_worker"])
    if config.report:
        from risklens.reports._report import build_report

        result.report_path = build_report(out, registry_dir=models_dir, table=table, pdf=config.pdf)
    return result


def run_summary(out: Path) -> dict[str, Any]:
    """run.json and summary.json of a finished run, merged (for the report and tools)."""
    run = json.loads((Path(out) / RUN_FILE).read_text())
    summary_file = Path(out) / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    return {**run, "summary": summary}



"""Start-up of local worker processes (``--workers N``): kept free of heavy imports on purpose.

A spawned worker imports this module to run ``start_local_worker`` before anything else, i.e.
before numba, XGBoost and BLAS start their thread pools, so the settings below apply. A forked
worker (``start_forked_worker``) inherits the driver's imports, and with them native pools already
configured for the machine; it narrows them to one thread instead.
"""

from __future__ import annotations

import ctypes
import multiprocessing.util
import os
import signal
import sys

# Several worker processes each running a native pool as wide as the machine only fight over the cores.
_NATIVE_POOLS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _die_with_the_driver() -> None:
    """Be killed when the driver dies (Linux). A worker left running after ``kill -9`` of the driver
    could record a chunk's audit entries after the rerun had already discarded that chunk's pending
    file and queued it again: the claims would be recorded twice."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    driver = multiprocessing.parent_process()
    if driver is not None and os.getppid() != driver.pid:  # the driver died before the request took effect
        os._exit(1)


def start_local_worker(models_dir: str, model: str, version: str, audited: bool) -> None:
    """Initializer of a local worker process: single-threaded native pools, then the stack imported
    and the model loaded (before the first chunk arrives); audit stores closed at exit."""
    _die_with_the_driver()
    os.environ.update({name: "1" for name in _NATIVE_POOLS})
    _ready_for_chunks(models_dir, model, version, audited)


def start_forked_worker(models_dir: str, model: str, version: str, audited: bool) -> None:
    """Initializer of a local worker forked from the driver: one thread in every native pool, the
    model loaded and its explainer built (before the first chunk arrives), audit stores closed at exit.

    One thread is also what makes the fork safe for OpenMP: GNU libgomp keeps no record of a fork,
    and a child that asks an OpenMP pool the parent had running for more than one thread waits for
    threads that do not exist (XGBoost's prediction hung so in a test). With one thread, no pool
    thread is ever woken. numba's own pool is never running in the parent when it forks
    (``risklens.reports._runner`` checks), so the child starts its own.
    """
    import numba
    from threadpoolctl import threadpool_limits

    _die_with_the_driver()
    threadpool_limits(limits=1)
    numba.set_num_threads(1)
    _ready_for_chunks(models_dir, model, version, audited)


def _ready_for_chunks(models_dir: str, model: str, version: str, audited: bool) -> None:
    """The model loaded and its explainer built before the first chunk arrives; stores closed at exit."""
    multiprocessing.util.Finalize(None, _close_stores, exitpriority=10)
    from risklens.reports._worker import warm_up

    warm_up(models_dir, model, version, audited)


def _close_stores() -> None:
    worker = sys.modules.get("risklens.reports._worker")
    if worker is not None:
        worker.close_stores()

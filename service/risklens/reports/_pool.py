"""Start-up of local worker processes (``--workers N``): kept free of heavy imports on purpose.

A spawned worker imports this module to run ``start_local_worker`` before anything else, i.e.
before numba, XGBoost and BLAS start their thread pools, so the settings below apply.
"""

from __future__ import annotations

import multiprocessing.util
import os
import sys

# Several worker processes each running a native pool as wide as the machine only fight over the cores.
_NATIVE_POOLS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def start_local_worker(models_dir: str, model: str, version: str, audited: bool) -> None:
    """Initializer of a local worker process: single-threaded native pools, then the stack imported
    and the model loaded (before the first chunk arrives); audit stores closed at exit."""
    os.environ.update({name: "1" for name in _NATIVE_POOLS})
    multiprocessing.util.Finalize(None, _close_stores, exitpriority=10)
    from risklens.reports._worker import warm_up

    warm_up(models_dir, model, version, audited)


def _close_stores() -> None:
    worker = sys.modules.get("risklens.reports._worker")
    if worker is not None:
        worker.close_stores()

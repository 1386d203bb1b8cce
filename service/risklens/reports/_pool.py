"""Start-up of local worker processes (``--workers N``): kept free of heavy imports on purpose.

A spawned worker imports this module to run ``start_local_worker`` before it unpickles its first
chunk, i.e. before numba, XGBoost and BLAS start their thread pools, so the settings below apply.
"""

from __future__ import annotations

import multiprocessing.util
import os
import sys

# Several worker processes each running a native pool as wide as the machine only fight over the cores.
_NATIVE_POOLS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def start_local_worker() -> None:
    """Initializer of a local worker process: single-threaded native pools; audit stores closed at exit."""
    os.environ.update({name: "1" for name in _NATIVE_POOLS})
    multiprocessing.util.Finalize(None, _close_stores, exitpriority=10)


def _close_stores() -> None:
    worker = sys.modules.get("risklens.reports._worker")
    if worker is not None:
        worker.close_stores()

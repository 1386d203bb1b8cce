"""The serial CPU kernels compiled ahead of time (``numba.pycc``) at set-up (``make setup``).

Why: before numba's JIT runs any kernel in a process, even one it loads from its cache, it sets up
its typing and target contexts: 0.4-0.6 s on a 2-core VM. Every local worker of a batch audit run,
every server start and every CLI call paid that. The same Python kernels of ``_cpu`` are compiled
into an extension module by ``build`` (which ``make setup`` runs), for this machine's CPU;
importing it costs a few milliseconds. It serves the structure, the one-claim kernel and, where
kernels run on one thread (batch workers), the row-block and prediction kernels. The multi-threaded
kernels, the interaction and interventional kernels and a deeper one-claim rule than built stay on
the JIT.

The module is used only when its stamp matches: the sha256 of the kernels' sources and of this
CPU's identity (``/proc/cpuinfo`` flags; the code uses the host's vector instructions). Otherwise
the JIT serves and a warning says how to rebuild. Results are bit-for-bit those of the JIT kernels
(tests/trees/test_treeshap_aot.py).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import platform
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

MODULE = "_treeshap_aot"
HERE = Path(__file__).resolve().parent
STAMP_FILE = HERE / f"{MODULE}.stamp"
# The one-claim kernel unrolls its quadrature rule, so it is built once per rule length: enough
# Gauss-Legendre nodes for trees whose paths use up to 2 * FEW_ROWS_MAX_NODES distinct features.
FEW_ROWS_MAX_NODES = 8
_SOURCES = ("_cpu.py", "_ensemble.py", "_aot.py")


def _cpu_identity() -> str:
    """What the compiled code depends on besides its source: the architecture and vector units."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}|{flags}"


def stamp() -> str:
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((HERE / name).read_bytes())
    digest.update(_cpu_identity().encode())
    return digest.hexdigest()


@cache
def load() -> ModuleType | None:
    """The compiled kernels, or None (the JIT serves) when they were not built or are stale."""
    try:
        built = STAMP_FILE.read_text().strip()
    except FileNotFoundError:
        log.info("ahead-of-time TreeSHAP kernels not built; numba's JIT serves (run `make setup` to build them)")
        return None
    if built != stamp():
        log.warning("ahead-of-time TreeSHAP kernels were built from other sources or for another CPU; numba's "
                    "JIT serves until they are rebuilt (`make setup`)")
        return None
    try:
        return importlib.import_module(f"{__package__}.{MODULE}")
    except ImportError as error:
        log.warning("ahead-of-time TreeSHAP kernels could not be loaded (%s); numba's JIT serves", error)
        return None


def _signatures() -> dict[str, tuple[object, str]]:
    """Exported name -> (Python kernel, numba signature). Array arguments are C-contiguous."""
    from risklens.trees import _cpu

    i4, i8, f8, b1 = "i4[::1]", "i8[::1]", "f8[::1]", "b1[::1]"
    f8_2d = "f8[:, ::1]"
    # numeric, thr_lt, kind, threshold, default_left, nan_mode, cat_start, cat_end, cats, cat_in_left, value
    split = f"{b1}, {f8}, i1[::1], {f8}, {b1}, i1[::1], {i4}, {i4}, {f8}, {b1}, {f8}"
    # edge_feature, is_left, zm, inv_zm, prev
    edges = f"{i4}, {b1}, {f8}, {f8}, {i4}"
    kernels: dict[str, tuple[object, str]] = {
        "structure": (_cpu._structure.py_func,
                      f"Tuple(({i4}, {b1}, {f8}, {i4}, {i4}))({i4}, {i4}, {i4}, {f8}, {i8})"),
        "fill_all_hot_tables": (_cpu._fill_all_hot_tables.py_func,
                                f"void({i8}, {f8}, {i4}, {f8_2d}, {f8_2d}, {f8_2d}, {f8_2d})"),
        "predict": (_cpu._predict_impl, f"{f8}({f8_2d}, f8, {i8}, {i4}, {i4}, {i4}, {split})"),
        "shap_blocks": (_cpu._shap_impl,
                        f"void({f8_2d}, {f8_2d}, i8, {i8}, {i4}, {i4}, {i4}, {split}, {edges}, {i4}, "
                        f"{f8_2d}, {f8_2d}, {f8_2d}, {f8_2d}, b1, i8, i8)"),
    }
    for n in range(1, FEW_ROWS_MAX_NODES + 1):
        rule = f"UniTuple(f8, {n})"
        kernels[f"shap_few_rows_{n}"] = (
            _cpu._shap_few_rows.py_func,
            f"void({f8_2d}, {f8_2d}, {rule}, {rule}, {i8}, {i4}, {i4}, {i4}, {split}, {edges}, i8)")
    return kernels


def ensure_built(output_dir: Path = HERE) -> bool:
    """Compile the kernels unless the ones in ``output_dir`` are current; True when it compiled."""
    from importlib.machinery import EXTENSION_SUFFIXES

    stamp_file = Path(output_dir) / STAMP_FILE.name
    built = [p for p in Path(output_dir).glob(f"{MODULE}.*") if p.name.endswith(tuple(EXTENSION_SUFFIXES))]
    if built and stamp_file.is_file() and stamp_file.read_text().strip() == stamp():
        return False
    print("compiling the TreeSHAP kernels ahead of time (about 30 s)", file=sys.stderr)
    build(output_dir)
    return True


def build(output_dir: Path = HERE) -> Path:
    """Compile the kernels into ``output_dir`` (the package directory) and write the stamp."""
    from importlib.machinery import EXTENSION_SUFFIXES

    from numba.pycc import CC

    stamp_file = Path(output_dir) / STAMP_FILE.name
    stamp_file.unlink(missing_ok=True)  # a failed build leaves no stamp, so the JIT serves
    compiler = CC(MODULE)
    compiler.output_dir = str(output_dir)
    compiler.target_cpu = "host"  # the row-block kernel is SIMD code: 26 us a row instead of 52-62 generic
    compiler.verbose = False
    for name, (kernel, signature) in _signatures().items():
        compiler.export(name, signature)(kernel)
    compiler.compile()
    stamp_file.write_text(stamp() + "\n")
    built = next(p for p in Path(output_dir).glob(f"{MODULE}.*") if p.name.endswith(tuple(EXTENSION_SUFFIXES)))
    log.info("built %s", built)
    return built

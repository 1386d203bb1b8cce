"""What the test machine can build: a compiled part may be missing only where it could not be built."""

from __future__ import annotations

import shutil
import sysconfig


def c_compiler() -> str | None:
    """Path of the C compiler Python's build tools use (setuptools' extensions, numba.pycc), or None."""
    command = (sysconfig.get_config_var("CC") or "cc").split()
    return shutil.which(command[0]) if command else None

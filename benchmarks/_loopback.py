"""Loopback helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``; ``make bench``
runs every script whose name starts with a letter, so not this one)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it; the server started next binds it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

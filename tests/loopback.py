"""Loopback helpers for tests that start servers in other processes.

A module of its own, not ``conftest``: every test folder has a ``conftest``, so importing one by
name picks whichever was imported first.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it; the server started next binds it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

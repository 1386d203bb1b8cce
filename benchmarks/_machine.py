"""What the machine was doing during a benchmark: on a shared VM the same run is slower when the
hypervisor gives the CPUs to other guests ("steal" time)."""

from __future__ import annotations

from pathlib import Path


def cpu_ticks() -> list[int] | None:
    """The machine's CPU time counters (/proc/stat's first line), or None where there is none."""
    try:
        return [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None


def steal_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """Of the CPU time that passed between two ``cpu_ticks``, the share the hypervisor gave to
    other guests (steal, the eighth counter)."""
    if not before or not after or len(before) < 8:
        return None
    spent = [b - a for a, b in zip(before, after)]
    return spent[7] / sum(spent) if sum(spent) else None


def steal_note(share: float | None) -> str:
    """`` [steal 3%]`` for a table row, or nothing where it could not be read."""
    return "" if share is None else f" [steal {share:.0%}]"

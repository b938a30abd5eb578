"""The CPU cores a process may use, and an equal share of them: the one core-count helper.

Importable without torch (the ONNX Runtime paths and the region workers never import it).
Two processes that each start every core's threads on the same cores do not run at half speed
but far slower (benchmarks/README.md), so every place that starts processes or sets threads
takes its share from here.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on: its affinity (a container's or a batch job's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def core_share(processes: int, cores: int | None = None) -> int:
    """An equal share of ``cores`` (default: :func:`available_cores`) per process or task thread, at least 1."""
    total = available_cores() if cores is None else cores
    return max(1, total // max(1, processes))

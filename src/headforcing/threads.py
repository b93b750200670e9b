"""CPU threads: how many, and how they wait.

On a machine that other jobs keep busy, PyTorch's OpenMP threads used to spin while they waited
for each other at every parallel region; a thread whose core was taken by another job held the
rest spinning, and a 26 s run took 10.5 min with 8x the CPU time (docs/threads.md). Two choices
fix that:

- ``OMP_WAIT_POLICY=PASSIVE``: a waiting thread sleeps instead of spinning. OpenMP reads it once,
  when PyTorch loads it, so the command line sets it before it imports torch, and only when the
  user did not set it (:func:`passive_wait_by_default`).
- the thread count: the CPUs this process may run on (its affinity mask and its cgroup quota,
  which ``torch.get_num_threads()`` ignores inside containers), at most PyTorch's own default;
  ``--threads N`` overrides it (:func:`set_threads`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def passive_wait_by_default(environ=os.environ) -> None:
    """Let OpenMP threads sleep while they wait, unless the user chose a wait policy; call it
    before the first ``import torch`` (later, OpenMP has read its settings already)."""
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus or 1)


def set_threads(requested: int | None) -> int:
    """Set PyTorch's intra-op threads: ``requested``, or the available CPUs capped at
    PyTorch's default (physical cores); returns the count."""
    import torch

    if requested is not None and requested < 1:
        raise ValueError(f"--threads {requested}: give a count >= 1")
    count = requested or min(torch.get_num_threads(), available_cpus())
    torch.set_num_threads(count)
    return count

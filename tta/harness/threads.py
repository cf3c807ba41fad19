"""How many CPU threads a run uses, and why.

torch's default is the number of cores of the machine, which ignores the CPU affinity mask
(taskset, cgroups, SLURM) and oversubscribes a machine shared with another job: on 2 cores
beside another job, 2 threads ran at 66 images/s and 1 thread at 343. The default here is
an explicit `OMP_NUM_THREADS`, else the CPUs this process may run on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def default_threads() -> tuple[int, str]:
    """(threads, why): `OMP_NUM_THREADS` when set to a positive integer, else the affinity
    mask's CPU count where the platform has one, else `os.cpu_count()`."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value > 0:
            return value, "OMP_NUM_THREADS"
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0))), "affinity mask"
    return max(1, os.cpu_count() or 1), "cpu count"


def choose_threads(threads: int | None) -> tuple[int, str]:
    """(threads, why) for `--threads N` (explicit) or None (`default_threads`)."""
    if threads is None:
        return default_threads()
    if threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {threads}")
    return threads, "--threads"


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """`torch.set_num_threads(threads)` for the block, the previous count restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

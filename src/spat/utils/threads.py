"""How many CPU threads one process should use, and setting it.

PyTorch starts one OpenMP thread per core in every process. Two or three processes on the same
cores then spin against each other (on a 2-core machine three ``spat train`` at once ran 20–45×
slower than one alone). The rule here: an explicit ``--threads`` wins; else an ``OMP_NUM_THREADS``
already in the environment (a scheduler such as SLURM, or the user, set it); else the cores this
process may run on (``os.sched_getaffinity``) minus the ones already busy (the 1-minute load
average, rounded), at least 1. Library code never calls this by itself: the command line does,
and the study's workers set their own share.
"""

from __future__ import annotations

import os

from spat.errors import SpatError

#: Environment variables that OpenMP/MKL/OpenBLAS read when they start (child processes).
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where the
    platform has no affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def busy_cores() -> int:
    """Cores busy with other work now: the 1-minute load average, rounded (0 if unknown)."""
    try:
        return int(round(os.getloadavg()[0]))
    except (AttributeError, OSError):  # pragma: no cover
        return 0


def default_threads() -> tuple[int, str]:
    """The thread count for one process and why: ``(n, reason)`` (see the module docstring)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n >= 1:
            return n, "OMP_NUM_THREADS"
    cores = available_cores()
    free = max(1, cores - busy_cores())
    if free < cores:
        return free, f"{cores} cores, {cores - free} busy (load average)"
    return cores, f"{cores} cores"


def resolve_threads(requested: int | None) -> tuple[int, str]:
    """``requested`` (``--threads``; must be >= 1) or :func:`default_threads`."""
    if requested is None:
        return default_threads()
    if requested < 1:
        raise SpatError(f"--threads must be >= 1, got {requested}")
    return int(requested), "--threads"


def set_threads(n: int, *, environ: bool = True) -> None:
    """Use ``n`` intra-op threads in this process (``torch.set_num_threads``) and, with
    ``environ``, export ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` so that
    child processes start with the same count."""
    if n < 1:
        raise SpatError(f"thread count must be >= 1, got {n}")
    if environ:
        for var in THREAD_ENV_VARS:
            os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)


def apply_threads(requested: int | None) -> tuple[int, str]:
    """Resolve and set the thread count of a command; returns ``(n, reason)``."""
    n, why = resolve_threads(requested)
    set_threads(n)
    return n, why

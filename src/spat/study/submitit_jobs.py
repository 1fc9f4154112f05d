"""Beyond one machine: cells as submitit jobs (SLURM; ``cluster = "local"`` runs the same jobs
as local subprocesses, which is how CI tests this path).

Why submitit and not Ray: the cells are independent batch jobs of minutes to hours, which is
exactly what a SLURM array does; submitit is a small pure-Python package (its only dependencies
are cloudpickle and typing-extensions) that pickles a function call into a job and brings back
its result, with requeue on pre-emption. Ray would need a running cluster and a large
dependency for no gain on this workload. We write no scheduler of our own: submitit submits,
SLURM schedules, and each job is the same :func:`spat.study.cell.run_cell` the local pool runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spat.errors import SpatError
from spat.study.pool import StudyProgress, _log_name, dataclasses_asdict, finish_record
from spat.study.spec import Cell, EngineSpec
from spat.utils.threads import THREAD_ENV_VARS
from spat.validation import one_line

Log = Callable[[str], None]


def require_submitit() -> Any:
    """The submitit module, or a one-line error saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise SpatError("engine 'submitit' needs the submitit package: "
                        "pip install 'spat[slurm]'") from None
    return submitit


def run_submitit(cells: Sequence[Cell], engine: EngineSpec, folder: Path, log_dir: str, *,
                 workers: int, threads: int, log: Log = print,
                 progress: StudyProgress | None = None, poll_s: float = 0.5,
                 on_record: Callable[[dict[str, Any]], None] | None = None
                 ) -> list[dict[str, Any]]:
    """One submitit job per cell. On SLURM every job is submitted at once (an array, at most
    ``engine.array_parallelism`` running); with the local or debug cluster at most ``workers``
    jobs run at a time, each with ``threads`` threads."""
    submitit = require_submitit()
    from spat.study.cell import run_cell

    try:
        ex = submitit.AutoExecutor(folder=str(folder), cluster=engine.cluster)
    except (RuntimeError, ValueError) as e:
        raise SpatError(f"submitit cannot use cluster {engine.cluster!r}: "
                        f"{' '.join(str(e).split())} (without SLURM, set [engine] "
                        f"cluster = \"local\" to run the jobs as local processes)") from None
    params: dict[str, Any] = {"timeout_min": engine.timeout_min,
                              "cpus_per_task": engine.cpus_per_job or threads,
                              "name": "spat-study"}
    if engine.gpus_per_job:
        params["gpus_per_node"] = engine.gpus_per_job
    if engine.mem_gb:
        params["mem_gb"] = engine.mem_gb
    if engine.cluster == "slurm":
        if engine.partition:
            params["slurm_partition"] = engine.partition
        if engine.array_parallelism:
            params["slurm_array_parallelism"] = engine.array_parallelism
    ex.update_parameters(**params)
    job_threads = engine.cpus_per_job or threads
    limit = len(cells) if engine.cluster == "slurm" else max(1, workers)
    pending = list(cells)
    running: dict[Any, Cell] = {}
    records: list[dict[str, Any]] = []
    saved = {v: os.environ.get(v) for v in THREAD_ENV_VARS}
    try:
        for v in THREAD_ENV_VARS:  # local jobs inherit the environment: threads before torch
            os.environ[v] = str(job_threads)
        while pending or running:
            while pending and len(running) < limit:
                c = pending.pop(0)
                job = ex.submit(run_cell, dataclasses_asdict(c), threads=job_threads,
                                log_path=os.path.join(log_dir, _log_name(c)))
                running[job] = c
            finished = [j for j in running if j.done()]
            if not finished:
                time.sleep(poll_s)
                continue
            for job in finished:
                c = running.pop(job)
                try:
                    rec = job.result()
                except Exception as e:  # noqa: BLE001 - a job failed or was killed
                    rec = {"key": c.key, "run_dir": c.run_dir, "stages": [],
                           "error": f"job {job.job_id} failed: {one_line(e, 300)}"}
                rec["job_id"] = str(job.job_id)
                finish_record(rec, records, on_record, progress, log)
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old
    return records

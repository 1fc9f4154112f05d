"""Run cells on this machine: W worker processes × T threads, W·T ≤ cores; one worker per GPU.

Each worker is a fresh (spawned) Python process whose OpenMP/MKL thread count is set before
torch is imported, so W workers never start W × cores spinning threads (the oversubscription
that made three concurrent ``spat train`` 20–45× slower on 2 cores). On a node with k CUDA GPUs
each of the k workers sees one GPU (``CUDA_VISIBLE_DEVICES``).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from spat.errors import SpatError
from spat.study.spec import Cell
from spat.utils.threads import THREAD_ENV_VARS, available_cores

Log = Callable[[str], None]


@dataclass(frozen=True)
class PoolPlan:
    """``workers`` processes × ``threads`` threads each; ``gpus``: one per worker (or empty)."""

    workers: int
    threads: int
    gpus: tuple[int, ...] = ()
    cores: int = 1

    def text(self) -> str:
        where = (f"one GPU each ({', '.join(f'cuda:{g}' for g in self.gpus)})" if self.gpus
                 else f"{self.cores} CPU cores")
        return f"{self.workers} workers × {self.threads} threads, {where}"


def _wants_cuda(cells: Sequence[Cell]) -> bool:
    devices = {c.config.get("device", "auto") for c in cells}
    if any(str(d).startswith("cuda") for d in devices):
        return True
    if "auto" in devices:
        import torch

        return torch.cuda.is_available()
    return False


def plan_pool(cells: Sequence[Cell], workers: int | None = None, threads: int | None = None
              ) -> PoolPlan:
    """Choose W × T: on CPU by default one single-thread worker per core (fewer workers, more
    threads each, when there are fewer cells than cores); with CUDA one worker per GPU. Given
    ``workers``/``threads`` are kept; W·T above the cores is refused on CPU."""
    cores = available_cores()
    n = max(1, len(cells))
    if _wants_cuda(cells):
        import torch

        k = torch.cuda.device_count()
        if k < 1:
            raise SpatError("the study asks for CUDA but no GPU is visible")
        w = min(workers or k, k, n)
        t = threads or max(1, cores // w)
        return PoolPlan(w, t, tuple(range(w)), cores)
    if workers is not None and threads is not None:
        if workers * threads > cores:
            raise SpatError(f"--workers {workers} × --threads {threads} = {workers * threads} "
                            f"threads on {cores} cores would oversubscribe the CPU; lower one")
        return PoolPlan(workers, threads, (), cores)
    if workers is not None:
        return PoolPlan(workers, max(1, cores // workers), (), cores)
    if threads is not None:
        if threads > cores:
            raise SpatError(f"--threads {threads} is more than the {cores} cores")
        return PoolPlan(max(1, min(n, cores // threads)), threads, (), cores)
    w = min(cores, n)
    return PoolPlan(w, max(1, cores // w), (), cores)


def _init_worker(threads: int, gpu_queue: Any) -> None:
    """Runs first in every worker: thread variables before torch is imported; one GPU."""
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(threads)
    if gpu_queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_queue.get())


class StudyProgress:
    """One progress line for the whole study: cells done and left, elapsed, ETA. A rich bar on
    a terminal (``spat.utils.progress``), plain lines otherwise (logs, CI)."""

    def __init__(self, total: int, done: int = 0, log: Log = print,
                 terminal: bool | None = None) -> None:
        self.total, self.done, self.log = total, done, log
        self.start_done = done
        self.t0 = time.perf_counter()
        from spat.utils.progress import Progress

        self._bars = Progress(total > done, description="study", extra=("{task.fields[last]}",),
                              terminal=terminal)
        self._bars.start()
        self._update = self._bars.task("study", total, completed=done, last="")

    def eta(self) -> float | None:
        ran = self.done - self.start_done
        if ran <= 0:
            return None
        return (time.perf_counter() - self.t0) / ran * (self.total - self.done)

    def advance(self, what: str, skipped: bool = False, copied: bool = False) -> None:
        """One cell finished (or failed); ``skipped``: left to another process, so it leaves
        this study's count instead (:meth:`add` brings it back if it is run here later);
        ``copied``: taken from another study in no time, so it does not count towards the
        rate that the ETA extrapolates."""
        if skipped:
            self.total -= 1
        else:
            self.done += 1
            self.start_done += copied
        if self._bars.shown:
            from rich.markup import escape

            self._update(total=self.total, advance=0 if skipped else 1, last=escape(what))
            return
        eta = self.eta()
        left = self.total - self.done
        self.log(f"study: {self.done}/{self.total} cells done, {left} left, "
                 f"elapsed {_hms(time.perf_counter() - self.t0)}"
                 + (f", ETA {_hms(eta)}" if eta is not None and left else "") + f" — {what}")

    def add(self, n: int) -> None:
        """``n`` cells come back into this study's count (left to another process before,
        now to be run here)."""
        if n <= 0:
            return
        self.total += n
        self._update(total=self.total)

    def close(self) -> None:
        self._bars.stop()


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def describe(record: dict[str, Any]) -> str:
    """``"digits/spat/seed1: trained, evaluated, analysed in 31 s"`` (or its error)."""
    if record.get("error"):
        return f"{record['key']}: FAILED ({record['error']})"
    if record.get("busy"):
        return f"{record['key']}: skipped, another process holds it ({record['busy']})"
    words = {"new": "trained", "resume": "resumed", "eval": "evaluated", "analyze": "analysed",
             "reuse": f"copied from {record.get('reused_from')}"}
    stages = ", ".join(words[s] for s in record["stages"]) or "already done"
    return f"{record['key']}: {stages} in {record.get('seconds', 0):.0f} s"


def run_local(cells: Sequence[Cell], plan: PoolPlan, log_dir: str, *, log: Log = print,
              progress: StudyProgress | None = None,
              on_record: Callable[[dict[str, Any]], None] | None = None
              ) -> list[dict[str, Any]]:
    """Run ``cells`` on a spawned process pool as ``plan`` says; returns one record per cell
    (in completion order). Cells run longest-queue-first in grid order."""
    from spat.study.cell import run_cell

    ctx = multiprocessing.get_context("spawn")
    queue = None
    if plan.gpus:
        queue = ctx.Queue()
        for g in plan.gpus:
            queue.put(g)
    records: list[dict[str, Any]] = []
    with _sigterm_as_interrupt(), \
            cf.ProcessPoolExecutor(max_workers=plan.workers, mp_context=ctx,
                                   initializer=_init_worker, initargs=(plan.threads, queue)) as ex:
        try:
            futures = {ex.submit(run_cell, dataclasses_asdict(c), threads=plan.threads,
                                 log_path=os.path.join(log_dir, _log_name(c))): c for c in cells}
            for fut in cf.as_completed(futures):
                c = futures[fut]
                try:
                    rec = fut.result()
                except Exception as e:  # noqa: BLE001 - a worker died (killed, out of memory)
                    rec = {"key": c.key, "run_dir": c.run_dir, "stages": [],
                           "error": f"worker died: {type(e).__name__}: {e}"}
                finish_record(rec, records, on_record, progress, log)
        except BaseException:
            stop_workers(ex)
            raise
    return records


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While the pool runs, SIGTERM (``kill``, a batch system's time limit) stops the study
    like Ctrl-C does: as a KeyboardInterrupt in the main thread, so the workers are stopped
    too instead of being left running. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def stop_workers(ex: cf.ProcessPoolExecutor) -> None:
    """Stop the pool now: cancel the queued cells and terminate the running workers (their
    cells stop mid-way and resume from their last checkpoint or saved attack next time)."""
    procs = list((getattr(ex, "_processes", None) or {}).values())  # shutdown() forgets them
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    ex.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.join(timeout=10)


def finish_record(rec: dict[str, Any], records: list[dict[str, Any]],
                  on_record: Callable[[dict[str, Any]], None] | None,
                  progress: StudyProgress | None, log: Callable[[str], None]) -> None:
    """A finished cell's record: kept, handed to ``on_record``, and shown (one progress step,
    or one log line without a progress bar) — the same for the local pool and the engine."""
    records.append(rec)
    if on_record is not None:
        on_record(rec)
    if progress is not None:
        progress.advance(describe(rec), skipped=bool(rec.get("busy")),
                         copied=rec.get("stages") == ["reuse"])
    else:
        log(describe(rec))


def _log_name(c: Cell) -> str:
    return f"{c.dataset}__{c.variant}__seed{c.seed}.log"


def dataclasses_asdict(c: Cell) -> dict[str, Any]:
    """A cell as a plain dict (what crosses the process boundary)."""
    return {"dataset": c.dataset, "variant": c.variant, "seed": c.seed, "run_dir": c.run_dir,
            "config": dict(c.config), "eval": dict(c.eval), "plugins": list(c.plugins),
            "reuse": list(c.reuse)}

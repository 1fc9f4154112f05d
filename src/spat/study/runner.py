"""Run a study: plan the cells, run the missing ones (local pool or submitit), aggregate."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spat.errors import SpatError
from spat.study.spec import Cell, StudySpec, plan_cells
from spat.utils.io import read_json_object_or_none

Log = Callable[[str], None]

#: Measured: forward+backward passes per second of one small_cnn on 8×8 digits, one CPU
#: thread (this project's 2-core CI machine); used only until a cell of the study finished.
REFERENCE_RATE = {("small_cnn", "digits"): 9000.0}
#: Fixed seconds per cell besides the passes (loading data, checkpoints, the evaluation's
#: bookkeeping) and for the per-run analysis (its figures), measured on digits.
CELL_OVERHEAD_S, ANALYZE_S = 3.0, 15.0


def cell_cost(cell: Cell) -> dict[str, Any]:
    """Gradient passes (forward + backward of one image) a cell needs: training (attack steps
    + the update, per epoch), the per-epoch validation attack, the final test and the
    evaluation. A rough measure of work, the same unit for every cell of one model."""
    from spat.config import config_from_dict
    from spat.data import dataset_record
    from spat.evaluation.attacks import ATTACKS

    cfg = config_from_dict(cell.config, source=cell.key).resolved()
    sizes = dataset_record(cfg.dataset).sizes  # (train, test); None: the user's npz decides
    n_train, n_test = sizes or (0, 0)
    val = int(cfg.val_size * n_train) if cfg.val_size < 1 else int(cfg.val_size)
    train_n = n_train - val
    if cfg.train_subset is not None:
        train_n = min(train_n, cfg.train_subset)
    epochs = int(cfg.epochs or 0)
    adv = 0 if cfg.method == "standard" else int(cfg.steps or 0)
    train_passes = epochs * train_n * (adv + 1)
    val_passes = epochs * val * (cfg.val_steps + 1)
    test_n = min(n_test, cfg.test_subset or n_test)
    test_passes = test_n * (cfg.test_steps + 1)
    ev = cell.eval
    eval_n = min(n_test, ev["n_examples"] or n_test)
    eval_passes = eval_n * (1 + sum(ATTACKS[a].passes() * ev["restarts"]
                                    for a in ev["attacks"]))
    return {"train_images": epochs * train_n, "passes": train_passes + val_passes
            + test_passes + eval_passes, "model": cfg.model, "dataset": cfg.dataset,
            "known_size": sizes is not None}


def _measured_rate(cells: list[Cell]) -> float | None:
    """Passes per second per worker from this study's finished cells (their records)."""
    total_p, total_s = 0.0, 0.0
    for c in cells:
        rec = Path(c.run_dir) / "study_cell.json"
        d = read_json_object_or_none(rec)
        if d is None:
            continue
        while d.get("source_record"):  # a copied cell: how long its source took to run
            d = d["source_record"]
        if d.get("seconds") and d.get("stages") and "new" in d["stages"]:
            total_p += cell_cost(c)["passes"]
            total_s += float(d["seconds"])
    return total_p / total_s if total_s > 0 else None


def dry_run(spec: StudySpec, workers: int, threads: int, log: Log = print) -> list[Cell]:
    """List the cells, their state and an estimate of their cost."""
    from spat.study.cell import cell_state, reusable_source
    from spat.study.pool import dataclasses_asdict

    cells = plan_cells(spec)
    rate = _measured_rate(cells)
    rows, todo_passes, unknown = [], 0.0, False
    for c in cells:
        try:
            state = cell_state(dataclasses_asdict(c))
        except SpatError as e:
            state = f"CONFLICT: {e}"
        if state == "new" and reusable_source(dataclasses_asdict(c)) is not None:
            state = "reuse"  # copied from another study's finished cell: no cost
        cost = cell_cost(c)
        r = rate or REFERENCE_RATE.get((cost["model"], cost["dataset"]))
        if r is not None:
            r *= threads  # a little optimistic: threads do not scale perfectly
        if state not in ("done", "reuse"):
            todo_passes += cost["passes"]
            unknown |= r is None or not cost["known_size"]
        extra = 0.0 if rate else CELL_OVERHEAD_S + (ANALYZE_S if c.eval["analyze"] else 0.0)
        est = (f"~{_dur(cost['passes'] / r + extra)}" if r and cost["known_size"] else "?") \
            if state != "reuse" else "copy"
        rows.append((c.key, c.run_dir, state, cost["train_images"], cost["passes"], est))
    log(f"study {spec.name}: {len(cells)} cells ({len(spec.datasets)} dataset(s) × "
        f"{len(spec.variants)} variant(s) × {len(spec.seeds)} seed(s)) in {spec.study_dir}")
    w = max(len(r[0]) for r in rows)
    log(f"  {'cell':<{w}}  {'state':<8} {'train images':>12} {'passes':>12}  estimate")
    for key, _, state, imgs, passes, est in rows:
        log(f"  {key:<{w}}  {state:<8} {imgs:>12,} {passes:>12,.0f}  {est}")
    copies = sum(1 for r in rows if r[2] == "reuse")
    if copies:
        log(f"{copies} cells are copied from other studies' finished cells with the same "
            f"settings (study.reuse)")
    todo = sum(1 for r in rows if r[2] not in ("done", "reuse"))
    rate_all = rate or next((REFERENCE_RATE.get((cell_cost(c)["model"], c.dataset))
                             for c in cells), None)
    if todo and rate_all and not unknown:
        extra = 0.0 if rate else CELL_OVERHEAD_S + (ANALYZE_S if spec.eval.analyze else 0.0)
        total = (todo_passes / (rate_all * threads) + todo * extra) / workers
        basis = "measured on this study" if rate else "reference rate of a 2-core CPU machine"
        log(f"{todo} cells to run on {workers} workers × {threads} threads: about "
            f"{_dur(total)} ({basis}; passes = forward+backward of one image)")
    elif todo:
        log(f"{todo} cells to run; no time estimate for this model/data until one cell "
            f"finishes (then --dry-run uses its measured rate)")
    elif not copies:
        log("every cell is done; spat study would only aggregate again")
    if spec.claims:
        log_claims(spec, cells, log)
    return cells


def log_claims(spec: StudySpec, cells: list[Cell], log: Log = print) -> None:
    """The declared claims as the finished cells judge them now, with the seeds each one's
    observed spread needs for a ±δ interval (the plan for more seeds)."""
    from spat.study.aggregate import aggregate, read_study_cells, unfinished_variants
    from spat.study.claims import evaluate_claims
    from spat.study.metrics import metric_unit
    from spat.utils.reporting import number

    results = read_study_cells(spec, cells)
    aggs, _ = aggregate(spec, results)
    log(f"claims ({sum(1 for c in spec.claims if c.family == 'primary')} primary), as the "
        f"finished cells judge them now:")
    for r in evaluate_claims(spec.claims, {(a.dataset, a.variant): a.values for a in aggs},
                             unfinished_variants(aggs)):
        c = r.claim
        need = "?" if r.seeds_needed is None else str(r.seeds_needed)
        u = metric_unit(c.metric)
        interval = ("" if math.isnan(r.low) else f" [{number(r.low, u.digits, sign=True)}, "
                    f"{number(r.high, u.digits, sign=True)}]")
        mean = number(r.mean, u.digits, sign=True)
        log(f"  {c.name}: {r.verdict}; {c.contrast} {c.metric} {mean}{interval} {u.difference} at "
            f"{100 * r.level:.4g} %, {r.n} seeds; {need} seeds for ±{c.margin:g}")


def _dur(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def engine_plan(spec: StudySpec, cells: list[Cell], kind: str, workers: int | None = None,
                threads: int | None = None) -> Any:
    """Workers × threads: the local pool's rule (W·T ≤ cores here), except for SLURM jobs,
    which run on the cluster's nodes (threads per job: ``--threads``, ``cpus_per_job`` or 1)."""
    from spat.study.pool import PoolPlan, plan_pool
    from spat.utils.threads import available_cores

    if kind == "submitit" and spec.engine.cluster == "slurm":
        t = threads or spec.engine.threads or spec.engine.cpus_per_job or 1
        return PoolPlan(workers or spec.engine.workers or len(cells), t, (), available_cores())
    return plan_pool(cells, workers or spec.engine.workers, threads or spec.engine.threads)


def seed_major(cells: list[Cell], seeds: list[int]) -> list[Cell]:
    """The run order: every dataset and variant of the first seed, then of the next, ... (stable
    otherwise), so that a study stopped early has whole seeds done — paired comparisons of
    every variant on the seeds it has — instead of some variants on every seed and others on
    none."""
    rank = {s: i for i, s in enumerate(seeds)}
    return sorted(cells, key=lambda c: rank.get(c.seed, len(rank)))


def run_study(spec: StudySpec, *, engine: str | None = None, workers: int | None = None,
              threads: int | None = None, aggregate_only: bool = False, figures: bool = True,
              progress: bool | None = None, log: Log = print, poll_s: float = 0.5
              ) -> dict[str, Any]:
    """Run the missing cells of ``spec`` and aggregate. Returns ``{files, records, failed,
    busy, plan, ...}``; cells that fail are reported (the others still run and are
    aggregated).

    Several processes may run one study file at once and share its cells: a cell that another
    live process holds (its ``RUN/.study.lock``, or a ``spat train``/``eval`` by hand) is left
    to it; when this process has run its own cells it waits for those (``poll_s``: how often
    it looks at their locks), runs any that the holder left unfinished (it died, or was
    stopped), and aggregates every cell. ``busy``: the records of the cells left to another
    process. ``records``: one per cell this session handled, the last one of each."""
    from spat.study.aggregate import aggregate, pair_differences, read_study_cells
    from spat.study.cell import cell_state, reusable_source
    from spat.study.pool import StudyProgress, dataclasses_asdict

    cells = plan_cells(spec)
    kind = engine or spec.engine.kind
    if kind not in ("local", "submitit"):
        raise SpatError(f"unknown engine {kind!r} (valid: local, submitit)")
    plan = engine_plan(spec, cells, kind, workers, threads)
    states = {c.key: cell_state(dataclasses_asdict(c)) for c in cells}  # conflicts stop here
    todo = seed_major([c for c in cells if states[c.key] != "done"], spec.seeds)
    # copies first: they take seconds and complete paired comparisons before any training
    todo.sort(key=lambda c: states[c.key] != "new"
              or reusable_source(dataclasses_asdict(c)) is None)
    study_dir = spec.study_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    log_dir = str(study_dir / "logs")
    last: dict[str, dict[str, Any]] = {}
    busy: dict[str, dict[str, Any]] = {}
    if todo and not aggregate_only:
        log(f"study {spec.name}: {len(todo)} of {len(cells)} cells to run "
            f"({len(cells) - len(todo)} done) — "
            + (plan.text() if kind == "local" else
               f"submitit ({spec.engine.cluster}), "
               + ("every cell submitted" if spec.engine.cluster == "slurm" else
                  f"{plan.workers} at a time") + f", {spec.engine.cpus_per_job or plan.threads}"
               f" thread(s) per job")
            + f"; logs in {log_dir}/")
        bar = StudyProgress(len(cells), len(cells) - len(todo), log=log, terminal=progress)
        try:
            while todo:
                for rec in _run_cells(todo, spec, kind, plan, log_dir, log, bar):
                    last[rec["key"]] = rec
                held = [last[c.key] for c in todo if last.get(c.key, {}).get("busy")]
                busy.update((r["key"], r) for r in held)
                todo = _wait_for_holders(held, {c.key: c for c in cells}, log, poll_s)
                bar.add(len(todo))
        finally:
            bar.close()
    records = list(last.values())
    results = read_study_cells(spec, cells)
    aggs, metrics = aggregate(spec, results)
    pairs = pair_differences(spec, aggs, metrics)
    files = write_outputs_locked(spec, aggs, metrics, results, figures=figures, pairs=pairs)
    failed = [r for r in records if r.get("error")]
    return {"files": files, "records": records, "failed": failed, "busy": list(busy.values()),
            "plan": plan, "results": results, "aggregates": aggs, "metrics": metrics,
            "pairs": pairs}


def _run_cells(todo: list[Cell], spec: StudySpec, kind: str, plan: Any, log_dir: str,
               log: Log, bar: Any) -> list[dict[str, Any]]:
    """One pass of ``todo`` through the engine; one record per cell."""
    if kind == "local":
        from spat.study.pool import run_local

        return run_local(todo, plan, log_dir, log=log, progress=bar, on_record=_save_record)
    from spat.study.submitit_jobs import run_submitit

    return run_submitit(todo, spec.engine, spec.study_dir / "submitit", log_dir,
                        workers=plan.workers, threads=plan.threads, log=log, progress=bar,
                        on_record=_save_record)


def _wait_for_holders(held: list[dict[str, Any]], by_key: dict[str, Cell], log: Log,
                      poll_s: float, note_s: float = 300.0) -> list[Cell]:
    """Wait until every cell in ``held`` (records of cells another process held) is let go,
    with a note per cell (and again every ``note_s`` seconds of waiting); return those the
    holder left unfinished, to run now (a holder that died or was stopped)."""
    from spat.study.cell import cell_state
    from spat.study.pool import dataclasses_asdict
    from spat.utils.lock import describe_holder, lock_holder

    again: list[Cell] = []
    for rec in held:
        key, lock = rec["key"], rec.get("busy_lock")
        holder = lock_holder(lock) if lock else None
        if holder is not None:
            t0 = noted = time.monotonic()
            log(f"study: waiting for cell {key} held by {describe_holder(holder)} "
                f"(lock {lock})")
            while (holder := lock_holder(lock)) is not None:
                time.sleep(poll_s)
                if time.monotonic() - noted >= note_s:
                    noted = time.monotonic()
                    log(f"study: still waiting for cell {key} held by "
                        f"{describe_holder(holder)} ({_dur(noted - t0)} so far)")
        cell = by_key[key]
        try:
            done = cell_state(dataclasses_asdict(cell)) == "done"
        except SpatError:
            done = False  # run it: its record will say what is wrong
        if done:
            log(f"study: cell {key} was finished by another process")
        else:
            log(f"study: cell {key} was left unfinished by its holder; running it here")
            again.append(cell)
    return again


def write_outputs_locked(spec: StudySpec, *args: Any, **kwargs: Any) -> dict[str, Path]:
    """:func:`spat.study.outputs.write_outputs` while holding ``STUDY_DIR/.lock``: two processes
    of one study that finish together write the report one after the other (waiting for each
    other), not into each other's files."""
    from spat.errors import FolderBusy
    from spat.study.outputs import write_outputs
    from spat.utils.lock import FolderLock

    lock = FolderLock(spec.study_dir, "the study report")
    while True:
        try:
            lock.acquire()
            break
        except FolderBusy:
            time.sleep(0.2)
    try:
        return write_outputs(spec, *args, **kwargs)
    finally:
        lock.release()


def _save_record(rec: dict[str, Any]) -> None:
    """``RUN/study_cell.json``: what the last study session did to this cell, and how long
    it took (``--dry-run`` estimates from it). A session that found every stage already done
    (another process finished the cell meanwhile) keeps the record of the one that did them."""
    from spat.utils.io import atomic_write_text

    run = Path(rec["run_dir"])
    if not rec.get("stages") and (run / "study_cell.json").exists():
        return
    if run.is_dir() and not rec.get("error") and not rec.get("busy"):
        atomic_write_text(run / "study_cell.json",
                          json.dumps({**rec, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                                     indent=2))

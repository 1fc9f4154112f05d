"""One cell of a study: train, evaluate, analyse — each stage skipped when its files exist and
match the cell's settings, resumed when it was interrupted.

A cell is an ordinary run directory (``spat eval``, ``spat analyze`` and ``spat compare`` work on
it). A study holds a cell by ``RUN/.study.lock`` (:func:`hold_cell`) from before it looks at the
cell's state until its last stage is written, so several ``spat study`` processes of one file
share the cells: each cell is run by one of them, the others leave it to that one.
:func:`run_cell` is what a worker process (local pool or submitit job) calls; it imports torch
only after the thread count is set, so OpenMP starts with the cell's share of the cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spat.errors import FolderBusy, SpatError
from spat.utils.io import read_json_object_or_none
from spat.utils.lock import describe_holder

if TYPE_CHECKING:
    from spat.evaluation.options import EvalOptions

#: The lock file by which a study holds a cell (beside the run's own ``.lock``, which
#: ``spat train`` takes inside it; ``spat eval`` locks ``RUN/eval/.lock``).
CELL_LOCK = ".study.lock"

#: Config fields that may differ between the study file and a finished cell without making it
#: stale (where it ran, not what it computed).
IGNORED_FIELDS = ("device", "out_dir", "name", "tensorboard", "compile")


def config_mismatch(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Settings whose saved (resolved) value differs from the wanted (resolved) one: a finished
    cell is stale iff one of them does. The wanted config holds exactly what affects the cell
    (a resolved config holds its method's own hyperparameters only, so another method's
    ``beta`` in an old config.json is no difference). A key the saved config lacks (recorded
    before the setting existed) meant its default, with no list per setting: a method
    hyperparameter's method class default, else TrainConfig's field default
    (:func:`spat.config.recorded_default`)."""
    from spat.config import recorded_default

    method = str(wanted.get("method"))
    return sorted(k for k in wanted if k not in IGNORED_FIELDS
                  and saved.get(k, recorded_default(k, method)) != wanted[k])


def eval_options(ev: Mapping[str, Any]) -> EvalOptions:
    """The :class:`~spat.evaluation.options.EvalOptions` of a cell's evaluation settings (its
    ``[eval]`` table with the variant's overrides; ``which`` and ``analyze`` are the study's
    own)."""
    from spat.evaluation.options import EvalOptions
    from spat.study.spec import EVAL_OPTION_KEYS

    return EvalOptions(**{k: ev[k] for k in EVAL_OPTION_KEYS if k in ev})


def eval_matches(report: dict[str, Any] | None, ev: Mapping[str, Any],
                 trained: Mapping[str, Any]) -> bool:
    """Whether ``eval/report.json`` answers for the cell's evaluation settings ``ev``: the same
    checkpoint (``which``; a report without it: the study's) and no difference in the fields
    that change the numbers (:data:`~spat.evaluation.options.RESULT_FIELDS`), ε and norm taken
    from the run's resolved config ``trained`` where ``ev`` leaves them out, ``n_examples``
    compared as the examples it selects. A setting an older report lacks has its EvalOptions
    default (:func:`~spat.evaluation.report.report_options`); settings that change no number
    (sanity checks, progress, device) never make a cell stale."""
    from spat.evaluation.report import report_options

    saved = report_options(report) if report else None
    if saved is None or report is None or report.get("which", ev["which"]) != ev["which"]:
        return False
    of = int((report.get("subset") or {}).get("of") or report.get("n_examples") or 0)
    wanted = eval_options(ev).with_threat(float(trained["eps"]), trained["norm"]).for_split(of)
    return not wanted.result_differences(saved)


def cell_state(cell: dict[str, Any]) -> str:
    """``"done"``, ``"eval"`` (trained, evaluation missing), ``"analyze"``, ``"resume"``
    (interrupted training) or ``"new"``; a run directory made with other settings is a
    one-line :class:`SpatError`."""
    from spat.config import config_from_dict

    run = Path(cell["run_dir"])
    saved = read_json_object_or_none(run / "config.json")
    if saved is None:
        # nothing, or a creation killed before its config.json: start again
        from spat.train.folder import run_content

        if run.is_dir() and run_content(run):
            raise SpatError(f"{run} exists but holds no readable config.json (remove it to "
                            f"start this cell again)")
        return "new"
    wanted = config_from_dict(cell["config"], source=cell["run_dir"]).resolved().to_dict()
    diff = config_mismatch(saved, wanted)
    if diff:
        raise SpatError(f"{run} was trained with other settings than the study file says "
                        f"({', '.join(diff[:4])}); use another study name or out_dir, or remove "
                        f"the run")
    from spat.build import read_summary_or_none

    if read_summary_or_none(run) is None:
        return "resume"
    if not eval_matches(read_json_object_or_none(run / "eval" / "report.json"), cell["eval"],
                        wanted):
        return "eval"
    if cell["eval"].get("analyze", True) and not _analysis_fresh(run):
        return "analyze"
    return "done"


#: Files of a run that are never copied when a cell is reused: the locks of the process that
#: held it and its study's record (the copy gets its own, naming the source).
NOT_COPIED = (".lock", CELL_LOCK, "study_cell.json")


def reusable_source(cell: dict[str, Any]) -> Path | None:
    """A finished cell of another study (``cell["reuse"]``: their folders) that this cell may
    be copied from, or ``None``: one of the same dataset and seed, finished without error
    (its ``study_cell.json``), whose training settings are this cell's
    (:func:`config_mismatch`: only where and under which name it ran may differ) and whose
    evaluation answers for this cell's (:func:`eval_matches`), so that running the cell again
    would compute the same numbers (bit for bit on the same kind of CPU, see the README).
    The first such cell in the order of ``study.reuse``, then of the variant folders' names."""
    for study in cell.get("reuse") or ():
        folder = Path(study) / cell["dataset"]
        if not folder.is_dir():
            continue
        for variant in sorted(p for p in folder.iterdir() if p.is_dir()):
            src = variant / f"seed{cell['seed']}"
            rec = read_json_object_or_none(src / "study_cell.json")
            if rec is None or rec.get("error"):
                continue
            try:
                if cell_state({**cell, "run_dir": str(src)}) == "done":
                    return src
            except SpatError:  # trained with other settings: not this cell
                continue
    return None


def copy_cell(src: Path, run: Path) -> None:
    """Copy the run folder ``src`` into ``run`` (held, holding only its lock), file times
    kept (the analysis stays newer than its report), without :data:`NOT_COPIED`."""
    import shutil

    shutil.copytree(src, run, dirs_exist_ok=True, copy_function=shutil.copy2,
                    ignore=lambda _d, names: [n for n in names if n in NOT_COPIED])


def _analysis_fresh(run: Path) -> bool:
    """analysis/report.md, the last file the analysis writes (after analysis.json, the CSVs and
    the figures, so an analysis killed midway is not taken for a finished one), is newer than
    eval/report.json — or the weights are gone (a fresh clone of committed small results: file
    times are checkout times, and nothing could be recomputed)."""
    a, r = run / "analysis" / "report.md", run / "eval" / "report.json"
    if not (a.is_file() and r.is_file()):
        return False
    return a.stat().st_mtime >= r.stat().st_mtime or not (run / "checkpoints").is_dir()


@contextlib.contextmanager
def hold_cell(run: Path) -> Iterator[Any]:
    """Hold the cell whose run folder is ``run`` (``RUN/.study.lock``) for the ``with`` block:
    the folder is made for it (a new run's ``spat train`` takes a folder holding only lock
    files as empty) and removed again if it is left empty. Another live holder is a
    :class:`FolderBusy` naming it (its ``lock`` and ``holder``); a lock whose process is gone is
    taken over (the lock's ``took_over``)."""
    from spat.utils.lock import FolderLock

    if run.exists() and not run.is_dir():
        raise SpatError(f"{run} exists and is not a folder (the study's run folder of a cell)")
    for _ in range(10):
        run.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(run)
            created = True
        except FileExistsError:
            created = False
        lock = FolderLock(run, "the study cell", name=CELL_LOCK)
        try:
            lock.acquire()
            break
        except FolderBusy:
            raise
        except (SpatError, FileNotFoundError):
            if run.exists():
                raise
            # removed meanwhile by a process that gave the empty folder up: make it again
    else:
        raise SpatError(f"could not hold {run}: the folder keeps disappearing")
    try:
        yield lock
    finally:
        lock.release()
        if created:
            with contextlib.suppress(OSError):
                run.rmdir()  # only if still empty


@contextlib.contextmanager
def _redirect(log_path: str | None) -> Iterator[None]:
    if log_path is None:
        yield
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8", buffering=1) as f, \
            contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def run_cell(cell: dict[str, Any], *, threads: int | None = None, device: str | None = None,
             log_path: str | None = None) -> dict[str, Any]:
    """Train, evaluate and analyse one cell (each stage only if needed); returns a record
    ``{key, run_dir, stages, seconds, train_images, eval_images, threads, error, busy}``.

    ``threads`` sets ``torch.set_num_threads`` (and OMP/MKL variables) before any work;
    ``device`` overrides the config's device (not part of the cell's identity). Errors are
    returned in ``error`` (one line), not raised, so a worker survives a failing cell. The
    cell is held (:func:`hold_cell`) while its state is read and its stages run. A cell that
    another live process holds (a second ``spat study`` of the same file, or a
    ``spat train``/``eval`` by hand) is left to it: ``busy`` holds the one-line reason,
    ``busy_lock`` the lock file to wait for, ``holder`` its record, and ``error`` stays
    ``None``. ``took_over``: the record of a dead holder whose cell lock was taken over.
    """
    from spat.utils.threads import set_threads

    if threads is not None:
        set_threads(threads)
    t0 = time.perf_counter()
    key = f"{cell['dataset']}/{cell['variant']}/seed{cell['seed']}"
    record: dict[str, Any] = {"key": key, "run_dir": cell["run_dir"], "stages": [],
                              "error": None, "busy": None, "pid": os.getpid()}
    try:
        with _redirect(log_path):
            print(f"=== {key} ({time.strftime('%Y-%m-%d %H:%M:%S')}, pid {os.getpid()}, "
                  f"threads {threads})", flush=True)
            with hold_cell(Path(cell["run_dir"])) as lock:
                if lock.took_over is not None:
                    record["took_over"] = lock.took_over
                    print(f"took the cell over from {describe_holder(lock.took_over)}, "
                          f"which is gone", flush=True)
                from spat.utils.plugins import load_installed_plugins, load_plugins

                load_installed_plugins()  # a spawned worker or a submitit job: its own process
                load_plugins(cell.get("plugins") or ())
                _run_stages(cell, record, device)
    except FolderBusy as e:
        record["busy"] = str(e)
        record["busy_lock"] = e.lock
        record["holder"] = e.holder
    except SpatError as e:
        record["error"] = str(e)
    except Exception as e:  # noqa: BLE001 - reported per cell; the study goes on
        record["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
    import torch

    record["threads"] = torch.get_num_threads()
    record["seconds"] = time.perf_counter() - t0
    return record


def _run_stages(cell: dict[str, Any], record: dict[str, Any], device: str | None) -> None:
    from spat.config import config_from_dict
    from spat.train.training import train

    run = Path(cell["run_dir"])
    cfg = config_from_dict(cell["config"], source=record["key"])
    if device is not None:
        cfg = dataclasses.replace(cfg, device=device)
    state = cell_state(cell)
    ev = cell["eval"]
    if state == "new" and (src := reusable_source(cell)) is not None:
        copy_cell(src, run)
        print(f"copied from {src}: a finished cell of another study with this cell's "
              f"settings", flush=True)
        record["stages"].append("reuse")
        record["reused_from"] = str(src)
        record["source_record"] = read_json_object_or_none(src / "study_cell.json")
        state = cell_state(cell)
    if state in ("new", "resume"):
        t = time.perf_counter()
        result = train(cfg, resume=run if state == "resume" else None, progress=False,
                       log=print)
        record["stages"].append(state)
        record["train_seconds"] = time.perf_counter() - t
        data = read_json_object_or_none(run / "data.json") or {}
        record["train_images"] = int(data.get("train", 0)) * result.epochs
        state = "eval"
    if state == "eval":
        from spat.evaluation.evaluate_run import evaluate_run

        t = time.perf_counter()
        report, _ = evaluate_run(run, eval_options(ev), which=ev["which"], device=cfg.device,
                                 resume=True, progress=False, log=print)
        record["stages"].append("eval")
        record["eval_seconds"] = time.perf_counter() - t
        record["eval_images"] = int(report.data["n_examples"]) * (1 + len(ev["attacks"]))
        state = "analyze" if ev.get("analyze", True) else "done"
    if state == "analyze":
        from spat.analysis.analyze import collect, write_analysis

        t = time.perf_counter()
        ra = collect(run, run / "analysis", which=ev["which"], device=cfg.device,
                     features=True, log=print)
        write_analysis(ra, run / "analysis", log=print)
        record["stages"].append("analyze")
        record["analyze_seconds"] = time.perf_counter() - t

"""``spat train`` as a library call: validate a configuration, claim and fill a run directory,
train, test the best checkpoint.

:func:`train` validates the whole configuration (names, ranges, data files) *before* creating a
run directory, so bad input leaves nothing behind; then it writes ``config.json``, ``env.json``,
``metrics.jsonl``, ``checkpoints/`` and ``summary.json`` in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from spat import build
from spat import checkpoint as ckpt
from spat.config import FIELD_NAMES, TrainConfig, config_from_dict, setting_names
from spat.data import DataBundle
from spat.data.subset import subset_split
from spat.errors import SpatError
from spat.train.loop import Trainer
from spat.train.validate import evaluate_split
from spat.utils.distributed import SINGLE, DistContext
from spat.utils.env import environment, resolve_device
from spat.utils.io import atomic_write_text, read_json_object_or_none
from spat.utils.log import info as log_info
from spat.utils.log import logger
from spat.utils.progress import counting_bar
from spat.utils.rng import final_test_seed, seed_everything

Log = Callable[[str], None]


def default_run_name(cfg: TrainConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}_{cfg.dataset}_{cfg.model}_{cfg.method}_s{cfg.seed}"


#: Settings that ``spat train --resume RUN`` may change: optimisation (the NaN remedy is a lower
#: ``--lr``), length, evaluation effort and runtime. Each change is applied, written to the run's
#: config.json and recorded in RUN/resumes.jsonl. The other settings define the run (data,
#: network, method, threat model, seed, batch): changing one on resume is refused.
RESUME_OVERRIDES = ("epochs", "lr", "schedule", "momentum", "weight_decay", "nesterov",
                    "device", "amp", "channels_last", "compile", "deterministic", "data_dir",
                    "download", "val_steps", "test_steps", "test_subset", "eval_batch_size",
                    "tensorboard", "on_collapse", "plateau_epochs")
#: Options that only place a new run (ignored on resume: the run is where it is).
_PLACEMENT = ("out_dir", "name")
#: One JSON line per resume: when, from which epoch, which settings changed (old → new).
RESUMES_FILE = "resumes.jsonl"


def _resume_config(run_dir: Path, cli: TrainConfig, log: Log,
                   explicit: Collection[str] | None = None
                   ) -> tuple[TrainConfig, dict[str, dict[str, Any]]]:
    """The saved config of ``run_dir`` with the overrides the command line gives explicitly.

    ``explicit``: the settings the user gave (command line or ``--config``); ``None`` (a library
    call) means those that differ from :class:`TrainConfig`'s defaults. Returns the config and
    the changes ``{field: {"from": saved, "to": new}}``. A change of a setting outside
    :data:`RESUME_OVERRIDES` is a one-line :class:`SpatError`.
    """
    from spat.validation import read_json_object

    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise SpatError(f"cannot resume {run_dir}: it is not a run directory ({cfg_path} not "
                        f"found)")
    raw = read_json_object(cfg_path, what="run config")
    saved = config_from_dict(raw, source=str(cfg_path))
    names = setting_names()  # the fields and the method hyperparameters
    if explicit is None:
        defaults = TrainConfig()
        explicit = [k for k in names if getattr(cli, k) != getattr(defaults, k)]
    given = {k for k in explicit if k in names and k not in _PLACEMENT}
    changed = sorted(k for k in given if getattr(cli, k) != getattr(saved, k))
    fixed = [k for k in changed if k not in RESUME_OVERRIDES]
    if fixed:
        what = ", ".join(f"{k} ({getattr(saved, k)!r} → {getattr(cli, k)!r})" for k in fixed)
        raise SpatError(f"cannot change {what} when resuming {run_dir}: these settings define "
                        f"the run its checkpoints belong to (changeable on resume: "
                        f"{', '.join(k for k in RESUME_OVERRIDES if k in FIELD_NAMES)}); start a "
                        f"new run instead")
    changes = {k: {"from": getattr(saved, k), "to": getattr(cli, k)} for k in changed}
    cfg = dataclasses.replace(saved, device=cli.device,
                              **{k: getattr(cli, k) for k in changed if k != "device"})
    if changes:
        log("settings changed on resume: " + ", ".join(
            f"{k} {c['from']!r} → {c['to']!r}" for k, c in changes.items()))
    return cfg, changes


def _record_resume(run_dir: Path, raw_config: dict[str, Any], cfg: TrainConfig,
                   changes: dict[str, dict[str, Any]], from_epoch: int) -> None:
    """Write the changed settings into config.json and one line into RUN/resumes.jsonl."""
    from spat.utils.io import append_jsonl

    persisted = {k: getattr(cfg, k) for k in changes if k != "device"}
    if any(raw_config.get(k) != v for k, v in persisted.items()):
        atomic_write_text(run_dir / "config.json",
                          json.dumps({**raw_config, **persisted}, indent=2))
    append_jsonl(run_dir / RESUMES_FILE, {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from_epoch": from_epoch,
        "changes": changes, "argv": sys.argv, "pid": os.getpid(),
    })


#: What :func:`_create_run_dir` writes before ``config.json``.
_CREATION_FILES = frozenset({"env.json", "data.json"})


def run_content(run_dir: Path) -> list[Path]:
    """What a run directory holds besides a lock file. A folder without ``config.json`` that
    holds only what a new run writes before it (and hidden temporary files) is a creation that
    was killed midway, not a run: nothing, so a new run may take the folder over."""
    from spat.utils.lock import LOCK_NAME

    content = [c for c in run_dir.iterdir() if c.name != LOCK_NAME]
    if all(c.name in _CREATION_FILES or c.name.startswith(".") for c in content):
        return []
    return content


def _check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    from spat.validation import check_output_dir

    check_output_dir(run_dir.parent, "--out-dir")
    if run_dir.exists() and not run_dir.is_dir():
        raise SpatError(f"run directory {run_dir} exists and is not a directory")
    if run_dir.is_dir() and run_content(run_dir) and not overwrite:
        raise SpatError(f"run directory {run_dir} already exists "
                        f"(use --resume {run_dir} to continue it or --overwrite to replace it)")


class _Claim:
    """The run directory this process holds: its lock, and the folders it created.

    On exit the lock is released; the folders this process created (the run directory, and
    parents of it such as a new ``--out-dir``) and left empty (a refusal between the claim and
    the first file) are removed, so a refusal leaves nothing behind.
    """

    def __init__(self) -> None:
        self.held: Any = None  # a FolderClaim (new run) or a FolderLock (resume)

    def take(self, run_dir: Path, *, new: bool, overwrite: bool = False) -> None:
        """Claim ``run_dir``: for a new run ``mkdir`` (atomic: of two processes racing for
        one name, one creates it) then the lock; for a resume the lock alone."""
        from spat.utils.lock import FolderClaim, FolderLock

        if new:
            _check_new_run_dir(run_dir, overwrite)
            self.held = FolderClaim(run_dir, "the run").acquire()
        elif not run_dir.is_dir():
            raise SpatError(f"cannot resume {run_dir}: it is not a run directory (no such "
                            f"folder)")
        else:
            self.held = FolderLock(run_dir, "the run").acquire()
        if new and run_content(run_dir) and not overwrite:  # another process won the race
            raise SpatError(f"run directory {run_dir} already exists "
                            f"(use --resume {run_dir} to continue it or --overwrite to replace "
                            f"it)")

    def __enter__(self) -> _Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.held is not None:
            self.held.release()  # a FolderClaim also removes the folders it made, if empty


def _create_run_dir(run_dir: Path, files: dict[str, str]) -> None:
    """Fill the claimed (locked) ``run_dir`` with ``files`` (name -> text).

    With ``--overwrite`` the old content is moved aside first and deleted afterwards. Each file
    is written atomically, ``config.json`` last: a folder without it is not a run (resume and
    eval refuse it), so a crash in between never leaves something that looks complete.
    """
    old: Path | None = None
    content = run_content(run_dir)
    if content:
        old = run_dir.parent / f".{run_dir.name}.old.{secrets.token_hex(4)}.tmp"
        old.mkdir()
        for c in content:
            os.rename(c, old / c.name)
    try:
        for name in sorted(files, key=lambda n: n == "config.json"):
            atomic_write_text(run_dir / name, files[name])
    except BaseException:
        for name in files:
            (run_dir / name).unlink(missing_ok=True)
        if old is not None:  # put the old run back
            for c in old.iterdir():
                os.rename(c, run_dir / c.name)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _last_checkpoint(run_dir: Path) -> Path | None:
    """The folder ``last.json`` names, or None if the run has no checkpoint yet."""
    root = run_dir / "checkpoints"
    tag = ckpt.read_pointer(root, "last")
    if tag is None:
        return None
    folder = root / tag
    if not (folder / ckpt.WEIGHTS).is_file() or not (folder / ckpt.STATE).is_file():
        raise SpatError(f"cannot resume {run_dir}: {root / 'last.json'} names {tag}, which is "
                        f"missing or incomplete")
    return folder


def train(
    cfg: TrainConfig | Mapping[str, Any],
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    dist: DistContext = SINGLE,
    log: Log = log_info,
    explicit: Collection[str] | None = None,
) -> dict[str, Any]:
    """Train a model as ``cfg`` says (or resume the run at ``resume``); returns the summary.

    The run directory is claimed for the whole call: a new one is created with ``mkdir`` (of
    two processes racing for one name exactly one gets it) and ``RUN/.lock`` (pid, host) is held
    until the call ends, so a second ``spat train`` or ``--resume`` of the same run stops at
    once with one line naming the holder; a lock left by a dead process is taken over.
    ``resume`` with settings in ``explicit`` (the ones the user gave; ``None``: those differing
    from the defaults) applies those of :data:`RESUME_OVERRIDES` (lr, schedule, epochs, ...),
    writes them to config.json and records them in RUN/resumes.jsonl; changing any other
    setting on resume is refused. ``cfg`` may be a mapping of :class:`TrainConfig` fields (as in
    a TOML file or a run's ``config.json``), validated like ``--config``.
    """
    if not isinstance(cfg, TrainConfig):
        if not isinstance(cfg, Mapping):
            raise SpatError(f"a training configuration is a TrainConfig or a mapping of its "
                            f"fields, not {type(cfg).__name__}")
        cfg = config_from_dict(dict(cfg), source="the configuration")
    with _Claim() as claim:
        return _train(cfg, resume=resume, overwrite=overwrite, progress=progress, dist=dist,
                      log=log, explicit=explicit, claim=claim)


def _train(
    cfg: TrainConfig,
    *,
    resume: str | Path | None,
    overwrite: bool,
    progress: bool,
    dist: DistContext,
    log: Log,
    explicit: Collection[str] | None,
    claim: _Claim,
) -> dict[str, Any]:
    """Train a model as ``cfg`` says (or resume the run at ``resume``); returns the summary.

    Everything is validated (names, ranges, data files, the run directory, a resumed run's
    checkpoint) before anything is written: an error leaves no directory and changes no file.
    A new run directory appears atomically, complete with ``config.json``, ``env.json`` and
    ``data.json``. ``resume``: continue from the run's last checkpoint with its saved settings
    (``cfg`` contributes only ``device`` and a larger ``epochs``); a run killed before its first
    checkpoint starts over; a finished run just reports its summary again. Under torchrun
    (``dist``) every rank calls this; rank 0 alone reads and writes the run directory and
    returns the summary, the other ranks return ``{}``.
    """
    if resume is not None and overwrite:
        raise SpatError("--resume and --overwrite exclude each other (resume continues a run, "
                        "overwrite replaces it)")
    run_dir: Path
    changes: dict[str, dict[str, Any]] = {}
    if resume is not None:
        run_dir = Path(resume)
        given = cfg
        dist.on_main(lambda: claim.take(run_dir, new=False))
        cfg, changes = dist.on_main(lambda: _resume_config(run_dir, given, log, explicit))
    cfg = cfg.resolved()
    if resume is None:
        from spat.validation import check_output_dir

        check_output_dir(cfg.out_dir, "--out-dir")  # before the data is loaded
    logger.debug("resolved config: %s", json.dumps(cfg.to_dict(), sort_keys=True))
    if cfg.tensorboard:
        from spat.utils.tensorboard import require_tensorboard

        require_tensorboard()  # before anything is written
    device = resolve_device(cfg.device, dist)
    seed_everything(cfg.seed, deterministic=cfg.deterministic)
    data = build.load_data(cfg)
    model = build.model_for(cfg, data.info).to(device)  # the Trainer applies channels_last
    method = build.method_for(cfg)
    if resume is None:
        # one name for all ranks (the default name holds the time)
        run_dir = Path(dist.broadcast_object(str(Path(cfg.out_dir) /
                                                 (cfg.name or default_run_name(cfg)))))
        dist.on_main(lambda: _check_new_run_dir(run_dir, overwrite))
    # a resumed run trains with the fast path it recorded when it started (no new measurement)
    recorded = dist.on_main(lambda: _recorded_fast_path(run_dir, cfg, device)) \
        if resume is not None else None
    trainer = Trainer(cfg, data, model, method, device, run_dir=run_dir, dist=dist,
                      progress=progress, log=log, fast_path=recorded)
    if resume is not None:
        folder = dist.on_main(lambda: _last_checkpoint(run_dir))
        if folder is not None:
            trainer.load(folder)
            if ckpt.tag_epoch(folder.name) != trainer.start_epoch:  # an edited or swapped state
                raise SpatError(f"{folder / ckpt.STATE}: field 'epoch' says {trainer.start_epoch} "
                                f"epochs were trained, but it is the checkpoint of epoch "
                                f"{ckpt.tag_epoch(folder.name)}")
            if trainer.start_epoch < (cfg.epochs or 0):
                log(f"resuming {run_dir} from {folder.name} (epoch {trainer.start_epoch + 1} "
                    f"of {cfg.epochs})")
        else:
            log(f"resuming {run_dir}: no checkpoint yet, starting from epoch 1")
        if cfg.epochs is not None and cfg.epochs < trainer.start_epoch:
            raise SpatError(f"cannot resume {run_dir} to {cfg.epochs} epochs (--epochs): it has "
                            f"already trained {trainer.start_epoch}")
        trainer.prepare_resume()

        def record() -> None:  # changed settings into config.json, the session into resumes
            from spat.validation import read_json_object

            raw = read_json_object(run_dir / "config.json", what="run config")
            _record_resume(run_dir, raw, cfg, changes, trainer.start_epoch)

        if changes or trainer.start_epoch < (cfg.epochs or 0):  # a re-report writes nothing
            dist.on_main(record)
    else:
        files = {"config.json": json.dumps(cfg.to_dict(), indent=2),
                 "env.json": json.dumps({**environment(device),
                                         "fast_path": trainer.fast_path.to_dict()}, indent=2),
                 "data.json": json.dumps(_data_record(data), indent=2)}
        def create() -> None:
            claim.take(run_dir, new=True, overwrite=overwrite)
            _create_run_dir(run_dir, files)

        dist.on_main(create)
    dist.barrier()
    assert cfg.epochs is not None
    if resume is not None and trainer.start_epoch >= cfg.epochs:
        done = dist.on_main(lambda: _read_summary(run_dir))
        if done is not None:
            log(f"{run_dir} already finished all {cfg.epochs} epochs; its summary:")
            return done if dist.is_main else {}
    t0 = time.perf_counter()
    history = trainer.fit()
    train_seconds = time.perf_counter() - t0
    # Test: the best-by-validation checkpoint, clean and PGD-test_steps at the training ε,
    # sharded over the ranks. Rank 0 loads the weights and broadcasts them.
    best = dist.on_main(lambda: ckpt.resolve(run_dir, "best"))

    def load_best() -> None:
        model.load_state_dict(ckpt.load_weights(best))

    dist.on_main(load_best)
    dist.broadcast_(list(model.state_dict().values()))
    # the one subset rule: the same examples as spat eval --n-examples N --seed 0
    test = subset_split(data.test, cfg.test_subset, seed=0)
    log(f"test: clean and PGD-{cfg.test_steps} on {len(test)} examples, best checkpoint "
        f"{best.name}")
    with counting_bar(f"test PGD-{cfg.test_steps}", -(-len(test) // dist.world_size),
                      progress and dist.is_main) as advance:
        preds = evaluate_split(model, test, cfg, device, cfg.test_steps,
                               seed=final_test_seed(cfg.seed), dist=dist, on_batch=advance)
    # Every rank leaves train() together, after rank 0 has written the summary: a rank that
    # tore down its process group and exited while rank 0 was still writing aborted under load
    # ("terminate called without an active exception" from gloo in a 2-process CPU run).
    try:
        if not dist.is_main:
            return {}
        attack = next(iter(preds.adversarial))
        summary = {
            "run_dir": str(run_dir),
            "checkpoint": str(best),
            "epochs": cfg.epochs,
            "best_epoch": trainer.best_epoch + 1,
            "test_examples": len(preds),
            "test_clean_acc": preds.accuracy(None),
            "test_attack": attack,
            "test_eps": cfg.eps,
            "test_robust_acc": preds.accuracy(attack),
            "world_size": dist.world_size,
            "train_seconds_this_session": train_seconds,
            "last_epoch": history[-1] if history else None,
            # what the collapse guard reported, epoch by epoch (spat.train.guard); [] = nothing
            "guard": [g for rec in history for g in rec.get("guard", [])],
        }
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
        return summary
    finally:
        dist.barrier()


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    """``summary.json`` of a run, or None when it is missing, unreadable or not a valid
    summary (then the final test runs again and rewrites it)."""
    from spat.validation import check_summary, read_json_object

    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        return check_summary(read_json_object(path, what="run summary"), str(path))
    except SpatError as e:
        log_info(f"note: {e}; the final test runs again")
        return None


def _recorded_fast_path(run_dir: Path, cfg: TrainConfig, device: Any) -> Any:
    """The fast path in ``RUN/env.json`` for the switches still ``auto`` (explicit ones win),
    when the run was started on the same kind of device; else ``None`` (decided afresh)."""
    from spat.utils.hardware import recorded_fast_path

    env = read_json_object_or_none(run_dir / "env.json")
    if env is None or str(env.get("device", "")).split(":")[0] != device.type:
        return None
    return recorded_fast_path(env.get("fast_path"), cfg.amp, cfg.channels_last, cfg.compile,
                              device)


def _data_record(data: DataBundle) -> dict[str, Any]:
    info = data.info
    return {**dataclasses.asdict(info), "train": len(data.train), "val": len(data.val),
            "test": len(data.test)}

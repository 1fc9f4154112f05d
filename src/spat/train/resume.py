"""``spat train --resume RUN``: the saved settings merged with the ones the user changes, the
run's last checkpoint, and the record of each resume (``RUN/resumes.jsonl``)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from spat import checkpoint as ckpt
from spat.config import FIELD_NAMES, TrainConfig, config_from_dict, setting_names
from spat.errors import SpatError
from spat.train.loop import Trainer
from spat.utils.io import atomic_write_text, read_json_object_or_none

Log = Callable[[str], None]

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

#: ``{field: {"from": saved, "to": new}}``: the settings a resume changes.
Changes = dict[str, dict[str, Any]]


def resume_config(run_dir: Path, cli: TrainConfig, log: Log,
                  explicit: Collection[str] | None = None) -> tuple[TrainConfig, Changes]:
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


def record_resume(run_dir: Path, cfg: TrainConfig, changes: Changes, from_epoch: int) -> None:
    """Write the changed settings into config.json and one line into RUN/resumes.jsonl."""
    from spat.utils.io import append_jsonl
    from spat.validation import read_json_object

    raw_config = read_json_object(run_dir / "config.json", what="run config")
    persisted = {k: getattr(cfg, k) for k in changes if k != "device"}
    if any(raw_config.get(k) != v for k, v in persisted.items()):
        atomic_write_text(run_dir / "config.json",
                          json.dumps({**raw_config, **persisted}, indent=2))
    append_jsonl(run_dir / RESUMES_FILE, {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from_epoch": from_epoch,
        "changes": changes, "argv": sys.argv, "pid": os.getpid(),
    })


def last_checkpoint(run_dir: Path) -> Path | None:
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


def recorded_fast_path(run_dir: Path, cfg: TrainConfig, device: Any) -> Any:
    """The fast path in ``RUN/env.json`` for the switches still ``auto`` (explicit ones win),
    when the run was started on the same kind of device; else ``None`` (decided afresh)."""
    from spat.utils.hardware import recorded_fast_path as from_record

    env = read_json_object_or_none(run_dir / "env.json")
    if env is None or str(env.get("device", "")).split(":")[0] != device.type:
        return None
    return from_record(env.get("fast_path"), cfg.amp, cfg.channels_last, cfg.compile, device)


def continue_from(trainer: Trainer, folder: Path | None, run_dir: Path, cfg: TrainConfig,
                  log: Log) -> None:
    """Load ``trainer`` from the checkpoint ``folder`` (None: the run has none yet, it starts
    over), check that it fits ``cfg`` and tidy the run for training on
    (:meth:`Trainer.prepare_resume`)."""
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

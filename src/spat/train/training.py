"""``spat train`` as a library call, :func:`train`: validate a configuration, claim and fill a
run directory (:mod:`spat.train.folder`) or continue one (:mod:`spat.train.resume`), train
(:mod:`spat.train.loop`), test the best checkpoint (:mod:`spat.train.final_test`) and write the
:class:`~spat.build.TrainResult` (:mod:`spat.train.result`).

:func:`train` validates the whole configuration (names, ranges, data files) *before* creating a
run directory, so bad input leaves nothing behind; then it writes ``config.json``, ``env.json``,
``metrics.jsonl``, ``checkpoints/`` and ``summary.json`` in the run directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from spat import build
from spat.build import TrainResult
from spat.config import TrainConfig, config_from_dict
from spat.data import DataBundle
from spat.errors import SpatError
from spat.train.final_test import final_test
from spat.train.folder import Claim, check_new_run_dir, default_run_name, new_run_files
from spat.train.loop import Trainer
from spat.train.result import finished_result, make_result, write_result
from spat.train.resume import (
    continue_from,
    last_checkpoint,
    record_resume,
    recorded_fast_path,
    resume_config,
)
from spat.utils.distributed import SINGLE, DistContext
from spat.utils.env import resolve_device
from spat.utils.log import info as log_info
from spat.utils.log import logger
from spat.utils.rng import seed_everything

Log = Callable[[str], None]


@dataclass(frozen=True)
class _Session:
    """How this call runs: its ranks, its log, whether it shows progress bars."""

    dist: DistContext
    log: Log
    progress: bool


@dataclass(frozen=True)
class _Built:
    """What a resolved configuration names, built on this rank."""

    device: Any
    data: DataBundle
    model: nn.Module
    method: Any


def train(
    cfg: TrainConfig | Mapping[str, Any],
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    dist: DistContext = SINGLE,
    log: Log = log_info,
    explicit: Collection[str] | None = None,
) -> TrainResult:
    """Train a model as ``cfg`` says (or resume the run at ``resume``); returns its result.

    Everything is validated (names, ranges, data files, the run directory, a resumed run's
    checkpoint) before anything is written: an error leaves no directory and changes no file.
    A new run directory appears atomically, complete with ``config.json``, ``env.json`` and
    ``data.json``, and is claimed for the whole call: it is created with ``mkdir`` (of two
    processes racing for one name exactly one gets it) and ``RUN/.lock`` (pid, host) is held
    until the call ends, so a second ``spat train`` or ``--resume`` of the same run stops at
    once with one line naming the holder; a lock left by a dead process is taken over.

    ``resume``: continue from the run's last checkpoint with its saved settings; ``explicit``
    (the settings the user gave; ``None``: those differing from the defaults) may change those
    of :data:`~spat.train.resume.RESUME_OVERRIDES` (lr, schedule, epochs, ...), which are
    written to config.json and recorded in RUN/resumes.jsonl; changing any other setting on
    resume is refused. A run killed before its first checkpoint starts over; a finished run
    just reports its result again. ``cfg`` may be a mapping of :class:`TrainConfig` fields (as
    in a TOML file or a run's ``config.json``), validated like ``--config``.

    Under torchrun (``dist``) every rank calls this; rank 0 alone reads and writes the run
    directory, and every rank returns rank 0's result.
    """
    if not isinstance(cfg, TrainConfig):
        if not isinstance(cfg, Mapping):
            raise SpatError(f"a training configuration is a TrainConfig or a mapping of its "
                            f"fields, not {type(cfg).__name__}")
        cfg = config_from_dict(dict(cfg), source="the configuration")
    if resume is not None and overwrite:
        raise SpatError("--resume and --overwrite exclude each other (resume continues a run, "
                        "overwrite replaces it)")
    session = _Session(dist=dist, log=log, progress=progress)
    with Claim() as claim:
        if resume is None:
            return _train_new(cfg, claim, overwrite=overwrite, session=session)
        return _train_resumed(cfg, Path(resume), claim, explicit=explicit, session=session)


def _train_new(cfg: TrainConfig, claim: Claim, *, overwrite: bool, session: _Session
               ) -> TrainResult:
    """A new run: its directory is named, checked, claimed and filled, then it trains."""
    from spat.validation import check_output_dir

    dist = session.dist
    cfg = cfg.resolved()
    check_output_dir(cfg.out_dir, "--out-dir")  # before the data is loaded
    built = _build(cfg, dist)
    # one name for all ranks (the default name holds the time)
    run_dir = Path(dist.broadcast_object(str(Path(cfg.out_dir) /
                                             (cfg.name or default_run_name(cfg)))))
    dist.on_main(check_new_run_dir, run_dir, overwrite)
    trainer = _trainer(cfg, built, run_dir, session, fast_path=None)
    files = new_run_files(cfg, built.device, trainer.fast_path, built.data)
    dist.on_main(claim.create_run, run_dir, files, overwrite=overwrite)
    dist.barrier()
    return _fit_and_test(cfg, built, trainer, run_dir, session)


def _train_resumed(cfg: TrainConfig, run_dir: Path, claim: Claim, *,
                   explicit: Collection[str] | None, session: _Session) -> TrainResult:
    """A resumed run: locked, its settings merged, its last checkpoint loaded; then it trains
    on, or (finished) reports its result again."""
    dist, log = session.dist, session.log
    dist.on_main(claim.take, run_dir, new=False)
    cfg, changes = dist.on_main(resume_config, run_dir, cfg, log, explicit)
    cfg = cfg.resolved()
    built = _build(cfg, dist)
    # a resumed run trains with the fast path it recorded when it started (no new measurement)
    recorded = dist.on_main(recorded_fast_path, run_dir, cfg, built.device)
    trainer = _trainer(cfg, built, run_dir, session, fast_path=recorded)
    continue_from(trainer, dist.on_main(last_checkpoint, run_dir), run_dir, cfg, log)
    assert cfg.epochs is not None
    if changes or trainer.start_epoch < cfg.epochs:  # a re-report writes nothing
        dist.on_main(record_resume, run_dir, cfg, changes, trainer.start_epoch)
    dist.barrier()
    if trainer.start_epoch >= cfg.epochs:
        done = dist.on_main(finished_result, run_dir)
        if done is not None:
            log(f"{run_dir} already finished all {cfg.epochs} epochs; its summary:")
            return done
    return _fit_and_test(cfg, built, trainer, run_dir, session)


def _build(cfg: TrainConfig, dist: DistContext) -> _Built:
    """Check the optional extras (before anything is written), seed, and build the device,
    data, model and method of the resolved ``cfg``."""
    logger.debug("resolved config: %s", json.dumps(cfg.to_dict(), sort_keys=True))
    if cfg.tensorboard:
        from spat.utils.tensorboard import require_tensorboard

        require_tensorboard()  # before anything is written
    device = resolve_device(cfg.device, dist)
    seed_everything(cfg.seed, deterministic=cfg.deterministic)
    data = build.load_data(cfg)
    model = build.model_for(cfg, data.info).to(device)  # the Trainer applies channels_last
    return _Built(device=device, data=data, model=model, method=build.method_for(cfg))


def _trainer(cfg: TrainConfig, built: _Built, run_dir: Path, session: _Session, *,
             fast_path: Any) -> Trainer:
    return Trainer(cfg, built.data, built.model, built.method, built.device, run_dir=run_dir,
                   dist=session.dist, progress=session.progress, log=session.log,
                   fast_path=fast_path)


def _fit_and_test(cfg: TrainConfig, built: _Built, trainer: Trainer, run_dir: Path,
                  session: _Session) -> TrainResult:
    """Train the remaining epochs, test the best checkpoint, write and return the result."""
    dist = session.dist
    t0 = time.perf_counter()
    history = trainer.fit()
    train_seconds = time.perf_counter() - t0
    best, preds = final_test(built.model, built.data.test, cfg, run_dir, built.device,
                             dist=dist, progress=session.progress, log=session.log)
    result = make_result(run_dir, cfg, best, trainer.best_epoch, preds, history,
                         world_size=dist.world_size, train_seconds=train_seconds)
    # rank 0 writes; every rank gets its result back once it is written, so all ranks leave
    # together (a rank that tore down its process group and exited while rank 0 was still
    # writing aborted under load: "terminate called without an active exception" from gloo)
    return dist.on_main(write_result, result)

"""Evaluate a trained run (``spat eval RUN``): load it, run :func:`evaluate`, write the files."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from spat.errors import SpatError
from spat.evaluation.attacks import require_attacks
from spat.evaluation.job import Log
from spat.evaluation.options import EvalOptions
from spat.evaluation.protocol import Plumbing, evaluate
from spat.evaluation.report import EvalReport
from spat.utils.distributed import SINGLE, DistContext
from spat.utils.lock import FolderClaim
from spat.validation import check_output_dir

#: Subfolder of the output folder holding finished attacks and AutoAttack's running state.
STATE_SUBDIR = "attacks"


def run_dir_of(folder: Path) -> Path:
    """The run directory of a checkpoint folder (``RUN/checkpoints/epoch_N``), or the folder
    itself when it is not inside a run."""
    run = folder.parent.parent
    return run if (run / "config.json").is_file() else folder


def _memory_format(model: Any, channels_last: object, device: Any) -> dict[str, Any]:
    """Put the run's model (ours: loaded here) in the NHWC format where the run's own
    ``channels_last`` switch resolves to on for ``device`` (``auto``: CPU and CUDA), as its
    training did: oneDNN's and cuDNN's convolutions are NHWC-native, and every attack is a
    loop of forward and backward passes (measured on one core: ``small_cnn``'s forward and
    backward on 500 Fashion-MNIST-sized images 1.4-1.8x faster). Values agree with the NCHW
    model to float rounding (about 1e-6 on the logits); inputs and input gradients stay NCHW.
    AMP and compile are training-only: evaluation stays fp32 and eager. Returns the record
    for the report."""
    import torch

    from spat.utils.hardware import resolve_fast_path

    fast = resolve_fast_path("off", channels_last, "off", torch.device(device))
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    return {"channels_last": fast.channels_last, "reason": fast.reasons["channels_last"]}


def evaluate_run(
    path: str | os.PathLike[str],
    options: EvalOptions | None = None,
    *,
    which: str = "best",
    out: str | os.PathLike[str] | None = None,
    device: str = "auto",
    data_dir: str | None = None,
    resume: bool = True,
    progress: bool = True,
    log: Log | None = None,
    dist: DistContext = SINGLE,
    tensorboard: bool = False,
    **settings: Any,
) -> tuple[EvalReport, Path]:
    """Evaluate the ``which`` checkpoint of the run (or checkpoint folder) at ``path`` on its
    dataset's test split and write ``report.json`` and ``predictions.npz`` to ``out``
    (default ``RUN/eval``). The settings are ``options`` with any :class:`EvalOptions` field
    given in ``settings`` replaced; ε and norm default to the run's training values.

    Under torchrun (``dist``) every rank calls this and attacks its shard of the examples
    (:mod:`spat.evaluation.sharding`); rank 0 reads the checkpoint and broadcasts the weights,
    and alone writes. ``tensorboard``: also write the accuracies to ``RUN/tensorboard/`` at the
    checkpoint's epoch (:mod:`spat.utils.tensorboard`).

    Returns the report and the output folder.
    """
    from spat.build import load_data, load_run
    from spat.utils.env import environment, resolve_device

    opts = EvalOptions.of(options, **settings)
    require_attacks(opts.attacks)  # before anything is read or written
    if tensorboard:
        from spat.utils.tensorboard import require_tensorboard

        require_tensorboard()
    dev = resolve_device(device, dist)

    def load() -> Any:  # rank 0 reads, every rank gets it
        return load_run(path, which=which, device="cpu")

    loaded = dist.on_main(load)
    model, cfg = loaded.model, loaded.config
    model.to(dev)
    memory_format = _memory_format(model, cfg.channels_last, dev)
    folder = loaded.checkpoint
    run = run_dir_of(folder)
    out_dir = check_output_dir(Path(out) if out is not None else run / "eval", "--out")
    if opts.eps is None and opts.norm is not None and opts.norm != cfg.norm:
        raise SpatError(f"the run was trained with norm {cfg.norm!r}; give --eps for an "
                        f"evaluation in {opts.norm!r}")
    opts = opts.with_threat(float(cfg.eps), cfg.norm)
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, data_dir=data_dir)
    data = load_data(cfg)
    info = data.info
    metadata = {
        "run_dir": str(run),
        "checkpoint": str(folder),
        "which": which,
        "epoch": loaded.epoch,
        "dataset": cfg.dataset,
        "architecture": cfg.model,
        "head": cfg.head,
        "cosine_scale": cfg.cosine_scale if cfg.head == "cosine" else None,
        "method": cfg.method,
        "training_eps": cfg.eps,
        "training_norm": cfg.norm,
        "config": cfg.to_dict(),
        "environment": environment(dev),
        "memory_format": memory_format,
    }
    # one writer per output folder: a second `spat eval` of the same run (same --out) stops
    # with one line naming the first; the folder is removed again if a refusal leaves it empty
    claim = FolderClaim(out_dir, "the evaluation output")
    dist.on_main(claim.acquire)
    try:
        report = evaluate(
            model, data.test, opts, device=dev, class_names=list(info.class_names),
            metadata=metadata,
            plumbing=Plumbing(state_dir=out_dir / STATE_SUBDIR, resume=resume,
                              progress=progress, log=log, dist=dist),
        )
        if dist.is_main:
            report.save(out_dir)
            if tensorboard:
                from spat.utils.tensorboard import TensorBoardLog

                tb = TensorBoardLog(run)
                try:
                    tb.eval_report(report.data, metadata["epoch"] or 0)
                finally:
                    tb.close()
    finally:
        if dist.is_main:
            claim.release()
    return report, out_dir

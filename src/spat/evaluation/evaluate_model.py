"""Evaluate a model that is not a spat run (``spat eval --model ...``): load it with
:func:`spat.models.external.load_model`, evaluate it on a dataset's test split with the same
protocol as a run (:func:`spat.evaluation.evaluate`), write ``report.json`` and
``predictions.npz``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spat.data import Split
from spat.errors import SpatError
from spat.evaluation.attacks import require_attacks
from spat.evaluation.evaluate_run import STATE_SUBDIR
from spat.evaluation.job import Log
from spat.evaluation.options import EvalOptions
from spat.evaluation.protocol import Plumbing, evaluate
from spat.evaluation.report import EvalReport
from spat.validation import one_line


def default_out(model: str | nn.Module, dataset: str) -> Path:
    """``./eval-<model name>-<dataset>``: the output folder when ``--out`` is not given."""
    name = model if isinstance(model, str) else type(model).__name__
    stem = re.sub(r"[^\w.-]+", "_", Path(name).stem if Path(name).suffix else name).strip("_.")
    return Path(f"eval-{stem or 'model'}-{dataset}")


def check_out_dir(out: Path) -> None:
    """An output folder may exist (a rerun reuses finished attacks) but may not be a file."""
    if out.exists() and not out.is_dir():
        raise SpatError(f"--out {out} exists and is not a folder; give another --out")


def evaluate_model(
    model: str | os.PathLike[str] | nn.Module,
    options: EvalOptions | None = None,
    *,
    dataset: str,
    weights: str | os.PathLike[str] | None = None,
    data_dir: str | None = None,
    out: str | os.PathLike[str] | None = None,
    device: str = "auto",
    cosine_scale: float | None = None,
    resume: bool = True,
    progress: bool = True,
    log: Log | None = None,
    **settings: Any,
) -> tuple[EvalReport, Path]:
    """Evaluate any classifier of [0, 1] images on ``dataset``'s test split.

    ``model``: an ``nn.Module``, a ``package.module:factory`` spec, ``official-trades`` /
    ``official-spat`` (with ``weights``; ``cosine_scale``: its s, default 8), or a portable
    spat model file (see :func:`spat.models.external.load_model`). The settings are
    ``options`` with any :class:`EvalOptions` field given in ``settings`` replaced. ``eps``
    defaults to the dataset's training ε (its record in :data:`spat.data.DATASETS`; 0.031 for
    CIFAR, as the official SPAT/TRADES code; give ``8/255`` for RobustBench's threat model).
    Output in ``out`` (default ``./eval-<model>-<dataset>``). Returns the report and the output
    folder.
    """
    from spat.data import dataset_record, load_dataset
    from spat.models.external import (
        architecture_name,
        head_name,
        load_model,
        read_portable_metadata,
    )
    from spat.utils.env import environment, resolve_device

    opts = EvalOptions.of(options, **settings)
    require_attacks(opts.attacks)  # before anything is read or written
    dev = resolve_device(device)
    out_dir = Path(out) if out is not None else default_out(
        model if isinstance(model, nn.Module) else os.fspath(model), dataset)
    check_out_dir(out_dir)
    if isinstance(model, nn.Module):
        if cosine_scale is not None:
            raise SpatError("cosine_scale only applies to official-spat; a module passed in "
                            "sets its own head")
        net, spec = model.to(dev).eval(), type(model).__name__
        meta = None
    else:
        spec = os.fspath(model)
        net = load_model(spec, weights, cosine_scale=cosine_scale, device=dev)
        meta = read_portable_metadata(spec) if Path(spec).is_file() else None
    data = load_dataset(dataset, data_dir=data_dir)
    info = data.info
    shape = [info.channels, info.height, info.width]
    if meta is not None and meta.get("input_shape") not in (None, shape):
        raise SpatError(f"{spec} takes inputs of shape {meta['input_shape']} but {info.name} "
                        f"images are {shape}")
    _probe(net, data.test, dev, spec, info.name)
    opts = opts.with_threat(dataset_record(info.name).defaults.eps, "linf")
    metadata = {
        "model": spec,
        "weights": None if weights is None else str(weights),
        "run_dir": None,
        "checkpoint": None,
        "dataset": info.name,
        "architecture": (meta or {}).get("architecture", architecture_name(net)),
        "head": (meta or {}).get("head", head_name(net)),
        "cosine_scale": _scale(net),  # the s whose logits s·z were attacked (None: no cosine)
        "method": None,
        "environment": environment(dev),
    }
    report = evaluate(
        net, data.test, opts, device=dev, class_names=list(info.class_names), metadata=metadata,
        plumbing=Plumbing(state_dir=out_dir / STATE_SUBDIR, resume=resume, progress=progress,
                          log=log),
    )
    report.save(out_dir)
    return report, out_dir


def _probe(net: nn.Module, split: Split, device: torch.device, spec: str, dataset: str) -> None:
    """One forward pass on two test images: a model that does not fit the data (channels, size,
    output shape) is a one-line error here rather than a traceback inside an attack."""
    x = split.images[:2].to(device)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    try:
        with torch.no_grad():
            out = net(x)
    except (RuntimeError, ValueError, TypeError) as e:
        raise SpatError(f"{spec} fails on {dataset} images of shape {tuple(x.shape[1:])}: "
                        f"{one_line(e, 200)}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SpatError(f"{spec} must return logits of shape (N, K); got {got} for N = "
                        f"{x.shape[0]}")


def _scale(net: nn.Module) -> float | None:
    """The model's cosine-head scale s for the report, ``None`` without one (or with several)."""
    from spat.models import logit_scale

    try:
        return logit_scale(net)
    except SpatError:
        return None

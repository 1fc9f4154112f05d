"""The Python API: a handful of calls for a notebook or a script (see README, "Python API").

``spat.train(config)`` trains a run and returns its :class:`TrainResult`;
``spat.load_run(path)`` loads one back as a :class:`Run`; ``spat.evaluate(model, x, y,
eps=...)`` attacks any ``nn.Module`` on plain tensors and returns an
:class:`~spat.evaluation.report.EvalReport`; ``spat.hard_pairs(predictions, class_names)``
finds the hard class pairs (SPAT, arXiv 2210.15068, Sec. 3); ``spat.load_model`` rebuilds an
exported or external classifier. Everything else stays reachable in its module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from spat.analysis.pairs import HardPairs, hard_pairs
from spat.build import Run, TrainResult, load_run
from spat.config import TrainConfig
from spat.data import Split
from spat.errors import SpatError
from spat.evaluation.options import EvalOptions
from spat.evaluation.protocol import Plumbing
from spat.evaluation.protocol import evaluate as _evaluate
from spat.evaluation.report import EvalReport
from spat.train.training import train as _train


def train(config: TrainConfig | Mapping[str, Any], *, progress: bool = False,
          **kwargs: Any) -> TrainResult:
    """Train a run as ``config`` says (a :class:`TrainConfig` or a mapping of its fields, as
    in a TOML file); returns its :class:`TrainResult` (``run_dir``, ``checkpoint``, test
    accuracies, what ``summary.json`` holds). Keywords as :func:`spat.train.training.train`
    (``resume``, ``overwrite``, ``log``); no progress bar unless ``progress=True``. Load the
    model with ``spat.load_run(result.run_dir)``."""
    return _train(config, progress=progress, **kwargs)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); CPU for a model without any."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def evaluate(
    model: nn.Module,
    x: torch.Tensor | Split | tuple[torch.Tensor, torch.Tensor],
    y: torch.Tensor | None = None,
    *,
    eps: float,
    attacks: Sequence[str] | str = EvalOptions.attacks,
    norm: str = "linf",
    n_examples: int | None = EvalOptions.n_examples,
    seed: int = EvalOptions.seed,
    batch_size: int = EvalOptions.batch_size,
    attack_logits: str = EvalOptions.attack_logits,
    device: torch.device | str | None = None,
    class_names: Sequence[str] | None = None,
    progress: bool = False,
    options: EvalOptions | None = None,
) -> EvalReport:
    """Robust accuracy of any classifier of [0, 1] images under ``attacks`` at radius ``eps``.

    ``x``: images (N, C, H, W) in [0, 1] with ``y`` their labels (N,), or ``(x, y)`` / a
    :class:`~spat.data.Split` with ``y`` omitted. ``attacks``: keys of
    :data:`spat.evaluation.attacks.ATTACKS` (``"pgd20"``, ``"aa"``, ...). ``attack_logits``:
    ``"model"`` (the model's outputs) or ``"unit_cosine"`` (a cosine head's s·z divided by s,
    the official SPAT evaluation's temperature 1). These keywords build an
    :class:`~spat.evaluation.EvalOptions`; ``options`` supplies the other fields (restarts,
    step size, sanity checks), the keywords win. Runs on ``device``,
    by default the model's own device. The report's typed fields (``clean_accuracy``,
    ``robust_accuracy``, ``accuracies``) and ``predictions`` (for :func:`hard_pairs`) hold the
    result; nothing is written. The full protocol: :func:`spat.evaluation.evaluate`.
    """
    if y is None:
        if isinstance(x, Split):
            split: Split | tuple[torch.Tensor, torch.Tensor] = x
        elif isinstance(x, tuple) and len(x) == 2:
            split = (x[0], x[1])
        else:
            raise SpatError("evaluate needs labels: evaluate(model, x, y, ...) or "
                            "evaluate(model, (x, y), ...)")
    else:
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise SpatError("evaluate(model, x, y): x and y must be tensors")
        split = (x, y)
    opts = EvalOptions.of(options, eps=eps, attacks=attacks, norm=norm, n_examples=n_examples,
                          seed=seed, batch_size=batch_size, attack_logits=attack_logits)
    return _evaluate(model, split, opts,
                     device=model_device(model) if device is None else device,
                     class_names=class_names, plumbing=Plumbing(progress=progress))


def load_model(source: str | os.PathLike[str], weights: str | os.PathLike[str] | None = None,
               **kwargs: Any) -> nn.Module:
    """Rebuild a classifier of [0, 1] images without its run directory, in eval mode: a portable
    file written by ``spat export``, ``package.module:factory`` with optional weights, or
    ``official-trades``/``official-spat`` with an official checkpoint. See
    :func:`spat.models.external.load_model` (keywords: ``cosine_scale``, ``device``)."""
    from spat.models.external import load_model as _load_model

    return _load_model(source, weights, **kwargs)


__all__ = ["EvalOptions", "EvalReport", "HardPairs", "Run", "TrainConfig", "evaluate", "hard_pairs",
           "load_model", "load_run", "train"]

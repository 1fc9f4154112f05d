"""SGD and the learning-rate schedules, as pure functions of the step (so resume needs only the
step counter, which the checkpoint stores)."""

from __future__ import annotations

import math

import torch
from torch import nn

from spat.errors import SpatError


def make_optimizer(
    model: nn.Module, *, lr: float, momentum: float, weight_decay: float, nesterov: bool,
    device: torch.device,
) -> torch.optim.SGD:
    """SGD with momentum and weight decay on every parameter, as the official SPAT/TRADES code.

    On CUDA the fused kernel is used (one launch for all parameters); elsewhere foreach.
    """
    if nesterov and momentum == 0:
        raise SpatError("Nesterov momentum needs momentum > 0")
    fused = device.type == "cuda"
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
        nesterov=nesterov, fused=fused or None, foreach=None if fused else True,
    )


def lr_factor(schedule: str, epoch: int, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base lr at (0-based) ``epoch`` and ``step`` within it.

    ``piecewise``: ×0.1 from (1-based) epoch 0.75·E and ×0.01 from 0.9·E, never in epoch 1 (the
    official SPAT/TRADES CIFAR-10 schedule: decay at epochs 75 and 90 of 100). ``cosine``:
    half-cosine from 1 to 0 over all steps. ``constant``: 1.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "piecewise":
        # 1-based epoch as in the official adjust_learning_rate (``if epoch >= 75``); the first
        # epoch always runs at the full lr (with E = 1 the rounded decay epochs are 1, which
        # would otherwise train the whole run at lr × 0.01)
        if epoch + 1 >= max(2, round(0.9 * epochs)):
            return 0.01
        if epoch + 1 >= max(2, round(0.75 * epochs)):
            return 0.1
        return 1.0
    if schedule == "cosine":
        t = (epoch * steps_per_epoch + step) / max(1, epochs * steps_per_epoch)
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise SpatError(f"unknown schedule {schedule!r} (valid: piecewise, cosine, constant)")

"""One training step, as the loop runs it and as the fast-path calibration times it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, method: Callable[..., Any],
               x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator,
               amp_device: str | None = None,
               before_step: Callable[..., Any] | None = None,
               after_step: Callable[..., Any] | None = None) -> Any:
    """The method's loss (its attack inside) under bf16 autocast on ``amp_device`` when given,
    then ``zero_grad(set_to_none=True)``, backward and the optimizer step between the method's
    optional hooks (AWP-style weight perturbation). ``x`` is already augmented and in the
    model's memory format. Returns the method's output."""
    ctx = (torch.autocast(amp_device, dtype=torch.bfloat16) if amp_device is not None
           else contextlib.nullcontext())
    with ctx:
        out = method(model, x, y, generator=generator)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    if before_step is not None:
        before_step(model, optimizer)
    optimizer.step()
    if after_step is not None:
        after_step(model, optimizer)
    return out

"""Put a model in evaluation mode with parameter gradients off, and restore both exactly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block: ``model.eval()`` (BatchNorm uses running statistics, dropout off) and
    ``requires_grad=False`` on every parameter, so an attack neither updates statistics nor
    accumulates parameter gradients. On exit, each submodule's ``training`` flag and each
    parameter's ``requires_grad`` are restored to what they were, even after an exception.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in grads:
            p.requires_grad_(flag)

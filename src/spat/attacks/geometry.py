"""Threat-model geometry: random start, ascent direction and projection, for L∞ and L2 balls.

Images live in [0, 1]; ε and step sizes are in the same units (8/255 ≈ 0.0314 for CIFAR L∞).
Every function works per example on (N, C, H, W) tensors and never synchronises with the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spat.errors import SpatError

NORMS = ("linf", "l2")
INITS = ("uniform", "normal", "none")
#: σ of the ``normal`` random start x + σ·N(0, I): TRADES' and SPAT's official training code.
NORMAL_INIT_STD = 0.001


def check_norm(norm: str) -> str:
    """``norm`` if it is a threat model's norm (:data:`NORMS`, lower case: ``"linf"`` = L∞,
    ``"l2"``), else a one-line :class:`SpatError`. The one check of a norm name; a caller that
    accepts other spellings (``"Linf"``) lower-cases first."""
    if norm not in NORMS:
        raise SpatError(f"unknown norm {norm!r} (valid: {', '.join(NORMS)})")
    return norm


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped (N, 1, 1, ...) for broadcasting."""
    n = t.flatten(1).norm(p=2, dim=1)
    return n.view(-1, *([1] * (t.dim() - 1)))


@dataclass(frozen=True)
class Geometry:
    """An ε-ball in ``norm`` ("linf" or "l2") intersected with the [0, 1] box."""

    norm: str
    eps: float

    def __post_init__(self) -> None:
        check_norm(self.norm)
        if not (0.0 <= self.eps):
            raise SpatError(f"eps must be >= 0, got {self.eps}")

    def init(
        self, x: torch.Tensor, kind: str, std: float, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Starting point x₀ in the ball and the box.

        ``uniform``: uniform in the ball (L∞: each pixel in [−ε, ε]; L2: direction uniform on the
        sphere, radius ε·U^(1/d)). ``normal``: x + std·N(0, I) (TRADES/SPAT:
        :data:`NORMAL_INIT_STD`). ``none``: x itself.
        """
        if kind == "none" or self.eps == 0.0:
            return x.clone()
        if kind == "normal":
            delta = std * _random(torch.randn, x.shape, x, generator)
        elif kind == "uniform":
            if self.norm == "linf":
                delta = self.eps * (2.0 * _random(torch.rand, x.shape, x, generator) - 1.0)
            else:
                noise = _random(torch.randn, x.shape, x, generator)
                u = _random(torch.rand, (x.shape[0],), x, generator)
                radius = self.eps * u.pow(1.0 / x[0].numel())
                delta = noise / _flat_norm(noise).clamp_min(1e-12) * radius.view(
                    -1, *([1] * (x.dim() - 1))
                )
        else:
            raise SpatError(f"unknown random start {kind!r} (valid: {', '.join(INITS)})")
        return self.project(x + delta, x)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        """One ascent step: L∞ ``x + η·sign(g)``; L2 ``x + η·g/‖g‖₂``."""
        if self.norm == "linf":
            return x_adv + step_size * grad.sign()
        return x_adv + step_size * grad / _flat_norm(grad).clamp_min(1e-12)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project onto the ε-ball around ``x``, then clip to the [0, 1] box.

        Clipping to the box after the ball projection keeps the point in the ball for L∞ (the
        box is a product of intervals containing x); for L2 the clip only shrinks ‖δ‖₂.
        """
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            factor = (self.eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
            delta = delta * factor
        return (x + delta).clamp(0.0, 1.0)


def _random(
    fn, shape: tuple[int, ...] | torch.Size, like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """``fn`` (torch.rand / torch.randn) on ``like``'s device and dtype, drawn from ``generator``
    (which may live on the CPU while ``like`` is on a GPU: then draw on the CPU and move)."""
    if generator is None or generator.device == like.device:
        return fn(shape, generator=generator, device=like.device, dtype=like.dtype)
    return fn(shape, generator=generator, dtype=like.dtype).to(like.device)

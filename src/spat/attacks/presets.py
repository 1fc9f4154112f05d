"""Named attacks for evaluation: FGSM, PGD-k (cross-entropy) and CW∞-k (margin).

Each preset is a frozen :class:`AttackSpec`; ``spec.run(model, x, y)`` calls the one engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spat.attacks.engine import perturb
from spat.attacks.objectives import OBJECTIVES
from spat.errors import SpatError


@dataclass(frozen=True, kw_only=True)
class AttackSpec:
    """One white-box attack configuration.

    Attributes:
        name: label used in reports ("PGD-20", "CW-100", "FGSM").
        objective: "ce" (cross-entropy) or "cw" (Carlini–Wagner margin).
        eps: ε in [0,1] pixel units.
        step_size: η per step.
        steps: K.
        norm: "linf" or "l2".
        init: "uniform", "normal" or "none".
        restarts: worst case kept per example over this many random starts.
    """

    name: str
    objective: str
    eps: float
    step_size: float
    steps: int
    norm: str = "linf"
    init: str = "uniform"
    restarts: int = 1

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise SpatError(
                f"unknown attack objective {self.objective!r} (valid: {', '.join(OBJECTIVES)})"
            )

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Adversarial examples for (x, y); see :func:`spat.attacks.engine.perturb`."""
        return perturb(
            model,
            x,
            y,
            OBJECTIVES[self.objective],
            eps=self.eps,
            step_size=self.step_size,
            steps=self.steps,
            norm=self.norm,
            init=self.init,
            restarts=self.restarts,
            generator=generator,
        )


def default_step_size(eps: float, steps: int) -> float:
    """ε/4 for K ≥ 4 (2/255 at ε = 8/255, the field's usual PGD-20 step), else ε/K·1.25 so that
    short attacks can still reach the boundary of the ball."""
    return eps / 4 if steps >= 4 else 1.25 * eps / steps


def fgsm(eps: float, norm: str = "linf") -> AttackSpec:
    """FGSM (Goodfellow et al. arXiv 1412.6572): one step of size ε from x, cross-entropy."""
    return AttackSpec(name="FGSM", objective="ce", eps=eps, step_size=eps, steps=1, norm=norm,
                      init="none")


def _iterative(prefix: str, objective: str, eps: float, steps: int, step_size: float | None,
               restarts: int, norm: str) -> AttackSpec:
    """A k-step attack from a uniform random start, named ``PREFIX-k`` (``xR`` with restarts)."""
    return AttackSpec(
        name=f"{prefix}-{steps}" + (f"x{restarts}" if restarts > 1 else ""),
        objective=objective,
        eps=eps,
        step_size=default_step_size(eps, steps) if step_size is None else step_size,
        steps=steps,
        norm=norm,
        restarts=restarts,
    )


def pgd(
    eps: float,
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    norm: str = "linf",
) -> AttackSpec:
    """PGD-k (Madry et al. arXiv 1706.06083): uniform random start, cross-entropy ascent."""
    return _iterative("PGD", "ce", eps, steps, step_size, restarts, norm)


def cw(
    eps: float,
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    norm: str = "linf",
) -> AttackSpec:
    """CW∞-k: PGD on the Carlini–Wagner margin loss (arXiv 1608.04644), uniform random start."""
    return _iterative("CW", "cw", eps, steps, step_size, restarts, norm)

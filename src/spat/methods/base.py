"""What every training method shares: its output record, the threat model and SPAT's parts.

A method is a frozen dataclass of hyperparameters with ``__call__(model, x, y, generator)``
returning a :class:`MethodOutput`. It never touches the optimizer, never calls
``model.train()``/``eval()`` itself (the attack's context manager handles eval mode and
restores the caller's mode), and never moves tensors between devices.

SPAT's three parts (arXiv 2210.15068) are switchable on any method where they make sense:

* the cosine head (a model option, ``--head cosine``),
* the self-paced cross-entropy (:func:`self_paced_logits`, ``self_paced_ce=True``),
* the HCP-ECP per-class consistency weighting (``hcp_ecp=True``) in place of the plain KL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from spat.attacks.geometry import INITS, check_norm
from spat.attacks.objectives import hcp_ecp as hcp_ecp_term
from spat.attacks.objectives import kl_divergence
from spat.errors import SpatError
from spat.models import logit_scale


@dataclass
class MethodOutput:
    """Result of one method call on a batch.

    Attributes:
        loss: scalar to minimise (float32, carries the graph).
        logits_adv: detached adversarial logits (N, K), for robust training accuracy.
        logits_clean: detached clean logits (N, K) from the train-mode forward, or None when
            the method makes no clean forward (PGD-AT).
        parts: detached scalar tensors of the loss terms, e.g. {"loss_nat": ..., "loss_rob": ...}.
    """

    loss: torch.Tensor
    logits_adv: torch.Tensor | None
    logits_clean: torch.Tensor | None
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ThreatModel:
    """The training adversary's ball and steps.

    Attributes:
        eps: ε in [0,1] pixel units (0.031 ≈ 8/255 in the official SPAT/TRADES code).
        step_size: η per step (0.007 in the official code).
        steps: K (10 in the official code).
        norm: "linf" or "l2".
        init: random start, "uniform" (PGD-AT), "normal" (x + 0.001·N(0,I), TRADES/SPAT/MART) or
            "none".
    """

    eps: float = 0.031
    step_size: float = 0.007
    steps: int = 10
    norm: str = "linf"
    init: str = "uniform"

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps <= 1.0:
            raise SpatError(f"eps must be in [0, 1], got {self.eps}")
        if not 0.0 < self.step_size <= 1.0:
            raise SpatError(f"step size must be in (0, 1], got {self.step_size}")
        if self.steps < 1:
            raise SpatError(f"attack steps must be >= 1, got {self.steps}")
        check_norm(self.norm)
        if self.init not in INITS:
            raise SpatError(f"unknown random start {self.init!r} (valid: {', '.join(INITS)})")


def self_paced_logits(
    logits: torch.Tensor, y: torch.Tensor, scale: float, m: float
) -> torch.Tensor:
    """SPAT's self-paced modulated logits z̃ (arXiv 2210.15068; official ``spat.py``).

    With cosine logits z = logits / s (the head outputs s·z):
    z̃_y = s·(1 + m − z_y)·z_y for the true class and z̃_j = s·(z_j + m)·z_j for j ≠ y.
    The factors are neither detached nor clamped, as in the official code, so CE(z̃, y) pulls
    the true-class cosine toward (1+m)/2 and wrong-class cosines toward −m/2; a hard pair (low
    z_y, high z_j) gets a larger loss and gradient than an easy one. Computed in float32.
    """
    z = logits.float() / scale
    true = F.one_hot(y, z.shape[1]).bool()
    return scale * torch.where(true, (1.0 + m - z) * z, (z + m) * z)


def natural_logits(
    model: nn.Module, logits: torch.Tensor, y: torch.Tensor, self_paced_ce: bool, m: float
) -> torch.Tensor:
    """The logits a method's cross-entropy term sees: modulated when ``self_paced_ce``."""
    if not self_paced_ce:
        return logits.float()
    return self_paced_logits(logits, y, require_cosine_scale(model), m)


def require_cosine_scale(model: nn.Module) -> float:
    """The cosine head's scale s; a clear error if the model has a linear head."""
    s = logit_scale(model)
    if s is None:
        raise SpatError("the self-paced cross-entropy needs the cosine head (use --head cosine)")
    return s


def consistency(
    logits_clean: torch.Tensor, logits_adv: torch.Tensor, hcp_ecp: bool, n: float
) -> torch.Tensor:
    """Per-example consistency between clean and adversarial predictions, (N,).

    ``hcp_ecp=False``: KL(p‖q) (TRADES). ``hcp_ecp=True``: Σ_j k_j(k_j + n) (SPAT's HCP-ECP).
    No stop-gradient on p, as in TRADES and SPAT.
    """
    if hcp_ecp:
        return hcp_ecp_term(logits_clean, logits_adv, n)
    return kl_divergence(logits_clean, logits_adv)

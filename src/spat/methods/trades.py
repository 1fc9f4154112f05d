"""TRADES (Zhang et al., arXiv 1901.08573) and SPAT (Hou, Han & Li, arXiv 2210.15068).

SPAT differs from TRADES only in the head (cosine, scale s), the natural term (self-paced CE with
margin m) and the consistency term (HCP-ECP, Σ_j k_j(k_j + n) instead of KL); so both are one
class, :class:`ConsistencyAT`, with SPAT's parts as switches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from spat.attacks.context import attack_mode
from spat.attacks.engine import perturb
from spat.attacks.objectives import hcp_ecp_objective, kl_objective
from spat.errors import SpatError
from spat.methods.base import (
    MethodOutput,
    ThreatModel,
    consistency,
    natural_logits,
    require_cosine_scale,
)


def _trades_threat() -> ThreatModel:
    return ThreatModel(eps=0.031, step_size=0.007, steps=10, init="normal")


@dataclass(frozen=True, kw_only=True)
class ConsistencyAT:
    """L = CE(z̃(x), y) + β · mean_i R(p_i, q_i), with q from x' = argmax_{x'∈B(x,ε)} R(p, q).

    Symbols (arXiv 1901.08573 for TRADES, 2210.15068 for SPAT):
        p = softmax(f(x)), q = softmax(f(x')); f outputs s·z for a cosine head.
        R = KL(p‖q) (TRADES) or Σ_j k_j(k_j + n), k_j = p_j(log p_j − log q_j) (SPAT's HCP-ECP).
        z̃ = logits, or SPAT's self-paced modulated logits when ``self_paced_ce``.

    Training adversary: x' from x + 0.001·N(0, I) (``threat.init = "normal"``), K sign-gradient
    steps on R(p, q) with p fixed, model in eval mode (BatchNorm running statistics); p is
    computed ONCE per batch without grad. The official TRADES/SPAT code recomputes f(x) at every
    attack step: the same adversarial examples with ~25% more work.

    Outer step: the model in the caller's mode (train); clean and adversarial batches forwarded
    separately (separate BatchNorm batch statistics), as the official code; no stop-gradient on p.

    Attributes:
        threat: ε 0.031, η 0.007, K 10, normal start (the official TRADES/SPAT CIFAR-10 values).
        beta: β, weight of the consistency term (6 in TRADES' and SPAT's official code).
        self_paced_ce: SPAT's self-paced CE on clean inputs (needs the cosine head).
        m: SPAT's m (0.2).
        hcp_ecp: SPAT's per-class weighted consistency term instead of the KL.
        n: SPAT's n (0.2).
        require_cosine: refuse a linear head (SPAT's definition includes the cosine head).
    """

    name: str = "trades"
    threat: ThreatModel = field(default_factory=_trades_threat)
    beta: float = 6.0
    self_paced_ce: bool = False
    m: float = 0.2
    hcp_ecp: bool = False
    n: float = 0.2
    require_cosine: bool = False

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise SpatError(f"beta must be >= 0, got {self.beta}")

    def adversarial(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The training adversary's x' for (x, y) (clean logits computed once, eval mode)."""
        with attack_mode(model), torch.no_grad():
            logits_clean = model(x)
        objective = (hcp_ecp_objective(logits_clean, self.n) if self.hcp_ecp
                     else kl_objective(logits_clean))
        t = self.threat
        return perturb(model, x, y, objective, eps=t.eps, step_size=t.step_size, steps=t.steps,
                       norm=t.norm, init=t.init, generator=generator)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        if self.require_cosine:
            require_cosine_scale(model)
        x_adv = self.adversarial(model, x, y, generator)
        logits = model(x)
        logits_adv = model(x_adv)
        loss_nat = F.cross_entropy(
            natural_logits(model, logits, y, self_paced_ce=self.self_paced_ce, m=self.m), y
        )
        loss_rob = consistency(logits, logits_adv, hcp_ecp=self.hcp_ecp, n=self.n).mean()
        loss = loss_nat + self.beta * loss_rob
        return MethodOutput(
            loss=loss,
            logits_adv=logits_adv.detach(),
            logits_clean=logits.detach(),
            parts={"loss_nat": loss_nat.detach(), "loss_rob": loss_rob.detach()},
        )


def trades(**kwargs) -> ConsistencyAT:
    """TRADES with its reference defaults (β = 6, ε 0.031, η 0.007, K 10, normal start)."""
    return ConsistencyAT(name="trades", **kwargs)


def spat(**kwargs) -> ConsistencyAT:
    """SPAT with the official defaults: cosine head (s = 8, a model option), self-paced CE
    (m = 0.2), HCP-ECP (n = 0.2), β = 6, ε 0.031, η 0.007, K 10, start x + 0.001·N(0, I)."""
    kwargs.setdefault("self_paced_ce", True)
    kwargs.setdefault("hcp_ecp", True)
    kwargs.setdefault("require_cosine", True)
    return ConsistencyAT(name="spat", **kwargs)

"""MART: misclassification-aware adversarial training (Wang et al., ICLR 2020, OpenReview
rklOg6EFwS; reference code YisenWang/MART)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from spat.attacks.engine import perturb
from spat.attacks.objectives import cross_entropy
from spat.methods.base import MethodDefaults, MethodOutput, ThreatModel, knob
from spat.methods.spat import M_RANGE, N_RANGE, WarmupMethod, consistency, natural_logits
from spat.validation import Range

#: MART's λ (the field ``beta``): λ >= 0, finite.
LAMBDA_RANGE = Range(0.0, reason=(
    "lambda weights MART's KL(p||q)*(1 - p_y) term: lambda < 0 would reward the "
    "clean/adversarial divergence on the misclassified examples it exists to pull together"))


def _mart_threat() -> ThreatModel:
    # The reference code starts from x + 0.001·N(0, I) and ascends the cross-entropy.
    return ThreatModel(eps=0.031, step_size=0.007, steps=10, init="normal")


@dataclass(frozen=True, kw_only=True)
class MART(WarmupMethod, MethodDefaults):
    """L = BCE(f(x'), y) + λ · mean_i KL(p(x_i)‖p(x'_i)) · (1 − p_y(x_i)).

    BCE(f(x'), y) = CE(f(x'), y) − log(1 − max_{k≠y} p_k(x')), the boosted CE; x' is PGD-K on CE.
    As the reference code: the margin term uses log(1.0001 − p_k + 1e-12), and the weight is
    (1.0000001 − p_y(x)) with gradient through p_y (no stop-gradient). The KL here is computed
    from log-softmax (the reference uses log(q + 1e-12): equal up to that 1e-12).

    Attributes:
        threat: ε 0.031, η 0.007, K 10, normal start (the reference CIFAR-10 values).
        beta: λ (6 in the reference code; the paper's CIFAR-10 setting).
        self_paced_ce: SPAT's modulated logits in the boosted CE (needs the cosine head).
        m: SPAT's m.
        hcp_ecp: SPAT's Σ_j k_j(k_j + n) in place of the KL.
        n: SPAT's n.
        beta_ramp_epochs: N, epochs of linear λ warm-up (:func:`spat.methods.spat.ramped_beta`);
            0 = off (the reference method). A project option for the self-paced plateau study.
        self_paced_after: N, epochs of plain CE before the self-paced CE switches on (needs
            ``self_paced_ce``); 0 = off. A project option for the self-paced plateau study.
    """

    default_init: ClassVar[str] = "normal"

    name: str = "mart"
    threat: ThreatModel = field(default_factory=_mart_threat)
    beta: float = knob(6.0, LAMBDA_RANGE, "MART's λ, the weight of its KL·(1 − p_y) term")
    self_paced_ce: bool = False
    m: float = knob(0.2, M_RANGE)
    hcp_ecp: bool = False
    n: float = knob(0.2, N_RANGE)
    beta_ramp_epochs: int = 0
    self_paced_after: int = 0

    @classmethod
    def uniform_loss(cls, num_classes: int) -> float:
        """At the uniform output: CE ln K, the margin term −ln(1.0001 − 1/K), the λ-weighted KL
        0 (2.408 for K = 10, where the study saw MART's collapsed runs sit)."""
        return math.log(num_classes) - math.log(1.0001 - 1.0 / num_classes)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        t = self.threat
        x_adv = perturb(model, x, y, cross_entropy, eps=t.eps, step_size=t.step_size,
                        steps=t.steps, norm=t.norm, init=t.init, generator=generator)
        logits = model(x)
        logits_adv = model(x_adv)
        z_adv = natural_logits(model, logits_adv, y, self_paced_ce=self.self_paced_ce, m=self.m)
        probs_adv = z_adv.softmax(1)
        top2 = probs_adv.topk(2, dim=1).indices
        wrong = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
        loss_adv = F.cross_entropy(z_adv, y) + F.nll_loss(
            torch.log(1.0001 - probs_adv + 1e-12), wrong
        )
        p_true = logits.float().softmax(1).gather(1, y[:, None]).squeeze(1)
        loss_rob = (consistency(logits, logits_adv, hcp_ecp=self.hcp_ecp, n=self.n)
                    * (1.0000001 - p_true)).mean()
        loss = loss_adv + self.beta * loss_rob
        return MethodOutput(
            loss=loss,
            logits_adv=logits_adv.detach(),
            logits_clean=logits.detach(),
            parts={"loss_adv": loss_adv.detach(), "loss_rob": loss_rob.detach()},
        )

"""PGD adversarial training (Madry et al., arXiv 1706.06083)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from spat.attacks.engine import perturb
from spat.attacks.objectives import cross_entropy
from spat.methods.base import MethodDefaults, MethodOutput, ThreatModel, knob
from spat.methods.spat import M_RANGE, check_warmup, natural_logits, warmup_for_epoch


@dataclass(frozen=True, kw_only=True)
class PGDAT(MethodDefaults):
    """min_θ E[ max_{‖δ‖∞≤ε} CE(f(x+δ), y) ]: CE on PGD-K (CE) examples from a uniform start.

    Attributes:
        threat: ε 8/255, η 2/255, K 10, uniform random start (the paper's CIFAR-10 setting).
        self_paced_ce: CE on SPAT's modulated adversarial logits (needs the cosine head).
        m: SPAT's m for the self-paced CE.
        self_paced_after: N, epochs of plain CE before the self-paced CE switches on (needs
            ``self_paced_ce``); 0 = off. A project option for the self-paced plateau study.
    """

    name: str = "pgd_at"
    threat: ThreatModel = field(
        default_factory=lambda: ThreatModel(eps=8 / 255, step_size=2 / 255, steps=10,
                                            init="uniform")
    )
    self_paced_ce: bool = False
    m: float = knob(0.2, M_RANGE)
    self_paced_after: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()  # the knobs' ranges (MethodDefaults)
        check_warmup(self)

    def for_epoch(self, epoch: int) -> PGDAT:
        """This method for epoch ``epoch`` (0-based) under its warm-up."""
        return warmup_for_epoch(self, epoch)  # type: ignore[return-value]

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        t = self.threat
        x_adv = perturb(model, x, y, cross_entropy, eps=t.eps, step_size=t.step_size,
                        steps=t.steps, norm=t.norm, init=t.init, generator=generator)
        logits_adv = model(x_adv)
        loss = F.cross_entropy(
            natural_logits(model, logits_adv, y, self_paced_ce=self.self_paced_ce, m=self.m), y
        )
        return MethodOutput(loss=loss, logits_adv=logits_adv.detach(), logits_clean=None,
                            parts={"loss_adv": loss.detach()})

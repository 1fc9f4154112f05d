"""Standard (non-adversarial) training: CE on clean inputs. The control of every comparison."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from spat.methods.base import MethodDefaults, MethodOutput, knob
from spat.methods.spat import M_RANGE, check_warmup, natural_logits, warmup_for_epoch


@dataclass(frozen=True, kw_only=True)
class Standard(MethodDefaults):
    """Empirical risk minimisation, CE(f(x), y); optional self-paced CE (SPAT's part 2).

    Attributes:
        self_paced_ce: use SPAT's modulated logits (needs the cosine head).
        m: SPAT's margin m for the self-paced CE (0.2 in the official code).
        self_paced_after: N, epochs of plain CE before the self-paced CE switches on (needs
            ``self_paced_ce``); 0 = off. A project option for the self-paced plateau study.
    """

    default_init: ClassVar[str] = "none"

    name: str = "standard"
    self_paced_ce: bool = False
    m: float = knob(0.2, M_RANGE)
    self_paced_after: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()  # the knobs' ranges (MethodDefaults)
        check_warmup(self)

    def for_epoch(self, epoch: int) -> Standard:
        """This method for epoch ``epoch`` (0-based) under its warm-up."""
        return warmup_for_epoch(self, epoch)  # type: ignore[return-value]

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        logits = model(x)
        loss = F.cross_entropy(natural_logits(model, logits, y, self_paced_ce=self.self_paced_ce,
                                              m=self.m), y)
        return MethodOutput(loss=loss, logits_adv=None, logits_clean=logits.detach(),
                            parts={"loss_nat": loss.detach()})

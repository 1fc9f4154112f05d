"""A plugin method with a hyperparameter of its own (tests/test_plugins.py loads this file).

``gamma_trades``: TRADES plus γ·CE(f(x'), y), the cross-entropy of its own adversarial
examples. The one field ``gamma`` (with its range) is all there is of the new hyperparameter:
``spat train --gamma``, the TOML/study key ``gamma``, its check, its record in config.json and
the method's argument all come from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spat.methods import ConsistencyAT, MethodOutput, register_method
from spat.methods.base import knob
from spat.validation import Range

GAMMA_RANGE = Range(0.0, 10.0, reason="gamma weights the adversarial cross-entropy: a negative "
                    "weight would reward being fooled")


@dataclass(frozen=True, kw_only=True)
class GammaTRADES(ConsistencyAT):
    """L = CE(f(x), y) + β·KL(p‖q) + γ·CE(f(x'), y)."""

    name: str = "gamma_trades"
    gamma: float = knob(0.0, GAMMA_RANGE, "gamma_trades: weight γ of the adversarial CE")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None) -> MethodOutput:
        out = super().__call__(model, x, y, generator)
        assert out.logits_adv is not None
        x_adv = self.adversarial(model, x, y, generator)
        loss_adv = F.cross_entropy(model(x_adv).float(), y)
        return MethodOutput(loss=out.loss + self.gamma * loss_adv, logits_adv=out.logits_adv,
                            logits_clean=out.logits_clean,
                            parts={**out.parts, "loss_adv": loss_adv.detach()})


register_method("gamma_trades", GammaTRADES)

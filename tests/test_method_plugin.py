"""Adding a method is one class plus one registry line: a method defined only here trains
through ``spat.train``, its class defaults flow into the resolved config, and its optional
optimizer hooks (``before_step``/``after_step``, for AWP-style weight perturbation) are called
by the training loop around every optimizer step."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

import spat
from spat.attacks import cross_entropy, perturb
from spat.config import TrainConfig
from spat.methods import METHODS, MethodDefaults, MethodOutput, ThreatModel, register_method
from spat.methods.spat import natural_logits

#: what the hooks and the method saw, in call order (the method is a frozen dataclass)
EVENTS: list[tuple[str, float]] = []


def _weights(model: nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


@dataclass(frozen=True, kw_only=True)
class MixedAT(MethodDefaults):
    """CE(z̃(x), y) + β·CE(f(x'), y) with x' from PGD on CE: a plugin with its own defaults."""

    default_head: ClassVar[str] = "cosine"
    default_init: ClassVar[str] = "normal"

    name: str = "mixed_at"
    threat: ThreatModel = field(default_factory=ThreatModel)
    beta: float = 0.5
    self_paced_ce: bool = True
    m: float = 0.3

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None) -> MethodOutput:
        EVENTS.append(("call", _weights(model)))
        t = self.threat
        x_adv = perturb(model, x, y, cross_entropy, eps=t.eps, step_size=t.step_size,
                        steps=t.steps, norm=t.norm, init=t.init, generator=generator)
        logits, logits_adv = model(x), model(x_adv)
        nat = F.cross_entropy(natural_logits(model, logits, y, self.self_paced_ce, self.m), y)
        adv = F.cross_entropy(logits_adv.float(), y)
        return MethodOutput(loss=nat + self.beta * adv, logits_adv=logits_adv.detach(),
                            logits_clean=logits.detach(),
                            parts={"loss_nat": nat.detach(), "loss_adv": adv.detach()})

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        EVENTS.append(("before", _weights(model)))

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        EVENTS.append(("after", _weights(model)))


def test_plugin_method_defaults_training_and_hooks(tmp_path: Path) -> None:
    register_method("mixed_at", MixedAT)  # the one registry line
    EVENTS.clear()
    try:
        cfg = TrainConfig(method="mixed_at", train_subset=48, val_size=16, epochs=1, steps=1,
                          val_steps=1, test_steps=1, test_subset=16, batch_size=16,
                          out_dir=str(tmp_path), name="plugin")
        r = cfg.resolved()
        # the class's defaults, not those of the built-in methods
        assert (r.head, r.init, r.beta, r.m, r.self_paced_ce, r.hcp_ecp) == (
            "cosine", "normal", 0.5, 0.3, True, None)  # hcp_ecp: not a field of MixedAT
        result = spat.train(cfg, progress=False)
    finally:
        METHODS.pop("mixed_at", None)
    recorded = json.loads((tmp_path / "plugin" / "config.json").read_text())
    assert (recorded["method"], recorded["head"], recorded["beta"], recorded["m"]) == (
        "mixed_at", "cosine", 0.5, 0.3)
    assert "hcp_ecp" not in recorded and "n" not in recorded  # only the method's own
    assert result.epochs == 1 and result.test_examples == 16
    kinds = [k for k, _ in EVENTS]
    steps = kinds.count("call")
    assert steps >= 2 and kinds == ["call", "before", "after"] * steps
    for i in range(steps):  # before_step sees the weights the loss saw; after_step the update
        (_, w_call), (_, w_before), (_, w_after) = EVENTS[3 * i: 3 * i + 3]
        assert w_before == w_call and w_after != w_before

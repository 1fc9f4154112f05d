"""ONE iterative attack routine; the loss is injected, the geometry is separate.

Every attack in the package (FGSM, PGD-k, CW∞-k, and the training adversaries of PGD-AT,
TRADES, MART and SPAT) is a call of :func:`perturb` with an objective and a geometry.
"""

from __future__ import annotations

import torch
from torch import nn

from spat.attacks.context import attack_mode
from spat.attacks.geometry import NORMAL_INIT_STD, Geometry
from spat.attacks.objectives import Objective
from spat.errors import SpatError


def perturb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    objective: Objective,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    init: str = "uniform",
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected (sign-)gradient ascent on ``objective`` within the ε-ball and the [0,1] box.

    Args:
        model: returns logits (N, K) for images (N, C, H, W) in [0, 1]. It runs in eval mode with
            parameter gradients off during the attack; its mode and ``requires_grad`` flags are
            restored exactly afterwards.
        x: clean images in [0, 1]; never modified.
        y: labels (N,), int64.
        objective: ``objective(logits_adv, y) -> (N,)`` to maximise (see ``attacks.objectives``).
        eps: radius ε of the ball, in [0,1] pixel units (8/255 ≈ 0.0314).
        step_size: η per step (L∞: sign step; L2: normalised-gradient step).
        steps: number of ascent steps K ≥ 1 (FGSM: K=1, η=ε, init "none").
        norm: "linf" or "l2".
        init: random start: "uniform" in the ball, "normal" (x + 0.001·N(0,I), TRADES/SPAT:
            :data:`~spat.attacks.geometry.NORMAL_INIT_STD`), or "none".
        restarts: independent runs; per example the worst case is kept: a misclassifying point
            beats a correct one, then the higher objective wins. One extra forward per restart
            is spent only when ``restarts > 1``.
        generator: source of the random start (for reproducible/resumable runs).

    Returns:
        Detached adversarial images x' with ‖x' − x‖ ≤ ε and x' in [0, 1], same dtype/device as x.

    Precision: called inside ``torch.autocast`` (the training loop's bf16 fast path, CUDA or a
    CPU with native bf16), only the model's convolutions and matrix products run in bf16; the
    objective is computed in float32 (every objective upcasts the logits), the gradient with
    respect to x' arrives in x's dtype, and the step and projection are float32, so x' is exactly
    in the ball and the box. Evaluation never calls this under autocast.
    """
    if steps < 1:
        raise SpatError(f"attack steps must be >= 1, got {steps}")
    if restarts < 1:
        raise SpatError(f"attack restarts must be >= 1, got {restarts}")
    geometry = Geometry(norm, eps)
    x = x.detach()
    best: torch.Tensor | None = None
    best_success: torch.Tensor | None = None
    best_score: torch.Tensor | None = None
    with attack_mode(model), torch.enable_grad():
        for _ in range(restarts):
            x_adv = geometry.init(x, init, NORMAL_INIT_STD, generator)
            for _ in range(steps):
                x_adv.requires_grad_(True)
                loss = objective(model(x_adv), y).sum()
                (grad,) = torch.autograd.grad(loss, x_adv)
                x_adv = geometry.project(geometry.step(x_adv.detach(), grad, step_size), x)
            if restarts == 1:
                return x_adv.detach()
            with torch.no_grad():
                logits = model(x_adv)
                success = logits.argmax(1) != y
                score = objective(logits, y).float()
            if best is None:
                best, best_success, best_score = x_adv, success, score
                continue
            assert best_success is not None and best_score is not None
            better = (success & ~best_success) | ((success == best_success) & (score > best_score))
            best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_adv, best)
            best_success = best_success | success
            best_score = torch.where(better, score, best_score)
    assert best is not None
    return best.detach()

"""Sanity checks before a robustness number is trusted.

Gradient masking (obfuscated gradients, Athalye et al. arXiv 1802.00420) makes gradient attacks
fail while the model is not robust; the checks below are the usual symptoms, as listed by
Carlini et al. "On evaluating adversarial robustness" (arXiv 1902.06705) and AutoAttack's own
flags (arXiv 2003.01690, ``pyautoattack.checks``):

* ``eval_mode`` — the model was handed over in eval mode (it is always attacked in eval mode).
* ``deterministic`` — two forward passes of the same batch agree (no randomised defence).
* ``logits`` — the outputs are not probabilities (rows in [0, 1] summing to 1).
* ``gradients`` — the input gradient of the cross-entropy is finite and non-zero per example.
* ``eps_sweep`` — PGD-20's accuracy does not increase with ε, and is ≈ 0 at a large ε.
* ``black_box`` — the black-box Square attack does not break clearly more points than the
  white-box attacks did.

Each check gives a :class:`Check`; a failed one becomes a warning in the report.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spat.attacks.context import attack_mode

#: Largest ε of the sweep: L∞ 0.5 (a 50/50 blend with any other image is reachable);
#: L2 0.5·√d (contains that L∞ ball).
SWEEP_LINF_MAX = 0.5
#: Tolerances of the sweep: accuracy may rise by at most this much (and 1 example) between
#: consecutive ε; "≈ 0" means at most max(1 example, this × 10/K): half of chance level. At
#: L∞ ε = 0.5 every image can be moved to the same grey image, so no model can keep more than
#: its largest class share; a single-start CE PGD-20 still leaves a few per cent of an
#: adversarially trained digits model standing (2.4 % of 500; 0 % with 5 restarts or the CW
#: margin), while gradient-masked models keep most of their accuracy (88 % in the tests).
SWEEP_RISE_TOL = 0.02
SWEEP_ZERO_TOL = 0.05
#: Square is "clearly stronger" when it breaks at least this many examples and more than this
#: fraction of the examples it attacked (those robust to the white-box attacks).
SQUARE_MIN_COUNT = 2
SQUARE_MAX_FRACTION = 0.02
#: Examples with an exactly zero input gradient tolerated.
ZERO_GRAD_TOL = 0.01


@dataclass
class Check:
    """One sanity check: ``passed`` is True, False (a warning) or None (skipped)."""

    name: str
    passed: bool | None
    detail: str
    values: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def warning(self) -> str | None:
        """The warning line of a failed check."""
        return f"sanity check {self.name} failed: {self.detail}" if self.passed is False else None


def check_eval_mode(model: nn.Module) -> Check:
    """Was the model in eval mode? (It is attacked in eval mode either way.)"""
    training = sorted({type(m).__name__ for m in model.modules() if m.training})
    if training:
        return Check("eval_mode", False, "the model was in training mode (modules "
                     f"{', '.join(training[:4])}); it was evaluated in eval mode — make sure that "
                     "is how it is deployed", {"training_modules": training})
    return Check("eval_mode", True, "model in eval mode")


def check_deterministic(model: nn.Module, x: torch.Tensor) -> Check:
    """Two forward passes of ``x`` (eval mode) give the same logits."""
    with attack_mode(model), torch.no_grad():
        a = model(x).float()
        b = model(x).float()
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(a.abs().max()) if a.numel() else 0.0
    same_pred = bool((a.argmax(1) == b.argmax(1)).all())
    ok = same_pred and diff <= 1e-4 * (1.0 + scale)
    detail = ("two forward passes agree" if ok else
              f"two forward passes differ (max |Δlogit| {diff:.3g}, same predictions: "
              f"{same_pred}): a randomised model needs an EOT attack (AutoAttack's 'rand' "
              "version); these numbers may overstate robustness")
    return Check("deterministic", ok, detail, {"max_abs_diff": diff})


def check_logits(model: nn.Module, x: torch.Tensor) -> Check:
    """The outputs are logits, not probabilities (all in [0, 1] and every row summing to 1)."""
    with attack_mode(model), torch.no_grad():
        out = model(x).float()
    in_unit = bool(((out >= -1e-5) & (out <= 1 + 1e-5)).all())
    sums = out.sum(1)
    sum_one = bool(((sums - 1).abs() < 1e-4).all())
    ok = not (in_unit and sum_one)
    detail = ("outputs are logits" if ok else
              "outputs look like probabilities (in [0, 1], rows sum to 1): attacks need the "
              "logits; softmax outputs weaken cross-entropy and margin attacks")
    return Check("logits", ok, detail, {"min": float(out.min()), "max": float(out.max()),
                                        "max_row_sum_error": float((sums - 1).abs().max())})


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Check:
    """The cross-entropy's input gradient is finite and non-zero for (almost) every example."""
    with attack_mode(model), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(xg).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
    flat = grad.flatten(1)
    finite = bool(torch.isfinite(flat).all())
    zero = int((flat.abs().amax(1) == 0).sum())
    frac = zero / max(int(x.shape[0]), 1)
    ok = finite and frac <= ZERO_GRAD_TOL
    if not finite:
        detail = "the input gradient has NaN/inf entries"
    elif not ok:
        detail = (f"{zero} of {x.shape[0]} examples ({frac:.0%}) have an exactly zero input "
                  "gradient: gradient attacks cannot move them (gradient masking: saturated "
                  "softmax, quantisation or other non-differentiable parts)")
    else:
        detail = f"input gradients finite and non-zero ({zero} zero of {x.shape[0]})"
    return Check("gradients", ok, detail, {"zero_gradient_examples": zero, "finite": finite,
                                           "examples": int(x.shape[0])})


def sweep_epsilons(eps: float, norm: str, dim: int) -> list[float]:
    """ε × {0.5, 1, 2, 4, …} up to the largest ε of the sweep (which is included)."""
    top = SWEEP_LINF_MAX if norm == "linf" else SWEEP_LINF_MAX * math.sqrt(dim)
    values = [0.5 * eps]
    while values[-1] * 2 < top:
        values.append(values[-1] * 2)
    if values[-1] < top:
        values.append(top)
    return values


def check_eps_sweep(eps_values: list[float], accuracies: list[float], n: int,
                    num_classes: int) -> Check:
    """Accuracy under PGD-20 must not rise with ε and must be ≈ 0 at the largest ε."""
    one = 1.0 / max(n, 1)
    rise_tol = max(SWEEP_RISE_TOL, one) + 1e-9
    rises = [(eps_values[i], eps_values[i + 1]) for i in range(len(accuracies) - 1)
             if accuracies[i + 1] > accuracies[i] + rise_tol]
    zero_tol = max(one, SWEEP_ZERO_TOL * 10 / max(num_classes, 1)) + 1e-9
    last = accuracies[-1]
    problems = []
    if rises:
        a, b = rises[0]
        problems.append(f"accuracy rises from ε={a:.4g} to ε={b:.4g}")
    if last > zero_tol:
        problems.append(f"accuracy is {last:.1%} at ε={eps_values[-1]:.4g}, where it should be "
                        f"≈ 0 (≤ {zero_tol:.1%})")
    table = ", ".join(f"{e:.4g}: {a:.1%}" for e, a in zip(eps_values, accuracies, strict=True))
    values = {"eps": eps_values, "accuracy": accuracies, "examples": n}
    if problems:
        return Check("eps_sweep", False, "; ".join(problems) + f" (PGD-20 accuracy by ε: "
                     f"{table}) — the attack is failing, a sign of gradient masking", values)
    return Check("eps_sweep", True, f"PGD-20 accuracy by ε: {table}", values)


def check_black_box(attacked: int, broken: int, source: str) -> Check:
    """Square must not break clearly more points than the white-box attacks left robust."""
    values = {"attacked": attacked, "broken_by_square": broken, "source": source}
    if attacked == 0:
        return Check("black_box", None, "skipped: no example was robust to the white-box "
                     "attacks", values)
    frac = broken / attacked
    ok = not (broken >= SQUARE_MIN_COUNT and frac > SQUARE_MAX_FRACTION)
    what = f"Square ({source}) broke {broken} of the {attacked} examples robust to the " \
           "white-box attacks"
    if ok:
        return Check("black_box", True, what, values)
    return Check("black_box", False, what + f" ({frac:.1%}): the black-box attack is stronger "
                 "than the gradient attacks, a sign of gradient masking", values)

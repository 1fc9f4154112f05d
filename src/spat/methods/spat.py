"""SPAT, the method section: self-paced hard-class-pair reweighting (Hou, Han & Li, AAAI-23,
arXiv 2210.15068; where spat departs from the official code: ``docs/spat-differences.md``).

Notation (as the paper): x clean image, y its label, K classes, x' the adversarial image;
f the network, whose cosine head outputs s·z with z_j = ŵ_jᵀĝ(x) + b_j (a model option,
:mod:`spat.models.heads`); p = softmax(f(x)), q = softmax(f(x')); s, m, n, β the method's knobs
(official defaults s = 8, m = 0.2, n = 0.2, β = 6).

SPAT's objective per batch of B examples is built from three parts, each defined here:

1. the self-paced accuracy loss on clean inputs, L_acc = mean_i CE(z̃(x_i), y_i), with the
   modulated logits z̃ of :func:`self_paced_logits` (needs the cosine head:
   :func:`require_cosine_scale`);
2. the HCP-ECP consistency loss L_rob = mean_i Σ_j k_ij(k_ij + n) of :func:`hcp_ecp`, with the
   per-class divergences k_j = p_j(log p_j − log q_j)
   (:func:`spat.attacks.objectives.per_class_kl`);
3. the total L = L_acc + β·L_rob, minimised by SGD, with x' from the training adversary that
   maximises L_rob (:func:`hcp_ecp_objective`, handed to the attack engine — the engine sits
   below the methods and knows only the objective interface).

TRADES (arXiv 1901.08573) is the same objective with all three parts off (linear head, plain CE,
KL(p‖q) in place of HCP-ECP), so both are :class:`ConsistencyAT`; :class:`SPAT` is its preset with
the parts on. The parts are also switches on the other methods (``self_paced_ce``, ``hcp_ecp``:
:func:`natural_logits`, :func:`consistency`).

Two warm-ups, NOT part of the official method (both off, 0, by default; they exist for the
study of whether they remove the self-paced plateau): ``beta_ramp_epochs``
(β grows linearly from 0 over the first N epochs: :func:`ramped_beta`) and ``self_paced_after``
(plain CE on the logits f(x) = s·z for the first N epochs, the self-paced CE from epoch N + 1:
:func:`self_paced_active`). The training loop applies them per epoch through the methods'
``for_epoch`` hook (:func:`warmup_for_epoch`, :class:`spat.methods.base.MethodDefaults`).

Import from this module with ``from spat.methods.spat import ...``: the package attribute
``spat.methods.spat`` is the preset function :func:`spat` (kept for existing callers, as
``from spat.methods import spat``), so ``import spat.methods.spat as m`` gives that function.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from spat.attacks.context import attack_mode
from spat.attacks.engine import perturb
from spat.attacks.objectives import (
    Objective,
    consistency_objective,
    kl_divergence,
    kl_objective,
    per_class_kl,
)
from spat.errors import SpatError
from spat.methods.base import MethodDefaults, MethodOutput, ThreatModel, knob
from spat.models import logit_scale
from spat.validation import Range

# ---------------------------------------------------------------------------------------------
# The knobs' meaningful values (each declared once; the methods' fields use them via ``knob``)

#: SPAT's margin m of the self-paced CE (:func:`self_paced_logits`): 0 <= m < 1.
M_RANGE = Range(0.0, 1.0, high_open=True, reason=(
    "the self-paced CE pulls the true-class cosine toward (1+m)/2 and wrong ones toward -m/2: "
    "m < 0 would reward a slightly similar wrong class (its factor z_j+m < 0), m >= 1 puts the "
    "true-class target at or beyond the largest cosine, 1"))
#: SPAT's offset n of HCP-ECP (:func:`hcp_ecp`): n >= 0, finite.
N_RANGE = Range(0.0, reason=(
    "HCP-ECP is sum_j k_j(k_j+n) = n*KL(p||q) + sum_j k_j^2: n < 0 would reward the "
    "clean/adversarial divergence the term exists to reduce"))
#: β, the weight of the consistency term (TRADES, SPAT): β >= 0, finite.
BETA_RANGE = Range(0.0, reason=(
    "beta weights the consistency term in L = L_acc + beta*L_rob: beta < 0 would maximise the "
    "clean/adversarial divergence, training away from robustness"))

# ---------------------------------------------------------------------------------------------
# Part 1: the self-paced cross-entropy


def self_paced_logits(
    logits: torch.Tensor, y: torch.Tensor, scale: float, m: float
) -> torch.Tensor:
    """SPAT's self-paced modulated logits z̃ (arXiv 2210.15068), as the official code computes
    them.

    With cosine logits z = logits / s (the head outputs s·z):
    z̃_y = s·(1 + m − z_y)·z_y for the true class and z̃_j = s·(z_j + m)·z_j for j ≠ y.
    The factors are neither detached nor clamped, as in the official code, so CE(z̃, y) pulls
    the true-class cosine toward (1+m)/2 and wrong-class cosines toward −m/2; a hard pair (low
    z_y, high z_j) gets a larger loss and gradient than an easy one. Computed in float32.
    """
    z = logits.float() / scale
    true = F.one_hot(y, z.shape[1]).bool()
    return scale * torch.where(true, (1.0 + m - z) * z, (z + m) * z)


def require_cosine_scale(model: nn.Module) -> float:
    """The cosine head's scale s; a clear error if the model has a linear head."""
    s = logit_scale(model)
    if s is None:
        raise SpatError("the self-paced cross-entropy needs the cosine head (use --head cosine)")
    return s


def natural_logits(
    model: nn.Module, logits: torch.Tensor, y: torch.Tensor, self_paced_ce: bool, m: float
) -> torch.Tensor:
    """The logits a method's cross-entropy term sees: z̃ when ``self_paced_ce``, else f(x)."""
    if not self_paced_ce:
        return logits.float()
    return self_paced_logits(logits, y, require_cosine_scale(model), m)


# ---------------------------------------------------------------------------------------------
# Part 2: HCP-ECP, the hard-class-pair weighted consistency


def hcp_ecp(logits_clean: torch.Tensor, logits_adv: torch.Tensor, n: float) -> torch.Tensor:
    """SPAT's HCP-ECP consistency term per example: Σ_j k_j·(k_j + n) = n·KL(p‖q) + Σ_j k_j².

    k_j = p_j(log p_j − log q_j), p = softmax(clean logits), q = softmax(adversarial logits).
    Each class's divergence contribution k_j is weighted by (k_j + n), so the classes whose
    probability moves most under attack — the hard class pairs — dominate (arXiv 2210.15068).
    Float32, shape (N,).
    """
    k = per_class_kl(logits_clean, logits_adv)
    return (k * (k + n)).sum(1)


def hcp_ecp_objective(logits_clean: torch.Tensor, n: float) -> Objective:
    """The training adversary's objective, L_rob(x, x') = Σ_j k_j(k_j + n) per example, with
    the clean logits fixed (detached, computed once per batch)."""
    return consistency_objective(logits_clean, lambda clean, adv: hcp_ecp(clean, adv, n))


_hcp_ecp_term = hcp_ecp  # the switch below has a parameter of the same name


def consistency(
    logits_clean: torch.Tensor, logits_adv: torch.Tensor, hcp_ecp: bool, n: float
) -> torch.Tensor:
    """Per-example consistency between clean and adversarial predictions, (N,).

    ``hcp_ecp=False``: KL(p‖q) (TRADES). ``hcp_ecp=True``: Σ_j k_j(k_j + n) (SPAT's HCP-ECP).
    No stop-gradient on p, as in TRADES and SPAT.
    """
    if hcp_ecp:
        return _hcp_ecp_term(logits_clean, logits_adv, n)
    return kl_divergence(logits_clean, logits_adv)


# ---------------------------------------------------------------------------------------------
# Warm-ups (the project's options, off in the official method): schedules over epochs


def ramped_beta(beta: float, ramp_epochs: int, epoch: int) -> float:
    """β of epoch ``epoch`` (0-based) under a linear warm-up over N = ``ramp_epochs`` epochs.

    In 1-based epochs e = epoch + 1: β_e = β · min(1, (e − 1)/N). The first N epochs are the
    warm-up (β_1 = 0, then β/N, 2β/N, ..., (N−1)β/N) and β is reached at epoch N + 1; with
    N = 4 and β = 6, epochs 1..5 use 0, 1.5, 3, 4.5, 6. β is constant within an epoch.
    N = 0: β from the first epoch (the official method). Not in SPAT's paper or code.
    """
    if ramp_epochs <= 0 or epoch >= ramp_epochs:
        return beta
    return beta * epoch / ramp_epochs


def self_paced_active(self_paced_after: int, epoch: int) -> bool:
    """Whether the self-paced CE is on in epoch ``epoch`` (0-based) when it is switched on after
    N = ``self_paced_after`` epochs: off (plain CE on the logits f(x), s·z for the cosine head)
    in 1-based epochs 1..N, on from epoch N + 1. N = 0: on throughout (the official method)."""
    return epoch >= self_paced_after


def check_warmup(method: object) -> None:
    """One-line :class:`SpatError` for a method's invalid warm-up fields (negative epochs, a
    self-paced switch on a method whose self-paced CE is off)."""
    for key in ("beta_ramp_epochs", "self_paced_after"):
        v = getattr(method, key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise SpatError(f"{key.replace('_', ' ')} must be an integer >= 0 (epochs), got {v!r}")
    if getattr(method, "self_paced_after", 0) and not getattr(method, "self_paced_ce", False):
        raise SpatError("self paced after (epochs) needs the self-paced cross-entropy "
                        "(self_paced_ce on: the default of spat)")


def warmup_for_epoch(method: MethodDefaults, epoch: int) -> MethodDefaults:
    """The method that trains epoch ``epoch`` (0-based) under its warm-ups: a copy with that
    epoch's β (:func:`ramped_beta`) and self-paced switch (:func:`self_paced_active`) and the
    warm-up fields set to 0; the method itself when it has no warm-up (bit-identical losses).
    A pure function of ``epoch``, so resuming at any epoch trains it as the uninterrupted run."""
    changes: dict[str, object] = {}
    ramp = getattr(method, "beta_ramp_epochs", 0)
    if ramp:
        changes.update(beta=ramped_beta(method.beta, ramp, epoch),  # type: ignore[attr-defined]
                       beta_ramp_epochs=0)
    after = getattr(method, "self_paced_after", 0)
    if after:
        changes.update(self_paced_ce=(method.self_paced_ce  # type: ignore[attr-defined]
                                      and self_paced_active(after, epoch)),
                       self_paced_after=0)
    return dataclasses.replace(method, **changes) if changes else method  # type: ignore[type-var]


# ---------------------------------------------------------------------------------------------
# Part 3: the total loss and its training adversary


def _official_threat() -> ThreatModel:
    return ThreatModel(eps=0.031, step_size=0.007, steps=10, init="normal")


class WarmupMethod:
    """What a method with β (MART's λ) and the warm-ups shares: its knobs in their ranges
    (:class:`~spat.methods.base.MethodDefaults`) and valid warm-ups (:func:`check_warmup`) at
    construction, and :meth:`for_epoch` for the training loop."""

    beta: float
    beta_ramp_epochs: int
    self_paced_after: int

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]  # the knobs' ranges (MethodDefaults)
        check_warmup(self)

    def for_epoch(self, epoch: int) -> WarmupMethod:
        """This method for epoch ``epoch`` (0-based) under its warm-ups
        (:func:`warmup_for_epoch`)."""
        return warmup_for_epoch(self, epoch)  # type: ignore[arg-type,return-value]


@dataclass(frozen=True, kw_only=True)
class ConsistencyAT(WarmupMethod, MethodDefaults):
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
        beta_ramp_epochs: N, epochs of linear β warm-up (:func:`ramped_beta`); 0 = off, as the
            official method. A project option for the self-paced plateau study.
        self_paced_after: N, epochs of plain CE on f(x) before the self-paced CE switches on
            (:func:`self_paced_active`; needs ``self_paced_ce``); 0 = off, as the official
            method. A project option for the self-paced plateau study.
    """

    default_init: ClassVar[str] = "normal"
    #: Refuse a linear head when called (SPAT's definition includes the cosine head).
    require_cosine: ClassVar[bool] = False

    name: str = "trades"
    threat: ThreatModel = field(default_factory=_official_threat)
    beta: float = knob(6.0, BETA_RANGE, "TRADES/SPAT β, the weight of the consistency term")
    self_paced_ce: bool = knob(False, None, "SPAT part: self-paced cross-entropy (needs --head "
                               "cosine)")
    m: float = knob(0.2, M_RANGE, "SPAT's self-paced margin m")
    hcp_ecp: bool = knob(False, None, "SPAT part: per-class weighted consistency "
                         "Σ k_j(k_j+n) instead of KL")
    n: float = knob(0.2, N_RANGE, "SPAT's HCP-ECP offset n")
    beta_ramp_epochs: int = knob(0, None, "warm-up: β (MART λ) grows linearly from 0 over this "
                                 "many epochs")
    self_paced_after: int = knob(0, None, "warm-up: plain CE on s·z for this many epochs, then "
                                 "the self-paced CE")

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


@dataclass(frozen=True, kw_only=True)
class SPAT(ConsistencyAT):
    """SPAT with the official defaults: cosine head (s = 8, a model option), self-paced CE
    (m = 0.2), HCP-ECP (n = 0.2), β = 6, ε 0.031, η 0.007, K 10, start x + 0.001·N(0, I).

    SPAT is defined with the cosine head: a linear head is refused (``require_cosine``); its
    linear-head ablation is ``trades`` with ``self_paced_ce``/``hcp_ecp`` switched on.
    """

    default_head: ClassVar[str] = "cosine"
    linear_head_error: ClassVar[str | None] = (
        "SPAT is defined with the cosine head; use --method trades with "
        "--self-paced-ce/--hcp-ecp for a linear-head ablation")

    require_cosine: ClassVar[bool] = True

    name: str = "spat"
    self_paced_ce: bool = True
    hcp_ecp: bool = True


def spat(**kwargs) -> SPAT:
    """SPAT with the official defaults (see :class:`SPAT`); keyword arguments override them."""
    return SPAT(**kwargs)

"""Per-example attack objectives: ``objective(logits_adv, y) -> (N,)`` to be maximised.

Objectives that compare with the clean prediction (TRADES' KL, SPAT's HCP-ECP term, passed in by
the method: :func:`consistency_objective`) are built from the clean logits once per batch, so
the attack never re-runs the clean forward pass; the official TRADES/SPAT code recomputes it at
every step with the same result and ~25% more work.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE(f(x'), y) per example (PGD, Madry et al. arXiv 1706.06083)."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini–Wagner margin max_{j≠y} z_j − z_y per example (arXiv 1608.04644, the L∞ "CW∞"
    variant of PGD used in robustness papers); positive means misclassified."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - true


def per_class_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """k_j = p_j·(log p_j − log q_j), (N, K), with p = softmax(clean), q = softmax(adv).

    Σ_j k_j = KL(p‖q) ≥ 0, but individual k_j may be negative (SPAT, arXiv 2210.15068).
    Computed in float32 from log-softmax (no log of a rounded-to-zero probability).
    """
    log_p = F.log_softmax(logits_clean.float(), dim=1)
    log_q = F.log_softmax(logits_adv.float(), dim=1)
    return log_p.exp() * (log_p - log_q)


def kl_divergence(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) per example: TRADES' robust term (Zhang et al. arXiv 1901.08573)."""
    return per_class_kl(logits_clean, logits_adv).sum(1)


def consistency_objective(
    logits_clean: torch.Tensor,
    term: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Objective:
    """The attack objective ``term(clean, logits_adv)`` per example with the clean logits fixed
    (detached, computed once per batch). A method passes its own consistency term in (SPAT's
    HCP-ECP lives with the method, :mod:`spat.methods.spat`, above the attack engine)."""
    clean = logits_clean.detach()
    return lambda logits_adv, y: term(clean, logits_adv)


def kl_objective(logits_clean: torch.Tensor) -> Objective:
    """TRADES attack objective, KL(p‖q), with the clean logits fixed (detached, computed once)."""
    return consistency_objective(logits_clean, kl_divergence)


OBJECTIVES: dict[str, Objective] = {"ce": cross_entropy, "cw": cw_margin}

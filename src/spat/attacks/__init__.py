"""Attacks: one engine (:func:`perturb`), threat geometry, per-example objectives, presets."""

from spat.attacks.context import attack_mode
from spat.attacks.engine import perturb
from spat.attacks.geometry import INITS, NORMS, Geometry
from spat.attacks.objectives import (
    OBJECTIVES,
    consistency_objective,
    cross_entropy,
    cw_margin,
    kl_divergence,
    kl_objective,
    per_class_kl,
)
from spat.attacks.presets import AttackSpec, cw, default_step_size, fgsm, pgd

__all__ = [
    "INITS",
    "NORMS",
    "OBJECTIVES",
    "AttackSpec",
    "Geometry",
    "attack_mode",
    "consistency_objective",
    "cross_entropy",
    "cw",
    "cw_margin",
    "default_step_size",
    "fgsm",
    "kl_divergence",
    "kl_objective",
    "per_class_kl",
    "perturb",
    "pgd",
]

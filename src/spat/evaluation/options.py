"""The settings of one robustness evaluation (:class:`EvalOptions`) and the logits its attacks
see (:func:`attacked_model`).

One place for the defaults and the validation of ``spat eval``'s settings: the protocol
(:func:`spat.evaluation.evaluate`), a run's evaluation (:func:`spat.evaluation.evaluate_run`),
an external model's (:func:`spat.evaluation.evaluate_model`), the command line, the Python API
and a study's ``[eval]`` table all build one :class:`EvalOptions`; a bad value is a one-line
:class:`~spat.errors.SpatError` raised when it is built.

Attack logits (``attack_logits``). SPAT's cosine head (arXiv 2210.15068, Sec. 3.2) outputs
``s·z`` with z = ŵᵀĝ(x) + b the temperature-1 cosine logits and s the scale (8 by default).
``"model"`` attacks the model's own outputs s·z (spat's default: the logits it was trained
with); ``"unit_cosine"`` attacks ``model(x) / s`` = z, as the official SPAT evaluation's PGD-20
does. Predictions (argmax) do not change with the division, so clean accuracy is the same; the
softmax of z is nearly uniform, so the cross-entropy gradient is weaker and robust accuracy can
be overstated (see :class:`spat.models.heads.CosineLinear`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from spat.attacks.geometry import check_norm
from spat.errors import SpatError
from spat.evaluation.attacks import DEFAULT_ATTACKS, parse_attacks
from spat.utils.argtypes import fraction
from spat.utils.dataclass_flags import option
from spat.utils.rng import MAX_SEED

#: The logits every attack sees: the model's own (s·z for a cosine head) or z = s·z / s.
ATTACK_LOGITS: tuple[str, ...] = ("model", "unit_cosine")
#: The :class:`EvalOptions` fields that change an evaluation's numbers (the predictions under
#: attack, so every accuracy): a finished evaluation answers for wanted options only when these
#: agree (:meth:`EvalOptions.result_differences`; a study cell's evaluation is stale otherwise).
RESULT_FIELDS: tuple[str, ...] = ("eps", "norm", "attacks", "n_examples", "seed", "restarts",
                                  "step_size", "batch_size", "attack_logits")
#: The fields that change only the sanity checks, not a number of the accuracy table. Every
#: field is in exactly one of the two lists (a test checks it), so a new field needs a decision.
CHECK_FIELDS: tuple[str, ...] = ("sanity_examples", "square_queries")


def _integer(name: str, value: Any, low: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SpatError(f"{name} must be an integer, got {value!r}")
    if low is not None and int(value) < low:
        raise SpatError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SpatError(f"{name} must be a number, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """The evaluation settings (not the model, the data, the device or the output plumbing).

    Attributes:
        eps: radius ε of the threat ball in [0, 1] pixel units (> 0; ≤ 1 for linf). None:
            the run's training ε (:func:`~spat.evaluation.evaluate_run`) or the dataset's
            default (:func:`~spat.evaluation.evaluate_model`); :func:`~spat.evaluation.evaluate`
            needs it.
        attacks: keys of :data:`spat.evaluation.attacks.ATTACKS` (a list or ``"a,b"``), kept in
            the canonical order; clean is always evaluated.
        norm: ``"linf"`` or ``"l2"`` (any case). None: the run's training norm, else linf.
        n_examples: evaluate the first N of a permutation seeded by ``seed`` (None: all, in
            order).
        seed: subset seed; each white-box attack's random start is seeded from (seed, attack
            key); AutoAttack gets ``seed`` itself.
        restarts: random starts of PGD and CW (worst case kept per example).
        step_size: PGD/CW step η in pixel units (None: ε/4; FGSM always steps ε).
        batch_size: examples per attack batch (also AutoAttack's batch size).
        sanity_examples: examples for the ε-sweep and black-box sanity checks (0 skips them).
        square_queries: queries of the black-box check's Square attack.
        attack_logits: ``"model"`` (the model's outputs, s·z for a cosine head) or
            ``"unit_cosine"`` (s·z / s = z, the official SPAT evaluation's temperature 1;
            needs a cosine head). See the module docstring.
    """

    eps: float | None = option(
        None, "ε in [0,1] pixel units, accepts 8/255 (default: the run's training ε; with "
        "--model the dataset's default training ε)", group="settings", parse=fraction)
    attacks: tuple[str, ...] = option(
        DEFAULT_ATTACKS, "comma-separated, from: {attack_keys} (see below; default "
        "{default_attacks})")
    norm: str | None = option(None, "threat model (default: the run's; linf with --model)",
                              parse=str.lower, choices=("linf", "l2"))
    n_examples: int | None = option(
        None, "evaluate the first N of a permutation of the test set seeded by --seed "
        "(default: the whole test set, in order)")
    seed: int = option(0, "seed of the subset, of the random starts and of AutoAttack")
    restarts: int = option(1, "random starts of PGD and CW (worst case kept per example)")
    step_size: float | None = option(None, "PGD/CW step size η (default ε/4)", parse=fraction)
    batch_size: int = option(500, "examples per attack batch (also AutoAttack's)")
    sanity_examples: int = option(
        100, "examples for the ε-sweep and black-box (Square) sanity checks; 0 skips them")
    square_queries: int = option(1000, "queries of the black-box sanity check's Square attack")
    attack_logits: str = option(
        "model", "logits every attack sees: model (the model's outputs; s·z for a cosine head) "
        "or unit_cosine (s·z / s = z, temperature 1, as the official SPAT evaluation; needs a "
        "cosine head). Clean accuracy is the same", choices=ATTACK_LOGITS)

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: normalise the values once, here
        attacks: Any = self.attacks
        if not isinstance(attacks, str):
            if not isinstance(attacks, Sequence) or not all(isinstance(a, str) for a in attacks):
                raise SpatError(f"attacks must be attack names, got {attacks!r}")
            attacks = list(attacks)
        put(self, "attacks", tuple(parse_attacks(attacks)))
        if self.norm is not None:
            if not isinstance(self.norm, str):
                raise SpatError(f"norm must be a string, got {self.norm!r}")
            put(self, "norm", check_norm(self.norm.lower()))
        if self.eps is not None:
            eps = _real("eps", self.eps)
            if not (eps > 0 and math.isfinite(eps)):
                raise SpatError(f"eps must be > 0, got {self.eps}")
            if self.norm == "linf" and eps > 1:  # [0,1] pixel units: the whole image space
                raise SpatError(f"eps must be in (0, 1] for linf (pixel units in [0, 1]; 8/255 "
                                f"is written 8/255 or 0.031), got {eps}")
            put(self, "eps", eps)
        if self.n_examples is not None:
            put(self, "n_examples", _integer("n-examples", self.n_examples, 1))
        put(self, "seed", _integer("seed", self.seed, 0))
        if self.seed > MAX_SEED:
            raise SpatError(f"seed must be in [0, 2**63 - 1], got {self.seed}")
        put(self, "restarts", _integer("restarts", self.restarts, 1))
        put(self, "batch_size", _integer("batch size", self.batch_size, 1))
        put(self, "sanity_examples", _integer("sanity examples", self.sanity_examples, 0))
        put(self, "square_queries", _integer("square queries", self.square_queries, 1))
        if self.step_size is not None:
            step = _real("step size", self.step_size)
            if not (step > 0 and math.isfinite(step)):
                raise SpatError(f"step size must be > 0, got {self.step_size}")
            put(self, "step_size", step)
        if self.attack_logits not in ATTACK_LOGITS:
            raise SpatError(f"attack logits must be one of {', '.join(ATTACK_LOGITS)}, got "
                            f"{self.attack_logits!r}")

    @classmethod
    def of(cls, options: EvalOptions | None = None, **settings: Any) -> EvalOptions:
        """``options`` (default: the defaults) with the given fields replaced and validated;
        an unknown field name is a one-line :class:`SpatError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise SpatError(f"unknown evaluation setting {unknown[0]!r} (valid: "
                            f"{', '.join(sorted(names))})")
        return dataclasses.replace(options or cls(), **settings)

    def with_threat(self, eps: float | None, norm: str | None) -> EvalOptions:
        """These options with ε and norm filled in where they are None (a run's training
        values, or linf); ε must then be known."""
        out = dataclasses.replace(self, eps=self.eps if self.eps is not None else eps,
                                  norm=self.norm if self.norm is not None else (norm or "linf"))
        if out.eps is None:
            raise SpatError("give eps, the radius of the threat ball in [0, 1] pixel units")
        return out

    def for_split(self, n_total: int) -> EvalOptions:
        """These options on a split of ``n_total`` examples: ``n_examples`` None when it takes
        the whole split (then the subset is every example, in order, as with None)."""
        if self.n_examples is not None and self.n_examples >= n_total:
            return dataclasses.replace(self, n_examples=None)
        return self

    def result_differences(self, other: EvalOptions) -> list[str]:
        """The :data:`RESULT_FIELDS` whose values differ between these options and ``other``
        (numbers equal to 1e-12), in that order; empty: the same numbers."""
        def same(a: Any, b: Any) -> bool:
            if isinstance(a, float) and isinstance(b, float):
                return abs(a - b) <= 1e-12
            return bool(a == b)

        return [k for k in RESULT_FIELDS if not same(getattr(self, k), getattr(other, k))]

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values (attacks as a list)."""
        d = dataclasses.asdict(self)
        d["attacks"] = list(self.attacks)
        return d


class UnitCosineLogits(nn.Module):
    """``model(x) / s``: the temperature-1 cosine logits z of a model whose cosine head
    outputs s·z (SPAT, arXiv 2210.15068, Eq. 2). A view for the attacks; it holds ``model``
    as its only submodule and adds no parameters."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        if not (math.isfinite(scale) and scale > 0):
            raise SpatError(f"the cosine scale s must be a positive finite number, got {scale}")
        self.model = model
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """z = model(x) / s, shape (N, K)."""
        return self.model(x) / self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def attacked_model(model: nn.Module, attack_logits: str) -> tuple[nn.Module, float | None]:
    """The module every attack sees and the divisor s (None for ``"model"``): ``model`` itself,
    or :class:`UnitCosineLogits` with s read by :func:`spat.models.logit_scale`. A model without
    a cosine head cannot give unit-cosine logits: one-line :class:`SpatError`."""
    if attack_logits == "model":
        return model, None
    if attack_logits != "unit_cosine":
        raise SpatError(f"attack logits must be one of {', '.join(ATTACK_LOGITS)}, got "
                        f"{attack_logits!r}")
    from spat.models import logit_scale

    s = logit_scale(model)
    if s is None:
        raise SpatError("attack logits 'unit_cosine' need a model with a cosine head (logits "
                        "s·z); this model has none, so there is no s to divide by")
    return UnitCosineLogits(model, s), s

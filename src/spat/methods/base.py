"""What every training method shares: its output record, the threat model, and the class-level
knowledge (:class:`MethodDefaults`) that configs and the CLI read.

A method is a frozen dataclass of hyperparameters with ``__call__(model, x, y, generator)``
returning a :class:`MethodOutput`. It never touches the optimizer (except through the optional
hooks of :class:`MethodDefaults`), never calls
``model.train()``/``eval()`` itself (the attack's context manager handles eval mode and
restores the caller's mode), and never moves tensors between devices.

SPAT's three parts (arXiv 2210.15068) are switchable on any method where they make sense:

* the cosine head (a model option, ``--head cosine``),
* the self-paced cross-entropy (``self_paced_ce=True``),
* the HCP-ECP per-class consistency weighting (``hcp_ecp=True``) in place of the plain KL;

all three are defined in :mod:`spat.methods.spat`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from spat.attacks.geometry import INITS, check_norm
from spat.errors import SpatError
from spat.validation import Range


@dataclass
class MethodOutput:
    """Result of one method call on a batch.

    Attributes:
        loss: scalar to minimise (float32, carries the graph).
        logits_adv: detached adversarial logits (N, K), for robust training accuracy.
        logits_clean: detached clean logits (N, K) from the train-mode forward, or None when
            the method makes no clean forward (PGD-AT).
        parts: detached scalar tensors of the loss terms, e.g. {"loss_nat": ..., "loss_rob": ...}.
    """

    loss: torch.Tensor
    logits_adv: torch.Tensor | None
    logits_clean: torch.Tensor | None
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ThreatModel:
    """The training adversary's ball and steps.

    Attributes:
        eps: ε in [0,1] pixel units (0.031 ≈ 8/255 in the official SPAT/TRADES code).
        step_size: η per step (0.007 in the official code).
        steps: K (10 in the official code).
        norm: "linf" or "l2".
        init: random start, "uniform" (PGD-AT), "normal" (x + 0.001·N(0,I), TRADES/SPAT/MART) or
            "none".
    """

    eps: float = 0.031
    step_size: float = 0.007
    steps: int = 10
    norm: str = "linf"
    init: str = "uniform"

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps <= 1.0:
            raise SpatError(f"eps must be in [0, 1], got {self.eps}")
        if not 0.0 < self.step_size <= 1.0:
            raise SpatError(f"step size must be in (0, 1], got {self.step_size}")
        if self.steps < 1:
            raise SpatError(f"attack steps must be >= 1, got {self.steps}")
        check_norm(self.norm)
        if self.init not in INITS:
            raise SpatError(f"unknown random start {self.init!r} (valid: {', '.join(INITS)})")


#: The key of a method field's ``metadata`` that holds its meaningful :class:`Range`.
RANGE_KEY = "range"
#: A method's dataclass fields that are not hyperparameters (its registry name, and the threat
#: model, which the config's ``eps``/``step_size``/``steps``/``norm``/``init`` give).
NOT_HYPERPARAMETERS = ("name", "threat")


def knob(default: Any, valid: Range | None = None, help: str = "",  # noqa: A002
         parse: Callable[[str], Any] | None = None) -> Any:
    """A method hyperparameter field with its ``default``, the :class:`~spat.validation.Range` of
    its meaningful values (or ``None``) and its help text (use as
    ``m: float = knob(0.2, M_RANGE, "SPAT's self-paced margin m")``).

    Every dataclass field of a method except ``name`` and ``threat`` is a hyperparameter, and
    this one field is all there is of it: ``spat train --FIELD`` (help text, type and default
    from here), the TOML key of a config file or study table, the check of its type (the
    annotation) and range before anything is written (``TrainConfig.validate``), its record in
    ``config.json`` and the checkpoints, the argument :func:`spat.methods.build_method` passes,
    and the study's staleness rule. A plain field (``gamma: float = 0.5``) is a hyperparameter
    too, with no range and its name for help. Each range is declared once, with its reason,
    beside the term it weights (e.g. :data:`spat.methods.spat.M_RANGE`); it is checked again
    when the method is built (:meth:`MethodDefaults.__post_init__`)."""
    from spat.utils.dataclass_flags import option

    flag = option(default, help, parse=parse)
    return dataclasses.field(default=default, metadata={**flag.metadata, RANGE_KEY: valid})


class MethodDefaults:
    """What a method class knows about itself, read by the config (``TrainConfig.resolved`` and
    ``validate``), :func:`spat.methods.build_method` and the CLI help.

    A method is a frozen, keyword-only dataclass deriving from this class. Its hyperparameters
    are its dataclass fields (``beta``, ``m``, ``n``, ``self_paced_ce``, ``hcp_ecp``, ``threat``,
    ...) and their defaults are the method's defaults; which of SPAT's parts it takes follows
    from its fields (``self_paced_ce``, ``hcp_ecp``). The class variables below say the rest.

    Optional training-loop hooks, for methods that need the optimizer (e.g. AWP-style weight
    perturbation): ``before_step(model, optimizer)`` is called after ``loss.backward()`` and
    before ``optimizer.step()``, ``after_step(model, optimizer)`` right after the step; the loop
    calls each only when the method defines it (:func:`hooks`).

    Optional per-epoch hook, for hyperparameters that follow a schedule over epochs (the warm-ups
    ``beta_ramp_epochs`` and ``self_paced_after`` of :mod:`spat.methods.spat`):
    ``for_epoch(epoch) -> method`` returns the method to train epoch ``epoch`` (0-based, the
    loop's index; epoch e = epoch + 1 in 1-based words) with, e.g., that epoch's β. The loop calls
    it at the start of every epoch through :func:`for_epoch` and uses the result (its step hooks
    included) for that epoch only. It must be a pure function of ``epoch`` and the method's
    fields (no state carried between epochs), so that a run resumed at epoch k trains epoch k
    with the same method as the uninterrupted run.

    Class variables:
        default_head: the classifier head when the config names none ("linear" or "cosine").
        default_init: the training adversary's random start when the config names none.
        linear_head_error: set when the method is defined with the cosine head only: the
            one-line error a linear head gets.
    """

    default_head: ClassVar[str] = "linear"
    default_init: ClassVar[str] = "uniform"
    linear_head_error: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        """Every hyperparameter declared with :func:`knob` lies in its range (one-line
        :class:`SpatError` naming the range and its reason). A subclass's ``__post_init__``
        calls this one first."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            valid = f.metadata.get(RANGE_KEY)
            if valid is not None:
                valid.check(getattr(self, f.name), f.name)

    @classmethod
    def knob_range(cls, key: str) -> Range | None:
        """The :class:`Range` declared for hyperparameter ``key`` (:func:`knob`), or ``None``."""
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name == key:
                return f.metadata.get(RANGE_KEY)
        return None

    @classmethod
    def hyperparameter_fields(cls) -> dict[str, dataclasses.Field]:
        """The method's hyperparameters: its dataclass fields but ``name`` and ``threat``."""
        return {f.name: f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.name not in NOT_HYPERPARAMETERS}

    @classmethod
    def hyperparameters(cls) -> dict[str, Any]:
        """The method's hyperparameters with their defaults (``name``, ``threat`` excluded)."""
        out: dict[str, Any] = {}
        for f in cls.hyperparameter_fields().values():
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out

    @classmethod
    def uniform_loss(cls, num_classes: int) -> float:
        """The training loss of a network that outputs the uniform distribution (all logits
        equal) for every input: where a collapsed network's loss sits (read by the collapse
        guard, :mod:`spat.train.guard`). ln K for a cross-entropy plus consistency terms that
        vanish when the clean and attacked outputs agree (PGD-AT, TRADES, SPAT); a method with
        another loss overrides it."""
        return math.log(num_classes)

    @classmethod
    def takes(cls, key: str) -> bool:
        """Whether the method has the hyperparameter ``key``."""
        return key in cls.hyperparameter_fields()

    @classmethod
    def default(cls, key: str) -> Any:
        """The method's default for hyperparameter ``key`` (``None`` if it has none)."""
        return cls.hyperparameters().get(key)


def hooks(method: object) -> tuple[Callable[..., Any] | None, Callable[..., Any] | None]:
    """A method's optional ``(before_step, after_step)`` hooks, None where not defined."""
    return getattr(method, "before_step", None), getattr(method, "after_step", None)


def for_epoch(method: Any, epoch: int) -> Any:
    """The method that trains epoch ``epoch`` (0-based): ``method.for_epoch(epoch)`` where the
    method defines that hook (:class:`MethodDefaults`), else ``method`` itself."""
    hook = getattr(method, "for_epoch", None)
    return method if hook is None else hook(epoch)

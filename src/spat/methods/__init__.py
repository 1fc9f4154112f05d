"""Training methods: a registry of method classes and :func:`build_method` from a config.

Every method takes ``(model, x, y, generator)`` and returns a :class:`MethodOutput`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spat.errors import SpatError, unknown_name
from spat.methods.base import MethodDefaults, MethodOutput, ThreatModel, for_epoch, hooks
from spat.methods.mart import MART
from spat.methods.pgd_at import PGDAT
from spat.methods.spat import SPAT, ConsistencyAT, self_paced_logits, spat
from spat.methods.standard import Standard
from spat.methods.trades import trades
from spat.validation import Range

Method = Callable[..., MethodOutput]

#: The registry: name → method class (a :class:`MethodDefaults` dataclass). Adding a method is
#: one module with its class plus one line here (or :func:`register_method` from outside).
METHODS: dict[str, type[MethodDefaults]] = {
    "standard": Standard,
    "pgd_at": PGDAT,
    "trades": ConsistencyAT,
    "mart": MART,
    "spat": SPAT,
}


def register_method(name: str, cls: type[MethodDefaults]) -> None:
    """Add the method class ``cls`` to the registry as ``name`` (a plugin's one line). Its
    hyperparameters (every field but ``name`` and ``threat``) become ``spat train`` flags,
    config and study keys at once; one that another method also has must have the same type."""
    if not (isinstance(cls, type) and issubclass(cls, MethodDefaults)
            and dataclasses.is_dataclass(cls)):
        raise TypeError(f"a method must be a dataclass deriving from MethodDefaults, got {cls!r}")
    known = all_hyperparameters()
    hints = typing.get_type_hints(cls)
    for key in cls.hyperparameter_fields():
        if key in known and known[key].annotation != hints[key]:
            raise TypeError(f"method {name!r}: hyperparameter {key!r} is {hints[key]}, but "
                            f"{', '.join(known[key].methods)} declare it {known[key].annotation}")
    METHODS[name] = cls


@dataclass(frozen=True)
class Hyperparameter:
    """A method hyperparameter as the config and the command line see it: the union of the
    registered methods' fields of that name (:func:`all_hyperparameters`).

    Attributes:
        name: the field's name (also the config key; the flag is ``--`` + name, ``_`` → ``-``).
        annotation: its type (``float``, ``int``, ``bool``, ...).
        field: the first registered method's declaration (its metadata: help, parser, range).
        help: the distinct help texts of the methods that declare it, joined by "; ".
        methods: the registered methods that take it.
    """

    name: str
    annotation: Any
    field: dataclasses.Field
    help: str
    methods: tuple[str, ...]


def all_hyperparameters() -> dict[str, Hyperparameter]:
    """Every registered method's hyperparameters, in registration order (plugins' included)."""
    from spat.utils.dataclass_flags import KEY

    decl: dict[str, list[tuple[str, type[MethodDefaults], dataclasses.Field]]] = {}
    for name, cls in METHODS.items():
        for key, f in cls.hyperparameter_fields().items():
            decl.setdefault(key, []).append((name, cls, f))
    out: dict[str, Hyperparameter] = {}
    for key, found in decl.items():
        texts = [t for _, _, f in found if (t := f.metadata.get(KEY, {}).get("help"))]
        out[key] = Hyperparameter(
            name=key, annotation=typing.get_type_hints(found[0][1])[key], field=found[0][2],
            help="; ".join(dict.fromkeys(texts)), methods=tuple(n for n, _, _ in found))
    return out


def method_class(name: str) -> type[MethodDefaults]:
    """The class registered as ``name``; a one-line :class:`SpatError` for an unknown name."""
    if name not in METHODS:
        raise unknown_name("method", name, METHODS)
    return METHODS[name]


def supporting(part: str) -> tuple[str, ...]:
    """The registered methods that take ``part`` ("self_paced_ce", "hcp_ecp", ...)."""
    return tuple(name for name, cls in METHODS.items() if cls.takes(part))


def knob_range(key: str, method: str) -> Range | None:
    """The meaningful :class:`~spat.validation.Range` of hyperparameter ``key`` for the method
    registered as ``method`` (MART's ``beta`` is its λ, with λ's reason); for a knob that method
    lacks (a config carries them all), the first registered method's that declares one; ``None``
    for a knob with no declared range (the switches, the warm-ups)."""
    own = METHODS[method].knob_range(key) if method in METHODS else None
    if own is not None:
        return own
    return next((r for cls in METHODS.values() if (r := cls.knob_range(key)) is not None), None)


def method_names() -> list[str]:
    return list(METHODS)


def build_method(
    name: str, *, threat: ThreatModel | None = None, **hyperparameters: Any
) -> Method:
    """The method ``name`` with the given hyperparameters (``beta``, ``m``, ``n``,
    ``self_paced_ce``, ``hcp_ecp``, or a plugin method's own); ``None`` keeps the method's
    default, and a hyperparameter of another registered method that this one does not have is
    ignored (a study's ``[train]`` table may set ``beta`` for every variant).

    Raises :class:`SpatError` for an unknown name or a SPAT part the method cannot take, and
    ``TypeError`` for a name that no registered method has.
    """
    cls = method_class(name)
    unknown = sorted(set(hyperparameters) - set(all_hyperparameters()))
    if unknown:
        raise TypeError(f"build_method() got unknown hyperparameters: {', '.join(unknown)}")
    if hyperparameters.get("hcp_ecp") and not cls.takes("hcp_ecp"):
        raise SpatError(f"method {name!r} has no consistency term for HCP-ECP "
                        f"(valid with: {', '.join(supporting('hcp_ecp'))})")
    if hyperparameters.get("beta_ramp_epochs") and not cls.takes("beta_ramp_epochs"):
        raise SpatError(f"method {name!r} has no beta/lambda weight to ramp "
                        f"(valid with: {', '.join(supporting('beta_ramp_epochs'))})")
    kwargs: dict[str, Any] = {k: v for k, v in hyperparameters.items()
                              if v is not None and cls.takes(k)}
    if threat is not None and "threat" in {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
        kwargs["threat"] = threat
    return cls(**kwargs)  # type: ignore[return-value]


__all__ = [
    "MART",
    "METHODS",
    "PGDAT",
    "SPAT",
    "ConsistencyAT",
    "Hyperparameter",
    "Method",
    "MethodDefaults",
    "MethodOutput",
    "Standard",
    "ThreatModel",
    "all_hyperparameters",
    "build_method",
    "for_epoch",
    "hooks",
    "knob_range",
    "method_class",
    "method_names",
    "register_method",
    "self_paced_logits",
    "spat",
    "supporting",
    "trades",
]

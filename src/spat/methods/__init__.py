"""Training methods: a registry of constructors and :func:`build_method` from a config.

Every method takes ``(model, x, y, generator)`` and returns a :class:`MethodOutput`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spat.errors import SpatError, unknown_name
from spat.methods.base import MethodOutput, ThreatModel, self_paced_logits
from spat.methods.mart import MART
from spat.methods.pgd_at import PGDAT
from spat.methods.standard import Standard
from spat.methods.trades import ConsistencyAT, spat, trades

Method = Callable[..., MethodOutput]

METHODS: dict[str, Callable[..., Method]] = {
    "standard": Standard,
    "pgd_at": PGDAT,
    "trades": trades,
    "mart": MART,
    "spat": spat,
}

#: The methods that take each of SPAT's loss parts (the cosine head is a model option).
SUPPORTS_SELF_PACED_CE = ("standard", "pgd_at", "trades", "mart", "spat")
SUPPORTS_HCP_ECP = ("trades", "mart", "spat")
#: Each method's own random start for its training adversary.
DEFAULT_INIT = {"standard": "none", "pgd_at": "uniform", "trades": "normal", "mart": "normal",
                "spat": "normal"}


def method_names() -> list[str]:
    return list(METHODS)


def build_method(
    name: str,
    *,
    threat: ThreatModel | None = None,
    beta: float | None = None,
    self_paced_ce: bool | None = None,
    m: float = 0.2,
    hcp_ecp: bool | None = None,
    n: float = 0.2,
) -> Method:
    """The method ``name`` with the given hyperparameters; ``None`` keeps the method's default.

    Raises :class:`SpatError` for an unknown name or a part the method cannot take.
    """
    if name not in METHODS:
        raise unknown_name("method", name, METHODS)
    kwargs: dict[str, Any] = {"m": m}
    if name != "standard" and threat is not None:
        kwargs["threat"] = threat
    if self_paced_ce is not None:
        kwargs["self_paced_ce"] = self_paced_ce
    if hcp_ecp is not None:
        if name not in SUPPORTS_HCP_ECP:
            if hcp_ecp:
                raise SpatError(
                    f"method {name!r} has no consistency term for HCP-ECP "
                    f"(valid with: {', '.join(SUPPORTS_HCP_ECP)})"
                )
        else:
            kwargs["hcp_ecp"] = hcp_ecp
    if name in SUPPORTS_HCP_ECP:
        kwargs["n"] = n
        if beta is not None:
            kwargs["beta"] = beta
    return METHODS[name](**kwargs)


__all__ = [
    "DEFAULT_INIT",
    "MART",
    "METHODS",
    "PGDAT",
    "SUPPORTS_HCP_ECP",
    "SUPPORTS_SELF_PACED_CE",
    "ConsistencyAT",
    "Method",
    "MethodOutput",
    "Standard",
    "ThreatModel",
    "build_method",
    "method_names",
    "self_paced_logits",
    "spat",
    "trades",
]

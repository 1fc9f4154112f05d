"""spat: self-paced hard-class-pair reweighting adversarial training (Hou, Han & Li, AAAI-23,
arXiv 2210.15068), the standard baselines (PGD-AT, TRADES, MART), the field's evaluation protocol
and hard-class-pair analysis."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__version__ = "0.1.0"


def load_model(
    source: str | os.PathLike[str], weights: str | os.PathLike[str] | None = None, **kwargs: Any
) -> nn.Module:
    """Rebuild a classifier of [0, 1] images without its run directory, in eval mode: a portable
    file written by ``spat export``, ``package.module:factory`` with optional weights, or
    ``official-trades``/``official-spat`` with an official checkpoint. See
    :func:`spat.models.external.load_model` (keywords: ``cosine_scale``, ``device``)."""
    from spat.models.external import load_model as _load_model

    return _load_model(source, weights, **kwargs)


__all__ = ["__version__", "load_model"]

"""What the steps of one :func:`spat.evaluation.evaluate` call share (:class:`EvalJob`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from spat.data import Split
from spat.evaluation.options import EvalOptions
from spat.evaluation.result_cache import ResultCache
from spat.utils.distributed import DistContext
from spat.utils.progress import Progress

#: Receives one-line messages (reuse, recomputation).
Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class EvalJob:
    """The attacked module (the model, or its unit-cosine logits), the evaluated subset, the
    settings (ε and norm filled in), and the plumbing: device, saved results, the fingerprint
    part common to every result (:func:`~spat.evaluation.fingerprint.common_fingerprint`),
    progress bars, log, ranks."""

    model: nn.Module
    sub: Split
    opts: EvalOptions
    device: torch.device
    cache: ResultCache
    common: dict[str, Any]
    progress: Progress
    log: Log
    dist: DistContext

    @property
    def eps(self) -> float:
        """ε (always set in a job)."""
        assert self.opts.eps is not None
        return self.opts.eps

    @property
    def norm(self) -> str:
        """The norm (always set in a job)."""
        assert self.opts.norm is not None
        return self.opts.norm

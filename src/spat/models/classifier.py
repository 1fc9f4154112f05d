"""The full classifier (input normalisation → backbone → head) and helpers that see through
DDP / torch.compile wrappers."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from spat.errors import SpatError
from spat.models.heads import CosineLinear

#: Wrapper depth beyond which :func:`unwrap` gives up (guards against cycles).
_MAX_WRAPPERS = 16


class Normalize(nn.Module):
    """Per-channel ``(x − mean) / std`` on inputs in [0, 1], as the model's first layer, so that
    attacks and ε-balls live in pixel space. ``mean``/``std`` are buffers of shape (1, C, 1, 1)
    (they travel in ``state_dict`` and safetensors files); ``None`` gives the identity (mean 0,
    std 1). A single value is broadcast to all ``in_channels``."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise SpatError(f"in_channels must be positive, got {in_channels}")
        m = _per_channel("mean", mean, in_channels, 0.0)
        s = _per_channel("std", std, in_channels, 1.0)
        if not all(math.isfinite(v) for v in m):
            raise SpatError(f"normalisation mean must be finite, got {m}")
        if not all(math.isfinite(v) and v > 0 for v in s):
            raise SpatError(f"normalisation std must be positive and finite, got {s}")
        self.register_buffer("mean", torch.tensor(m, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(s, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _per_channel(
    what: str, values: Sequence[float] | None, channels: int, default: float
) -> list[float]:
    if values is None:
        return [default] * channels
    vals = [float(v) for v in values]
    if len(vals) == 1:
        return vals * channels
    if len(vals) != channels:
        raise SpatError(
            f"normalisation {what} has {len(vals)} values but the input has {channels} channels"
        )
    return vals


class Classifier(nn.Module):
    """``normalize → backbone → head``: inputs in [0, 1], logits (N, K).

    :meth:`features` is the penultimate representation g(x) (after normalisation and backbone,
    before the head); :meth:`forward` is ``head(features(x))``. With a
    :class:`~spat.models.heads.CosineLinear` head the logits are ``s·z`` (see its docstring).
    """

    normalize: Normalize
    backbone: nn.Module
    head: nn.Linear | CosineLinear

    def __init__(
        self, normalize: Normalize, backbone: nn.Module, head: nn.Linear | CosineLinear
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.head = head

    @property
    def num_classes(self) -> int:
        """K, the number of logits."""
        return int(self.head.out_features)

    @property
    def out_dim(self) -> int:
        """d, the width of :meth:`features`."""
        return int(self.backbone.out_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features g(x), shape (N, d); the head is not run."""
        return self.backbone(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape (N, K)."""
        return self.head(self.features(x))


def _strip_wrappers(model: nn.Module) -> nn.Module:
    """Peel torch.compile (``._orig_mod``) and DDP/DataParallel (``.module``) wrappers, any
    number and order; a module that is neither is returned as is."""
    m = model
    for _ in range(_MAX_WRAPPERS):
        if isinstance(m, Classifier):
            return m
        inner = getattr(m, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(m, "module", None)
        if not isinstance(inner, nn.Module):
            return m
        m = inner
    return m


def unwrap(model: nn.Module) -> Classifier:
    """The :class:`Classifier` inside DDP / DataParallel (``.module``) and torch.compile
    (``._orig_mod``) wrappers, in any nesting; ``TypeError`` if there is none."""
    m = _strip_wrappers(model)
    if not isinstance(m, Classifier):
        raise TypeError(f"expected a spat Classifier (possibly wrapped), got {type(m).__name__}")
    return m


def logit_scale(model: nn.Module) -> float | None:
    """The cosine head's scale s, seeing through DDP and torch.compile wrappers; ``None`` for a
    linear head. A model that is not a :class:`Classifier` is searched for a single
    :class:`~spat.models.heads.CosineLinear` (``None`` if there is none)."""
    m = _strip_wrappers(model)
    head = m.head if isinstance(m, Classifier) else m
    if isinstance(head, CosineLinear):
        return head.scale
    if isinstance(m, Classifier):
        return None
    cosine = [mod for mod in m.modules() if isinstance(mod, CosineLinear)]
    if len(cosine) == 1:
        return cosine[0].scale
    if len(cosine) > 1:
        raise SpatError("the model has more than one cosine head; its logit scale is ambiguous")
    return None


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once), trainable or not."""
    return sum(p.numel() for p in model.parameters())

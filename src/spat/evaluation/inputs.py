"""What :func:`spat.evaluation.evaluate` is given to evaluate: the data as a
:class:`~spat.data.Split`, and the seeded subset of it that is attacked."""

from __future__ import annotations

import torch

from spat.data import Split
from spat.data.subset import subset_indices
from spat.errors import SpatError


def select_subset(n_total: int, n_examples: int | None, seed: int) -> torch.Tensor:
    """Indices of the evaluated examples: all (in order) when ``n_examples`` is None or ≥ the
    split size, else the first ``n_examples`` of ``torch.randperm(n_total)`` drawn from a CPU
    generator seeded with ``seed`` (the one rule, :mod:`spat.data.subset`)."""
    if n_examples is not None and n_examples < 1:
        raise SpatError(f"n-examples must be >= 1, got {n_examples}")
    return subset_indices(n_total, n_examples, seed)


def as_split(data: Split | tuple[torch.Tensor, torch.Tensor]) -> Split:
    """A :class:`~spat.data.Split` from a split or from plain tensors ``(x, y)`` (x float in
    [0, 1] or uint8, shape (N, C, H, W); y integer class indices, shape (N,)), on the CPU."""
    if isinstance(data, Split):
        return data
    if not (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)):
        raise SpatError("the data to evaluate must be a spat Split or a pair of tensors (x, y)")
    x, y = data
    if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise SpatError(f"expected x of shape (N, C, H, W) and y of shape (N,), got "
                        f"{tuple(x.shape)} and {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex():
        raise SpatError("labels y must be integer class indices")
    x = x.detach().cpu()
    if x.dtype != torch.uint8:
        x = x.float()
        if x.numel() and not (float(x.min()) >= 0.0 and float(x.max()) <= 1.0):
            raise SpatError(f"images must be in [0, 1] (got values in [{float(x.min()):.4g}, "
                            f"{float(x.max()):.4g}]); the model normalises inside itself")
    return Split(images=x, labels=y.detach().cpu().to(torch.int64))

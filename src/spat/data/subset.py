"""The one rule for "the first n examples", shared by training's final test (``test_subset``),
``spat eval --n-examples``, ``spat analyze/compare --max-examples`` and the training subset
(``train_subset``, seeded by the run's seed, :func:`spat.build.load_data`).

The rule: all examples, in file order, when ``n`` is ``None`` or at least the split size; else
the first ``n`` entries of ``torch.randperm(N)`` drawn from a CPU generator seeded with
``seed`` (0 unless ``spat eval --seed`` says otherwise), in that permutation's order. A random
subset rather than the head of the file, because a file sorted by class would otherwise give a
subset with only a few classes. The same ``(N, n, seed)`` gives the same examples on every
machine (the CPU generator is platform independent), so a run's ``test_subset`` summary and
``spat eval --n-examples`` with the same n and seed 0 score the same examples.
"""

from __future__ import annotations

import torch

from spat.data.types import Split

#: The rule in words, recorded next to results computed on a subset.
SUBSET_RULE = "first n of torch.randperm(N) with a CPU generator seeded by seed"


def subset_indices(n_total: int, n: int | None, seed: int = 0) -> torch.Tensor:
    """Indices (int64) of the evaluated examples of a split of ``n_total`` (see the module);
    ``n`` must be ≥ 1 (callers turn a bad user value into their own one-line error)."""
    if n is not None and n < 1:
        raise ValueError(f"a subset needs n >= 1, got {n}")
    if n is None or n >= n_total:
        return torch.arange(n_total)
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_total, generator=g)[:n]


def subset_split(split: Split, n: int | None, seed: int = 0) -> Split:
    """``split`` restricted to :func:`subset_indices` (the split itself when nothing is cut)."""
    if n is None or n >= len(split):
        return split
    idx = subset_indices(len(split), n, seed)
    return Split(images=split.images[idx], labels=split.labels[idx])

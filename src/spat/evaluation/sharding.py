"""``spat eval`` under ``torchrun``: which examples each rank attacks, and putting them together.

The evaluated examples are cut into batches of ``batch_size`` in order (batch ``b`` holds
examples ``b·B .. (b+1)·B − 1``), and rank ``r`` of ``W`` attacks batches ``r, r+W, r+2W, ...``.
A white-box attack's random start for batch ``b`` is drawn from a generator seeded by
``(attack seed, b)`` — not from one stream running through the batches — so the start of every
example, and with it every prediction, is the same whichever rank attacks it and however many
ranks there are: a sharded evaluation gives the report of one process (same batches, same seeds,
same arithmetic; tested with gloo on CPU). The predictions of all ranks are combined by one
integer all-reduce (each position is filled by exactly one rank), so ranks need not hold the same
number of batches.

AutoAttack is sharded the same way: each rank runs the official algorithm (all its
sub-attacks, its reseeding, its batching of the still-robust points) on the examples of its
batches, and the per-example results are combined. That is the official algorithm applied to a
partition of the examples: every number is an AutoAttack number, but since AutoAttack reseeds
every call and re-batches the robust points, they can differ from a one-process run by a few
examples, as a change of ``--batch-size`` does; the report records the number of processes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from spat.attacks.context import attack_mode
from spat.attacks.presets import AttackSpec
from spat.data import Split, batches
from spat.utils.distributed import SINGLE, DistContext

SeedOf = Callable[[int], int]


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the batches of ``n`` examples in order."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def my_batches(n: int, batch_size: int, dist: DistContext = SINGLE) -> list[tuple[int, int, int]]:
    """``(b, start, stop)`` of the batches rank ``dist.rank`` evaluates: ``b ≡ rank (mod W)``."""
    return [(b, s, e) for b, (s, e) in enumerate(batch_bounds(n, batch_size))
            if b % dist.world_size == dist.rank]


def shard_index(n: int, batch_size: int, dist: DistContext = SINGLE) -> torch.Tensor:
    """The example positions (0..n-1, int64) of this rank's batches, in order."""
    parts = [torch.arange(s, e) for _, s, e in my_batches(n, batch_size, dist)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def combine(values: torch.Tensor, index: torch.Tensor, n: int, dist: DistContext = SINGLE,
            offset: int = 2) -> torch.Tensor:
    """Integer per-example ``values`` at positions ``index`` of every rank, as one (n,) int64
    tensor on every rank. Each position must be covered by exactly one rank and values must be
    >= ``1 - offset`` (they are shifted by ``offset`` so that a missing position shows as
    ``-offset``)."""
    full = torch.zeros(n, dtype=torch.int64)
    full[index] = values.to("cpu", torch.int64) + offset
    return dist.all_reduce_sum(full) - offset


def predict_sharded_batches(
    model: nn.Module,
    sub: Split,
    spec: AttackSpec,
    *,
    batch_size: int,
    device: torch.device,
    seed_of: SeedOf,
    dist: DistContext = SINGLE,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Predicted classes (n,) under ``spec`` of every example of ``sub``, on every rank.

    Rank ``r`` attacks its batches (:func:`my_batches`); batch ``b``'s random start comes from
    a generator seeded with ``seed_of(b)`` on ``device`` (CPU for devices without generators),
    so the result does not depend on the number of ranks. Eval mode, as every attack.
    """
    n = len(sub)
    gen_device = device if device.type in ("cpu", "cuda") else torch.device("cpu")
    index, preds = [], []
    with attack_mode(model):
        for b, (x, y) in enumerate(batches(sub, batch_size, device=device)):
            if b % dist.world_size != dist.rank:
                continue
            s, e = b * batch_size, b * batch_size + int(y.shape[0])
            gen = torch.Generator(device=gen_device).manual_seed(seed_of(b))
            x_adv = spec.run(model, x, y, generator=gen)
            with torch.no_grad():
                preds.append(model(x_adv).argmax(1).cpu())
            index.append(torch.arange(s, e))
            if on_batch is not None:
                on_batch(e - s)
    if not dist.enabled:
        return torch.cat(preds).to(torch.int64) if preds else torch.zeros(0, dtype=torch.int64)
    idx = torch.cat(index) if index else torch.zeros(0, dtype=torch.int64)
    local = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)
    return combine(local, idx, n, dist)

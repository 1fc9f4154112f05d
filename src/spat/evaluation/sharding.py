"""Evaluation under ``torchrun``: which examples each rank attacks, and putting them together
(``spat eval``, and training's validation and final test, :mod:`spat.train.validate`).

The evaluated examples are cut into batches of ``batch_size`` in order (batch ``b`` holds
examples ``b·B .. (b+1)·B − 1``), and rank ``r`` of ``W`` attacks batches ``r, r+W, r+2W, ...``.
A white-box attack's random start for batch ``b`` is drawn from a generator seeded by
``seed_of(b)`` (the caller's rule: ``spat eval``'s from the attack seed and ``b``, training's
:func:`spat.utils.rng.batch_seed`), not from one stream running through the batches, so the
start of every example, and with it every prediction, is the same whichever rank attacks it and
however many ranks there are: a sharded evaluation gives the result of one process (same
batches, same seeds, same arithmetic; tested with gloo on CPU). The predictions of all ranks
are combined by one integer all-reduce (each position is filled by exactly one rank), so ranks
need not hold the same number of batches.

AutoAttack is sharded the same way: each rank runs the official algorithm (all its
sub-attacks, its reseeding, its batching of the still-robust points) on the examples of its
batches, and the per-example results are combined. That is the official algorithm applied to a
partition of the examples: every number is an AutoAttack number, but since AutoAttack reseeds
every call and re-batches the robust points, they can differ from a one-process run by a few
examples, as a change of ``--batch-size`` does; the report records the number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from spat.attacks.context import attack_mode
from spat.attacks.presets import AttackSpec
from spat.data import Split, batches
from spat.evaluation.core import Predictions
from spat.evaluation.seeding import generator
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


def predict_sharded(
    model: nn.Module,
    split: Split,
    attacks: Sequence[AttackSpec],
    *,
    batch_size: int,
    device: torch.device,
    seed_of: SeedOf,
    dist: DistContext = SINGLE,
    clean: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> Predictions:
    """Clean (with ``clean``) and adversarial predictions of every example of ``split``, on
    every rank, in split order.

    Rank ``r`` evaluates its batches (:func:`my_batches`); in batch ``b`` every attack draws its
    random start from one generator seeded with ``seed_of(b)`` on ``device`` (CPU for devices
    without generators), the attacks in the order given, so the result does not depend on the
    number of ranks. Without ``clean`` the ``clean`` field is empty. ``on_batch(k)`` after each
    of this rank's batches (``k`` examples). Eval mode, as every attack.
    """
    n = len(split)
    index: list[torch.Tensor] = []
    clean_preds: list[torch.Tensor] = []
    adv: dict[str, list[torch.Tensor]] = {a.name: [] for a in attacks}
    with attack_mode(model):
        for b, (x, y) in enumerate(batches(split, batch_size, device=device)):
            if b % dist.world_size != dist.rank:
                continue
            s, e = b * batch_size, b * batch_size + int(y.shape[0])
            if clean:
                with torch.no_grad():
                    clean_preds.append(model(x).argmax(1))
            gen = generator(device, seed_of(b))
            for a in attacks:
                x_adv = a.run(model, x, y, generator=gen)
                with torch.no_grad():
                    adv[a.name].append(model(x_adv).argmax(1))
            index.append(torch.arange(s, e))
            if on_batch is not None:
                on_batch(e - s)
    idx = torch.cat(index) if index else torch.zeros(0, dtype=torch.int64)

    def gathered(parts: list[torch.Tensor]) -> torch.Tensor:
        # on the device until here: no host sync per batch
        local = (torch.cat(parts).to("cpu", torch.int64) if parts
                 else torch.zeros(0, dtype=torch.int64))
        return combine(local, idx, n, dist) if dist.enabled else local

    return Predictions(labels=split.labels.to("cpu", torch.int64).clone(),
                       clean=gathered(clean_preds) if clean else torch.zeros(0, dtype=torch.int64),
                       adversarial={k: gathered(v) for k, v in adv.items()})


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
    """Predicted classes (n,) under ``spec`` of every example of ``sub``, on every rank
    (:func:`predict_sharded` with one attack and no clean pass)."""
    preds = predict_sharded(model, sub, [spec], batch_size=batch_size, device=device,
                            seed_of=seed_of, dist=dist, clean=False, on_batch=on_batch)
    return preds.adversarial[spec.name]

"""Clean + PGD predictions on a split during training (validation, the final test), sharded
over the ranks of a ``torchrun`` launch and gathered on every rank."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from spat.attacks.presets import AttackSpec, pgd
from spat.config import TrainConfig
from spat.data import Split, shard_order
from spat.evaluation.core import Predictions, predict_under_attacks
from spat.utils.distributed import SINGLE, DistContext
from spat.utils.rng import derive_seed


def predict_sharded(
    model: nn.Module,
    split: Split,
    attacks: Sequence[AttackSpec],
    *,
    batch_size: int,
    device: torch.device,
    seed: int,
    dist: DistContext = SINGLE,
    on_batch: Callable[[int], None] | None = None,
) -> Predictions:
    """:func:`predict_under_attacks` on ``split``, each rank on its shard, gathered on all ranks.

    Rank ``r`` takes examples ``r, r+W, r+2W, ...`` of the split padded by wrap-around to a
    multiple of ``W`` (:func:`spat.data.shard_order`); the gathered predictions are put back in
    split order and the padding is dropped, so the result has exactly ``len(split)`` entries, in
    order, on every rank. The attack's random starts come from a generator seeded by ``seed`` on
    rank 0 (so a single process reproduces the unsharded evaluation) and ``derive_seed(seed, r)``
    on rank ``r``. Every tensor field of :class:`Predictions` with one entry per example (and
    every such tensor in a dict field) is gathered; other fields are rank 0's.
    """
    gen_seed = seed if dist.rank == 0 else derive_seed(seed, dist.rank)
    gen = torch.Generator(device=device).manual_seed(gen_seed)
    if not dist.enabled:
        return predict_under_attacks(model, split, attacks, batch_size=batch_size,
                                     device=device, generator=gen, on_batch=on_batch)
    n = len(split)
    order = shard_order(n, shuffle=False, generator=None, rank=dist.rank,
                        world_size=dist.world_size)
    shard = Split(images=split.images[order], labels=split.labels[order])
    local = predict_under_attacks(model, shard, attacks, batch_size=batch_size, device=device,
                                  generator=gen, on_batch=on_batch)
    per_rank = len(shard)

    def gather(t: torch.Tensor) -> torch.Tensor:
        parts = dist.all_gather(t)  # rank r's entry i is padded position i*W + r
        return torch.stack(parts, 1).flatten(0, 1)[:n]

    def is_per_example(v: object) -> bool:
        return isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == per_rank

    values: dict[str, Any] = {}
    for f in dataclasses.fields(local):
        v = getattr(local, f.name)
        if is_per_example(v):
            values[f.name] = gather(v)
        elif isinstance(v, dict) and v and all(is_per_example(x) for x in v.values()):
            values[f.name] = {k: gather(x) for k, x in v.items()}
    return dataclasses.replace(local, **values)


def evaluate_split(
    model: nn.Module, split: Split, cfg: TrainConfig, device: torch.device, steps: int, seed: int,
    dist: DistContext = SINGLE, on_batch: Callable[[int], None] | None = None,
) -> Predictions:
    """Clean + PGD-``steps`` predictions on ``split`` (training ε), reproducible by ``seed``;
    sharded over the ranks of ``dist`` and gathered (see :func:`predict_sharded`).
    ``on_batch(k)`` after each of this rank's batches (progress)."""
    assert cfg.eps is not None
    attack = pgd(cfg.eps, steps=steps, norm=cfg.norm)
    return predict_sharded(model, split, [attack], batch_size=cfg.eval_batch_size,
                           device=device, seed=seed, dist=dist, on_batch=on_batch)

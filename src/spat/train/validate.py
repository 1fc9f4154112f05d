"""Clean + PGD predictions on a split during training (validation, the final test), sharded
over the ranks of a ``torchrun`` launch as ``spat eval`` shards (:mod:`spat.evaluation.sharding`)
and gathered on every rank: the predictions are the same for any number of processes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from spat.attacks.presets import pgd
from spat.config import TrainConfig
from spat.data import Split
from spat.evaluation.core import Predictions
from spat.evaluation.sharding import predict_sharded, shard_index
from spat.utils.distributed import SINGLE, DistContext
from spat.utils.rng import batch_seed


def evaluate_split(
    model: nn.Module, split: Split, cfg: TrainConfig, device: torch.device, steps: int, seed: int,
    dist: DistContext = SINGLE, on_batch: Callable[[int], None] | None = None,
) -> Predictions:
    """Clean + PGD-``steps`` predictions on ``split`` (training ε) in batches of
    ``cfg.eval_batch_size``, reproducible by ``seed``: batch ``b``'s random start is seeded by
    :func:`~spat.utils.rng.batch_seed` ``(seed, b)``, batch ``b`` is evaluated by rank
    ``b mod W`` and the predictions are gathered on every rank
    (:func:`~spat.evaluation.sharding.predict_sharded`), so the result does not depend on the
    number of ranks. ``on_batch(k)`` after each of this rank's batches (``k`` examples;
    :func:`examples_on_this_rank` in all)."""
    assert cfg.eps is not None
    attack = pgd(cfg.eps, steps=steps, norm=cfg.norm)
    return predict_sharded(model, split, [attack], batch_size=cfg.eval_batch_size,
                           device=device, seed_of=lambda b: batch_seed(seed, b), dist=dist,
                           on_batch=on_batch)


def examples_on_this_rank(split: Split, cfg: TrainConfig, dist: DistContext = SINGLE) -> int:
    """How many examples of ``split`` rank ``dist.rank`` evaluates in :func:`evaluate_split`
    (the total of its progress bar)."""
    return len(shard_index(len(split), cfg.eval_batch_size, dist))

"""The final test of a run: its best-by-validation checkpoint, clean and PGD-``test_steps`` at
the training ε, on the run's test subset, sharded over the ranks (:mod:`spat.train.validate`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from spat import checkpoint as ckpt
from spat.config import TrainConfig
from spat.data import Split
from spat.data.subset import subset_split
from spat.evaluation.core import Predictions
from spat.train.validate import evaluate_split, examples_on_this_rank
from spat.utils.distributed import DistContext
from spat.utils.progress import Progress
from spat.utils.rng import final_test_seed

Log = Callable[[str], None]


def _load_weights(model: nn.Module, folder: Path) -> None:
    model.load_state_dict(ckpt.load_weights(folder))


def final_test(model: nn.Module, test_split: Split, cfg: TrainConfig, run_dir: Path,
               device: torch.device, *, dist: DistContext, progress: bool, log: Log
               ) -> tuple[Path, Predictions]:
    """Load the ``best`` checkpoint of ``run_dir`` into ``model`` (rank 0 reads, every rank gets
    the weights) and predict the test subset clean and under PGD-``cfg.test_steps``; returns
    the checkpoint folder and the predictions (the same on every rank)."""
    best = dist.on_main(ckpt.resolve, run_dir, "best")
    dist.on_main(_load_weights, model, best)
    dist.broadcast_(list(model.state_dict().values()))
    # the one subset rule: the same examples as spat eval --n-examples N --seed 0
    test = subset_split(test_split, cfg.test_subset, seed=0)
    log(f"test: clean and PGD-{cfg.test_steps} on {len(test)} examples, best checkpoint "
        f"{best.name}")
    with Progress(progress and dist.is_main) as bars:
        advance = bars.counter(f"test PGD-{cfg.test_steps}", examples_on_this_rank(test, cfg, dist))
        preds = evaluate_split(model, test, cfg, device, cfg.test_steps,
                               seed=final_test_seed(cfg.seed), dist=dist, on_batch=advance)
    return best, preds

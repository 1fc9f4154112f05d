"""A training's :class:`~spat.build.TrainResult`: made from the final test, written to
``RUN/summary.json``, and read back when a finished run is resumed again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spat.build import SUMMARY, TrainResult, read_summary
from spat.config import TrainConfig
from spat.errors import SpatError
from spat.evaluation.core import Predictions
from spat.utils.io import atomic_write_text
from spat.utils.log import info as log_info


def make_result(run_dir: Path, cfg: TrainConfig, checkpoint: Path, best_epoch: int,
                preds: Predictions, history: list[dict[str, Any]], *, world_size: int,
                train_seconds: float) -> TrainResult:
    """The result of a training whose final test gave ``preds`` (one attack) on the checkpoint
    of (0-based) epoch ``best_epoch``; ``history``: the per-epoch metric records."""
    assert cfg.epochs is not None and cfg.eps is not None
    attack = next(iter(preds.adversarial))
    return TrainResult(
        run_dir=run_dir, checkpoint=checkpoint, epochs=cfg.epochs, best_epoch=best_epoch + 1,
        test_examples=len(preds), test_clean_acc=preds.accuracy(None), test_attack=attack,
        test_eps=cfg.eps,
        test_robust_acc=preds.accuracy(attack), world_size=world_size,
        train_seconds_this_session=train_seconds,
        last_epoch=history[-1] if history else None,
        # what the collapse guard reported, epoch by epoch (spat.train.guard); () = nothing
        guard=tuple(g for rec in history for g in rec.get("guard", [])))


def write_result(result: TrainResult) -> TrainResult:
    """Write ``result`` to ``RUN/summary.json`` (atomically); returns it."""
    atomic_write_text(result.run_dir / SUMMARY, json.dumps(result.to_dict(), indent=2))
    return result


def finished_result(run_dir: Path) -> TrainResult | None:
    """The result of a finished run, or None when ``summary.json`` is missing or not a valid
    summary (a note says so: then the final test runs again and rewrites it)."""
    if not (run_dir / SUMMARY).is_file():
        return None
    try:
        return read_summary(run_dir)
    except SpatError as e:
        log_info(f"note: {e}; the final test runs again")
        return None

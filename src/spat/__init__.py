"""spat: self-paced hard-class-pair reweighting adversarial training (Hou, Han & Li, AAAI-23,
arXiv 2210.15068), the standard baselines (PGD-AT, TRADES, MART), the field's evaluation protocol
and hard-class-pair analysis.

The Python API (:mod:`spat.api`, README "Python API"): ``spat.train``, ``spat.load_run``,
``spat.evaluate``, ``spat.hard_pairs``, ``spat.load_model``, the types they return and
``spat.EvalOptions`` (the evaluation settings). They are
imported on first use, so ``import spat`` (and the command line's start-up) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spat._version import __version__

if TYPE_CHECKING:
    from spat.api import (
        EvalOptions,
        EvalReport,
        HardPairs,
        Run,
        TrainConfig,
        TrainResult,
        evaluate,
        hard_pairs,
        load_model,
        load_run,
    )

_API = ("EvalOptions", "EvalReport", "HardPairs", "Run", "TrainConfig", "TrainResult",
        "evaluate", "hard_pairs", "load_model", "load_run")


def __getattr__(name: str) -> Any:
    # ``spat.train`` is the subpackage, made callable (spat/train/__init__.py): a function of
    # that name would be replaced by the subpackage as soon as any of its modules is imported.
    if name == "train":
        import spat.train

        return spat.train
    if name in _API:
        import spat.api

        return getattr(spat.api, name)
    raise AttributeError(f"module 'spat' has no attribute {name!r}")


__all__ = ["EvalOptions", "EvalReport", "HardPairs", "Run", "TrainConfig", "TrainResult",
           "__version__", "evaluate", "hard_pairs", "load_model", "load_run", "train"]

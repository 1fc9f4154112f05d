"""Evaluation: batched predictions under attacks (:func:`predict_under_attacks`)."""

from spat.evaluation.core import Predictions, predict_under_attacks

__all__ = ["Predictions", "predict_under_attacks"]

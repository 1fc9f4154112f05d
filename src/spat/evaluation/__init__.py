"""Evaluation: batched predictions under attacks and the robustness protocol of ``spat eval``.

:func:`predict_under_attacks` is the one batched prediction routine (training's validation uses
it too); :func:`evaluate` is the protocol (attacks, per-class and worst-case accuracy, sanity
checks, resumable); :func:`evaluate_run` applies it to a run directory. See docs/evaluation.md.
"""

from spat.evaluation.attacks import ATTACK_KEYS, DEFAULT_ATTACKS, parse_attacks, register_attack
from spat.evaluation.core import Predictions, predict_under_attacks
from spat.evaluation.evaluate_model import evaluate_model
from spat.evaluation.evaluate_run import evaluate_run
from spat.evaluation.inputs import select_subset
from spat.evaluation.options import ATTACK_LOGITS, EvalOptions
from spat.evaluation.protocol import Plumbing, evaluate
from spat.evaluation.report import EvalReport, print_report

__all__ = [
    "ATTACK_KEYS",
    "ATTACK_LOGITS",
    "DEFAULT_ATTACKS",
    "EvalOptions",
    "EvalReport",
    "Plumbing",
    "Predictions",
    "evaluate",
    "evaluate_model",
    "evaluate_run",
    "parse_attacks",
    "predict_under_attacks",
    "print_report",
    "register_attack",
    "select_subset",
]

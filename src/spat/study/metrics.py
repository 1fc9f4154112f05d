"""The names of a study's metrics, in one place: the study file's claims are checked against
them when it is read (:mod:`spat.study.spec`), and the cells report them
(:mod:`spat.study.aggregate`)."""

from __future__ import annotations

CLEAN, WORST_CASE, WORST_CLASS, EXCESS = ("clean", "worst case", "worst class",
                                          "excess top share")
#: Claim 2 as the paper states it: of class a's attacked errors, the share predicted as a's most
#: similar class (``study.most_similar``), averaged over classes with ≥ MIN_ERRORS errors.
MOST_SIMILAR = "most-similar share"
#: The training run's own validation accuracies (clean and under the per-epoch validation
#: attack, PGD-10 by default) at its best epoch, read from metrics.jsonl: the numbers to select
#: settings on, never the test set.
VAL_CLEAN, VAL_ROBUST = "val_clean_acc", "val_robust_acc"
#: The arrow of a class-pair metric's name, ``"Shirt→T-shirt/top"`` (never in an attack's name).
ARROW = "→"


def class_pair_metric(a: str, b: str) -> str:
    """The metric name of the class pair a → b."""
    return f"{a}{ARROW}{b}"


def is_class_pair_metric(metric: str) -> bool:
    return ARROW in metric

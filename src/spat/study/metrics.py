"""The names of a study's metrics and their units, in one place: the study file's claims are
checked against them when it is read (:mod:`spat.study.spec`), the cells report them
(:mod:`spat.study.aggregate`), and the tables, figures and claims format each number by its
metric's unit (:data:`METRIC_UNITS`, :func:`metric_unit`)."""

from __future__ import annotations

from spat.utils.reporting import PERCENT, POINTS, Unit

CLEAN, WORST_CASE, WORST_CLASS, EXCESS = ("clean", "worst case", "worst class",
                                          "excess top share")
#: Claim 2 as the paper states it: of class a's attacked errors, the share predicted as a's most
#: similar class (``study.most_similar``), averaged over classes with ≥ MIN_ERRORS errors.
MOST_SIMILAR = "most-similar share"
#: The training run's own validation accuracies (clean and under the per-epoch validation
#: attack, PGD-10 by default) at its best epoch, read from metrics.jsonl: the numbers to select
#: settings on, never the test set.
VAL_CLEAN, VAL_ROBUST = "val_clean_acc", "val_robust_acc"
#: The named metrics in display order (after :data:`CLEAN` and the attacks), each with its
#: unit. A metric not named here is an attack's accuracy or a class pair's share: a
#: percentage. A statistic that is not a fraction declares its unit here (``RATIO`` from
#: :mod:`spat.utils.reporting`), and the reports show it in that unit.
METRIC_UNITS: dict[str, Unit] = {CLEAN: PERCENT, WORST_CASE: PERCENT, WORST_CLASS: PERCENT,
                                 EXCESS: POINTS, MOST_SIMILAR: PERCENT, VAL_CLEAN: PERCENT,
                                 VAL_ROBUST: PERCENT}
#: The arrow of a class-pair metric's name, ``"Shirt→T-shirt/top"`` (never in an attack's name).
ARROW = "→"


def class_pair_metric(a: str, b: str) -> str:
    """The metric name of the class pair a → b."""
    return f"{a}{ARROW}{b}"


def is_class_pair_metric(metric: str) -> bool:
    return ARROW in metric


def metric_unit(metric: str) -> Unit:
    """The unit of ``metric``: its entry in :data:`METRIC_UNITS`, else a percentage (an
    attack's accuracy, a class pair's share)."""
    return METRIC_UNITS.get(metric, PERCENT)

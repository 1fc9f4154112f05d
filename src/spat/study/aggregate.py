"""Aggregation over seeds, read back from the cells' files (so it can be redone at any time).

Per dataset × variant and per metric (clean accuracy, each attack's accuracy, AutoAttack when
run, the worst case over the attacks, the worst class's accuracy under that worst case, and the
hard-pair excess concentration): mean, sample std and a 95 % Student-t interval over the seeds;
and against the baseline variant on the same seeds the paired difference with a paired t
interval and a paired percentile-bootstrap interval (fixed RNG seed), and the same for each
named pair ``[a, b]`` of ``study.pairs`` (a − b; :func:`pair_differences`). The hard-pair
concentration is also computed on the confusion matrix pooled over seeds (so classes with few
errors per seed get enough), each number beside its null expectation under uniform wrong
targets (:func:`spat.analysis.stats.honest_concentration`). With ``study.class_pairs``, each
named class pair a → b is one more metric per cell, the measure of the paper's Fig. 1
(arXiv 2210.15068: the share of misclassified dog images that PGD-20 turns into "cat"): of
class a's test images the primary attack misclassifies, the share predicted as b
(:func:`class_pair_shares`), with the same summaries and paired differences, and pooled over
seeds as counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spat.analysis.stats import (
    MIN_ERRORS,
    Interval,
    directed_flows,
    honest_concentration,
    paired_bootstrap_interval,
    paired_t_interval,
    t_interval,
)
from spat.build import read_summary_or_none
from spat.errors import SpatError
from spat.study.metrics import (  # noqa: F401  (re-exported: the metric names)
    ARROW,
    CLEAN,
    EXCESS,
    METRIC_UNITS,
    MOST_SIMILAR,
    VAL_CLEAN,
    VAL_ROBUST,
    WORST_CASE,
    WORST_CLASS,
    class_pair_metric,
    is_class_pair_metric,
)
from spat.study.spec import Cell, StudySpec, check_class_names
from spat.train.guard import run_findings
from spat.utils.io import read_json_object_or_none, read_jsonl


def class_pair_counts(confusion: np.ndarray, class_names: Sequence[str],
                      pairs: Sequence[tuple[str, str]], *, where: str = "study.class_pairs"
                      ) -> dict[str, tuple[int, int]]:
    """Per pair a → b: ``(count, errors)``, where ``errors`` is the number of class-a images
    (row a of ``confusion``, rows = true class, columns = prediction) predicted as any other
    class and ``count`` those predicted as b. A name that is not a class raises
    :class:`SpatError` naming ``where`` and the classes."""
    from spat.study.spec import check_class_names

    names = list(class_names)
    check_class_names(pairs, names, where)
    out = {}
    for a, b in pairs:
        ia, ib = names.index(a), names.index(b)
        row = np.asarray(confusion[ia])
        out[class_pair_metric(a, b)] = (int(row[ib]), int(row.sum() - row[ia]))
    return out


def most_similar_share(confusion: np.ndarray, class_names: Sequence[str],
                       most_similar: dict[str, str], *, min_errors: int = MIN_ERRORS,
                       where: str = "study.most_similar") -> float:
    """Claim 2 of arXiv 2210.15068 as the paper states it, for one model: per class a with at
    least ``min_errors`` misclassified examples (row a of ``confusion``, rows = true class),
    the share of them predicted as ``most_similar[a]``; the mean over those classes (NaN when
    none has enough errors). Under uniform wrong targets each share is 1/(K − 1). A class name
    that the dataset does not have raises :class:`SpatError` naming ``where``."""
    names = list(class_names)
    check_class_names(list(most_similar.items()), names, where)
    shares = []
    for a, b in most_similar.items():
        ia, ib = names.index(a), names.index(b)
        row = np.asarray(confusion[ia])
        errors = int(row.sum() - row[ia])
        if errors >= min_errors:
            shares.append(float(row[ib]) / errors)
    return float(np.mean(shares)) if shares else math.nan


def class_pair_shares(confusion: np.ndarray, class_names: Sequence[str],
                      pairs: Sequence[tuple[str, str]], *, where: str = "study.class_pairs"
                      ) -> dict[str, float]:
    """Per pair a → b, ``count / errors`` of :func:`class_pair_counts` (NaN when class a has
    no error): the paper's Fig. 1 measure for one model."""
    return {k: (c / n if n else math.nan)
            for k, (c, n) in class_pair_counts(confusion, class_names, pairs,
                                               where=where).items()}


@dataclass
class CellResult:
    """The numbers of one finished cell (``None`` when the cell is not finished)."""

    cell: Cell
    metrics: dict[str, float] = field(default_factory=dict)
    confusion: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    primary: str | None = None
    n_examples: int | None = None
    #: What the training's collapse guard reports for the run (:func:`spat.train.guard.
    #: run_findings`, from its metrics.jsonl: also for runs made before the guard existed).
    guard: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return bool(self.metrics)


def _primary(names: list[str]) -> str | None:
    if "PGD-20" in names:
        return "PGD-20"
    return next((a for a in names if a.upper().startswith("PGD")), names[0] if names else None)


def read_cell(cell: Cell, class_pairs: Sequence[tuple[str, str]] = (), src: str = "study",
              most_similar: dict[str, str] | None = None) -> CellResult:
    """The metrics of ``cell`` from ``RUN/eval/report.json`` and ``predictions.npz``
    (``class_pairs``: its dataset's named class pairs, one share metric each; ``src``: the
    study file, named by the error for a class name the dataset does not have;
    ``most_similar``: its dataset's map for the :data:`MOST_SIMILAR` metric)."""
    run = Path(cell.run_dir)
    res = CellResult(cell)
    rep = read_json_object_or_none(run / "eval" / "report.json")
    if rep is None or read_summary_or_none(run) is None:
        return res
    m: dict[str, float] = {CLEAN: float(rep["clean_acc"])}
    names = []
    for a in rep.get("attacks", []):
        m[a["name"]] = float(a["accuracy"])
        names.append(a["name"])
    if len(names) > 1:
        m[WORST_CASE] = float(rep["ensemble"]["accuracy"])
    w = (rep.get("ensemble") or {}).get("worst_class")
    if w:
        m[WORST_CLASS] = float(w["accuracy"])
    res.class_names = list(rep.get("classes") or [])
    res.n_examples = rep.get("n_examples")
    res.primary = _primary(names)
    npz = run / "eval" / "predictions.npz"
    if res.primary is not None and npz.is_file() and res.class_names:
        from spat.evaluation.core import Predictions

        preds = Predictions.load(npz)
        if res.primary in preds.adversarial:
            res.confusion = preds.confusion(res.primary, len(res.class_names)).numpy()
            hc = honest_concentration(res.confusion)
            m[EXCESS] = hc.mean_excess_top_share
            if most_similar:
                m[MOST_SIMILAR] = most_similar_share(
                    res.confusion, res.class_names, most_similar,
                    where=f"{src}: study.most_similar.{cell.dataset}")
    m.update(best_epoch_validation(run))
    if class_pairs and res.confusion is not None:
        m.update(class_pair_shares(res.confusion, res.class_names, class_pairs,
                                   where=f"{src}: study.class_pairs.{cell.dataset}"))
    res.metrics = m
    res.guard = [f.to_dict() for f in run_findings(run)]
    return res


def read_study_cells(spec: StudySpec, cells: Sequence[Cell]) -> list[CellResult]:
    """:func:`read_cell` of each cell with its dataset's named class pairs and most-similar
    map from ``spec``."""
    return [read_cell(c, spec.class_pairs.get(c.dataset, ()), spec.path,
                      spec.most_similar.get(c.dataset)) for c in cells]


def unfinished_variants(aggs: Sequence[Aggregate]) -> set[tuple[str, str]]:
    """The ``(dataset, variant)`` pairs with a declared cell not finished yet (their claims are
    pending, :data:`spat.study.claims.PENDING`)."""
    return {(a.dataset, a.variant) for a in aggs if a.cells_done < a.cells_total}


def best_epoch_validation(run: Path) -> dict[str, float]:
    """``{val_clean_acc, val_robust_acc}`` of the epoch ``summary.json`` calls best (the one
    the ``best`` checkpoint was saved at), from ``metrics.jsonl``; ``{}`` when either file or
    that epoch's record is missing."""
    summary = read_summary_or_none(run)
    if summary is None:
        return {}
    best = summary.best_epoch
    try:
        records = read_jsonl(run / "metrics.jsonl")
    except SpatError:
        return {}
    out: dict[str, float] = {}
    for rec in records:
        if isinstance(rec, dict) and rec.get("epoch") == best:
            for k in (VAL_CLEAN, VAL_ROBUST):
                v = rec.get(k)
                if isinstance(v, int | float) and not isinstance(v, bool):
                    out[k] = float(v)
    return out


@dataclass
class Aggregate:
    """One dataset × variant: per metric the per-seed values, their interval, and the paired
    differences against the baseline (absent for the baseline itself)."""

    dataset: str
    variant: str
    seeds: list[int]
    values: dict[str, list[float]]
    summary: dict[str, Interval]
    diff_t: dict[str, Interval]
    diff_boot: dict[str, Interval]
    pooled: dict[str, Any] | None
    cells_done: int
    cells_total: int
    #: finished cells the training guard flagged (a collapse, a divergence, a sudden drop of
    #: the training adversary's accuracy or a plateau at chance)
    cells_flagged: int = 0


def metric_order(results: list[CellResult]) -> list[str]:
    """Metrics in display order: clean, attacks (as evaluated), the other named metrics in the
    order of :data:`~spat.study.metrics.METRIC_UNITS` (worst case, worst class, excess top
    share, most-similar share, validation accuracies, and any statistic added there), class
    pairs."""
    seen: list[str] = []
    for r in results:
        for k in r.metrics:
            if k not in seen:
                seen.append(k)
    fixed = [CLEAN]
    tail = [k for k in METRIC_UNITS if k not in fixed and k in seen]
    tail += [k for k in seen if is_class_pair_metric(k)]
    return [k for k in fixed if k in seen] + [k for k in seen if k not in fixed + tail] + tail


def aggregate(spec: StudySpec, results: list[CellResult], *, resamples: int = 10_000,
              rng_seed: int = 0) -> tuple[list[Aggregate], list[str]]:
    """Aggregates of every dataset × variant (grid order) and the metric order."""
    metrics = metric_order(results)
    by = {(r.cell.dataset, r.cell.variant, r.cell.seed): r for r in results}
    out = []
    for ds in spec.datasets:
        base_vals = {k: [_val(by.get((ds, spec.baseline, s)), k) for s in spec.seeds]
                     for k in metrics}
        for v in spec.variants:
            rs = [by.get((ds, v, s)) for s in spec.seeds]
            vals = {k: [_val(r, k) for r in rs] for k in metrics}
            summary = {k: t_interval(vals[k]) for k in metrics}
            dt: dict[str, Interval] = {}
            db: dict[str, Interval] = {}
            if v != spec.baseline:
                dt, db = paired_differences(vals, base_vals, metrics, resamples=resamples,
                                            rng_seed=rng_seed)
            out.append(Aggregate(ds, v, list(spec.seeds), vals, summary, dt, db,
                                 _pooled([r for r in rs if r is not None and r.done],
                                         spec.class_pairs.get(ds, ())),
                                 sum(1 for r in rs if r is not None and r.done), len(rs),
                                 sum(1 for r in rs if r is not None and r.done and r.guard)))
    return out, metrics


def paired_differences(values: dict[str, list[float]], minus: dict[str, list[float]],
                       metrics: list[str], *, resamples: int = 10_000, rng_seed: int = 0
                       ) -> tuple[dict[str, Interval], dict[str, Interval]]:
    """Per metric, the paired difference ``values − minus`` (same seeds, same order; a seed
    missing on either side is dropped): its paired t interval and its paired percentile
    bootstrap interval (``resamples`` resamples of the seeds, RNG seed ``rng_seed``)."""
    dt = {k: paired_t_interval(values[k], minus[k]) for k in metrics}
    db = {k: paired_bootstrap_interval(values[k], minus[k], resamples=resamples,
                                       rng_seed=rng_seed) for k in metrics}
    return dt, db


@dataclass
class PairDifference:
    """One dataset × named pair of ``study.pairs``: per metric the per-seed differences
    ``variant − minus`` (NaN where either cell is unfinished) and their paired t and paired
    bootstrap intervals, as the baseline differences of :class:`Aggregate`."""

    dataset: str
    variant: str
    minus: str
    differences: dict[str, list[float]]
    diff_t: dict[str, Interval]
    diff_boot: dict[str, Interval]

    @property
    def label(self) -> str:
        """``"a − b"`` (with a minus sign, U+2212)."""
        return f"{self.variant} − {self.minus}"


def pair_differences(spec: StudySpec, aggs: list[Aggregate], metrics: list[str], *,
                     resamples: int = 10_000, rng_seed: int = 0) -> list[PairDifference]:
    """The paired difference of every ``study.pairs`` entry ``[a, b]`` (a − b) on each dataset
    (dataset-major, then the file's order), from the per-seed values in ``aggs``, by
    :func:`paired_differences` with the baseline's resamples and RNG seed; ``[]`` without
    pairs."""
    by = {(a.dataset, a.variant): a for a in aggs}
    out = []
    for ds in spec.datasets:
        for first, second in spec.pairs:
            a, b = by.get((ds, first)), by.get((ds, second))
            if a is None or b is None:
                continue
            dt, db = paired_differences(a.values, b.values, metrics, resamples=resamples,
                                        rng_seed=rng_seed)
            diffs = {k: [x - y for x, y in zip(a.values[k], b.values[k], strict=True)]
                     for k in metrics}
            out.append(PairDifference(ds, first, second, diffs, dt, db))
    return out


def _val(r: CellResult | None, k: str) -> float:
    if r is None or k not in r.metrics or r.metrics[k] is None:
        return math.nan
    return float(r.metrics[k])


def _pooled(rs: list[CellResult], class_pairs: Sequence[tuple[str, str]] = ()
            ) -> dict[str, Any] | None:
    """Hard-pair concentration of the confusion pooled over seeds, beside its null (and,
    with ``class_pairs``, each named pair's pooled count / errors)."""
    confs = [r.confusion for r in rs if r.confusion is not None]
    if not confs:
        return None
    pooled = np.sum(confs, axis=0)
    names = rs[0].class_names
    hc = honest_concentration(pooled)
    flows = directed_flows(pooled)
    out = {
        "attack": rs[0].primary, "seeds": len(confs), "examples": int(pooled.sum()),
        "errors": int(hc.observed.errors.sum()),
        "mean_top_share": hc.observed.mean_top_share,
        "mean_null_top_share": hc.mean_null_top_share,
        "mean_excess_top_share": hc.mean_excess_top_share,
        "mean_normalized_entropy": hc.observed.mean_normalized_entropy,
        "mean_null_normalized_entropy": hc.mean_null_normalized_entropy,
        "significant_classes": hc.n_significant, "tested_classes": hc.n_tested,
        "few_error_classes": int(hc.few_errors.sum()), "min_errors": MIN_ERRORS,
        "top_pair": flows[0].to_dict(names) if flows else None,
        "per_class": hc.to_dict(names),
    }
    if class_pairs:
        out["class_pairs"] = {k: {"count": c, "errors": n, "share": c / n if n else None}
                              for k, (c, n) in class_pair_counts(pooled, names,
                                                                 class_pairs).items()}
    return out

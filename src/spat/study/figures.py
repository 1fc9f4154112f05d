"""The study's figures (PDF + PNG): per dataset, each variant's mean over seeds with its 95 %
t interval, the paired difference against the baseline with its t and bootstrap intervals, and
(with ``study.pairs``) a third panel with each named pair's difference a − b.
matplotlib (Agg backend) is imported only here, only when figures are written."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from spat.analysis.stats import Interval
from spat.study.aggregate import (
    MOST_SIMILAR,
    Aggregate,
    PairDifference,
    is_class_pair_metric,
)
from spat.study.metrics import metric_unit
from spat.utils.reporting import PERCENT


def _fin(v: float) -> bool:
    return v is not None and not math.isnan(v)


def _differences_panel(ax: Any, rows: list[tuple[str, dict[str, Interval], dict[str, Interval]]],
                       ms: list[str]) -> None:
    """One marker per (label, metric): the paired t interval as an error bar, the bootstrap
    interval as a faint bar beside it."""
    width = 0.8 / max(1, len(rows))
    for i, (label, diff_t, diff_boot) in enumerate(rows):
        for j, m in enumerate(ms):
            d, b = diff_t.get(m), diff_boot.get(m)
            if d is None or not _fin(d.mean):
                continue
            x = j + (i - (len(rows) - 1) / 2) * width
            if _fin(d.low):
                ax.errorbar([x], [100 * d.mean], yerr=[[100 * (d.mean - d.low)],
                                                      [100 * (d.high - d.mean)]],
                            fmt="o", color=f"C{i + 1}", capsize=4,
                            label=f"{label} (t)" if j == 0 else None)
            else:
                ax.plot([x], [100 * d.mean], "o", color=f"C{i + 1}",
                        label=f"{label}" if j == 0 else None)
            if b is not None and _fin(b.low):
                ax.plot([x + 0.08, x + 0.08], [100 * b.low, 100 * b.high], "-",
                        color=f"C{i + 1}", alpha=0.5, lw=3,
                        label=f"{label} (bootstrap)" if j == 0 else None)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(ms)), ms, rotation=20)


def plot_dataset(aggs: list[Aggregate], metrics: list[str], baseline: str, dataset: str,
                 out_stem: Path, pairs: list[PairDifference] | None = None) -> list[Path]:
    """``<out_stem>.pdf`` and ``.png`` for one dataset (``pairs``: that dataset's named
    pairs, a third panel); returns the two paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the accuracies: percentages on one axis (not the shares, nor a statistic of another unit)
    ms = [m for m in metrics if metric_unit(m) is PERCENT and m != MOST_SIMILAR
          and not is_class_pair_metric(m)]
    panels = 3 if pairs else 2
    fig, axes = plt.subplots(1, panels, figsize=(max(10.0, 1.2 * len(ms) * 2) * panels / 2, 4.2),
                             constrained_layout=True)
    width = 0.8 / max(1, len(aggs))
    ax = axes[0]
    for i, a in enumerate(aggs):
        xs, ys, lo, hi = [], [], [], []
        for j, m in enumerate(ms):
            s = a.summary[m]
            if not _fin(s.mean):
                continue
            xs.append(j + (i - (len(aggs) - 1) / 2) * width)
            ys.append(100 * s.mean)
            lo.append(100 * (s.mean - s.low) if _fin(s.low) else 0.0)
            hi.append(100 * (s.high - s.mean) if _fin(s.high) else 0.0)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=f"{a.variant} (n={a.cells_done})")
    ax.set_xticks(range(len(ms)), ms, rotation=20)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{dataset}: mean over seeds, 95 % t interval")
    ax.legend(fontsize=8)
    ax = axes[1]
    others = [a for a in aggs if a.variant != baseline]
    _differences_panel(ax, [(a.variant, a.diff_t, a.diff_boot) for a in others], ms)
    ax.set_ylabel(f"difference to {baseline} (points)")
    ax.set_title("paired difference on the same seeds, 95 % intervals")
    if others:
        ax.legend(fontsize=8)
    if pairs:
        ax = axes[2]
        _differences_panel(ax, [(p.label, p.diff_t, p.diff_boot) for p in pairs], ms)
        ax.set_ylabel("first − second (points)")
        ax.set_title("named pairs, same seeds, 95 % intervals")
        ax.legend(fontsize=8)
    paths = []
    for ext in ("pdf", "png"):
        p = out_stem.with_suffix(f".{ext}")
        fig.savefig(p, dpi=120)
        paths.append(p)
    plt.close(fig)
    return paths


def plot_all(aggs: list[Aggregate], metrics: list[str], baseline: str, out_dir: Path,
             pairs: list[PairDifference] | None = None) -> dict[str, Any]:
    """One figure per dataset: ``study_<dataset>.pdf/.png`` (with its named pairs' panel)."""
    files: dict[str, Any] = {}
    for ds in dict.fromkeys(a.dataset for a in aggs):
        sub = [a for a in aggs if a.dataset == ds and a.cells_done > 0]
        if not sub:
            continue
        named = [p for p in pairs or [] if p.dataset == ds]
        for p in plot_dataset(sub, metrics, baseline, ds, out_dir / f"study_{ds}", named):
            files[p.name] = p
    return files

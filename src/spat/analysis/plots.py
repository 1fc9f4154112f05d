"""The analysis figures (PNG). matplotlib is imported lazily, inside each function, and only its
object-oriented API is used (``matplotlib.figure.Figure`` rendered by the Agg canvas), so no
global pyplot state or display backend is touched.

Every function takes class *names* (never shows bare indices), writes one PNG and returns its
path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spat.analysis.stats import (
    Flow,
    as_counts,
    concentration,
    directed_flow_matrix,
    error_normalized,
    per_class_accuracy,
    row_normalized,
)

PathLike = str | os.PathLike[str]
DPI = 110
#: Annotate heatmap cells with their value when K is at most this.
ANNOTATE_MAX_K = 12
_RUN_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3",
               "#8C8C8C")


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Any, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _tick_fontsize(k: int) -> float:
    return 9 if k <= 12 else 7 if k <= 25 else 5 if k <= 50 else 3.5


def _pct(v: float) -> str:
    """A share as a percentage number: integers from 1%, one decimal below."""
    if math.isnan(v):
        return "–"
    return f"{100 * v:.0f}" if v >= 0.0095 or v == 0 else f"{100 * v:.1f}"


def _limit_ticks(ax: Any, top: float) -> None:
    """Keep only the x ticks within [0, top] (the axis may extend further for labels)."""
    ticks = [t for t in ax.get_xticks() if -1e-9 <= t <= top + 1e-9]
    ax.set_xticks(ticks)


def _heatmap(ax: Any, m: np.ndarray, names: Sequence[str], *, cmap: str, vmax: float,
             mask_diag: bool, diag_text: np.ndarray | None, xlabel: str, ylabel: str | None,
             fig: Any, cbar_label: str | None) -> Any:
    """One annotated heatmap of a (K, K) matrix of shares in [0, 1]; a colour bar beside it
    unless ``cbar_label`` is None. Returns the image (for a shared colour bar)."""
    from matplotlib import colormaps

    k = m.shape[0]
    shown = np.ma.masked_invalid(m.copy())
    if mask_diag:
        shown[np.arange(k), np.arange(k)] = np.ma.masked
    cm = colormaps[cmap].with_extremes(bad="#d9d9d9")
    im = ax.imshow(shown, cmap=cm, vmin=0.0, vmax=max(vmax, 1e-9), interpolation="nearest")
    fs = _tick_fontsize(k)
    ax.set_xticks(range(k), [str(n) for n in names], rotation=45, ha="right",
                  rotation_mode="anchor", fontsize=fs)
    ax.set_yticks(range(k), [str(n) for n in names] if ylabel else [""] * k, fontsize=fs)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.tick_params(length=0)
    ax.set_xticks(np.arange(-0.5, k, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, k, 1), minor=True)
    if k <= 40:
        ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    if cbar_label is not None:
        _colorbar(fig, im, ax, cbar_label)
    if k <= ANNOTATE_MAX_K:
        for i in range(k):
            for j in range(k):
                if mask_diag and i == j:
                    if diag_text is not None:
                        ax.text(j, i, diag_text[i], ha="center", va="center", fontsize=7,
                                color="#444444")
                    continue
                v = m[i, j]
                if math.isnan(v) or v < 0.005:
                    continue
                dark = v > 0.55 * vmax
                ax.text(j, i, _pct(v), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    return im


def _colorbar(fig: Any, im: Any, ax: Any, label: str) -> None:
    cb = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.02)
    cb.set_label(label)
    cb.ax.yaxis.set_major_formatter(_percent_formatter())


def _percent_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{100 * v:.0f}%")


def plot_confusion(conf: Any, names: Sequence[str], path: PathLike, *, attack: str,
                   title: str | None = None) -> Path:
    """Two heatmaps of the adversarial confusion matrix under ``attack``.

    Left: row-normalised over all examples of the true class (the diagonal is the per-class
    robust accuracy). Right: normalised over the *misclassified* examples of the true class with
    the diagonal masked (grey, with the class's accuracy written in it), so the structure of where
    the errors go is visible: a dark cell = most errors of that row land on that column.
    """
    a = as_counts(conf)
    k = a.shape[0]
    side = min(max(4.0, 0.55 * k + 1.8), 16.0)
    fig = _figure(2 * side + 1.2, side + 0.6)
    axes = fig.subplots(1, 2)
    acc = per_class_accuracy(a)
    _heatmap(axes[0], row_normalized(a), names, cmap="Blues", vmax=1.0, mask_diag=False,
             diag_text=None, xlabel=f"predicted class under {attack}", ylabel="true class",
             fig=fig, cbar_label="share of the true class's examples")
    axes[0].set_title("all examples of the true class\n(row-normalised; diagonal = accuracy)",
                      fontsize=10)
    err = error_normalized(a)
    off = err[~np.eye(k, dtype=bool)]
    vmax = float(np.nanmax(off)) if np.any(~np.isnan(off)) else 1.0
    _heatmap(axes[1], err, names, cmap="OrRd", vmax=vmax, mask_diag=True,
             diag_text=np.array([f"acc\n{_pct(v)}%" for v in acc]),
             xlabel=f"predicted class under {attack}", ylabel="true class", fig=fig,
             cbar_label="share of the true class's misclassified examples")
    axes[1].set_title("misclassified examples only\n(row-normalised over errors; diagonal "
                      "masked)", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def plot_hard_pairs(flows: Sequence[Flow], names: Sequence[str], path: PathLike, *,
                    attack: str, top: int = 10, title: str | None = None) -> Path:
    """Horizontal bars of the ``top`` hardest directed pairs ("Shirt→T-shirt/top"), hardest on
    top: bar = share of the true class's examples predicted as the target; the text gives the
    share of the true class's *misclassified* examples and the count."""
    sel = list(flows[:top])
    fig = _figure(7.5, 0.42 * max(len(sel), 3) + 1.4)
    ax = fig.subplots()
    if not sel:
        ax.text(0.5, 0.5, f"no misclassified examples under {attack}", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, path)
    y = np.arange(len(sel))[::-1]
    vals = np.array([f.share_of_class for f in sel])
    ax.barh(y, vals, color="#C44E52", height=0.7)
    ax.set_yticks(y, [f.label(names) for f in sel], fontsize=9)
    xmax = float(np.nanmax(vals)) if len(vals) else 1.0
    ax.set_xlim(0, xmax * 1.6 + 1e-9)
    _limit_ticks(ax, min(1.0, xmax * 1.6))
    for yi, f in zip(y, sel, strict=True):
        ax.text(f.share_of_class + xmax * 0.02, yi,
                f"{_pct(f.share_of_class)}%  ({_pct(f.share_of_errors)}% of its errors, "
                f"n={f.count})", va="center", fontsize=8)
    ax.xaxis.set_major_formatter(_percent_formatter())
    ax.set_xlabel(f"share of the true class's examples predicted as the target under {attack}")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title or f"top {len(sel)} hard class pairs (true→predicted) under {attack}",
                 fontsize=11)
    return _save(fig, path)


def plot_per_class_accuracy(accuracies: Mapping[str, np.ndarray], names: Sequence[str],
                            path: PathLike, *, title: str | None = None) -> Path:
    """Grouped bars of per-class accuracy, one bar per setting (``"clean"``, ``"PGD-20"``, ...)
    with the mean as a dashed line of the same colour."""
    k = len(names)
    labels = list(accuracies)
    fig = _figure(min(max(6.0, 0.6 * k * max(1, len(labels)) / 2 + 2.5), 24.0), 4.2)
    ax = fig.subplots()
    width = 0.8 / max(len(labels), 1)
    x = np.arange(k)
    for i, lab in enumerate(labels):
        acc = np.asarray(accuracies[lab], np.float64)
        color = _RUN_COLORS[i % len(_RUN_COLORS)]
        ax.bar(x - 0.4 + width * (i + 0.5), acc, width, label=lab, color=color)
        mean = float(np.nanmean(acc)) if np.any(~np.isnan(acc)) else math.nan
        if not math.isnan(mean):
            ax.axhline(mean, color=color, linestyle="--", linewidth=0.9)
    ax.set_xticks(x, [str(n) for n in names], rotation=45, ha="right", rotation_mode="anchor",
                  fontsize=_tick_fontsize(k))
    ax.set_ylim(0, 1.0)
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.set_ylabel("accuracy (dashed: mean)")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, ncols=min(len(labels), 4), loc="upper left", bbox_to_anchor=(0, 1.13),
              frameon=False)
    ax.set_title(title or "per-class accuracy", fontsize=11, pad=22)
    return _save(fig, path)


def plot_training(rows: Sequence[Mapping[str, Any]], path: PathLike, *, num_classes: int,
                  title: str | None = None) -> Path:
    """Three panels over epochs: train loss; validation clean and robust accuracy; the top
    hard pair's share of its class's misclassified examples and the mean concentration (with
    the uniform reference 1/(K−1)); the top pair is named where it changes."""
    ep = np.array([r["epoch"] for r in rows], np.float64)

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else r[key] for r in rows], np.float64)

    fig = _figure(14, 4.0)
    axes = fig.subplots(1, 3)
    marker = "o" if len(rows) <= 40 else None
    axes[0].plot(ep, col("train_loss"), marker=marker, color="#4C72B0")
    axes[0].set_title("training loss", fontsize=10)
    axes[1].plot(ep, col("val_clean_acc"), marker=marker, label="val clean", color="#4C72B0")
    attack = next((r.get("val_attack") for r in rows if r.get("val_attack")), "attack")
    axes[1].plot(ep, col("val_robust_acc"), marker=marker, label=f"val {attack}",
                 color="#C44E52")
    axes[1].set_ylim(0, 1)
    axes[1].yaxis.set_major_formatter(_percent_formatter())
    axes[1].legend(fontsize=8)
    axes[1].set_title("validation accuracy", fontsize=10)
    ax = axes[2]
    top = col("top_pair_share_of_errors")
    ax.plot(ep, top, marker=marker, color="#C44E52", label="top pair: share of its class's errors")
    ax.plot(ep, col("mean_top_share"), marker=marker, color="#DD8452",
            label="mean over classes: top target's share")
    ax.plot(ep, col("mean_normalized_entropy"), marker=marker, color="#8172B3",
            label="mean normalised entropy (uniform = 1)")
    if num_classes > 2:
        ax.axhline(1 / (num_classes - 1), color="grey", linestyle=":", linewidth=1,
                   label=f"uniform top share 1/(K−1) = {1 / (num_classes - 1):.2f}")
    prev, shown = None, 0
    for n, (e, r, v) in enumerate(zip(ep, rows, top, strict=True)):
        pair = r.get("top_pair")
        if pair and pair != prev and not math.isnan(v):
            ha = "left" if n == 0 else "right" if n == len(rows) - 1 else "center"
            # alternate heights so that names at neighbouring epochs do not overlap
            ax.annotate(pair, (e, v), textcoords="offset points", xytext=(0, 6 + 10 * (shown % 2)),
                        ha=ha, fontsize=7, color="#C44E52")
            shown += 1
        prev = pair
    ax.set_ylim(0, 1.12)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2,
              frameon=False)
    ax.set_title(f"hard-pair concentration under val {attack}", fontsize=10)
    for a in axes:
        a.set_xlabel("epoch")
        a.spines[["top", "right"]].set_visible(False)
        if len(ep) and len(ep) <= 12:
            a.set_xticks(ep)
    if title:
        fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def plot_similarity_flow(similarities: Mapping[str, np.ndarray], conf: Any,
                         names: Sequence[str], path: PathLike, *, attack: str,
                         correlations: Mapping[str, Any], label_top: int = 5) -> Path:
    """One scatter per similarity matrix: x = cosine similarity of classes i and j, y = share of
    class i's examples predicted as j under ``attack`` (every ordered pair i≠j); the title gives
    Spearman's ρ; the ``label_top`` largest flows are named."""
    flow = directed_flow_matrix(conf, "class")
    k = flow.shape[0]
    fig = _figure(5.2 * max(len(similarities), 1) + 0.4, 4.6)
    axes = np.atleast_1d(fig.subplots(1, max(len(similarities), 1)))
    off = ~np.eye(k, dtype=bool)
    ii, jj = np.nonzero(off)
    for ax, (title, sim) in zip(axes, similarities.items(), strict=False):
        x, y = sim[off], flow[off]
        ax.scatter(x, y, s=14, alpha=0.6, color="#4C72B0", edgecolors="none")
        order = [int(t) for t in np.argsort(-np.nan_to_num(y, nan=-1.0))[:label_top]
                 if not (np.isnan(x[t]) or np.isnan(y[t]))]
        ax.scatter(x[order], y[order], s=22, color="#C44E52")
        _place_labels(ax, [(float(x[t]), float(y[t]), f"{names[ii[t]]}→{names[jj[t]]}")
                           for t in order], fontsize=7)
        corr = correlations.get(title)
        ax.set_title(f"{title}\nSpearman {corr.text() if corr is not None else ''}",
                     fontsize=10)
        ax.set_xlabel("cosine similarity of classes i and j")
        ax.set_ylabel(f"share of class i predicted as j under {attack}")
        ax.yaxis.set_major_formatter(_percent_formatter())
        ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def _place_labels(ax: Any, points: Sequence[tuple[float, float, str]], fontsize: float) -> None:
    """Label points without overlapping labels: for each point (in order) the first of a few
    candidate positions (left/right, above/below) whose estimated text box is free."""
    ax.autoscale_view()
    to_px = ax.transData.transform
    scale = ax.figure.dpi / 72.0
    h = fontsize * 1.3 * scale
    r = 4 * scale  # keep labels off the labelled points themselves
    boxes = [(px - r, py - r, px + r, py + r) for px, py in (to_px((x, y)) for x, y, _ in points)]
    candidates = [(-6, 4, "right"), (6, 4, "left"), (-6, -14, "right"), (6, -14, "left"),
                  (-10, 14, "right"), (10, 14, "left"), (-10, -24, "right"), (10, -24, "left")]
    for x, y, text in points:
        px, py = to_px((x, y))
        w = len(text) * fontsize * 0.62 * scale
        chosen = candidates[0]
        for dx, dy, ha in candidates:
            x0 = px + dx * scale - (w if ha == "right" else 0)
            y0 = py + dy * scale
            box = (x0, y0, x0 + w, y0 + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                       for b in boxes):
                chosen = (dx, dy, ha)
                boxes.append(box)
                break
        dx, dy, ha = chosen
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha,
                    va="bottom", fontsize=fontsize,
                    arrowprops={"arrowstyle": "-", "color": "#888888", "linewidth": 0.6,
                                "shrinkA": 0, "shrinkB": 3})


# ----------------------------------------------------------------------------- comparison
def plot_target_distribution(runs: Sequence[tuple[str, Any]], names: Sequence[str],
                             cls: int, path: PathLike, *, attack: str,
                             title: str | None = None) -> Path:
    """The paper's Figure 1 for any runs: for true class ``cls``, the share of its
    *misclassified* examples predicted as each other class under ``attack``, one bar colour per
    run, side by side; the legend gives each run's accuracy on that class and its number of
    errors, and each run's top target is labelled with its share."""
    k = len(names)
    targets = [j for j in range(k) if j != cls]
    fig = _figure(min(max(8.0, 0.45 * len(targets) * max(1, len(runs)) + 2), 24.0),
                  4.6 + 0.2 * len(runs))
    ax = fig.subplots()
    width = 0.8 / max(len(runs), 1)
    x = np.arange(len(targets))
    ymax = 0.0
    for r, (label, conf) in enumerate(runs):
        a = as_counts(conf)
        p = error_normalized(a)[cls, targets]
        acc = per_class_accuracy(a)[cls]
        errs = int(a[cls].sum() - a[cls, cls])
        color = _RUN_COLORS[r % len(_RUN_COLORS)]
        xs = x - 0.4 + width * (r + 0.5)
        ax.bar(xs, np.nan_to_num(p), width, color=color,
               label=f"{label}: {errs} of {int(a[cls].sum())} misclassified "
                     f"({attack} accuracy {_pct(acc)}%)")
        if np.any(~np.isnan(p)):
            t = int(np.nanargmax(p))
            ax.text(xs[t], p[t] + 0.01, f"{_pct(p[t])}%", ha="center", va="bottom",
                    fontsize=7.5, color=color, fontweight="bold")
            ymax = max(ymax, float(p[t]))
    if k > 2:
        ax.axhline(1 / (k - 1), color="grey", linestyle=":", linewidth=1,
                   label=f"uniform over the {k - 1} wrong classes")
    ax.set_xticks(x, [str(names[j]) for j in targets], rotation=30 if k > 6 else 0,
                  ha="right" if k > 6 else "center", rotation_mode="anchor",
                  fontsize=_tick_fontsize(k))
    top = min(1.0, ymax + 0.05)
    legend_frac = min(0.6, 0.075 * (len(runs) + 2))  # the top of the axes holds the legend
    ax.set_ylim(0, top / (1 - legend_frac))
    ax.set_yticks([t for t in np.arange(0, 1.0001, 0.1 if top > 0.3 else 0.05) if t <= top])
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.set_xlabel(f"class predicted under {attack}")
    ax.set_ylabel(f"share of misclassified {names[cls]} examples")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="upper right",
              title=f"true class: {names[cls]}", title_fontsize=9, alignment="left")
    ax.set_title(title or f"where adversarial {names[cls]} examples go ({attack})", fontsize=11)
    return _save(fig, path)


def plot_confusion_grid(runs: Sequence[tuple[str, Any]], names: Sequence[str], path: PathLike,
                        *, attack: str) -> Path:
    """The misclassified-normalised confusion matrix (diagonal masked, accuracy written in it)
    of each run side by side, on one shared colour scale."""
    mats = [error_normalized(as_counts(c)) for _, c in runs]
    k = len(names)
    vals = [m[~np.eye(k, dtype=bool)] for m in mats]
    vmax = max((float(np.nanmax(v)) for v in vals if np.any(~np.isnan(v))), default=1.0)
    side = min(max(4.0, 0.55 * k + 1.8), 14.0)
    fig = _figure(len(runs) * side + 1.6, side + 1.3)
    axes = np.atleast_1d(fig.subplots(1, len(runs)))
    im = None
    for i, (ax, (label, conf), m) in enumerate(zip(axes, runs, mats, strict=True)):
        acc = per_class_accuracy(conf)
        c = concentration(conf)
        im = _heatmap(ax, m, names, cmap="OrRd", vmax=vmax, mask_diag=True,
                      diag_text=np.array([f"acc\n{_pct(v)}%" for v in acc]),
                      xlabel=f"predicted under {attack}",
                      ylabel="true class" if i == 0 else None, fig=fig, cbar_label=None)
        ax.set_title(f"{label}: mean top-target share {_pct(c.mean_top_share)}%",
                     fontsize=10)
    _colorbar(fig, im, list(axes), "share of the row's misclassified examples")
    fig.suptitle(f"where the misclassified examples of each class go under {attack}",
                 fontsize=12)
    return _save(fig, path)


def plot_per_class_compare(runs: Sequence[tuple[str, np.ndarray]], names: Sequence[str],
                           path: PathLike, *, attack: str) -> Path:
    """Per-class accuracy under ``attack`` of each run, grouped bars."""
    return plot_per_class_accuracy(dict(runs), names, path,
                                   title=f"per-class accuracy under {attack}")

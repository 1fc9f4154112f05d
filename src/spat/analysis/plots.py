"""The analysis figures, each written as a PDF (vector, fonts embedded as TrueType) and a PNG
(raster, :data:`DPI` dots per inch) side by side.

matplotlib is imported lazily, inside the functions, and only its object-oriented API is used
(a :class:`matplotlib.figure.Figure` on an Agg canvas; the PDF through matplotlib's PDF
backend), so no global pyplot state or display backend is touched.

One style for every figure: :func:`style` (an rc context: font sizes, the colour-blind-safe
Okabe–Ito palette :data:`PALETTE`, a light grid behind the data, no top/right spines,
constrained layout, Type-42 fonts in the PDF). Conventions:

* every function takes class *names* (never shows bare indices), a ``title`` (callers name the
  run/method, model and dataset, see :func:`subject`), writes ``<path>.png`` and
  ``<path>.pdf`` and returns the PNG's path;
* heatmaps are coloured by a share but *write the counts* in the cells, with each row's total
  (``n``) at its right end, so that a row whose only error is drawn as a full-colour cell reads
  "1", "n=1";
* bars of a proportion ``k/n`` carry a 95 % Wilson score interval
  (:func:`spat.analysis.intervals.wilson_interval`) as an error bar, and state ``n``;
* percentages are drawn on percent axes; the normalised entropy, a number in [0, 1], on its own
  plain [0, 1] axis.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from spat.analysis.intervals import error_bar_extents
from spat.analysis.stats import (
    Flow,
    as_counts,
    class_errors,
    class_totals,
    concentration,
    directed_flow_matrix,
    error_normalized,
    per_class_accuracy,
    row_normalized,
)
from spat.utils.reporting import percent

PathLike = str | os.PathLike[str]
#: Resolution of the PNGs (dots per inch); the PDFs are vector.
DPI = 200
#: The formats every figure is written in, as file suffixes.
FORMATS = ("png", "pdf")
#: Annotate heatmap cells with their count when K is at most this.
ANNOTATE_MAX_K = 15
#: Bar charts over the wrong classes show at most this many (the largest) when K − 1 exceeds it.
MAX_BARS = 20
#: Okabe & Ito's colour-blind-safe palette (blue, orange, bluish green, vermillion, reddish
#: purple, sky blue, yellow, black): run i is drawn in PALETTE[i].
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000")
_CLEAN, _ROBUST, _ACCENT, _GREY = PALETTE[0], PALETTE[3], PALETTE[3], "#7f7f7f"
#: Sequential colour maps of the heatmaps (single-hue, readable with any colour vision and in
#: grey scale): shares of all examples, shares of the misclassified examples.
CMAP_ALL, CMAP_ERRORS = "Blues", "OrRd"

#: The rc settings of every figure (see :func:`style`).
STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "legend.frameon": False,
    "figure.titlesize": 11,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.8,
    "lines.linewidth": 1.5,
    "lines.markersize": 4,
    "errorbar.capsize": 2,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.05,
    "pdf.fonttype": 42,  # TrueType in the PDF: editable text, accepted by journals
    "ps.fonttype": 42,
}

F = TypeVar("F", bound=Callable[..., Path])


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The figures' common style as a matplotlib rc context (:data:`STYLE` plus the
    :data:`PALETTE` colour cycle); every plotting function here draws inside it."""
    import matplotlib
    from cycler import cycler

    with matplotlib.rc_context({**STYLE, "axes.prop_cycle": cycler(color=list(PALETTE))}):
        yield


def _styled(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Path:
        with style():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def subject(label: str | None, model: str | None = None, dataset: str | None = None,
            examples: int | None = None) -> str:
    """The part of a title that names what is shown: ``"PGD-AT · small_cnn on digits (500 test
    examples)"``; missing parts are left out."""
    what = " · ".join(str(p) for p in (label, model) if p)
    if dataset:
        what = f"{what} on {dataset}" if what else str(dataset)
    if examples is not None:
        what += f" ({examples:,} test examples)"
    return what


def output_paths(path: PathLike) -> dict[str, Path]:
    """The files a figure function writes for ``path`` (its suffix, if ``.png`` or ``.pdf``,
    is replaced): ``{"png": …, "pdf": …}``."""
    p = Path(path)
    if p.suffix.lower() in (".png", ".pdf"):
        p = p.with_suffix("")
    return {fmt: p.with_name(f"{p.name}.{fmt}") for fmt in FORMATS}


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: PathLike) -> Path:
    """Write ``fig`` as PNG and PDF (see :func:`output_paths`); returns the PNG's path."""
    from spat._version import __version__

    out = output_paths(path)
    out["png"].parent.mkdir(parents=True, exist_ok=True)
    software = f"spat {__version__} (matplotlib)"
    fig.savefig(out["png"], format="png", dpi=DPI, metadata={"Software": software})
    # no creation date: the same figure gives the same bytes
    fig.savefig(out["pdf"], format="pdf", metadata={"Creator": software, "CreationDate": None})
    return out["png"]


def _tick_fontsize(k: int) -> float:
    return 8 if k <= 12 else 7 if k <= 25 else 5 if k <= 50 else 3.5


def _pct(v: float) -> str:
    """A share as a percentage number (no % sign, the axis says it): integers from 1%, one
    decimal below."""
    return percent(v, 0 if math.isnan(v) or v >= 0.0095 or v == 0 else 1, symbol=False)


def _percent_axis(axis: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{100 * v:.0f}%"))


def _class_ticks(ax: Any, names: Sequence[str], positions: Any, k: int) -> None:
    """Class names on the x axis: horizontal when they fit, else rotated 45°."""
    labels = [str(n) for n in names]
    width_in = ax.figure.get_figwidth() * 0.8
    fs = _tick_fontsize(k)
    fits = sum(len(s) + 2 for s in labels) * fs * 0.6 / 72 < width_in
    if fits:
        ax.set_xticks(positions, labels, fontsize=fs)
    else:
        ax.set_xticks(positions, labels, rotation=45, ha="right", rotation_mode="anchor",
                      fontsize=fs)


def _limit_ticks(axis: Any, lo: float, hi: float) -> None:
    """Keep only the ticks within [lo, hi] (the axis may extend further for labels)."""
    axis.set_ticks([t for t in axis.get_ticklocs() if lo - 1e-9 <= t <= hi + 1e-9])


# ------------------------------------------------------------------------------- heatmaps
def _heatmap(ax: Any, counts: np.ndarray, shares: np.ndarray, names: Sequence[str], *,
             cmap: str, vmax: float, mask_diag: bool, totals: np.ndarray, totals_label: str,
             xlabel: str, show_ylabels: bool) -> Any:
    """One heatmap of a (K, K) count matrix coloured by ``shares`` (in [0, 1], NaN = grey):
    each nonzero count written in its cell (when K ≤ :data:`ANNOTATE_MAX_K`), the diagonal
    masked in grey (its count in grey) when ``mask_diag``, and ``totals`` (one per row) as
    ``n=…`` at the right end of each row. Returns the image (for a colour bar)."""
    from matplotlib import colormaps

    k = counts.shape[0]
    shown = np.ma.masked_invalid(np.asarray(shares, np.float64).copy())
    if mask_diag:
        shown[np.arange(k), np.arange(k)] = np.ma.masked
    cm = colormaps[cmap].with_extremes(bad="#e6e6e6")
    vmax = max(float(vmax), 1e-9)
    im = ax.imshow(shown, cmap=cm, vmin=0.0, vmax=vmax, interpolation="nearest",
                   aspect="equal")
    fs = _tick_fontsize(k)
    if max(len(str(n)) for n in names) <= 2:
        ax.set_xticks(range(k), [str(n) for n in names], fontsize=fs)
    else:
        ax.set_xticks(range(k), [str(n) for n in names], rotation=45, ha="right",
                      rotation_mode="anchor", fontsize=fs)
    ax.set_yticks(range(k), [str(n) for n in names] if show_ylabels else [""] * k, fontsize=fs)
    ax.set_xlabel(xlabel)
    if show_ylabels:
        ax.set_ylabel("true class")
    ax.grid(False)
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)
    if k <= 40:
        ax.set_xticks(np.arange(-0.5, k, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, k, 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="minor", length=0)
    right = ax.secondary_yaxis("right")
    right.set_yticks(range(k), [f"n={int(t)}" for t in totals], fontsize=max(fs - 1, 3))
    right.tick_params(length=0)
    right.spines[:].set_visible(False)
    if totals_label:
        right.set_ylabel(totals_label, fontsize=7.5, color="#444444")
    if k <= ANNOTATE_MAX_K:
        cell_fs = 8 if k <= 10 else 6.5
        for i in range(k):
            for j in range(k):
                c = int(round(counts[i, j]))
                if c == 0:
                    continue
                if mask_diag and i == j:
                    ax.text(j, i, str(c), ha="center", va="center", fontsize=cell_fs - 0.5,
                            color="#666666", fontstyle="italic")
                    continue
                v = shares[i, j]
                dark = not math.isnan(v) and v > 0.55 * vmax
                ax.text(j, i, str(c), ha="center", va="center", fontsize=cell_fs,
                        color="white" if dark else "black")
    return im


def _colorbar(fig: Any, im: Any, ax: Any, label: str) -> None:
    cb = fig.colorbar(im, ax=ax, shrink=0.75, pad=0.02, aspect=30)
    cb.set_label(label)
    cb.outline.set_visible(False)
    _percent_axis(cb.ax.yaxis)


def _heatmap_side(k: int) -> float:
    return min(max(3.4, 0.36 * k + 1.4), 13.0)


@_styled
def plot_confusion(conf: Any, names: Sequence[str], path: PathLike, *, attack: str,
                   title: str | None = None) -> Path:
    """Two heatmaps of the adversarial confusion matrix under ``attack`` (counts in the cells).

    Left: coloured by the share of all examples of the true class (row-normalised; the
    diagonal is the per-class robust accuracy); ``n`` = examples of the class. Right: coloured
    by the share of the class's *misclassified* examples, the diagonal masked in grey (the
    count of correct predictions in grey), ``n`` = misclassified examples of the class, so the
    structure of where the errors go is visible — and a dark cell in a row with ``n=1`` is one
    example, not a pattern.
    """
    a = as_counts(conf)
    k = a.shape[0]
    side = _heatmap_side(k)
    fig = _figure(2 * side + 2.0, side + 0.3)
    axes = fig.subplots(1, 2)
    im = _heatmap(axes[0], a, row_normalized(a), names, cmap=CMAP_ALL, vmax=1.0,
                  mask_diag=False, totals=class_totals(a), totals_label="n: examples",
                  xlabel=f"predicted under {attack}", show_ylabels=True)
    _colorbar(fig, im, axes[0], "share of the class's examples")
    axes[0].set_title("all examples (diagonal: correct)")
    err = error_normalized(a)
    off = err[~np.eye(k, dtype=bool)]
    vmax = float(np.nanmax(off)) if np.any(~np.isnan(off)) else 1.0
    im = _heatmap(axes[1], a, err, names, cmap=CMAP_ERRORS, vmax=vmax, mask_diag=True,
                  totals=class_errors(a), totals_label="n: misclassified",
                  xlabel=f"predicted under {attack}", show_ylabels=True)
    _colorbar(fig, im, axes[1], "share of the class's misclassified examples")
    axes[1].set_title("misclassified examples only (diagonal masked)")
    fig.suptitle(title or f"adversarial confusion under {attack}")
    return _save(fig, path)


@_styled
def plot_confusion_grid(runs: Sequence[tuple[str, Any]], names: Sequence[str], path: PathLike,
                        *, attack: str, title: str | None = None) -> Path:
    """The misclassified-normalised confusion matrix of each run side by side, on one shared
    colour scale: counts in the cells, the diagonal masked (correct count in grey), each row's
    number of misclassified examples at its right end."""
    counts = [as_counts(c) for _, c in runs]
    mats = [error_normalized(a) for a in counts]
    k = len(names)
    vals = [m[~np.eye(k, dtype=bool)] for m in mats]
    vmax = max((float(np.nanmax(v)) for v in vals if np.any(~np.isnan(v))), default=1.0)
    side = _heatmap_side(k)
    fig = _figure(len(runs) * (side + 0.6) + 1.2, side + 1.4)
    axes = np.atleast_1d(fig.subplots(1, len(runs)))
    im = None
    for i, (ax, (label, _), a, m) in enumerate(zip(axes, runs, counts, mats, strict=True)):
        c = concentration(a)
        im = _heatmap(ax, a, m, names, cmap=CMAP_ERRORS, vmax=vmax, mask_diag=True,
                      totals=class_errors(a),
                      totals_label="n: misclassified" if i == len(runs) - 1 else "",
                      xlabel=f"predicted under {attack}", show_ylabels=i == 0)
        ax.set_title(f"{label}\nmean top-target share {_pct(c.mean_top_share)}%")
    _colorbar(fig, im, list(axes), "share of the row's misclassified examples")
    fig.suptitle(title or f"where the misclassified examples of each class go under {attack}")
    return _save(fig, path)


# ----------------------------------------------------------------------------------- bars
@_styled
def plot_hard_pairs(flows: Sequence[Flow], names: Sequence[str], path: PathLike, *,
                    attack: str, top: int = 10, title: str | None = None) -> Path:
    """Horizontal bars of the ``top`` hardest directed pairs ("Shirt→T-shirt/top"), hardest on
    top: bar = share of the true class's examples predicted as the target, with its 95 % Wilson
    interval; the text gives the count out of the class's ``n`` and the share of the class's
    *misclassified* examples."""
    sel = list(flows[:top])
    fig = _figure(7.0, 0.32 * max(len(sel), 3) + 1.3)
    ax = fig.subplots()
    ax.set_title(title or f"hard class pairs under {attack}")
    if not sel:
        ax.text(0.5, 0.5, f"no misclassified examples under {attack}", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, path)
    y = np.arange(len(sel))[::-1]
    vals = np.array([f.share_of_class for f in sel])
    n = np.array([round(f.count / f.share_of_class) if f.share_of_class > 0 else 0
                  for f in sel], np.float64)
    ext = error_bar_extents(vals, n)
    ax.barh(y, vals, color=_ACCENT, height=0.65, xerr=ext,
            error_kw={"ecolor": "#333333", "elinewidth": 0.8})
    ax.set_yticks(y, [f.label(names) for f in sel])
    high = vals + ext[1]
    xmax = float(np.nanmax(high))
    for yi, f, h, ni in zip(y, sel, high, n, strict=True):
        ax.text(h + xmax * 0.02, yi,
                f"{_pct(f.share_of_class)}%  ({f.count}/{int(ni)};  "
                f"{_pct(f.share_of_errors)}% of its errors)", va="center", fontsize=7.5)
    ax.set_xlim(0, xmax * 1.75 + 1e-9)
    _percent_axis(ax.xaxis)
    _limit_ticks(ax.xaxis, 0.0, min(1.0, xmax * 1.05))
    ax.grid(axis="y", visible=False)
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel(f"share of the true class's examples predicted as the target under {attack}"
                  "\n(error bars: 95% Wilson interval)")
    return _save(fig, path)


def _as_per_label(n: np.ndarray | Mapping[str, np.ndarray] | None, labels: Sequence[str],
                  k: int) -> dict[str, np.ndarray | None]:
    if n is None:
        return dict.fromkeys(labels)
    if isinstance(n, Mapping):
        return {lab: (None if n.get(lab) is None else np.asarray(n[lab], np.float64))
                for lab in labels}
    arr = np.asarray(n, np.float64)
    if arr.shape != (k,):
        raise ValueError(f"n must give one count per class ({k}), got shape {arr.shape}")
    return dict.fromkeys(labels, arr)


@_styled
def plot_per_class_accuracy(accuracies: Mapping[str, np.ndarray], names: Sequence[str],
                            path: PathLike, *,
                            n: np.ndarray | Mapping[str, np.ndarray] | None = None,
                            title: str | None = None) -> Path:
    """Grouped bars of per-class accuracy, one bar colour per setting (``"clean"``,
    ``"PGD-20"``, … or one per run), with the mean as a dashed line of the same colour.

    ``n``: the number of examples of each class (one array for all settings, or one per
    setting); with it every bar gets its 95 % Wilson interval and ``n`` is stated (on the x
    axis when it is the same for every class, else after each class name)."""
    k = len(names)
    labels = list(accuracies)
    per = _as_per_label(n, labels, k)
    fig = _figure(min(max(6.0, 0.22 * k * max(1, len(labels)) + 2.5), 20.0),
                  3.6 if k <= 30 else 4.4)  # many classes: room for the rotated names
    ax = fig.subplots()
    width = 0.8 / max(len(labels), 1)
    x = np.arange(k)
    for i, lab in enumerate(labels):
        acc = np.asarray(accuracies[lab], np.float64)
        color = PALETTE[i % len(PALETTE)]
        nn = per[lab]
        legend = lab if nn is None or _same_n(per) else f"{lab} (n={int(nn.sum()):,})"
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(acc), width, label=legend,
               color=color, yerr=None if nn is None else error_bar_extents(acc, nn),
               error_kw={"ecolor": "#333333", "elinewidth": 0.7, "capsize": 1.5})
        mean = float(np.nanmean(acc)) if np.any(~np.isnan(acc)) else math.nan
        if not math.isnan(mean):
            ax.axhline(mean, color=color, linestyle="--", linewidth=0.9)
    tick_names = [str(s) for s in names]
    first = next((v for v in per.values() if v is not None), None)
    xlabel = "class"
    if first is not None and _same_n(per) and len(set(first.tolist())) == 1:
        xlabel = f"class (n = {int(first[0]):,} test examples each)"
    elif first is not None and _same_n(per):
        tick_names = [f"{s} ({int(c)})" for s, c in zip(tick_names, first, strict=True)]
        xlabel = "class (n test examples)"
    _class_ticks(ax, tick_names, x, k)
    ax.set_xlabel(xlabel + ("; error bars: 95% Wilson interval" if first is not None else ""))
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_ylim(0, 1.0)
    _percent_axis(ax.yaxis)
    ax.set_ylabel("accuracy (dashed: mean)")
    ax.grid(axis="x", visible=False)
    ax.legend(ncols=min(len(labels), 4), loc="lower left", bbox_to_anchor=(0, 1.0))
    fig.suptitle(title or "per-class accuracy")
    return _save(fig, path)


def _same_n(per: Mapping[str, np.ndarray | None]) -> bool:
    arrs = [v for v in per.values() if v is not None]
    return all(np.array_equal(arrs[0], a) for a in arrs[1:])


@_styled
def plot_per_class_compare(runs: Sequence[tuple[str, np.ndarray]], names: Sequence[str],
                           path: PathLike, *, attack: str,
                           n: np.ndarray | Mapping[str, np.ndarray] | None = None,
                           title: str | None = None) -> Path:
    """Per-class accuracy under ``attack`` of each run, grouped bars with 95 % Wilson
    intervals when ``n`` (examples per class, per run or shared) is given."""
    return plot_per_class_accuracy(dict(runs), names, path, n=n,
                                   title=title or f"per-class accuracy under {attack}")


@_styled
def plot_target_distribution(runs: Sequence[tuple[str, Any]], names: Sequence[str],
                             cls: int, path: PathLike, *, attack: str,
                             title: str | None = None) -> Path:
    """The paper's Figure 1 for any runs: for true class ``cls``, the share of its
    *misclassified* examples predicted as each other class under ``attack``, one bar colour per
    run, side by side, each with its 95 % Wilson interval (n = the run's misclassified examples
    of the class); the legend gives each run's ``n`` and accuracy on the class, each run's top
    target is labelled with its share. With more than :data:`MAX_BARS` wrong classes only the
    largest (by the mean share over the runs) are drawn."""
    k = len(names)
    counts = [as_counts(c) for _, c in runs]
    shares = [error_normalized(a)[cls] for a in counts]
    targets = [j for j in range(k) if j != cls]
    note = ""
    if len(targets) > MAX_BARS:
        mean = np.nanmean(np.vstack([s[targets] for s in shares]), axis=0)
        order = np.argsort(-np.nan_to_num(mean, nan=-1.0), kind="stable")[:MAX_BARS]
        targets = [targets[t] for t in order]
        note = f" (the {MAX_BARS} largest of {k - 1} wrong classes)"
    fig = _figure(min(max(6.5, 0.32 * len(targets) * max(1, len(runs)) + 2.5), 20.0), 4.0)
    ax = fig.subplots()
    width = 0.8 / max(len(runs), 1)
    x = np.arange(len(targets))
    ymax = 0.0
    for r, ((label, _), a, s) in enumerate(zip(runs, counts, shares, strict=True)):
        p = s[targets]
        acc = per_class_accuracy(a)[cls]
        errs = int(a[cls].sum() - a[cls, cls])
        color = PALETTE[r % len(PALETTE)]
        xs = x - 0.4 + width * (r + 0.5)
        ext = error_bar_extents(p, errs) if errs else None
        ax.bar(xs, np.nan_to_num(p), width, color=color, yerr=ext,
               error_kw={"ecolor": "#333333", "elinewidth": 0.7, "capsize": 1.5},
               label=f"{label}: n = {errs} of {int(a[cls].sum())} misclassified "
                     f"({attack} accuracy {_pct(acc)}%)")
        if np.any(~np.isnan(p)):
            t = int(np.nanargmax(p))
            top = p[t] + (ext[1][t] if ext is not None else 0.0)
            ax.text(xs[t], top + 0.01, f"{_pct(p[t])}%", ha="center", va="bottom",
                    fontsize=7.5, color=color, fontweight="bold")
            ymax = max(ymax, float(top) + 0.06)
    if k > 2:
        ax.axhline(1 / (k - 1), color=_GREY, linestyle=":", linewidth=1,
                   label=f"uniform over the {k - 1} wrong classes (1/{k - 1})")
    _class_ticks(ax, [str(names[j]) for j in targets], x, len(targets))
    ax.set_xlim(-0.6, len(targets) - 0.4)
    ax.set_ylim(0, min(1.0, max(ymax, 1 / max(k - 1, 1) + 0.05)))
    _percent_axis(ax.yaxis)
    ax.grid(axis="x", visible=False)
    ax.set_xlabel(f"class predicted under {attack}{note}; error bars: 95% Wilson interval")
    ax.set_ylabel(f"share of class {names[cls]}'s misclassified")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), title=f"true class: {names[cls]}",
              alignment="left")
    fig.suptitle(title or f"where the misclassified examples of class {names[cls]} go under "
                 f"{attack}")
    return _save(fig, path)


# -------------------------------------------------------------------------------- curves
@_styled
def plot_training(rows: Sequence[Mapping[str, Any]], path: PathLike, *, num_classes: int,
                  title: str | None = None) -> Path:
    """Four panels over epochs: (a) training loss; (b) validation clean and robust accuracy;
    (c) the top hard pair's share of its class's misclassified examples (markers coloured by
    which pair it is, named in the legend) and the mean top-target share, against the uniform
    reference 1/(K−1); (d) the mean normalised entropy of the wrong-class distributions, a
    number in [0, 1] on its own axis (1 = uniform)."""
    ep = np.array([r["epoch"] for r in rows], np.float64)

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else r[key] for r in rows], np.float64)

    fig = _figure(9.0, 6.2)
    (ax_loss, ax_acc), (ax_share, ax_ent) = fig.subplots(2, 2, sharex=True)
    marker = "o" if len(rows) <= 40 else None
    attack = next((r.get("val_attack") for r in rows if r.get("val_attack")), "attack")
    ax_loss.plot(ep, col("train_loss"), marker=marker, color=_CLEAN)
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("(a) training loss")
    ax_acc.plot(ep, col("val_clean_acc"), marker=marker, label="clean", color=_CLEAN)
    ax_acc.plot(ep, col("val_robust_acc"), marker=marker, label=str(attack), color=_ROBUST)
    ax_acc.set_ylim(0, 1)
    _percent_axis(ax_acc.yaxis)
    ax_acc.set_ylabel("validation accuracy")
    ax_acc.legend(loc="best")
    ax_acc.set_title("(b) validation accuracy")

    top = col("top_pair_share_of_errors")
    ax_share.plot(ep, top, color=_GREY, linewidth=0.8, zorder=1,
                  label="top hard pair: its share of its class's errors; marker = which pair")
    pairs = [r.get("top_pair") for r in rows]
    freq: dict[str, int] = {}
    for p, v in zip(pairs, top, strict=True):
        if p and not math.isnan(v):
            freq[p] = freq.get(p, 0) + 1
    shown = sorted(freq, key=lambda p: (-freq[p], pairs.index(p)))[:5]
    pair_colors = [PALETTE[i] for i in (3, 0, 2, 5, 7)]
    for p, c in zip(shown, pair_colors, strict=False):
        sel = np.array([q == p for q in pairs]) & ~np.isnan(top)
        ax_share.scatter(ep[sel], top[sel], color=c, s=22, zorder=3, clip_on=False,
                         label=f"{p} ({freq[p]} epoch{'s' if freq[p] > 1 else ''})")
    rest = np.array([q is not None and q not in shown for q in pairs]) & ~np.isnan(top)
    if rest.any():
        ax_share.scatter(ep[rest], top[rest], color=_GREY, s=16, zorder=3, clip_on=False,
                         label=f"{len(freq) - len(shown)} other pairs")
    ax_share.plot(ep, col("mean_top_share"), marker=marker, color=PALETTE[1],
                  label="mean over classes: top target's share", zorder=2, clip_on=False)
    if num_classes > 2:
        ax_share.axhline(1 / (num_classes - 1), color=_GREY, linestyle=":", linewidth=1,
                         label=f"uniform: 1/(K−1) = {1 / (num_classes - 1):.2f}")
    ax_share.set_ylim(0, 1)
    _percent_axis(ax_share.yaxis)
    ax_share.set_ylabel("share of a class's misclassified")
    ax_share.set_title(f"(c) concentration of the errors under val {attack}")
    handles, labels = ax_share.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: _legend_rank(labels[i], shown))
    ax_share.legend([handles[i] for i in order], [labels[i] for i in order],
                    loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=1)

    ax_ent.plot(ep, col("mean_normalized_entropy"), marker=marker, color=PALETTE[4],
                label="mean over classes", clip_on=False)
    ax_ent.axhline(1.0, color=_GREY, linestyle=":", linewidth=1.2, clip_on=False,
                   label="uniform over the K−1 wrong classes")
    ax_ent.set_ylim(0.0, 1.0)
    ax_ent.set_ylabel("normalised entropy H/log(K−1)")
    ax_ent.set_title("(d) spread of the errors (0 = one target)")
    ax_ent.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=1)
    for a in (ax_loss, ax_acc, ax_share, ax_ent):
        if len(ep) and len(ep) <= 12:
            a.set_xticks(ep, [str(int(e)) for e in ep])
        a.tick_params(axis="x", labelbottom=True)
    for a in (ax_share, ax_ent):
        a.set_xlabel("epoch")
    fig.suptitle(title or "training")
    return _save(fig, path)


def _legend_rank(label: str, pairs: Sequence[str]) -> int:
    """Legend order of the concentration panel: the top-pair line, its pairs, the rest."""
    if label.startswith("top hard pair"):
        return 0
    if any(label.startswith(p + " (") for p in pairs) or label.endswith("other pairs"):
        return 1
    return 2


# ------------------------------------------------------------------------------- scatter
@_styled
def plot_similarity_flow(similarities: Mapping[str, np.ndarray], conf: Any,
                         names: Sequence[str], path: PathLike, *, attack: str,
                         correlations: Mapping[str, Any], label_top: int = 5,
                         title: str | None = None) -> Path:
    """One scatter per similarity matrix: x = cosine similarity of classes i and j, y = share of
    class i's examples predicted as j under ``attack`` (every ordered pair i≠j); the panel title
    gives Spearman's ρ; the ``label_top`` largest flows are named (labels placed so that they
    do not overlap)."""
    flow = directed_flow_matrix(conf, "class")
    k = flow.shape[0]
    panels = max(len(similarities), 1)
    fig = _figure(4.2 * panels + 0.4, 4.0)
    axes = np.atleast_1d(fig.subplots(1, panels, sharey=True))
    off = ~np.eye(k, dtype=bool)
    ii, jj = np.nonzero(off)
    for n_ax, (ax, (name, sim)) in enumerate(zip(axes, similarities.items(), strict=False)):
        x, y = sim[off], flow[off]
        ax.scatter(x, y, s=12, alpha=0.6, color=_CLEAN, edgecolors="none")
        order = [int(t) for t in np.argsort(-np.nan_to_num(y, nan=-1.0))[:label_top]
                 if not (np.isnan(x[t]) or np.isnan(y[t]))]
        ax.scatter(x[order], y[order], s=20, color=_ACCENT)
        _place_labels(ax, [(float(x[t]), float(y[t]), f"{names[ii[t]]}→{names[jj[t]]}")
                           for t in order], fontsize=7)
        corr = correlations.get(name)
        ax.set_title(f"{name}\nSpearman {corr.text() if corr is not None else ''}")
        ax.set_xlabel("cosine similarity of classes i and j")
        if n_ax == 0:
            ax.set_ylabel(f"share of class i predicted as j under {attack}")
        _percent_axis(ax.yaxis)
    fig.suptitle(title or f"class similarity vs adversarial flow ({attack})")
    return _save(fig, path)


def _place_labels(ax: Any, points: Sequence[tuple[float, float, str]], fontsize: float) -> None:
    """Label points without overlapping labels: for each point (in order) the first of a few
    candidate positions (left/right, above/below) whose estimated text box is free."""
    ax.figure.canvas.draw()  # final layout, so that data → pixel is what will be drawn
    to_px = ax.transData.transform
    scale = ax.figure.dpi / 72.0
    h = fontsize * 1.3 * scale
    r = 4 * scale  # keep labels off the labelled points themselves
    boxes = [(px - r, py - r, px + r, py + r) for px, py in (to_px((x, y)) for x, y, _ in points)]
    candidates = [(-6, 4, "right"), (6, 4, "left"), (-6, -14, "right"), (6, -14, "left"),
                  (-10, 14, "right"), (10, 14, "left"), (-10, -24, "right"), (10, -24, "left")]
    x_lo, _ = ax.transAxes.transform((0, 0))
    x_hi, _ = ax.transAxes.transform((1, 1))
    for x, y, text in points:
        px, py = to_px((x, y))
        w = len(text) * fontsize * 0.62 * scale
        chosen = candidates[0] if px - w > x_lo else candidates[1]
        for dx, dy, ha in candidates:
            x0 = px + dx * scale - (w if ha == "right" else 0)
            if x0 < x_lo or x0 + w > x_hi:  # would leave the axes
                continue
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


__all__ = [
    "DPI", "FORMATS", "PALETTE", "STYLE", "output_paths", "plot_confusion",
    "plot_confusion_grid", "plot_hard_pairs", "plot_per_class_accuracy",
    "plot_per_class_compare", "plot_similarity_flow", "plot_target_distribution",
    "plot_training", "style", "subject",
]

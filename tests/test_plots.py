"""The analysis figures: every figure as PDF and PNG (≥ 200 dpi), counts in the heatmap cells
and row totals beside them, the normalised entropy on a [0, 1] axis, titles naming the run,
model and dataset, 95 % Wilson intervals as error bars (checked against hand-computed values),
and ``spat compare``'s output folder."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from spat.analysis import compare, plots
from spat.analysis.analyze import write_analysis
from spat.analysis.intervals import error_bar_extents, wilson_interval
from spat.analysis.record import RunAnalysis
from spat.analysis.stats import directed_flows
from spat.cli import main
from spat.errors import SpatError
from spat.evaluation.core import Predictions

NAMES = ["cat", "dog", "ship"]
# class cat: 10 examples, 3 right, 6 → dog, 1 → ship   (e = 7)
# class dog: 4 examples, 4 right                        (e = 0)
# class ship: 5 examples, 4 right, 1 → cat              (e = 1: one error, drawn as a full cell)
CONF = np.array([[3, 6, 1], [0, 4, 0], [1, 0, 4]])

# 95 % Wilson score intervals, by hand from (p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)
# with z = 1.959964: 3/10 → (0.1078, 0.6032) (Brown, Cai & DasGupta 2001's example), 0/10 →
# (0, z²/(n + z²) = 0.2775), 4/4 → (n/(n + z²) = 0.5101, 1).
WILSON = {(3, 10): (0.1078, 0.6032), (0, 10): (0.0, 0.2775), (4, 4): (0.5101, 1.0)}


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every figure drawn, in order (captured when it is saved)."""
    drawn: list[Any] = []
    save = plots._save

    def capture(fig: Any, path: Any) -> Path:
        drawn.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", capture)
    return drawn


def _png_dpi(path: Path) -> float:
    """Dots per inch from a PNG's pHYs chunk (pixels per metre)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    i = 8
    while i < len(data):
        length, kind = struct.unpack(">I4s", data[i:i + 8])
        if kind == b"pHYs":
            ppm_x, _ppm_y, unit = struct.unpack(">IIB", data[i + 8:i + 17])
            assert unit == 1  # metres
            return ppm_x * 0.0254
        i += 12 + length
    raise AssertionError(f"{path} has no pHYs chunk")


def _training_rows() -> list[dict[str, Any]]:
    return [
        {"epoch": e, "train_loss": 2.0 - 0.3 * e, "val_clean_acc": 0.5 + 0.1 * e,
         "val_robust_acc": 0.2 + 0.05 * e, "val_attack": "PGD-10",
         "top_pair": "cat→dog" if e < 3 else "ship→cat", "top_pair_share_of_errors": 0.6,
         "mean_top_share": 0.7, "mean_normalized_entropy": 0.25 + 0.1 * e}
        for e in (1, 2, 3)
    ]


def _every_figure(out: Path) -> list[Path]:
    sims = {"head": np.array([[1.0, 0.8, -0.2], [0.8, 1.0, 0.1], [-0.2, 0.1, 1.0]])}

    class Corr:
        def text(self) -> str:
            return "ρ = 0.50"

    runs = [("PGD-AT", CONF), ("SPAT", np.array([[5, 3, 2], [1, 3, 0], [0, 1, 4]]))]
    return [
        plots.plot_confusion(CONF, NAMES, out / "confusion.png", attack="PGD-20"),
        plots.plot_hard_pairs(directed_flows(CONF), NAMES, out / "pairs.png", attack="PGD-20"),
        plots.plot_per_class_accuracy({"clean": np.array([0.3, 1.0, 0.8])}, NAMES,
                                      out / "per_class.png", n=np.array([10, 4, 5])),
        plots.plot_training(_training_rows(), out / "training.png", num_classes=3),
        plots.plot_similarity_flow(sims, CONF, NAMES, out / "similarity.png", attack="PGD-20",
                                   correlations={"head": Corr()}),
        plots.plot_target_distribution(runs, NAMES, 0, out / "target.png", attack="PGD-20"),
        plots.plot_confusion_grid(runs, NAMES, out / "grid.png", attack="PGD-20"),
        plots.plot_per_class_compare([(lab, np.array([0.5, 0.5, 0.5])) for lab, _ in runs],
                                     NAMES, out / "compare.png", attack="PGD-20",
                                     n=np.array([10, 4, 5])),
    ]


def test_every_figure_is_written_as_pdf_and_png(tmp_path: Path) -> None:
    pngs = _every_figure(tmp_path)
    assert len(pngs) == 8
    for png in pngs:
        assert png.suffix == ".png" and png.is_file()
        assert _png_dpi(png) == pytest.approx(plots.DPI, abs=0.5) and plots.DPI >= 200
        pdf = png.with_suffix(".pdf")
        assert pdf.read_bytes()[:5] == b"%PDF-"
        assert b"/FontFile2" in pdf.read_bytes()  # TrueType (Type 42) fonts embedded
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [p.name for p in pngs] + [p.with_suffix(".pdf").name for p in pngs])
    assert plots.output_paths(tmp_path / "x.png") == {"png": tmp_path / "x.png",
                                                      "pdf": tmp_path / "x.pdf"}


def test_matplotlib_is_imported_only_to_draw() -> None:
    code = ("import sys, spat.analysis.plots, spat.analysis.analyze, spat.analysis.compare; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_the_same_figure_gives_the_same_pdf(tmp_path: Path) -> None:
    a = plots.plot_hard_pairs(directed_flows(CONF), NAMES, tmp_path / "a.png", attack="PGD-20")
    b = plots.plot_hard_pairs(directed_flows(CONF), NAMES, tmp_path / "b.png", attack="PGD-20")
    assert a.with_suffix(".pdf").read_bytes() == b.with_suffix(".pdf").read_bytes()


def _cells(ax: Any) -> dict[tuple[int, int], str]:
    """Heatmap cell texts by (row, column)."""
    out = {}
    for t in ax.texts:
        x, y = t.get_position()
        out[(round(y), round(x))] = t.get_text()
    return out


def _totals(ax: Any) -> list[str]:
    (right,) = ax.child_axes  # the secondary axis at the right end of the rows
    return [t.get_text() for t in right.get_yticklabels()]


def test_heatmaps_write_the_counts_and_row_totals(tmp_path: Path, figures: list[Any]) -> None:
    plots.plot_confusion(CONF, NAMES, tmp_path / "c.png", attack="PGD-20", title="T")
    (fig,) = figures
    left, right = [ax for ax in fig.axes if ax.images]
    nonzero = {(i, j): str(CONF[i, j]) for i in range(3) for j in range(3) if CONF[i, j]}
    assert _cells(left) == nonzero  # every nonzero count, nothing else
    assert _cells(right) == nonzero  # the masked diagonal shows the correct count in grey
    assert _totals(left) == ["n=10", "n=4", "n=5"]  # examples of the class
    assert _totals(right) == ["n=7", "n=0", "n=1"]  # its misclassified examples
    # the one error of "ship" is a full-colour cell, but the row says n=1 and the cell says 1
    err = right.images[0].get_array()
    assert err[2, 0] == pytest.approx(1.0) and np.ma.is_masked(err[2, 2])

    figures.clear()
    runs = [("A", CONF), ("B", CONF.T.copy())]
    plots.plot_confusion_grid(runs, NAMES, tmp_path / "g.png", attack="PGD-20")
    axes = [ax for ax in figures[0].axes if ax.images]
    assert [ax.get_title().splitlines()[0] for ax in axes] == ["A", "B"]
    assert _cells(axes[1]) == {(i, j): str(CONF.T[i, j]) for i in range(3) for j in range(3)
                               if CONF.T[i, j]}
    assert _totals(axes[1]) == ["n=1", "n=6", "n=1"]


def test_entropy_has_its_own_unit_axis(tmp_path: Path, figures: list[Any]) -> None:
    plots.plot_training(_training_rows(), tmp_path / "t.png", num_classes=3, title="T")
    (fig,) = figures
    (ent,) = [ax for ax in fig.axes if "entropy" in ax.get_ylabel()]
    lo, hi = ent.get_ylim()
    assert 0.0 <= lo < hi <= 1.0
    labels = [t.get_text() for t in ent.get_yticklabels()]
    assert labels and not any("%" in s for s in labels)  # a number in [0, 1], not a percent
    assert ent.lines[0].get_ydata().tolist() == pytest.approx([0.35, 0.45, 0.55])
    shares = [ax for ax in fig.axes if ax is not ent and "share" in ax.get_ylabel()]
    assert shares and all("%" in t.get_text() for t in shares[0].get_yticklabels()
                          if t.get_text())
    legend = [t.get_text() for t in shares[0].get_legend().get_texts()]
    assert "cat→dog (2 epochs)" in legend and "ship→cat (1 epoch)" in legend


def test_wilson_interval_against_hand_values() -> None:
    k = np.array([k for k, _ in WILSON])
    n = np.array([n for _, n in WILSON])
    low, high = wilson_interval(k, n)
    np.testing.assert_allclose(low, [v[0] for v in WILSON.values()], atol=5e-5)
    np.testing.assert_allclose(high, [v[1] for v in WILSON.values()], atol=5e-5)
    lo, hi = wilson_interval(0, 0)
    assert np.isnan(lo) and np.isnan(hi)  # no examples: undefined, no warning
    ext = error_bar_extents([0.3, 0.0], [10, 10])
    np.testing.assert_allclose(ext, [[0.3 - 0.1078, 0.0], [0.6032 - 0.3, 0.2775]], atol=5e-5)


def _bars(ax: Any) -> list[Any]:
    from matplotlib.container import BarContainer

    return [c for c in ax.containers if isinstance(c, BarContainer)]


def _error_bar_ends(container: Any, axis: int) -> list[tuple[float, float]]:
    """(low, high) of each error bar of a bar container (axis 1 = vertical bars)."""
    segs = container.errorbar.lines[2][0].get_segments()
    return [(float(s[:, axis].min()), float(s[:, axis].max())) for s in segs]


def test_bars_carry_wilson_intervals_and_n(tmp_path: Path, figures: list[Any]) -> None:
    plots.plot_per_class_accuracy({"clean": np.array([0.3, 0.0, 1.0])}, NAMES,
                                  tmp_path / "p.png", n=np.array([10, 10, 4]), title="T")
    ax = figures[0].axes[0]
    (bars,) = _bars(ax)
    ends = _error_bar_ends(bars, 1)
    np.testing.assert_allclose(ends, [WILSON[(3, 10)], WILSON[(0, 10)], WILSON[(4, 4)]],
                               atol=5e-5)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat (10)", "dog (10)", "ship (4)"]
    assert bars.patches[0].get_facecolor()[:3] == pytest.approx(
        tuple(int(plots.PALETTE[0][i:i + 2], 16) / 255 for i in (1, 3, 5)))

    # hard pairs: horizontal bars of the share of the class, n = the class's examples
    figures.clear()
    conf = np.array([[7, 3, 0], [0, 10, 0], [0, 0, 4]])  # cat→dog: 3 of 10
    plots.plot_hard_pairs(directed_flows(conf), NAMES, tmp_path / "h.png", attack="PGD-20")
    ax = figures[0].axes[0]
    assert _error_bar_ends(_bars(ax)[0], 0) == [pytest.approx(WILSON[(3, 10)], abs=5e-5)]
    assert any("3/10" in t.get_text() for t in ax.texts)

    # Figure 1: the share of the class's misclassified examples, n = its errors
    figures.clear()
    runs = [("A", np.array([[6, 4, 0], [0, 4, 0], [0, 0, 4]]))]  # cat: 4 errors, all → dog
    plots.plot_target_distribution(runs, NAMES, 0, tmp_path / "f.png", attack="PGD-20")
    ax = figures[0].axes[0]
    ends = _error_bar_ends(_bars(ax)[0], 1)
    np.testing.assert_allclose(ends[0], WILSON[(4, 4)], atol=5e-5)  # → dog: 4 of 4
    z2 = 1.959964**2
    assert ends[1][0] == 0.0 and ends[1][1] == pytest.approx(z2 / (4 + z2), abs=5e-5)  # 0 of 4
    assert "n = 4 of 10 misclassified" in ax.get_legend().get_texts()[-1].get_text()


def test_titles_name_run_model_and_dataset(tmp_path: Path, figures: list[Any]) -> None:
    labels = torch.tensor([0] * 10 + [1] * 4 + [2] * 5)
    pred = torch.tensor([0] * 3 + [1] * 6 + [2] + [1] * 4 + [0] + [2] * 4)
    preds = Predictions(labels=labels, clean=labels.clone(), adversarial={"PGD-20": pred})
    conf = {"clean": np.diag([10.0, 4.0, 5.0]), "PGD-20": CONF.astype(float)}
    ra = RunAnalysis(run_dir=tmp_path / "run", label="SPAT",
                     config={"model": "wrn34_10", "dataset": "cifar3", "method": "spat",
                             "head": "cosine", "eps": 0.031, "norm": "linf"},
                     names=NAMES, predictions=preds, prediction_source="test",
                     primary="PGD-20", confusions=conf, training=_training_rows())
    files = write_analysis(ra, tmp_path / "an", log=lambda _s: None)
    assert len(figures) == 4  # confusion, hard pairs, per-class, training
    for fig in figures:
        title = fig.get_suptitle() or " ".join(ax.get_title() for ax in fig.axes)
        assert "SPAT" in title and "wrn34_10" in title and "cifar3" in title, title
    for name in ("confusion_pgd-20", "hard_pairs", "per_class_accuracy", "training"):
        assert files[f"{name}.png"].is_file() and files[f"{name}.pdf"].is_file()

    figures.clear()
    ra2 = RunAnalysis(**{**ra.__dict__, "label": "PGD-AT", "training": []})
    compare._plots([ra2, ra], [(a.label, a.confusions["PGD-20"]) for a in (ra2, ra)], NAMES,
                   0, "PGD-20", tmp_path / "cmp")
    assert len(figures) == 3
    for fig in figures:
        title = fig.get_suptitle()
        assert "PGD-AT vs SPAT" in title and "wrn34_10" in title and "cifar3" in title, title


def test_compare_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = tmp_path / "lab" / "run_a", tmp_path / "other" / "run b"
    assert compare.default_compare_dir([a, b]) == tmp_path / "lab" / "compare-run_a_vs_run_b"
    long = [tmp_path / ("x" * 60), tmp_path / ("y" * 60)]
    name = compare.default_compare_dir(long).name
    assert len(name) <= 100 and name.startswith("compare-xxx")
    assert name != compare.default_compare_dir([long[0], tmp_path / ("y" * 59 + "z")]).name
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    f = tmp_path / "taken"
    f.write_text("")
    with pytest.raises(SpatError, match="not a folder"):
        compare.check_out_dir(f)
    assert compare.check_out_dir(tmp_path) == tmp_path
    assert main(["compare", str(a), str(b), "--out", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"spat: error: --out {f} exists and is not a folder"]
    assert main(["analyze", str(a), "--out", str(f)]) == 2
    assert capsys.readouterr().err.strip() == f"spat: error: --out {f} exists and is not a folder"

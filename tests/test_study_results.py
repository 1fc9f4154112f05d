"""A study's committed small results: a cell whose weights are gone (a fresh clone of
docs/study/) is done when its small files are there, and the aggregate reports the run's own
validation accuracy at its best epoch. Hand-made run folders, no training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spat.build import TrainResult
from spat.config import config_from_dict
from spat.study.aggregate import VAL_CLEAN, VAL_ROBUST, aggregate, read_cell
from spat.study.cell import cell_state
from spat.study.spec import load_study, plan_cells

STUDY = """
[study]
name = "s"
out_dir = "{out}"
datasets = ["digits"]
seeds = [0, 1]
baseline = "a"
[train]
epochs = 3
device = "cpu"
[variants.a]
method = "pgd_at"
[variants.b]
method = "trades"
[eval]
attacks = ["fgsm"]
n_examples = 100
which = "best"
analyze = true
"""


def _spec(tmp_path: Path):
    f = tmp_path / "s.toml"
    f.write_text(STUDY.format(out=(tmp_path / "out").as_posix()), encoding="utf-8")
    return load_study(f)


def _write_summary(run: Path, *, best: int, epochs: int) -> None:
    """A valid summary.json (the readers read it through the typed reader)."""
    result = TrainResult(run_dir=run, checkpoint=run / "checkpoints" / f"epoch_{best:04d}",
                         epochs=epochs, best_epoch=best, test_examples=100, test_clean_acc=0.9,
                         test_attack="PGD-20", test_eps=0.1, test_robust_acc=0.4, world_size=1,
                         train_seconds_this_session=1.0, last_epoch=None)
    (run / "summary.json").write_text(json.dumps(result.to_dict()), encoding="utf-8")


def _finished_cell(cell, *, best: int, val: list[tuple[float, float]], robust: float,
                   checkpoints: bool, analysis_older: bool) -> None:
    """The small files a finished, evaluated and analysed cell leaves (by hand)."""
    run = Path(cell.run_dir)
    (run / "eval").mkdir(parents=True)
    (run / "analysis").mkdir()
    cfg = config_from_dict(cell.config, source=cell.key).resolved().to_dict()
    (run / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    lines = [json.dumps({"epoch": e + 1, VAL_CLEAN: c, VAL_ROBUST: r})
             for e, (c, r) in enumerate(val)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_summary(run, best=best, epochs=len(val))
    report = {"clean_acc": 0.9, "attacks": [{"name": "FGSM", "accuracy": robust}],
              "ensemble": {"accuracy": robust}, "settings": {"attacks": ["fgsm"], "restarts": 1},
              "which": "best", "eps": cfg["eps"], "norm": cfg["norm"], "seed": 0,
              "n_examples": 100,
              "subset": {"indices": "seeded", "of": 500}, "classes": []}
    rep = run / "eval" / "report.json"
    rep.write_text(json.dumps(report), encoding="utf-8")
    (run / "analysis" / "analysis.json").write_text("{}", encoding="utf-8")
    ana = run / "analysis" / "report.md"  # written last: the mark of a finished analysis
    ana.write_text("# analysis\n", encoding="utf-8")
    t = rep.stat().st_mtime
    os.utime(ana, (t - 100, t - 100) if analysis_older else (t + 1, t + 1))
    if checkpoints:
        (run / "checkpoints").mkdir()


def test_fresh_clone_cell_is_done_without_weights(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    cell = plan_cells(spec)[0]
    # a checkout gives the analysis an older file time than the report: with the weights there
    # the analysis is stale and is redone; without them (a fresh clone) the cell is done
    _finished_cell(cell, best=2, val=[(0.5, 0.2), (0.8, 0.6), (0.9, 0.5)], robust=0.4,
                   checkpoints=True, analysis_older=True)
    assert cell_state(cell.__dict__) == "analyze"
    (Path(cell.run_dir) / "checkpoints").rmdir()
    assert cell_state(cell.__dict__) == "done"
    # a newer analysis is fresh either way
    os.utime(Path(cell.run_dir) / "analysis" / "report.md")
    assert cell_state(cell.__dict__) == "done"
    # missing small files are still missing: no report, the evaluation must run
    (Path(cell.run_dir) / "eval" / "report.json").unlink()
    assert cell_state(cell.__dict__) == "eval"


def test_aggregate_reports_best_epoch_validation_accuracy(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    cells = plan_cells(spec)
    # best epochs 2, 3, 1, 2 — the validation numbers of those epochs, not the last or the max
    vals = [(2, [(0.5, 0.2), (0.8, 0.6), (0.9, 0.5)]),
            (3, [(0.5, 0.2), (0.8, 0.6), (0.9, 0.7)]),
            (1, [(0.6, 0.4), (0.8, 0.3), (0.9, 0.2)]),
            (2, [(0.5, 0.1), (0.7, 0.5), (0.9, 0.5)])]
    for cell, (best, val) in zip(cells, vals, strict=True):
        _finished_cell(cell, best=best, val=val, robust=0.3, checkpoints=False,
                       analysis_older=False)
    results = [read_cell(c) for c in cells]
    got = [(r.metrics[VAL_CLEAN], r.metrics[VAL_ROBUST]) for r in results]
    assert got == [(0.8, 0.6), (0.9, 0.7), (0.6, 0.4), (0.7, 0.5)]
    aggs, metrics = aggregate(spec, results, resamples=200)
    assert metrics[-2:] == [VAL_CLEAN, VAL_ROBUST]
    a, b = aggs
    assert a.summary[VAL_ROBUST].mean == pytest.approx(0.65)
    assert b.summary[VAL_ROBUST].mean == pytest.approx(0.45)
    # paired on the same seeds: (0.4 - 0.6, 0.5 - 0.7)
    assert b.diff_t[VAL_ROBUST].mean == pytest.approx(-0.2)
    # a run whose metrics.jsonl lacks its best epoch reports no validation accuracy
    run = Path(cells[0].run_dir)
    _write_summary(run, best=7, epochs=3)
    assert VAL_ROBUST not in read_cell(cells[0]).metrics

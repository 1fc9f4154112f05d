"""``spat analyze``'s written files, byte for byte, against a reference.

A hand-built :class:`~spat.analysis.record.RunAnalysis` (4 classes, two attacks, both
similarity matrices, a 3-epoch training table; no model, no data) is written with
:func:`~spat.analysis.analyze.write_analysis` and every CSV, ``analysis.json`` and ``report.md``
is compared with ``tests/fixtures/analysis_reference/``. Those files were written by the
single-module ``analysis/analyze.py`` before it was split into ``record``/``predictions``/
``writers``/``markdown``; the split (and any later refactoring) must not change a byte. The
plots are stubbed (matplotlib's bytes depend on its version); their names are checked.

After a deliberate change of the output, rewrite the reference with
``SPAT_WRITE_REFERENCE=1 python3 -m pytest tests/test_analysis_files.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from spat.analysis import plots
from spat.analysis.analyze import write_analysis
from spat.analysis.over_epochs import over_training
from spat.analysis.record import FEATURE_SIM, HEAD_SIM, RunAnalysis
from spat.analysis.stats import (
    directed_flow_matrix,
    mantel_spearman,
    offdiag_spearman,
    symmetric_flow_matrix,
)
from spat.evaluation.core import Predictions

REFERENCE = Path(__file__).parent / "fixtures" / "analysis_reference"
NAMES = ["cat", "dog", "ship", "truck"]
#: Files whose bytes are compared (the plots are stubbed).
COMPARED = ("analysis.json", "report.md", "per_class.csv", "hard_pairs.csv",
            "hard_pairs_symmetric.csv", "confusion_clean.csv", "confusion_pgd-20.csv",
            "confusion_autoattack.csv", "similarity_head.csv", "similarity_features.csv",
            "over_training.csv")
PLOTS = ("confusion_pgd-20", "confusion_autoattack", "hard_pairs", "per_class_accuracy",
         "training", "similarity_flow")


def make_analysis(cls: Any = RunAnalysis) -> Any:
    """The hand-built analysis: 40 test examples, 10 per class; PGD-20 sends cat→dog,
    dog→cat, ship→truck (the similar pairs); AutoAttack also breaks the trucks."""
    labels = torch.arange(40) % 4
    clean = labels.clone()
    clean[[0, 5]] = torch.tensor([1, 0])  # one cat and one dog wrong on clean data
    pgd = labels.clone()
    pgd[labels == 0] = torch.tensor([1, 1, 1, 1, 1, 1, 2, 0, 0, 0])
    pgd[labels == 1] = torch.tensor([0, 0, 0, 0, 3, 1, 1, 1, 1, 1])
    pgd[labels == 2] = torch.tensor([3, 3, 3, 2, 2, 2, 2, 2, 2, 2])
    aa = pgd.clone()
    aa[labels == 3] = torch.tensor([2, 2, 0, 3, 3, 3, 3, 3, 3, 3])
    preds = Predictions(labels=labels, clean=clean, adversarial={"PGD-20": pgd, "AutoAttack": aa})
    k = len(NAMES)
    confusions = {"clean": preds.confusion(None, k).numpy()}
    for name in preds.adversarial:
        confusions[name] = preds.confusion(name, k).numpy()
    ra = cls(run_dir=Path("runs/demo"), label="SPAT",
             config={"method": "spat", "dataset": "cifar10", "model": "resnet18",
                     "head": "cosine", "eps": 8 / 255, "norm": "linf"},
             names=list(NAMES), predictions=preds, prediction_source="runs/demo/eval/"
             "predictions.npz", primary="PGD-20", confusions=confusions,
             eval_report={"autoattack_acc": 0.5}, checkpoint="runs/demo/checkpoints/best")
    ra.similarities[HEAD_SIM] = np.array([[1.0, 0.8, 0.1, 0.0], [0.8, 1.0, 0.2, 0.1],
                                          [0.1, 0.2, 1.0, 0.7], [0.0, 0.1, 0.7, 1.0]])
    ra.similarities[FEATURE_SIM] = np.array([[1.0, 0.6, -0.2, 0.3], [0.6, 1.0, 0.1, -0.1],
                                             [-0.2, 0.1, 1.0, 0.5], [0.3, -0.1, 0.5, 1.0]])
    conf = confusions["PGD-20"]
    for s, sim in ra.similarities.items():
        ra.correlations[f"{s} / directed"] = offdiag_spearman(
            sim, directed_flow_matrix(conf, "class"))
        ra.correlations[f"{s} / symmetric"] = offdiag_spearman(
            sim, symmetric_flow_matrix(conf), symmetric=True)
        ra.mantel[f"{s} / directed"] = mantel_spearman(
            sim, directed_flow_matrix(conf, "class"), permutations=99)
        ra.mantel[f"{s} / symmetric"] = mantel_spearman(
            sim, symmetric_flow_matrix(conf), symmetric=True, permutations=99)
    ra.training = over_training([
        {"epoch": 1, "lr": 0.1, "train_loss": 2.25, "val_clean_acc": 0.5,
         "val_robust_acc": 0.25, "val_attack": "PGD-10",
         "val_adv_confusion": [[2, 2, 0, 0], [3, 1, 0, 0], [0, 0, 2, 2], [0, 1, 1, 2]]},
        {"epoch": 2, "lr": 0.1, "train_loss": 1.5, "val_clean_acc": 0.75,
         "val_robust_acc": 0.5, "val_attack": "PGD-10",
         "val_adv_confusion": [[3, 1, 0, 0], [1, 3, 0, 0], [0, 0, 3, 1], [0, 0, 1, 3]]},
        {"epoch": 3, "lr": 0.01, "train_loss": 1.25},
    ], NAMES)
    return ra


def stub_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``plots.plot_*`` returns the path it was given and draws nothing."""
    def stub(*args: Any, **kwargs: Any) -> Any:
        return next(a for a in (*args, *kwargs.values()) if isinstance(a, Path))

    for name in dir(plots):
        if name.startswith("plot_"):
            monkeypatch.setattr(plots, name, stub)


def test_written_files_match_the_reference(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    stub_plots(monkeypatch)
    files = write_analysis(make_analysis(), tmp_path)
    expected = {*COMPARED, *(f"{p}.{ext}" for p in PLOTS for ext in ("png", "pdf"))}
    assert set(files) == expected
    assert all(files[name] == tmp_path / name for name in files)
    if os.environ.get("SPAT_WRITE_REFERENCE"):  # a deliberate change: review the diff
        REFERENCE.mkdir(parents=True, exist_ok=True)
        for name in COMPARED:
            (REFERENCE / name).write_bytes((tmp_path / name).read_bytes())
    for name in COMPARED:
        assert (tmp_path / name).read_bytes() == (REFERENCE / name).read_bytes(), name
    # the numbers behind the bytes: PGD-20's hardest pair, and AutoAttack from the predictions
    report = (tmp_path / "report.md").read_text()
    assert "| 1 | cat→dog | 6 | 60.0% | 85.7% |" in report
    assert "| AutoAttack (eval report) | 55.0% |" in report

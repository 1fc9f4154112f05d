"""The record of one run's hard-class-pair analysis: :class:`RunAnalysis` and its numbers.

SPAT (Hou, Han & Li, arXiv 2210.15068) predicts that untargeted adversarial examples land on
the class most similar to the true one. A :class:`RunAnalysis` holds what ``spat analyze``
measures for that on one run (confusion matrices clean and under each attack, class
similarities and their rank correlations with the flows, the per-epoch table) and derives the
per-class rows and the headline summary from them; it computes nothing from a model. It is
filled by :func:`spat.analysis.analyze.collect`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spat.analysis.stats import (
    Concentration,
    MantelResult,
    RankCorrelation,
    concentration,
    flow_summary,
    honest_concentration,
    per_class_accuracy,
)
from spat.evaluation.attacks import AA_NAMES
from spat.evaluation.core import Predictions
from spat.utils.io import nan_to_none

#: Methods' display names (runs are labelled by method).
METHOD_LABELS = {"pgd_at": "PGD-AT", "spat": "SPAT", "trades": "TRADES", "mart": "MART",
                 "standard": "Standard"}
#: Similarity matrices compared with the flows (keys of ``RunAnalysis.similarities``).
HEAD_SIM = "classifier weight rows"
FEATURE_SIM = "class-mean features (clean test)"


def method_label(method: str) -> str:
    """``"pgd_at"`` → ``"PGD-AT"``; unknown names are returned unchanged."""
    return METHOD_LABELS.get(method, method)



@dataclass
class RunAnalysis:
    """Everything the report of one run shows.

    ``confusions`` maps ``"clean"`` and every attack name to its (K, K) count matrix;
    ``primary`` is the attack whose flows are ranked, plotted and correlated with the
    similarities; ``similarities`` maps a name (:data:`HEAD_SIM`, :data:`FEATURE_SIM`) to a
    (K, K) cosine matrix; ``correlations`` maps ``"<similarity> / directed"`` and
    ``"<similarity> / symmetric"`` to a :class:`RankCorrelation`; ``training`` holds the rows of
    :func:`~spat.analysis.over_epochs.over_training`.
    """

    run_dir: Path
    label: str
    config: dict[str, Any]
    names: list[str]
    predictions: Predictions
    prediction_source: str
    primary: str
    confusions: dict[str, np.ndarray]
    similarities: dict[str, np.ndarray] = field(default_factory=dict)
    correlations: dict[str, RankCorrelation] = field(default_factory=dict)
    mantel: dict[str, MantelResult] = field(default_factory=dict)  # same keys, permutation null
    training: list[dict[str, Any]] = field(default_factory=list)
    eval_report: dict[str, Any] | None = None
    checkpoint: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def attacks(self) -> list[str]:
        return [k for k in self.confusions if k != "clean"]

    def concentration_of(self, attack: str | None = None) -> Concentration:
        """The target concentration under ``attack`` (default: the primary attack)."""
        return concentration(self.confusions[attack or self.primary])

    def per_class(self) -> list[dict[str, Any]]:
        """One row per class: examples, clean and per-attack accuracy, worst case over the
        attacks, and the primary attack's errors, top target and concentration."""
        labels = self.predictions.labels
        worst = self.predictions.robust_all()
        conc = self.concentration_of()
        hc = honest_concentration(self.confusions[self.primary])
        acc = {k: per_class_accuracy(m) for k, m in self.confusions.items()}
        rows = []
        for i, name in enumerate(self.names):
            n = int((labels == i).sum())
            row: dict[str, Any] = {"class": i, "name": name, "examples": n}
            for k in self.confusions:
                row[f"{k}_acc"] = nan_to_none(acc[k][i])
            if len(self.attacks) > 1:
                row["worst_case_acc"] = (nan_to_none(float(worst[labels == i].float().mean()))
                                         if n else None)
            t = int(conc.top_target[i])
            row.update({
                f"{self.primary}_errors": int(conc.errors[i]),
                "top_target": self.names[t] if t >= 0 else None,
                "top_target_share_of_errors": nan_to_none(conc.top_share[i]),
                "normalized_entropy": nan_to_none(conc.normalized_entropy[i]),
                "null_top_share": nan_to_none(hc.null_top_share[i]),
                "excess_top_share": nan_to_none(hc.excess_top_share[i]),
                "null_normalized_entropy": nan_to_none(hc.null_normalized_entropy[i]),
                "uniformity_p": nan_to_none(hc.p_value[i]),
                "few_errors": bool(hc.few_errors[i]),
            })
            rows.append(row)
        return rows

    def summary(self) -> dict[str, Any]:
        """The headline numbers (what ``spat compare`` tabulates)."""
        accs = {k: self.predictions.accuracy(None if k == "clean" else k)
                for k in self.confusions}
        prim_pc = per_class_accuracy(self.confusions[self.primary])
        clean_pc = per_class_accuracy(self.confusions["clean"])
        fs = flow_summary(self.confusions[self.primary], self.names)
        worst_i = int(np.nanargmin(prim_pc)) if np.any(~np.isnan(prim_pc)) else -1
        out: dict[str, Any] = {
            "label": self.label,
            "run_dir": str(self.run_dir),
            "checkpoint": self.checkpoint,
            "method": self.config.get("method"),
            "dataset": self.config.get("dataset"),
            "model": self.config.get("model"),
            "head": self.config.get("head"),
            "eps": self.config.get("eps"),
            "examples": len(self.predictions),
            "prediction_source": self.prediction_source,
            "primary_attack": self.primary,
            "accuracy": {k: nan_to_none(v) for k, v in accs.items()},
            "worst_case_acc": (nan_to_none(float(self.predictions.robust_all().float().mean()))
                               if len(self.attacks) > 1 else None),
            "autoattack_acc": autoattack_accuracy(self.eval_report, self.predictions),
            "worst_class_clean_acc": nan_to_none(float(np.nanmin(clean_pc))),
            "worst_class_robust_acc": (nan_to_none(float(prim_pc[worst_i])) if worst_i >= 0
                                       else None),
            "worst_class": self.names[worst_i] if worst_i >= 0 else None,
            **{k: v for k, v in fs.items() if k != "accuracy"},
            "correlations": {k: {**_corr_dict(v), "mantel_p_value": (
                nan_to_none(self.mantel[k].p_value) if k in self.mantel else None)}
                for k, v in self.correlations.items()},
        }
        hc = honest_concentration(self.confusions[self.primary])
        out.update({"null_top_share": nan_to_none(hc.mean_null_top_share),
                    "excess_top_share": nan_to_none(hc.mean_excess_top_share),
                    "null_normalized_entropy": nan_to_none(hc.mean_null_normalized_entropy),
                    "entropy_deficit": nan_to_none(hc.mean_entropy_deficit),
                    "nonuniform_classes": hc.n_significant, "tested_classes": hc.n_tested,
                    "few_error_classes": int(hc.few_errors.sum())})
        return out


def _corr_dict(c: RankCorrelation) -> dict[str, Any]:
    return {"rho": nan_to_none(c.rho), "p_value": nan_to_none(c.p_value), "n_pairs": c.n_pairs}



def autoattack_accuracy(report: dict[str, Any] | None, preds: Predictions | None = None
                        ) -> float | None:
    """Standard AutoAttack's robust accuracy, if known: the attack named exactly ``AutoAttack``
    in the predictions, else the eval report's ``autoattack_acc`` (``spat eval``'s
    ``report.json``, validated by :func:`~spat.validation.check_eval_report`), else the entry of
    its ``attacks`` list named ``AutoAttack``. The reduced ``AutoAttack-fast`` never counts."""
    if preds is not None and "AutoAttack" in preds.adversarial:
        return nan_to_none(preds.accuracy("AutoAttack"))
    if not report:
        return None
    if "autoattack_acc" in report:
        v = report["autoattack_acc"]
    else:
        v = next((a.get("accuracy") for a in report.get("attacks") or ()
                  if isinstance(a, dict) and a.get("name") == AA_NAMES["standard"]), None)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


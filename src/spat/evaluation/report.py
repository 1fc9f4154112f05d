"""The evaluation report: per-class summaries, the JSON document and the terminal table."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spat.evaluation.core import Predictions
from spat.evaluation.sanity import Check
from spat.utils.io import atomic_write_text
from spat.utils.reporting import MISSING, percent

REPORT_FILE = "report.json"
PREDICTIONS_FILE = "predictions.npz"
SCHEMA = "spat.eval/1"


def summarize(correct: torch.Tensor, labels: torch.Tensor, class_names: list[str]
              ) -> dict[str, Any]:
    """Accuracy overall and per class of a per-example correctness vector.

    Returns ``accuracy``, ``correct``, ``n``, ``per_class_accuracy`` ({class name: accuracy, None
    for a class without examples}), ``per_class_correct`` (list by class index) and
    ``worst_class`` ({index, name, accuracy} over classes with examples).
    """
    k = len(class_names)
    correct = correct.to(torch.int64).cpu()
    labels = labels.cpu()
    counts = torch.bincount(labels, minlength=k)[:k]
    hits = torch.bincount(labels, weights=correct.double(), minlength=k)[:k].round().long()
    per_class = {
        name: (float(hits[i]) / int(counts[i]) if int(counts[i]) else None)
        for i, name in enumerate(class_names)
    }
    worst = None
    for i, name in enumerate(class_names):
        acc = per_class[name]
        if acc is not None and (worst is None or acc < worst["accuracy"]):
            worst = {"index": i, "name": name, "accuracy": acc}
    n = int(labels.numel())
    return {
        "accuracy": float(correct.sum()) / n if n else float("nan"),
        "correct": int(correct.sum()),
        "n": n,
        "per_class_accuracy": per_class,
        "per_class_correct": hits.tolist(),
        "worst_class": worst,
    }


@dataclass
class EvalReport:
    """What :func:`spat.evaluation.evaluate` returns.

    ``data`` is the JSON document (see ``docs/evaluation.md``); ``predictions`` holds labels,
    clean and per-attack predictions (saved as ``predictions.npz``).
    """

    data: dict[str, Any]
    predictions: Predictions
    checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.data

    @property
    def eps(self) -> float:
        """Radius of the threat ball, [0, 1] pixel units."""
        return float(self.data["eps"])

    @property
    def n_examples(self) -> int:
        """Number of examples evaluated."""
        return int(self.data["n_examples"])

    @property
    def clean_accuracy(self) -> float:
        """Accuracy on the unperturbed examples."""
        return float(self.data["clean_acc"])

    @property
    def robust_accuracy(self) -> float:
        """Worst case over the attacks: an example counts only if every attack failed."""
        return float(self.data["robust_acc"])

    @property
    def accuracies(self) -> dict[str, float]:
        """Accuracy under each attack by its report name (``"PGD-20"``), in evaluation order."""
        return {a["name"]: float(a["accuracy"]) for a in self.data["attacks"]}

    @property
    def sanity_passed(self) -> bool:
        """False when a gradient-masking sanity check failed (see :attr:`checks`)."""
        return bool(self.data["sanity"]["passed"])

    def attack(self, name: str) -> dict[str, Any]:
        """The report entry of attack ``name`` ("PGD-20") or key ("pgd20")."""
        for a in self.data["attacks"]:
            if name in (a["name"], a["key"]):
                return a
        raise KeyError(name)

    def save(self, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``report.json`` and ``predictions.npz`` into ``out_dir`` (atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        npz = out / PREDICTIONS_FILE
        self.predictions.save(npz)
        path = out / REPORT_FILE
        atomic_write_text(path, json.dumps(self.data, indent=2, allow_nan=True) + "\n")
        return path, npz


def attack_logits_of(report: dict[str, Any]) -> str:
    """The logits a report's attacks saw (``settings.attack_logits``); ``"model"`` for a report
    written before the option existed, whose attacks all saw the model's own outputs."""
    return str((report.get("settings") or {}).get("attack_logits") or "model")


def print_report(report: EvalReport, console: Any = None) -> None:
    """A readable table of the report on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    d = report.data
    title = (f"{d.get('dataset') or 'data'} · {d.get('architecture') or 'model'} · "
             f"{d['threat_model']} ε={d['eps']:.4g} · {d['n_examples']} examples")
    logits = attack_logits_of(d)
    scale = (d.get("settings") or {}).get("logit_scale")
    table = Table(title=title, title_justify="left")
    # attacks on a cosine head's s·z / s are never mistaken for attacks on the model's logits
    table.add_column("attack" if logits == "model" else
                     f"attack on z = s·z/{scale:g}" if scale else f"attack ({logits})")
    table.add_column("accuracy", justify="right")
    table.add_column("worst case", justify="right")
    table.add_column("worst class", justify="right")
    table.add_column("time", justify="right")
    reused = any(a["reused"] for a in d["attacks"])
    if reused:  # a column saying which rows come from an earlier, interrupted evaluation
        table.add_column("", justify="left")
    extra = [""] if reused else []

    def worst(s: dict[str, Any]) -> str:
        w = s.get("worst_class")
        return MISSING if w is None else f"{w['name']}: {percent(w['accuracy'])}"

    c = d["clean"]
    table.add_row("clean", percent(c["accuracy"], 2), percent(c["accuracy"], 2), worst(c), "",
                  *extra)
    for a in d["attacks"]:
        table.add_row(a["name"], percent(a["accuracy"], 2), percent(a["cumulative_accuracy"], 2),
                      worst(a), f"{a['seconds']:.1f}s",
                      *(["reused" if a["reused"] else ""] if reused else []))
    e = d["ensemble"]
    if d["attacks"]:
        table.add_row("[bold]ensemble[/bold]", f"[bold]{percent(e['accuracy'], 2)}[/bold]", "",
                      worst(e), "", *extra)
    console.print(table)
    if d["attacks"]:
        console.print("  worst case: correct under clean and every attack up to that row")
    if logits == "unit_cosine":
        console.print("  every attack saw the temperature-1 cosine logits z = s·z / s (as the "
                      "official SPAT evaluation), not the model's s·z; clean accuracy is the "
                      "same", markup=False)
    for a in d["attacks"]:
        subs = a.get("details", {}).get("robust_accuracy_after")
        if subs:
            steps = ", ".join(f"{k} {percent(v, 2)}" for k, v in subs.items())
            console.print(f"  {a['name']}: accuracy after {steps}")
    checks = d["sanity"]["checks"]
    failed = [c for c in checks if c["passed"] is False]
    ran = [c for c in checks if c["passed"] is not None]
    console.print(f"sanity checks: {len(ran) - len(failed)}/{len(ran)} passed"
                  + (f", {len(checks) - len(ran)} skipped" if len(checks) > len(ran) else ""))
    for w in d["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)

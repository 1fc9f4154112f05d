"""The evaluation report: per-class summaries, the JSON document and the terminal table."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from spat._version import __version__
from spat.attacks import autoattack as aa_mod
from spat.errors import SpatError
from spat.evaluation.core import Predictions
from spat.evaluation.options import EvalOptions
from spat.evaluation.sanity import Check
from spat.utils.io import atomic_write_text
from spat.utils.reporting import MISSING, percent

if TYPE_CHECKING:
    from spat.evaluation.attack_runs import AttackOutcome

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


def report_data(preds: Predictions, outcomes: list[AttackOutcome], opts: EvalOptions, *,
                class_names: list[str], checks: list[Check], warnings: list[str],
                index: torch.Tensor, n_total: int, device: torch.device, scale: float | None,
                processes: int, metadata: dict[str, Any] | None, total_seconds: float
                ) -> dict[str, Any]:
    """The JSON document of an evaluation (``report.json``; see docs/evaluation.md):
    ``metadata`` first, then the threat model, the accuracies, the subset (``index`` of the
    ``n_total`` examples of the split), the settings (ε and norm filled in; ``scale``: the s
    the unit-cosine logits divide by; ``processes``: ranks), per-class and per-attack
    summaries, the worst case, the sanity ``checks``, ``warnings``, versions and timing."""
    eps, norm, seed = opts.eps, opts.norm, opts.seed
    assert eps is not None and norm is not None
    names = class_names
    labels = preds.labels
    clean = summarize(preds.correct(None), labels, names)
    cum = preds.correct(None)
    entries = []
    for o in outcomes:
        ok = preds.correct(o.name)
        cum = cum & ok
        s = summarize(ok, labels, names)
        entries.append({
            "key": o.key, "name": o.name, "kind": o.kind, "settings": o.settings,
            **s,
            "cumulative_accuracy": float(cum.sum()) / len(preds),
            "cumulative_correct": int(cum.sum()),
            "seconds": o.seconds, "reused": o.reused, "details": o.details,
        })
    ensemble = {**summarize(preds.robust_all(), labels, names),
                "attacks": [o.name for o in outcomes]}
    aa = next((e for e in entries if e["key"] == "aa"), None)
    subset = n_total != len(preds)
    return {
        "schema": SCHEMA,
        **(metadata or {}),
        "threat_model": aa_mod.AA_NORMS[norm],
        "norm": norm,
        "eps": float(eps),
        "n_examples": len(preds),
        "clean_acc": clean["accuracy"],
        "autoattack_acc": aa["accuracy"] if aa is not None else None,
        "robust_acc": ensemble["accuracy"],
        "subset": {
            "n_examples": len(preds), "of": n_total, "seed": int(seed),
            "rule": ("first n_examples of torch.randperm(of) with a CPU generator seeded by "
                     "seed" if subset else "the whole split, in order"),
            "indices": index.tolist() if subset else None,
        },
        "seed": int(seed),
        "settings": {
            "attacks": [o.key for o in outcomes], "restarts": opts.restarts,
            "step_size": opts.step_size, "default_step_size": "eps/4 (PGD/CW); eps (FGSM)",
            "batch_size": opts.batch_size, "device": str(device),
            "sanity_examples": opts.sanity_examples,
            "attack_logits": opts.attack_logits, "logit_scale": scale,
            "processes": processes,
        },
        "classes": names,
        "class_counts": torch.bincount(labels, minlength=len(names))[:len(names)].tolist(),
        "clean": clean,
        "attacks": entries,
        "ensemble": ensemble,
        "sanity": {"passed": all(c.passed is not False for c in checks),
                   "checks": [c.to_dict() for c in checks]},
        "warnings": warnings,
        "versions": {"spat": __version__, "torch": torch.__version__,
                     "pyautoattack": aa_mod.pyautoattack_version()},
        "timing": {"total_seconds": total_seconds,
                   "attack_seconds": {o.name: o.seconds for o in outcomes}},
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


def report_options(report: dict[str, Any]) -> EvalOptions | None:
    """The settings a report was made with, as :class:`EvalOptions` (ε and norm filled in;
    ``n_examples`` None when the report covers the whole split in order); None when the report
    lacks ε, norm, attacks or seed, or holds values EvalOptions refuses (a broken report).

    Rule for the settings an older report does not record (written before the setting existed):
    they take their EvalOptions default, the value every evaluation used then (``restarts`` 1,
    ``step_size`` None, ``attack_logits`` "model", see :func:`attack_logits_of`);
    ``square_queries`` is never recorded (it changes only a sanity check).
    """
    settings = report.get("settings") or {}
    subset = report.get("subset") or {}
    recorded = {k: settings[k] for k in ("restarts", "step_size", "batch_size", "sanity_examples")
                if k in settings}
    try:
        return EvalOptions(eps=report["eps"], norm=report["norm"], attacks=settings["attacks"],
                           seed=report["seed"],
                           n_examples=(None if subset.get("indices") is None
                                       else report["n_examples"]),
                           attack_logits=attack_logits_of(report), **recorded)
    except (KeyError, TypeError, SpatError):
        return None


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

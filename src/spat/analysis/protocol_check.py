"""Were the runs of a comparison evaluated the same way? ``spat compare`` (and a study) put
numbers side by side only when they were measured on the same test examples, under the same
attacks on the same logits, at the same ε and norm; otherwise it warns, in the table and in its
JSON.

What is compared, from what each run recorded: ``RUN/eval/report.json`` (``n_examples``,
``subset.indices`` — the evaluated test indices, or the whole test set in order —, ``eps``,
``norm``, the attacks, and ``settings.attack_logits``: the model's own logits, or a cosine
head's s·z / s) when the predictions come from ``spat eval``; the prediction cache's
``predictions.json`` (``examples``, ``eps``, ``norm``, ``attack``; always the model's logits)
when ``spat analyze`` computed them; and always the predictions' own label vector (same
examples in the same order have the same labels).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spat.evaluation.report import attack_logits_of
from spat.validation import loads_json


def _digest(values: Any) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:12]


def protocol_of(a: Any) -> dict[str, Any]:
    """The evaluation protocol of one :class:`~spat.analysis.analyze.RunAnalysis`."""
    labels = a.predictions.labels
    out: dict[str, Any] = {
        "examples": len(a.predictions),
        "labels_digest": _digest([int(v) for v in labels.tolist()]),
        "attacks": sorted(a.attacks),
        "eps": None, "norm": None, "indices": None, "source": a.prediction_source,
        "attack_logits": "model",
    }
    rep = a.eval_report if str(a.prediction_source).endswith(
        str(Path("eval") / "predictions.npz")) else None
    if rep:
        subset = rep.get("subset") or {}
        idx = subset.get("indices")
        out.update(eps=rep.get("eps"), norm=rep.get("norm"),
                   attack_logits=attack_logits_of(rep),
                   indices=(_digest(idx) if idx is not None
                            else f"all {subset.get('of', rep.get('n_examples'))} in order"))
    else:
        meta_path = Path(str(a.prediction_source)).with_name("predictions.json")
        try:
            meta = loads_json(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not JSON, not UTF-8, nested too deeply
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        out.update(eps=meta.get("eps", a.config.get("eps")),
                   norm=meta.get("norm", a.config.get("norm")),
                   indices=f"first {meta.get('examples', len(a.predictions))}")
    return out


def protocol_text(p: dict[str, Any]) -> str:
    """``"500 ex., ε 0.1 linf, FGSM+PGD-20"``."""
    eps = "?" if p["eps"] is None else f"{float(p['eps']):.4g}"
    on = "" if p.get("attack_logits", "model") == "model" else f" on {p['attack_logits']} logits"
    return (f"{p['examples']} ex., ε {eps} {p['norm'] or ''}, "
            f"{'+'.join(p['attacks'])}{on}").strip()


def protocol_warnings(labels: Sequence[str], protocols: Sequence[dict[str, Any]]) -> list[str]:
    """One line per way in which the runs were evaluated differently (empty: comparable)."""
    if len(protocols) < 2:
        return []
    warnings = []

    def differ(key: str) -> bool:
        return len({json.dumps(p[key]) for p in protocols}) > 1

    def listing(key: str, fmt: Any = str) -> str:
        return "; ".join(f"{lab}: {fmt(p[key])}" for lab, p in zip(labels, protocols,
                                                                  strict=True))

    if differ("examples"):
        warnings.append(f"the runs were evaluated on different numbers of test examples "
                        f"({listing('examples')}); accuracies are not comparable")
    elif differ("labels_digest") or differ("indices"):
        warnings.append(f"the runs were evaluated on different test examples "
                        f"({listing('indices')}); accuracies are not comparable")
    if differ("attacks"):
        warnings.append(f"the runs were evaluated under different attacks "
                        f"({listing('attacks', lambda v: '+'.join(v) or 'none')}); worst-case "
                        f"and AutoAttack numbers are not comparable")
    if differ("eps") or differ("norm"):
        each = "; ".join(f"{lab}: ε {p['eps']} {p['norm']}"
                         for lab, p in zip(labels, protocols, strict=True))
        warnings.append(f"the runs were evaluated at different ε or norm ({each})")
    if len({p.get("attack_logits", "model") for p in protocols}) > 1:
        each = "; ".join(f"{lab}: {p.get('attack_logits', 'model')}"
                         for lab, p in zip(labels, protocols, strict=True))
        warnings.append(f"the runs were evaluated with different attack logits ({each}); "
                        f"robust accuracies are not comparable")
    return warnings

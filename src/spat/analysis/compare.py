"""``spat compare``: several runs side by side (the paper's Figure 1 for any dataset and methods).

For each run the statistics of :func:`spat.analysis.analyze.collect` are gathered (predictions
come from ``RUN/eval/predictions.npz`` or are computed once and cached in ``RUN/analysis/``);
the runs must be on the same classes. Written to the output folder: ``comparison.md``,
``comparison.csv``, ``comparison.json``, ``target_distribution.png`` (where the adversarial
examples of the most-attacked class go, per run), ``confusion_pair.png`` (the runs'
misclassified-normalised confusion matrices on one colour scale) and ``per_class_robust.png``
(each figure also as a PDF). Without an output folder, it is :func:`default_compare_dir`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spat.analysis import plots
from spat.analysis.analyze import collect
from spat.analysis.predictions import choose_attack
from spat.analysis.preflight import preflight_runs
from spat.analysis.protocol_check import protocol_of, protocol_text, protocol_warnings
from spat.analysis.record import RunAnalysis
from spat.analysis.stats import class_totals, per_class_accuracy
from spat.analysis.writers import slug, write_csv, write_json
from spat.errors import SpatError
from spat.utils.io import atomic_write_text, nan_to_none
from spat.utils.reporting import MISSING, md_table, number, percent

Log = Callable[[str], None]


def default_compare_dir(runs: Sequence[str | os.PathLike[str]]) -> Path:
    """Where ``spat compare`` writes without ``--out``: next to the first run, named after the
    runs' directories, ``<parent of RUN_A>/compare-<RUN_A>_vs_<RUN_B>…`` (the same runs give
    the same folder, so comparing again updates it). A name longer than 100 characters is cut
    and ends with a hash of all the runs' paths."""
    if not runs:
        raise SpatError("compare needs at least one run directory")
    paths = [Path(r) for r in runs]
    first = paths[0].resolve() if paths[0].name in ("", ".", "..") else paths[0]
    parts = [re.sub(r"[^A-Za-z0-9._+-]+", "_", p.resolve().name if p.name in ("", ".", "..")
                    else p.name).strip("_") or "run" for p in paths]
    name = "compare-" + "_vs_".join(parts)
    if len(name) > 100:
        digest = hashlib.sha256("\0".join(str(p.resolve()) for p in paths).encode())
        name = name[:90].rstrip("_-.") + "-" + digest.hexdigest()[:8]
    return first.parent / name


def check_out_dir(out: str | os.PathLike[str]) -> Path:
    """``out`` as a Path; :class:`SpatError` (one line) if it exists and is not a folder."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise SpatError(f"--out {path} exists and is not a folder")
    return path


def parse_labels(text: str | Sequence[str] | None, n: int) -> list[str] | None:
    """``"PGD-AT,SPAT"`` (or a list of such strings) → one label per run; SpatError if the
    count is not ``n``."""
    if text is None:
        return None
    parts = [text] if isinstance(text, str) else list(text)
    labels = [p.strip() for t in parts for p in t.split(",") if p.strip()]
    if len(labels) != n:
        raise SpatError(f"--labels gives {len(labels)} labels for {n} runs")
    return labels


def _unique_labels(analyses: Sequence[RunAnalysis]) -> None:
    """Runs with the same method label get their directory name appended."""
    seen: dict[str, int] = {}
    for a in analyses:
        seen[a.label] = seen.get(a.label, 0) + 1
    for a in analyses:
        if seen[a.label] > 1:
            a.label = f"{a.label} ({a.run_dir.name})"


def most_attacked_class(analyses: Sequence[RunAnalysis], attack: str) -> int:
    """The class whose accuracy the attack lowers most: the largest drop from clean to
    ``attack`` accuracy, averaged over the runs (ties: the lower robust accuracy). A class that
    is already misclassified without attack (low clean accuracy) is not "attacked" much; the
    drop measures how many of its examples the attack moves across a boundary."""
    drops, robust = [], []
    for a in analyses:
        clean = per_class_accuracy(a.confusions["clean"])
        adv = per_class_accuracy(a.confusions[attack])
        drops.append(clean - adv)
        robust.append(adv)
    drop = np.nan_to_num(np.mean(drops, axis=0), nan=-np.inf)
    rob = np.nan_to_num(np.mean(robust, axis=0), nan=np.inf)
    return int(np.lexsort((rob, -drop))[0])


def compare_runs(
    runs: Sequence[str | os.PathLike[str]],
    *,
    labels: Sequence[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    attack: str | None = None,
    class_name: str | None = None,
    which: str = "best",
    limit: int | None = None,
    batch_size: int = 512,
    device: str = "cpu",
    data_dir: str | None = None,
    recompute: bool = False,
    steps: int = 20,
    plots_too: bool = True,
    log: Log = print,
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Analyse ``runs`` and write the comparison; returns (table rows, files written).

    ``plots_too=False`` writes only the numbers (Markdown, CSV, JSON; the Markdown then
    references no picture)."""
    if len(runs) < 1:
        raise SpatError("compare needs at least one run directory")
    if labels is not None and len(labels) != len(runs):
        raise SpatError(f"--labels gives {len(labels)} labels for {len(runs)} runs")
    out = check_out_dir(out_dir if out_dir is not None else default_compare_dir(runs))
    # every run, --attack and --class checked before any run's prediction cache is written
    preflight_runs(runs, which=which, attack=attack, class_name=class_name,
                   recompute=recompute, steps=steps)
    analyses = []
    for i, run in enumerate(runs):
        log(f"[{i + 1}/{len(runs)}] {run}")
        analyses.append(collect(run, which=which, limit=limit, batch_size=batch_size,
                                device=device, data_dir=data_dir, features=False,
                                recompute=recompute, steps=steps,
                                label=labels[i] if labels else None,
                                log=lambda s: log(f"  {s}")))
    names = analyses[0].names
    for a in analyses[1:]:
        if a.names != names:
            raise SpatError(f"{a.run_dir} has other classes than {analyses[0].run_dir} "
                            f"({a.config.get('dataset')} vs {analyses[0].config.get('dataset')});"
                            " compare runs on the same dataset")
    if labels is None:
        _unique_labels(analyses)
    common = [k for k in analyses[0].attacks if all(k in a.confusions for a in analyses)]
    if not common:
        raise SpatError("the runs have no attack in common (see RUN/eval/predictions.npz)")
    prim = choose_attack(common, attack)
    for a in analyses:
        a.primary = prim
    if class_name is not None:
        if class_name not in names:
            raise SpatError(f"unknown class {class_name!r} (valid: {', '.join(names)})")
        cls = names.index(class_name)
    else:
        cls = most_attacked_class(analyses, prim)
    all_attacks: list[str] = []
    for a in analyses:
        all_attacks += [k for k in a.attacks if k not in all_attacks]
    rows = [_row(a, all_attacks, cls) for a in analyses]
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    pairs = [(a.label, a.confusions[prim]) for a in analyses]
    if plots_too:
        files.update(_plots(analyses, pairs, names, cls, prim, out))
    header, table = _table(rows, all_attacks, prim, names[cls])
    protocols = [protocol_of(a) for a in analyses]  # same examples, attacks and ε?
    warnings = protocol_warnings([a.label for a in analyses], protocols)
    table.append(["evaluated on", *[protocol_text(p) for p in protocols]])
    for w in warnings:
        log(f"warning: {w}")
    if warnings:
        what = ", ".join(k for k in ("examples", "attacks", "attack logits", "ε")
                         if any(f"different {k}" in w or f"test {k}" in w or
                                (k == "ε" and "ε or norm" in w) for w in warnings))
        table.append(["⚠ not comparable", *([f"{what} differ"] * len(rows))])
    for r, p in zip(rows, protocols, strict=True):
        r["protocol"] = protocol_text(p)
        r["protocol_mismatch"] = bool(warnings)
    files["comparison.csv"] = write_csv(out / "comparison.csv", list(rows[0]),
                                        [list(r.values()) for r in rows])
    files["comparison.json"] = write_json(out / "comparison.json", {
        "warnings": warnings, "protocols": protocols,
        "attack": prim, "class": names[cls], "class_names": names, "runs": rows,
        "summaries": [a.summary() for a in analyses],
        "target_distribution": {a.label: _target_dist(a, prim, cls) for a in analyses},
    })
    files["comparison.md"] = out / "comparison.md"
    atomic_write_text(out / "comparison.md", "".join(f"> **Warning:** {w}\n>\n"
                                                     for w in warnings)
                      + ("\n" if warnings else "")
                      + _markdown(analyses, header, table, prim, cls, names, plots_too))
    print_table(header, table, title=f"{analyses[0].config.get('dataset')}: "
                f"{len(analyses)} runs, flows under {prim}")
    return rows, files


def _plots(analyses: Sequence[RunAnalysis], pairs: Sequence[tuple[str, Any]],
           names: Sequence[str], cls: int, prim: str, out: Path) -> dict[str, Path]:
    """The comparison's figures (each PNG + PDF), titled with the runs, model(s) and dataset."""
    models = list(dict.fromkeys(str(a.config.get("model")) for a in analyses))
    sizes = {len(a.predictions) for a in analyses}
    who = plots.subject(" vs ".join(a.label for a in analyses), " / ".join(models),
                        analyses[0].config.get("dataset"),
                        sizes.pop() if len(sizes) == 1 else None)
    files = {
        "target_distribution.png": plots.plot_target_distribution(
            pairs, names, cls, out / "target_distribution.png", attack=prim,
            title=f"{who}\nwhere the misclassified examples of class {names[cls]} go under "
                  f"{prim}"),
        "confusion_pair.png": plots.plot_confusion_grid(
            pairs, names, out / "confusion_pair.png", attack=prim,
            title=f"{who}\nwhere the misclassified examples of each class go under {prim}"),
        "per_class_robust.png": plots.plot_per_class_compare(
            [(a.label, per_class_accuracy(a.confusions[prim])) for a in analyses], names,
            out / "per_class_robust.png", attack=prim,
            n={a.label: class_totals(a.confusions[prim]) for a in analyses},
            title=f"{who}\nper-class accuracy under {prim}"),
    }
    for name in list(files):
        files[name[:-4] + ".pdf"] = plots.output_paths(files[name])["pdf"]
    return files


def _target_dist(a: RunAnalysis, attack: str, cls: int) -> dict[str, Any]:
    row = a.confusions[attack][cls]
    errors = float(row.sum() - row[cls])
    return {
        "examples": int(row.sum()), "misclassified": int(errors),
        "share_of_errors": {a.names[j]: (float(row[j] / errors) if errors else None)
                            for j in range(len(row)) if j != cls},
    }


def _row(a: RunAnalysis, attacks: Sequence[str], cls: int) -> dict[str, Any]:
    s = a.summary()
    acc = s["accuracy"]
    prim = a.primary
    tp, ts = s.get("top_pair") or {}, s.get("top_symmetric_pair") or {}
    pc = per_class_accuracy(a.confusions[prim])
    row: dict[str, Any] = {
        "label": a.label, "method": s["method"], "dataset": s["dataset"], "model": s["model"],
        "run_dir": s["run_dir"], "examples": s["examples"], "clean_acc": acc.get("clean"),
    }
    for k in attacks:
        row[f"{k}_acc"] = acc.get(k)
    row.update({
        "autoattack_acc": s["autoattack_acc"],
        "worst_case_acc": s["worst_case_acc"],
        "worst_class": s["worst_class"],
        "worst_class_robust_acc": s["worst_class_robust_acc"],
        "worst_class_clean_acc": s["worst_class_clean_acc"],
        "top_pair": tp.get("pair"),
        "top_pair_share_of_errors": tp.get("share_of_errors"),
        "top_pair_share_of_class": tp.get("share_of_class"),
        "top_symmetric_pair": ts.get("pair"),
        "top_symmetric_share_of_all_errors": ts.get("share_of_all_errors"),
        "mean_top_share": s["mean_top_share"],
        "mean_normalized_entropy": s["mean_normalized_entropy"],
        "null_top_share": s.get("null_top_share"),
        "excess_top_share": s.get("excess_top_share"),
        "null_normalized_entropy": s.get("null_normalized_entropy"),
        "nonuniform_classes": f"{s.get('nonuniform_classes')}/{s.get('tested_classes')}",
        "focus_class": a.names[cls],
        "focus_class_robust_acc": nan_to_none(pc[cls]),
        "focus_class_top_target": _focus_top(a, cls),
    })
    return row


def _focus_top(a: RunAnalysis, cls: int) -> str | None:
    c = a.concentration_of()
    t = int(c.top_target[cls])
    return None if t < 0 else f"{a.names[t]} ({percent(c.top_share[cls])} of errors)"


def _table(rows: Sequence[dict[str, Any]], attacks: Sequence[str], prim: str, cls_name: str
           ) -> tuple[list[str], list[list[str]]]:
    """The human-readable table (strings): runs as columns, measures as rows."""
    measures: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("method", lambda r: str(r["method"])),
        ("test examples", lambda r: str(r["examples"])),
        ("clean accuracy", lambda r: percent(r["clean_acc"])),
        *[(f"{k} accuracy", (lambda r, k=k: percent(r.get(f"{k}_acc")))) for k in attacks],
    ]
    if any(r["autoattack_acc"] is not None for r in rows):
        measures.append(("AutoAttack accuracy", lambda r: percent(r["autoattack_acc"])))
    if any(r["worst_case_acc"] is not None for r in rows):
        measures.append(("worst case over attacks", lambda r: percent(r["worst_case_acc"])))
    measures += [
        (f"worst class ({prim})",
         lambda r: f"{r['worst_class']} {percent(r['worst_class_robust_acc'])}"),
        ("worst class accuracy (clean)", lambda r: percent(r["worst_class_clean_acc"])),
        ("top hard pair", lambda r: str(r["top_pair"] or MISSING)),
        ("↳ its share of the class's errors", lambda r: percent(r["top_pair_share_of_errors"])),
        ("↳ its share of the class", lambda r: percent(r["top_pair_share_of_class"])),
        ("top symmetric pair", lambda r: str(r["top_symmetric_pair"] or MISSING)),
        ("↳ its share of all errors", lambda r: percent(r["top_symmetric_share_of_all_errors"])),
        ("mean top-target share", lambda r: percent(r["mean_top_share"])),
        ("mean norm. entropy (uniform 1)",
         lambda r: number(r["mean_normalized_entropy"], 3)),
        ("↳ null for these error counts: top share",
         lambda r: percent(r["null_top_share"])),
        ("↳ null: norm. entropy", lambda r: number(r["null_normalized_entropy"], 3)),
        ("↳ excess top share (classes ≥ 5 errors)", lambda r: percent(r["excess_top_share"])),
        ("↳ non-uniform classes (G-test p<0.05)", lambda r: str(r["nonuniform_classes"])),
        (f"{cls_name}: {prim} accuracy", lambda r: percent(r["focus_class_robust_acc"])),
        (f"{cls_name}: top target", lambda r: str(r["focus_class_top_target"] or MISSING)),
    ]
    header = ["measure", *[str(r["label"]) for r in rows]]
    return header, [[m, *[f(r) for r in rows]] for m, f in measures]


def print_table(header: Sequence[str], table: Sequence[Sequence[str]], title: str) -> None:
    """The comparison table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for r in table:
        t.add_row(*r)
    Console().print(t)


def _markdown(analyses: Sequence[RunAnalysis], header: Sequence[str],
              table: Sequence[Sequence[str]], prim: str, cls: int, names: Sequence[str],
              with_images: bool = True) -> str:
    ds = analyses[0].config.get("dataset")
    lines = [
        f"# Comparison on {ds}: {', '.join(a.label for a in analyses)}",
        "",
        f"Flows and robust accuracy under **{prim}** on the test split. Runs:",
        "",
        *[f"- **{a.label}**: `{a.run_dir}` (method `{a.config.get('method')}`, "
          f"{a.config.get('head')} head, predictions `{a.prediction_source}`)" for a in analyses],
        "",
        md_table(header, table),
        "",
    ]
    if not with_images:
        return "\n".join(lines)
    lines += [
        f"## Where adversarial {names[cls]} examples go",
        "",
        f"For class {names[cls]} (by default the most-attacked class: the largest drop from "
        f"clean to {prim} accuracy, averaged over the runs; `--class` picks another), the share "
        "of its misclassified test examples predicted as each other class (the paper's "
        "Figure 1). A tall single bar = the attack pushes this class into one hard partner; "
        "flatter bars = the errors are spread.",
        "",
        "![target distribution](target_distribution.png)",
        "",
        "## Confusion of the misclassified examples",
        "",
        "Each row: where the misclassified examples of that true class go (diagonal masked, "
        "the class's accuracy written in it); one colour scale for all runs.",
        "",
        "![confusion](confusion_pair.png)",
        "",
        "## Per-class robust accuracy",
        "",
        "![per-class robust accuracy](per_class_robust.png)",
        "",
    ]
    return "\n".join(lines)


__all__ = ["check_out_dir", "compare_runs", "default_compare_dir", "most_attacked_class",
           "parse_labels", "slug"]

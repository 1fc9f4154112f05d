"""The study's outputs: ``study.md`` (tables), ``study.csv`` (one row per dataset × variant ×
metric), ``study.json`` (everything, per-seed values included) and the figures.

With ``study.pairs``, each named pair ``a − b`` adds a table after the baseline's paired table,
CSV rows ``variant = a, minus = b`` (a ``minus`` column that then also names the baseline on the
baseline-difference rows) and a ``pairs`` list in the JSON. Without it, the files are those of a
study without pairs, byte for byte. ``study.class_pairs`` adds, per dataset, one table of the
named class pairs' shares (the paper's Fig. 1 measure) and their paired differences (to the
baseline, and with ``study.pairs`` between the named pairs too); their metrics are left out of
the accuracy tables and figures."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spat.analysis.stats import MIN_ERRORS, Interval
from spat.study.aggregate import (
    EXCESS,
    MOST_SIMILAR,
    Aggregate,
    CellResult,
    PairDifference,
    class_pair_metric,
    is_class_pair_metric,
    pair_differences,
    unfinished_variants,
)
from spat.study.claims import ClaimResult, claims_markdown, evaluate_claims
from spat.study.metrics import metric_unit
from spat.study.spec import StudySpec
from spat.utils.io import atomic_write_text, json_safe
from spat.utils.reporting import MISSING, PERCENT, POINTS, RATIO, Unit, csv_text, md_table


def _num(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _values_text(values: list[float]) -> str:
    return " ".join("nan" if math.isnan(x) else f"{x:.6g}" for x in values)


def csv_rows(aggs: list[Aggregate], metrics: list[str], pairs: Sequence[PairDifference] = (),
             baseline: str | None = None) -> list[list[Any]]:
    """One row per dataset × variant × metric: the variant's summary over seeds and its paired
    difference to the baseline. With ``pairs``: a last column ``minus`` (the variant the
    difference is taken against: ``baseline``, empty on the baseline's own rows) and, after
    those rows, one row per pair × metric: variant ``a``'s summary and the difference a − b."""
    header = ["dataset", "variant", "metric", "n", "mean", "std", "ci95_low", "ci95_high",
              "diff_mean", "diff_t_low", "diff_t_high", "diff_boot_low", "diff_boot_high",
              "values"]
    rows: list[list[Any]] = [header + (["minus"] if pairs else [])]

    def row(a: Aggregate, m: str, d: Interval | None, b: Interval | None) -> list[Any]:
        s = a.summary[m]
        return [a.dataset, a.variant, m, s.n, s.mean, s.std, s.low, s.high,
                d.mean if d else None, d.low if d else None, d.high if d else None,
                b.low if b else None, b.high if b else None, _values_text(a.values[m])]

    for a in aggs:
        for m in metrics:
            d, b = a.diff_t.get(m), a.diff_boot.get(m)
            rows.append(row(a, m, d, b) + ([baseline if d else None] if pairs else []))
    by = {(a.dataset, a.variant): a for a in aggs}
    for p in pairs:
        for m in metrics:
            rows.append(row(by[p.dataset, p.variant], m, p.diff_t[m], p.diff_boot[m])
                        + [p.minus])
    return rows


def _columns(metrics: Sequence[str]) -> list[str]:
    """The metrics as column names: a unit the table's text does not state is named."""
    return [m + metric_unit(m).column for m in metrics]


def _eval_overrides(spec: StudySpec) -> str:
    """``"; spat_t1: attack_logits = unit_cosine"`` for each variant's own eval settings."""
    def text(x: Any) -> str:
        return "+".join(map(str, x)) if isinstance(x, list | tuple) else str(x)

    return "".join(f"; {v}: " + ", ".join(f"{k} = {text(x)}" for k, x in ov.items())
                   for v, ov in spec.variant_eval.items())


def _diff_cells(dt: dict[str, Interval], db: dict[str, Interval], metrics: list[str]
                ) -> list[str]:
    """``+1.2 [-0.3, +2.7] {+0.1, +2.2}`` per metric: mean [paired t] {paired bootstrap}, in
    the metric's unit (points for a percentage)."""
    cells = []
    for m in metrics:
        d, b, u = dt[m], db[m], metric_unit(m)
        cell = u.format(d.mean, sign=True)
        if not math.isnan(d.low):
            cell += f" [{u.format(d.low, sign=True)}, {u.format(d.high, sign=True)}]"
        if not math.isnan(b.low):
            cell += f" {{{u.format(b.low, sign=True)}, {u.format(b.high, sign=True)}}}"
        cells.append(cell)
    return cells


def _pair_table(named: Sequence[PairDifference], columns: list[str]) -> str:
    """One row per named pair ``a − b``: its paired differences in ``columns``."""
    return md_table(["pair", *_columns(columns)],
                     [[p.label, *_diff_cells(p.diff_t, p.diff_boot, columns)] for p in named])


def _summary_cell(s: Interval, unit: Unit) -> str:
    """``mean ± std [low, high]`` in ``unit``."""
    cell = f"{unit.format(s.mean)} ± {unit.format(s.std)}"
    if not math.isnan(s.low):
        cell += f" [{unit.format(s.low)}, {unit.format(s.high)}]"
    return cell


def _class_pair_lines(spec: StudySpec, ds: str, sub: list[Aggregate],
                      pairs: Sequence[PairDifference] = ()) -> list[str]:
    """The named class pairs of ``ds``: each variant's share per pair (mean ± std [t] over
    seeds, and pooled over seeds as count/errors), then the paired differences to the
    baseline, then (with ``study.pairs``) those of the named variant pairs."""
    keys = [class_pair_metric(a, b) for a, b in spec.class_pairs.get(ds, ())]
    sub = [a for a in sub if all(k in a.summary for k in keys)]
    if not keys or not sub:
        return []
    att = next((a.pooled["attack"] for a in sub if a.pooled), "the primary attack")
    lines = [f"Named class pairs (`study.class_pairs`), the measure of the paper's Fig. 1: of "
             f"class a's test images that {att} misclassifies, the share predicted as b, in %: "
             "mean ± sample std over seeds [95 % Student-t interval] (pooled over seeds: "
             "count/errors).", ""]
    rows = []
    for a in sub:
        cp = (a.pooled or {}).get("class_pairs", {})
        rows.append([a.variant, *[_summary_cell(a.summary[k], metric_unit(k))
                                  + (f" ({cp[k]['count']}/{cp[k]['errors']})" if k in cp
                                     else "") for k in keys]])
    lines += [md_table(["variant", *_columns(keys)], rows), ""]
    others = [a for a in sub if a.variant != spec.baseline]
    if others:
        lines += [f"Paired difference of these shares to **{spec.baseline}**, in points: mean "
                  "[95 % paired t interval] {95 % paired bootstrap interval} (negative = "
                  f"fewer of a's errors in b than {spec.baseline}).", ""]
        lines += [md_table(["variant", *_columns(keys)],
                           [[a.variant, *_diff_cells(a.diff_t, a.diff_boot, keys)]
                             for a in others]), ""]
    named = [p for p in pairs if p.dataset == ds and all(k in p.diff_t for k in keys)]
    if named:
        lines += ["Paired differences of these shares between named pairs (`study.pairs`), "
                  "first − second, in points: mean [95 % paired t interval] {95 % paired "
                  "bootstrap interval}.", ""]
        lines += [_pair_table(named, keys), ""]
    return lines


def _most_similar_lines(spec: StudySpec, ds: str, sub: list[Aggregate],
                        results: list[CellResult]) -> list[str]:
    """Claim 2 as the paper states it (``study.most_similar``): each variant's most-similar
    share, then its paired difference to the baseline."""
    sub = [a for a in sub if MOST_SIMILAR in a.summary]
    k = next((len(r.class_names) for r in results if r.cell.dataset == ds and r.class_names),
             None)
    if ds not in spec.most_similar or not sub or not k:
        return []
    att = next((a.pooled["attack"] for a in sub if a.pooled), "the primary attack")
    lines = [f"Most-similar share (`study.most_similar`, claim 2 as the paper states it): of "
             f"class a's test images that {att} misclassifies, the share predicted as a's most "
             "similar class (fixed before the comparison, from a model it does not contain), "
             f"averaged over the classes with ≥ {MIN_ERRORS} errors, in %; under uniform "
             f"wrong targets {100 / max(k - 1, 1):.1f} %. Mean ± sample std over "
             "seeds [95 % Student-t interval]; paired difference to "
             f"**{spec.baseline}** in points [95 % paired t] {{95 % paired bootstrap}}.", ""]
    rows = [[a.variant, _summary_cell(a.summary[MOST_SIMILAR], metric_unit(MOST_SIMILAR)),
             _diff_cells(a.diff_t, a.diff_boot, [MOST_SIMILAR])[0] if a.diff_t else MISSING]
            for a in sub]
    return lines + [md_table(["variant", *_columns([MOST_SIMILAR]), f"− {spec.baseline}"],
                             rows), ""]


def render_markdown(spec: StudySpec, aggs: list[Aggregate], metrics: list[str],
                    results: list[CellResult], figures: list[str],
                    pairs: Sequence[PairDifference] = (),
                    claim_results: Sequence[ClaimResult] = ()) -> str:
    metrics = [m for m in metrics if not is_class_pair_metric(m) and m != MOST_SIMILAR]
    done = sum(1 for r in results if r.done)
    lines = [f"# Study {spec.name}", ""]
    if spec.description:
        lines += [spec.description, ""]
    lines += [f"From `{spec.path}`: datasets {', '.join(spec.datasets)}; variants "
              f"{', '.join(spec.variants)} (baseline **{spec.baseline}**); seeds "
              f"{', '.join(map(str, spec.seeds))}. {done} of {len(results)} cells finished. "
              f"Evaluation: {', '.join(spec.eval.attacks)} on "
              f"{spec.eval.n_examples or 'all'} test examples, checkpoint `{spec.eval.which}`"
              + _eval_overrides(spec) + ".",
              "", "Accuracies in %, mean ± sample std over seeds, [95 % Student-t interval]. "
              f"'{EXCESS}': mean over classes (with ≥ 5 errors) of the top wrong class's share "
              "of a class's errors minus its expectation under uniform wrong targets for the "
              "same error count, in points (0 = no more concentrated than chance).", ""]
    for ds in spec.datasets:
        sub = [a for a in aggs if a.dataset == ds]
        lines += [f"## {ds}", ""]
        rows = []
        for a in sub:
            flagged = f"; {a.cells_flagged} flagged" if a.cells_flagged else ""
            rows.append([f"{a.variant} ({a.cells_done}/{a.cells_total}{flagged})",
                         *[_summary_cell(a.summary[m], metric_unit(m)) for m in metrics]])
        lines += [md_table(["variant (cells)", *_columns(metrics)], rows), ""]
        if any(a.cells_flagged for a in sub):
            lines += ["'flagged': cells the training guard flags from their `metrics.jsonl` "
                      "(a collapse to a constant output, a divergence, a sudden drop of the "
                      "training adversary's accuracy, or a plateau at chance; "
                      "`spat.train.guard`); their numbers are in the means. Which, and when: "
                      "the Cells table.", ""]
        others = [a for a in sub if a.variant != spec.baseline]
        if others:
            lines += [f"Paired difference to **{spec.baseline}** on the same seeds, in points: "
                      "mean [95 % paired t interval] {95 % paired bootstrap interval, 10,000 "
                      "resamples, fixed seed}.", ""]
            rows = [[a.variant, *_diff_cells(a.diff_t, a.diff_boot, metrics)] for a in others]
            lines += [md_table(["variant", *_columns(metrics)], rows), ""]
        named = [p for p in pairs if p.dataset == ds]
        if named:
            lines += ["Paired differences between named pairs (`study.pairs`), first − second "
                      "on the seeds both have finished, in points: mean [95 % paired t "
                      "interval] {95 % paired bootstrap interval, 10,000 resamples, fixed "
                      "seed}.", ""]
            lines += [_pair_table(named, metrics), ""]
        pooled = [a for a in sub if a.pooled]
        if pooled:
            att = pooled[0].pooled["attack"]  # type: ignore[index]
            lines += [f"Hard-pair concentration under {att}, confusion pooled over seeds; "
                      "each number beside its null (uniform wrong targets, same error counts); "
                      "'non-uniform' counts classes whose G-test of uniformity has p < 0.05 "
                      "among those with ≥ 5 pooled errors.", ""]
            rows = []
            for a in pooled:
                p = a.pooled
                assert p is not None
                tp = p["top_pair"]
                rows.append([a.variant, p["errors"], f"{PERCENT.format(p['mean_top_share'])} "
                             f"(null {PERCENT.format(p['mean_null_top_share'])})",
                             POINTS.format(p["mean_excess_top_share"], sign=True),
                             f"{RATIO.format(p['mean_normalized_entropy'])} "
                             f"(null {RATIO.format(p['mean_null_normalized_entropy'])})",
                             f"{p['significant_classes']}/{p['tested_classes']}",
                             f"{tp['pair']} ({PERCENT.format(tp['share_of_errors'])} of its "
                             "errors)" if tp else MISSING])
            lines += [md_table(["variant", "errors", "mean top share", "excess",
                                 "mean norm. entropy", "non-uniform classes", "top pair"],
                               rows), ""]
        lines += _class_pair_lines(spec, ds, sub, pairs)
        lines += _most_similar_lines(spec, ds, sub, results)
        for f in figures:
            if f == f"study_{ds}.png":
                lines += [f"![{ds}]({f}) (also `study_{ds}.pdf`)", ""]
    lines += claims_markdown(claim_results, len(spec.seeds))
    lines += ["## Cells", "", md_table(
        ["cell", "run directory", "status"],
        [[r.cell.key, f"`{r.cell.run_dir}`", _status(r)] for r in results]), ""]
    return "\n".join(lines)


def _status(r: CellResult) -> str:
    """A cell's status: done / missing, and what the training guard flagged."""
    if not r.done:
        return "missing"
    if not r.guard:
        return "done"
    return "done; flagged: " + ", ".join(f"{g['kind']} at epoch {g['epoch']}" for g in r.guard)


def write_outputs(spec: StudySpec, aggs: list[Aggregate], metrics: list[str],
                  results: list[CellResult], *, figures: bool = True,
                  pairs: list[PairDifference] | None = None) -> dict[str, Path]:
    """Write study.md, study.csv, study.json (and figures) into the study folder. ``pairs``:
    the named pairs' differences (default: :func:`pair_differences` of ``spec.pairs``)."""
    if pairs is None:
        pairs = pair_differences(spec, aggs, metrics)
    out = spec.study_dir
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    if figures and any(r.done for r in results):
        from spat.study.figures import plot_all

        files.update(plot_all(aggs, metrics, spec.baseline, out, list(pairs)))
    header, *rows = csv_rows(aggs, metrics, pairs, spec.baseline)
    atomic_write_text(out / "study.csv", csv_text(header, rows))
    files["study.csv"] = out / "study.csv"
    doc = {
        "schema": "spat.study/1", "study": spec.name, "file": spec.path,
        "datasets": list(spec.datasets), "variants": spec.variants, "baseline": spec.baseline,
        "seeds": list(spec.seeds), "train": spec.train,
        "eval": {**spec.eval.__dict__, "attacks": list(spec.eval.attacks)},
        "variant_eval": {v: {k: list(x) if isinstance(x, tuple) else x for k, x in ov.items()}
                         for v, ov in spec.variant_eval.items()},
        "metrics": metrics,
        "cells": [{"key": r.cell.key, "dataset": r.cell.dataset, "variant": r.cell.variant,
                   "seed": r.cell.seed, "run_dir": r.cell.run_dir, "done": r.done,
                   "n_examples": r.n_examples,
                   "metrics": {k: _num(v) for k, v in r.metrics.items()},
                   **({"guard": r.guard} if r.guard else {})} for r in results],
        "aggregates": [{
            "dataset": a.dataset, "variant": a.variant, "cells_done": a.cells_done,
            "cells_total": a.cells_total,
            **({"cells_flagged": a.cells_flagged} if a.cells_flagged else {}),
            "metrics": {m: {"values": [_num(x) for x in a.values[m]],
                            "summary": a.summary[m].to_dict(),
                            "paired_t": a.diff_t[m].to_dict() if m in a.diff_t else None,
                            "paired_bootstrap": (a.diff_boot[m].to_dict() if m in a.diff_boot
                                                 else None)} for m in metrics},
            "hard_pairs_pooled": a.pooled,
        } for a in aggs],
    }
    if spec.class_pairs:
        doc["class_pairs"] = {ds: [list(p) for p in v] for ds, v in spec.class_pairs.items()}
    if spec.pairs:
        doc["pairs"] = [{
            "dataset": p.dataset, "variant": p.variant, "minus": p.minus,
            "metrics": {m: {"differences": [_num(x) for x in p.differences[m]],
                            "paired_t": p.diff_t[m].to_dict(),
                            "paired_bootstrap": p.diff_boot[m].to_dict()} for m in metrics},
        } for p in pairs]
    claim_results = evaluate_claims(spec.claims, {(a.dataset, a.variant): a.values
                                                  for a in aggs}, unfinished_variants(aggs))
    if claim_results:
        doc["claims"] = [r.to_dict() for r in claim_results]
    atomic_write_text(out / "study.json", json.dumps(json_safe(doc), indent=2) + "\n")
    files["study.json"] = out / "study.json"
    md = render_markdown(spec, aggs, metrics, results, sorted(files), pairs, claim_results)
    atomic_write_text(out / "study.md", md)
    files["study.md"] = out / "study.md"
    return files

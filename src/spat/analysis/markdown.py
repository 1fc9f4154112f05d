"""The Markdown report of one run's analysis (``report.md``) and its formatting helpers.

The report shows the headline numbers, the confusion under each attack, the hard class pairs
(directed true→predicted and symmetric), the per-class target concentration beside its null, the
rank correlation of class similarity with the flow (SPAT's premise, arXiv 2210.15068) and the
same statistics over training; images are referenced relative to the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spat.analysis.record import RunAnalysis
from spat.analysis.stats import MantelResult, directed_flows, symmetric_flows
from spat.analysis.writers import slug
from spat.utils.reporting import MISSING, md_table, number, percent


def render_report(ra: RunAnalysis, files: dict[str, Path], per_class: Sequence[dict[str, Any]]
                  ) -> str:
    """The Markdown report of one run (images referenced relative to the report)."""
    s = ra.summary()
    cfg = ra.config
    prim = ra.primary
    conc = ra.concentration_of()
    k = ra.num_classes
    lines = [
        f"# Hard-class-pair analysis: {ra.label} on {cfg.get('dataset')}",
        "",
        f"Run `{ra.run_dir}` — method `{cfg.get('method')}`, model `{cfg.get('model')}` "
        f"({cfg.get('head')} head), ε = {cfg.get('eps'):.4g} ({cfg.get('norm')}); checkpoint "
        f"`{ra.checkpoint}`. Predictions: `{ra.prediction_source}` ({len(ra.predictions)} test "
        f"examples). Flows below are under **{prim}**.",
        "",
        "## Headline numbers",
        "",
    ]
    rows = [[("clean" if key == "clean" else key), percent(v)] for key, v in s["accuracy"].items()]
    if s.get("worst_case_acc") is not None:
        rows.append(["worst case over the attacks", percent(s["worst_case_acc"])])
    if s.get("autoattack_acc") is not None:
        rows.append(["AutoAttack (eval report)", percent(s["autoattack_acc"])])
    rows.append([f"worst class under {prim}", f"{s['worst_class']}: "
                 f"{percent(s['worst_class_robust_acc'])}"])
    tp, ts = s.get("top_pair"), s.get("top_symmetric_pair")
    if tp:
        rows.append(["hardest pair (true→predicted)",
                     f"{tp['pair']}: {percent(tp['share_of_class'])} of all {tp['source_name']} "
                     f"examples, {percent(tp['share_of_errors'])} of its misclassified ones"])
    if ts:
        rows.append(["hardest symmetric pair", f"{ts['pair']}: "
                     f"{percent(ts['share_of_all_errors'])} of all misclassified examples"])
    rows.append(["mean top-target share (over classes)",
                 f"{percent(s['mean_top_share'])} (null for these error counts: "
                 f"{percent(s['null_top_share'])}; excess over it, classes with ≥ 5 errors: "
                 f"{percent(s['excess_top_share'])})"])
    rows.append(["mean normalised entropy of wrong classes",
                 f"{_f3(s['mean_normalized_entropy'])} (null for these error counts: "
                 f"{_f3(s['null_normalized_entropy'])}; uniform 1, one target 0)"])
    rows.append(["classes whose errors are not uniform (G-test p < 0.05)",
                 f"{s['nonuniform_classes']} of {s['tested_classes']} with ≥ 5 errors "
                 f"({s['few_error_classes']} classes with fewer are marked *)"])
    lines += [md_table(["measure", "value"], rows), ""]

    def img(name: str, alt: str) -> list[str]:
        return [f"![{alt}]({name})", ""] if name in files else []

    lines += ["## Adversarial confusion", "",
              "Left: each row is the distribution of the predicted class for the test examples "
              "of the true class (diagonal = accuracy). Right: only the misclassified examples "
              "of each class, diagonal masked (the number of correct predictions in grey) — a "
              "dark cell means that most of that row's errors land on that column. The cells "
              "hold counts and `n=` at the right end of a row is its total, so a dark cell in "
              "a row with n=1 is one example. Every figure is also written as a PDF next to "
              "its PNG.", ""]
    for key in ra.attacks:
        lines += img(f"confusion_{slug(key)}.png", f"confusion under {key}")
    lines += ["## Hard class pairs", ""]
    lines += img("hard_pairs.png", "hard class pairs")
    top_rows = [[i, f.label(ra.names), f.count, percent(f.share_of_class),
                 percent(f.share_of_errors)]
                for i, f in enumerate(directed_flows(ra.confusions[prim])[:10], 1)]
    lines += [md_table(["rank", "true→predicted", "count", "share of the class",
                         "share of its errors"], top_rows), ""]
    sym_rows = [[i, p.label(ra.names), p.count, f"{p.a_to_b} / {p.b_to_a}",
                 percent(p.share_of_class), percent(p.share_of_all_errors)]
                for i, p in enumerate(symmetric_flows(ra.confusions[prim])[:10], 1)]
    lines += ["Symmetric pairs (both directions combined):", "",
              md_table(["rank", "pair", "count", "a→b / b→a", "share of both classes",
                         "share of all errors"], sym_rows), ""]
    lines += ["## Per class", "",
              f"Target concentration under {prim}: the top wrong class's share of the class's "
              f"misclassified examples (uniform over the {k - 1} wrong classes would be "
              f"{percent(conc.uniform_top_share)}) and the normalised entropy of the wrong-class "
              "distribution (1 = uniform, 0 = a single target; – = no errors), each beside "
              "its null: the expectation if the same number of errors went to uniformly random "
              "wrong classes (one error always gives a 100 % top share). p: G-test of "
              "uniformity (Monte-Carlo exact). * = fewer than 5 errors: concentration there "
              "is mostly chance.", ""]
    lines += img("per_class_accuracy.png", "per-class accuracy")
    acc_keys = list(ra.confusions)
    pc_rows = [[r["name"], r["examples"], *[percent(r[f"{a}_acc"]) for a in acc_keys],
                r["top_target"] or MISSING, percent(r["top_target_share_of_errors"])
                + ("*" if r["few_errors"] else ""), percent(r["null_top_share"]),
                _f3(r["normalized_entropy"]), _f3(r["null_normalized_entropy"]),
                MISSING if r["uniformity_p"] is None else f"{r['uniformity_p']:.2g}"]
               for r in per_class]
    lines += [md_table(["class", "n", *[f"{a} acc" for a in acc_keys], f"top target ({prim})",
                         "its share of errors", "null", "norm. entropy", "null", "p"],
                        pc_rows), ""]
    lines += ["## Does class similarity predict the flow?", "",
              "Spearman rank correlation between the cosine similarity of classes i and j and "
              f"the share of class i predicted as j under {prim} (directed: all K(K−1) ordered "
              "pairs; symmetric: K(K−1)/2 pairs, both directions combined).", ""]
    lines += img("similarity_flow.png", "similarity vs flow")
    corr_rows = [[name, _f3(c.rho), f"{c.p_value:.2g}" if not math.isnan(c.p_value) else MISSING,
                  _p(ra.mantel.get(name)), c.n_pairs] for name, c in ra.correlations.items()]
    lines += ["The Spearman p-value treats the pairs as independent (they are not: pairs share "
              "classes, and many flows are tied zeros); the Mantel p-value compares ρ with "
              "relabelled classes (999 permutations of one matrix's rows and columns together) "
              "and is the one to trust.", "",
              md_table(["similarity / flow", "ρ", "Spearman p", "Mantel p", "pairs"],
                        corr_rows), ""]
    if ra.training:
        lines += ["## Over training", "",
                  "From `metrics.jsonl`: the validation split under the per-epoch validation "
                  "attack (no extra computation).", ""]
        lines += img("training.png", "training curves")
        tr_rows = [[r["epoch"], _f3(r.get("train_loss")), percent(r.get("val_clean_acc")),
                    percent(r.get("val_robust_acc")), r.get("top_pair") or MISSING,
                    percent(r.get("top_pair_share_of_errors")), percent(r.get("mean_top_share")),
                    _f3(r.get("mean_normalized_entropy"))] for r in ra.training]
        lines += [md_table(["epoch", "train loss", "val clean", "val robust", "top pair",
                             "its share of errors", "mean top share", "mean norm. entropy"],
                            tr_rows), ""]
    lines += ["## Files", "", *[f"- `{n}`" for n in sorted(files)], ""]
    return "\n".join(lines)


def _p(m: MantelResult | None) -> str:
    return MISSING if m is None or math.isnan(m.p_value) else f"{m.p_value:.2g}"


def _f3(v: float | None) -> str:
    return number(v, 3)

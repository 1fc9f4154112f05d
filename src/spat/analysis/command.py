"""``spat analyze RUN`` and ``spat compare RUN_A RUN_B ...``: argparse front-ends."""

from __future__ import annotations

import argparse
from pathlib import Path

from spat.checkpoint import WHICH_HELP, check_which
from spat.errors import SpatError
from spat.utils.argtypes import positive_int
from spat.utils.log import info as log_info


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--which", default="best", help=WHICH_HELP)
    p.add_argument("--attack", default=None, help="attack whose flows are analysed (default: "
                   "PGD-20, else the first PGD in the predictions)")
    p.add_argument("--max-examples", dest="max_examples", type=positive_int, default=None,
                   help="when predictions are computed here: use only N test examples, the "
                   "same ones as spat eval --n-examples N --seed 0 (CPU time)")
    p.add_argument("--steps", type=positive_int, default=20,
                   help="PGD steps when predictions are computed here (default 20: PGD-20)")
    p.add_argument("--batch-size", dest="batch_size", type=positive_int, default=512,
                   help="batch size of the attack and of the feature pass")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, "
                   "cuda:N, mps")
    p.add_argument("--data-dir", dest="data_dir", default=None,
                   help="dataset folder, if it moved since training")
    p.add_argument("--recompute", action="store_true", help="ignore RUN/eval/predictions.npz "
                   "and any cached predictions; attack again")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``analyze`` and ``compare`` to the ``spat`` command line."""
    p = sub.add_parser(
        "analyze", help="hard-class-pair analysis of one run (report, CSV/JSON, plots)",
        description="Where do a run's adversarial examples land? Confusion under attack, hard "
        "class pairs, per-class target concentration, class similarity vs flow, and the same "
        "over training (from metrics.jsonl). Uses RUN/eval/predictions.npz when present, "
        "otherwise computes clean + PGD-20 predictions on the test split (cached).",
    )
    p.add_argument("run", metavar="RUN", help="run directory (from spat train)")
    p.add_argument("--out", default=None, help="output folder (default RUN/analysis)")
    p.add_argument("--no-features", dest="features", action="store_false",
                   help="skip the class-mean feature similarity (one forward pass of the test "
                   "split)")
    _common(p)
    p.set_defaults(func=cmd_analyze)

    c = sub.add_parser(
        "compare", help="compare runs side by side (table, Figure-1-style plots)",
        description="Side-by-side table (clean, attacks, AutoAttack if evaluated, worst class, "
        "top hard pair, concentration) and paired plots: where the adversarial examples of the "
        "most-attacked class go in each run, and the runs' confusion matrices. Predictions "
        "are cached in each RUN/analysis/.",
    )
    c.add_argument("runs", metavar="RUN", nargs="+", help="run directories (same dataset)")
    c.add_argument("--labels", default=None, help="comma-separated labels, one per run "
                   "(default: the method, e.g. PGD-AT,SPAT)")
    c.add_argument("--out", default=None, help="output folder (default: next to the first "
                   "run, <parent of RUN_A>/compare-<RUN_A>_vs_<RUN_B>)")
    c.add_argument("--class", dest="class_name", default=None,
                   help="class of the target-distribution plot (default: the most-attacked "
                   "class, the largest mean drop from clean to robust accuracy)")
    _common(c)
    c.set_defaults(func=cmd_compare)


def cmd_analyze(args: argparse.Namespace) -> int:
    """Run ``spat analyze``."""
    from spat.analysis.analyze import collect, write_analysis
    from spat.analysis.compare import check_out_dir

    check_which(args.which)
    run = Path(args.run)
    if not run.is_dir():
        raise SpatError(f"run directory {run} not found")
    out = check_out_dir(args.out) if args.out else run / "analysis"
    ra = collect(run, out, which=args.which, attack=args.attack, limit=args.max_examples,
                 batch_size=args.batch_size, device=args.device, data_dir=args.data_dir,
                 features=args.features, recompute=args.recompute, steps=args.steps,
                 log=log_info)
    files = write_analysis(ra, out)
    s = ra.summary()
    print()
    print(f"{ra.label} on {s['dataset']}: {s['examples']} test examples, flows under "
          f"{ra.primary}")
    width = max(len(k) for k in s["accuracy"])
    for k, v in s["accuracy"].items():
        print(f"  {k:<{width}} accuracy {100 * v:6.2f}%" if v is not None else f"  {k} –")
    tp, ts = s.get("top_pair"), s.get("top_symmetric_pair")
    if tp:
        print(f"  hardest pair   {tp['pair']}: {100 * tp['share_of_class']:.1f}% of the class, "
              f"{100 * tp['share_of_errors']:.1f}% of its errors")
    if ts:
        print(f"  hardest pair ↔ {ts['pair']}: {100 * ts['share_of_all_errors']:.1f}% of all "
              "errors")
    if s["mean_top_share"] is not None:
        null_e = s.get("null_normalized_entropy")
        print(f"  mean top-target share {100 * s['mean_top_share']:.1f}% (null for these error "
              f"counts {100 * (s.get('null_top_share') or 0):.1f}%), mean normalised entropy "
              f"{s['mean_normalized_entropy']:.3f} (null "
              + ("–" if null_e is None else f"{null_e:.3f}") + f"); "
              f"{s.get('nonuniform_classes')} of {s.get('tested_classes')} classes with ≥ 5 "
              f"errors not uniform (G-test p < 0.05)")
    for name, c in ra.correlations.items():
        m = ra.mantel.get(name)
        print(f"  similarity vs flow, {name}: {c.text()}"
              + (f", Mantel permutation p = {m.p_value:.2g}" if m is not None
                 and m.p_value == m.p_value else ""))
    print(f"wrote {len(files)} files to {out}: report.md, analysis.json, CSVs, "
          f"{sum(1 for f in files if f.endswith('.png'))} figures (PNG + PDF)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Run ``spat compare``."""
    from spat.analysis.compare import (
        check_out_dir,
        compare_runs,
        default_compare_dir,
        parse_labels,
    )

    check_which(args.which)
    for r in args.runs:
        if not Path(r).is_dir():
            raise SpatError(f"run directory {r} not found")
    labels = parse_labels(args.labels, len(args.runs))
    out = check_out_dir(args.out if args.out else default_compare_dir(args.runs))
    _, files = compare_runs(args.runs, labels=labels, out_dir=out, attack=args.attack,
                            class_name=args.class_name, which=args.which,
                            limit=args.max_examples, batch_size=args.batch_size,
                            device=args.device, data_dir=args.data_dir,
                            recompute=args.recompute, steps=args.steps, log=log_info)
    figures = sum(1 for f in files if f.endswith(".png"))
    print(f"wrote {', '.join(f for f in files if f.startswith('comparison'))}"
          + (f" and {figures} figures (PNG + PDF)" if figures else "") + f" to {out}")
    return 0

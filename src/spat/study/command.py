"""``spat study FILE``: the command-line front-end of :mod:`spat.study`."""

from __future__ import annotations

import argparse

from spat.utils.argtypes import positive_int


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``spat study`` to the ``spat`` command line."""
    p = sub.add_parser(
        "study", help="run a grid of runs (datasets × variants × seeds) from a TOML file and "
        "compare the variants over seeds with intervals",
        description="Run every missing cell of a study file (train, eval, analyze; finished "
        "cells are skipped, interrupted ones resumed), then aggregate over seeds: mean ± std, "
        "95% t intervals, paired differences against the baseline variant (paired t and "
        "bootstrap intervals), hard-pair concentration beside its null. Writes study.md, "
        "study.csv, study.json and figures (PDF, PNG) into OUT_DIR/NAME/. See README "
        "'Running a study'.",
    )
    p.add_argument("file", metavar="FILE", help="study file (TOML)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="list the cells, their state and an estimate of their cost; run nothing")
    p.add_argument("--engine", choices=("local", "submitit"), default=None,
                   help="local worker pool, or submitit jobs (SLURM; cluster='local' in the "
                   "file runs them as local processes); default: the file's [engine] kind, "
                   "else local")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="worker processes (default: one per core on CPU, one per GPU)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads per worker (default: cores / workers)")
    p.add_argument("--aggregate-only", dest="aggregate_only", action="store_true",
                   help="run no cell; aggregate the finished ones")
    p.add_argument("--no-figures", dest="figures", action="store_false",
                   help="skip the PDF/PNG figures")
    p.add_argument("--no-progress", dest="no_progress", action="store_true",
                   help="plain progress lines even on a terminal")
    p.set_defaults(func=cmd_study)


def cmd_study(args: argparse.Namespace) -> int:
    """Run ``spat study``; exit 1 when a cell failed (its error is printed). Cells another
    ``spat study`` of the same file runs are waited for, so both end with the whole table."""
    from spat.study.runner import dry_run, engine_plan, run_study
    from spat.study.spec import load_study, plan_cells

    spec = load_study(args.file)
    if args.dry_run:
        kind = args.engine or spec.engine.kind
        plan = engine_plan(spec, plan_cells(spec), kind, args.workers, args.threads)
        slurm = kind == "submitit" and spec.engine.cluster == "slurm"
        print(f"engine {kind}" + (f" ({spec.engine.cluster})" if kind == "submitit" else "")
              + ": " + (f"{plan.workers} SLURM jobs × {plan.threads} threads" if slurm
                        else plan.text()))
        dry_run(spec, plan.workers, plan.threads)
        return 0
    out = run_study(spec, engine=args.engine, workers=args.workers, threads=args.threads,
                    aggregate_only=args.aggregate_only, figures=args.figures,
                    progress=False if args.no_progress else None)
    for r in out["failed"]:
        print(f"FAILED {r['key']}: {r['error']} (log: {spec.study_dir / 'logs'})")
    for r in out["busy"]:
        holder = r.get("holder") or {}
        print(f"{r['key']}: run by another process (pid {holder.get('pid', '?')}); this study "
              f"waited for it")
    print(f"wrote {', '.join(sorted(out['files']))} to {spec.study_dir}")
    md = spec.study_dir / "study.md"
    print(f"next: read {md}; every cell is a run directory (spat eval / analyze / compare)")
    return 1 if out["failed"] else 0

"""``spat export``: RobustBench model_info JSON and a portable model file, on the command line."""

from __future__ import annotations

import argparse

from spat.utils.argtypes import fraction
from spat.utils.dataclass_flags import DefaultsHelpFormatter


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``spat export`` to the ``spat`` command line."""
    from spat.export.robustbench import FORMATS

    p = sub.add_parser(
        "export", help="RobustBench model_info JSON and a portable model file",
        description="Export a run: --format robustbench writes model_info.json exactly as "
        "RobustBench's model_info files (percent strings, eps as '8/255') from the run's "
        "evaluation report, which must hold standard AutoAttack on the whole test set, and "
        "the evaluated checkpoint as model.safetensors with the metadata spat.load_model needs "
        "(no run directory). --format portable writes only the model file.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="a run directory (from spat train)")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="robustbench",
                   help="what to write")
    p.add_argument("--out", default=None, help="output folder (default: RUN/export)")
    p.add_argument("--report", default=None,
                   help="the evaluation report to export (default: RUN/eval/report.json)")
    p.add_argument("--which", default="best",
                   help="checkpoint for --format portable (robustbench: the evaluated one)")
    g = p.add_argument_group("RobustBench's bibliographic fields")
    g.add_argument("--name", default=None, help="paper title (default: the run's name)")
    g.add_argument("--authors", default="", help="comma-separated authors")
    g.add_argument("--venue", default="", help="e.g. 'AAAI 2023'")
    g.add_argument("--link", default="", help="paper URL, e.g. https://arxiv.org/abs/2210.15068")
    g.add_argument("--additional-data", dest="additional_data", action="store_true",
                   help="trained with data beyond the dataset's training set")
    g.add_argument("--reported", type=fraction, default=None,
                   help="robust accuracy the paper reports, a fraction such as 0.5643 "
                   "(default: this AutoAttack accuracy)")
    g.add_argument("--footnote", default=None, help="RobustBench's optional footnote")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Write the files, say where they are."""
    from spat.export.robustbench import export_run

    r = export_run(
        args.run, fmt=args.fmt, out=args.out, report=args.report, which=args.which,
        name=args.name, authors=args.authors, venue=args.venue, link=args.link,
        additional_data=args.additional_data, reported=args.reported, footnote=args.footnote,
    )
    if r.model_info is not None:
        mi = r.model_info
        print(f"{mi['dataset']} · {mi['architecture']} · eps {mi['eps']}: clean "
              f"{mi['clean_acc']}%, AutoAttack {mi['autoattack_acc']}%")
        print(f"wrote {r.model_info_file}")
    print(f"wrote {r.model_file}  (spat.load_model(path) rebuilds it)")
    return 0

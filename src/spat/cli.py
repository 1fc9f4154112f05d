"""``spat`` command line: thin argparse front-ends, each subcommand one library call.

``main(argv) -> int``; user errors print one line ``spat: error: ...`` and return 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from spat.errors import SpatError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"spat: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _names() -> dict[str, list[str]]:
    from spat.data import dataset_names
    from spat.methods import method_names
    from spat.models import HEADS, model_names

    return {"dataset": dataset_names(), "model": model_names(), "method": method_names(),
            "head": list(HEADS)}


def _fraction(text: str) -> float:
    from spat.train.config import parse_fraction

    try:
        return parse_fraction(text)
    except SpatError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _int_or_fraction(text: str) -> float:
    v = float(text)
    return int(v) if v.is_integer() and v >= 1 else v


def _amp(text: str) -> bool | None:
    table = {"on": True, "off": False, "auto": None}
    if text not in table:
        raise argparse.ArgumentTypeError(f"invalid --amp {text!r} (valid: on, off, auto)")
    return table[text]


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    names = _names()
    p = sub.add_parser(
        "train", help="train a model (SPAT, PGD-AT, TRADES, MART, standard)",
        description="Train a classifier adversarially. With no arguments: PGD-AT on the offline "
        "digits data with small_cnn, in about a minute on a CPU. Values left out come from the "
        "dataset's defaults (see README), then a --config TOML file, then these flags.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, argument_default=argparse.SUPPRESS,
    )
    S = argparse.SUPPRESS
    p.add_argument("--config", help="TOML file of training settings (flags override it)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help=f"one of: {', '.join(names['dataset'])} (default digits)")
    g.add_argument("--data-dir", dest="data_dir",
                   help="folder holding the dataset in torchvision's layout (npz: the .npz file)")
    g.add_argument("--download", action="store_true", help="download missing data "
                   "(checksums verified)")
    g.add_argument("--val-size", dest="val_size", type=_int_or_fraction,
                   help="validation split carved from the training set: a count or a fraction "
                   "(default 0.1)")
    g.add_argument("--train-subset", dest="train_subset", type=int,
                   help="train on this many training examples (fixed by the seed)")
    g = p.add_argument_group("model")
    g.add_argument("--model", help=f"one of: {', '.join(names['model'])}, or wrn<depth>_<width> "
                   "(default: the dataset's)")
    g.add_argument("--head", help="classifier head: linear or cosine (SPAT's; default cosine for "
                   "spat, linear otherwise)")
    g.add_argument("--cosine-scale", dest="cosine_scale", type=float,
                   help="SPAT's s, the cosine head's scale (default 8)")
    g = p.add_argument_group("method and training attack")
    g.add_argument("--method", help=f"one of: {', '.join(names['method'])} (default pgd_at)")
    g.add_argument("--eps", type=_fraction, help="ε of the L∞/L2 ball in [0,1] units; accepts "
                   "8/255 (default: the dataset's)")
    g.add_argument("--step-size", dest="step_size", type=_fraction,
                   help="attack step size η (accepts 2/255)")
    g.add_argument("--steps", type=int, help="attack steps K of the training adversary")
    g.add_argument("--norm", help="threat model: linf or l2 (default linf)")
    g.add_argument("--init", help="attack random start: uniform, normal (x+0.001·N(0,I)) or none "
                   "(default: the method's)")
    g.add_argument("--beta", type=float, help="TRADES/SPAT β, MART λ (default 6)")
    g.add_argument("--self-paced-ce", dest="self_paced_ce", action=argparse.BooleanOptionalAction,
                   help="SPAT part: self-paced cross-entropy (needs --head cosine); on for spat")
    g.add_argument("--hcp-ecp", dest="hcp_ecp", action=argparse.BooleanOptionalAction,
                   help="SPAT part: per-class weighted consistency Σ k_j(k_j+n) instead of KL "
                   "(trades, mart, spat); on for spat")
    g.add_argument("--m", type=float, help="SPAT's self-paced margin m (default 0.2)")
    g.add_argument("--n", type=float, help="SPAT's HCP-ECP offset n (default 0.2)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="number of epochs (default: the dataset's)")
    g.add_argument("--batch-size", dest="batch_size", type=int, help="global batch size")
    g.add_argument("--lr", type=float, help="SGD learning rate")
    g.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", dest="weight_decay", type=float, help="weight decay")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum")
    g.add_argument("--schedule", help="piecewise (×0.1 at 75%% and 90%% of the epochs), cosine "
                   "or constant (default piecewise)")
    g = p.add_argument_group("validation and test")
    g.add_argument("--val-steps", dest="val_steps", type=int,
                   help="PGD steps of the per-epoch validation attack (default 10)")
    g.add_argument("--test-steps", dest="test_steps", type=int,
                   help="PGD steps of the final test attack (default 20)")
    g.add_argument("--test-subset", dest="test_subset", type=int,
                   help="final test on this many examples (a fixed random subset; default all)")
    g.add_argument("--eval-batch-size", dest="eval_batch_size", type=int, help=S)
    g = p.add_argument_group("runtime and output")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:N, mps")
    g.add_argument("--amp", type=_amp, help="bf16 autocast: on, off or auto (auto: on for CUDA)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction,
                   help="deterministic kernels")
    g.add_argument("--out-dir", dest="out_dir", help="parent folder of run directories "
                   "(default runs)")
    g.add_argument("--name", help="run directory name (default: time_dataset_model_method_seed)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last "
                   "checkpoint (its saved config is used; --epochs may extend it)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    g.add_argument("--no-progress", dest="no_progress", action="store_true",
                   help="no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from spat.experiment import train
    from spat.train.config import FIELD_NAMES, config_from_dict, load_toml
    from spat.train.distributed import init_distributed, shutdown_distributed

    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_toml(args.config))
    values.update({k: v for k, v in vars(args).items() if k in FIELD_NAMES})
    cfg = config_from_dict(values, source=getattr(args, "config", None) or "command line")
    dist = init_distributed(cfg.device)
    try:
        log = print if dist.is_main else (lambda s: None)
        summary = train(cfg, resume=getattr(args, "resume", None),
                        overwrite=getattr(args, "overwrite", False),
                        progress=not getattr(args, "no_progress", False), dist=dist, log=log)
    finally:
        shutdown_distributed(dist)
    if dist.is_main:
        print_train_summary(summary)
    return 0


def print_train_summary(s: dict[str, Any]) -> None:
    """The end-of-run summary: test accuracy and where everything was written."""
    run = s["run_dir"]
    print()
    print(f"test  clean accuracy           {100 * s['test_clean_acc']:6.2f}%   "
          f"({s['test_examples']} examples, best-by-validation epoch {s['best_epoch']})")
    print(f"test  {s['test_attack']:<8} accuracy ε={s['test_eps']:.4f} "
          f"{100 * s['test_robust_acc']:6.2f}%")
    print(f"run directory: {run}")
    print("  config.json, env.json, data.json   resolved settings, versions, data description")
    print("  metrics.jsonl                      one line per epoch (loss, accuracies, timings)")
    print("  checkpoints/                       last and best (model.safetensors + state.pt)")
    print("  summary.json                       these numbers")
    print(f"next: spat eval {run}")


def build_parser() -> argparse.ArgumentParser:
    names = _names()
    parser = _Parser(
        prog="spat",
        description="Adversarial training with SPAT (arXiv 2210.15068) and baselines, "
        "evaluation and hard-class-pair analysis.",
        epilog="registered names — datasets: " + ", ".join(names["dataset"]) + "; models: "
        + ", ".join(names["model"]) + ", wrn<depth>_<width>; methods: "
        + ", ".join(names["method"]) + "; heads: " + ", ".join(names["head"]),
    )
    from spat import __version__

    parser.add_argument("--version", action="version", version=f"spat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in SUBCOMMANDS:
        add(sub)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parsers(sub)
    return parser


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_train_parser]
#: Modules that add their own subcommands: each has ``add_parsers(subparsers)``, and every parser
#: it adds sets ``func=<callable(args) -> int>``.
COMMAND_MODULES = ("spat.evaluation.command", "spat.analysis.command")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except SpatError as e:
        sys.stderr.write(f"spat: error: {e}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("spat: interrupted\n")
        return 130


"""``spat`` command line: thin argparse front-ends, each subcommand one library call.

``main(argv) -> int``; user errors print one line ``spat: error: ...`` and return 2; an
unexpected exception prints one line ``spat: error: internal error: ...`` and returns 1
(``--debug`` shows its traceback instead).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from spat.errors import SpatError
from spat.utils.argtypes import fraction
from spat.utils.log import configure as configure_logging
from spat.validation import one_line

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


def _method_default(key: str) -> str:
    """Help text for a method hyperparameter's default, read from the method classes."""
    from spat.methods import METHODS

    values = {name: cls.default(key) for name, cls in METHODS.items() if cls.takes(key)}
    if isinstance(next(iter(values.values()), None), bool):
        on = [name for name, v in values.items() if v]
        return (f"valid with: {', '.join(values)}; on by default for: {', '.join(on) or 'none'}")
    if len(set(values.values())) == 1:
        return f"default {next(iter(values.values())):g}"
    return "default: " + ", ".join(f"{v:g} for {name}" for name, v in values.items())


def _method_head_default() -> str:
    from spat.methods import METHODS

    cosine = [name for name, cls in METHODS.items() if cls.default_head == "cosine"]
    return f"default cosine for {', '.join(cosine)}, linear otherwise"


def _int_or_fraction(text: str) -> float:
    v = float(text)
    return int(v) if v.is_integer() and v >= 1 else v


def _switch(text: str) -> str:
    """``auto``/``on``/``off`` of the fast-path options (--amp, --channels-last, --compile)."""
    if text not in ("auto", "on", "off"):
        raise argparse.ArgumentTypeError(f"invalid value {text!r} (valid: auto, on, off)")
    return text


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
    p.add_argument("--config", help="TOML file of training settings, or a run's config.json "
                   "(flags override it)")
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
    g.add_argument("--head", help="classifier head: linear or cosine (SPAT's; "
                   f"{_method_head_default()})")
    g.add_argument("--cosine-scale", dest="cosine_scale", type=float,
                   help="SPAT's s, the cosine head's scale (default 8)")
    g = p.add_argument_group("method and training attack")
    g.add_argument("--method", help=f"one of: {', '.join(names['method'])} (default pgd_at)")
    g.add_argument("--eps", type=fraction, help="ε of the L∞/L2 ball in [0,1] units; accepts "
                   "8/255 (default: the dataset's)")
    g.add_argument("--step-size", dest="step_size", type=fraction,
                   help="attack step size η (accepts 2/255)")
    g.add_argument("--steps", type=int, help="attack steps K of the training adversary")
    g.add_argument("--norm", help="threat model: linf or l2 (default linf)")
    g.add_argument("--init", help="attack random start: uniform, normal (x+0.001·N(0,I)) or none "
                   "(default: the method's)")
    g.add_argument("--beta", type=float,
                   help=f"TRADES/SPAT β, MART λ ({_method_default('beta')})")
    g.add_argument("--self-paced-ce", dest="self_paced_ce", action=argparse.BooleanOptionalAction,
                   help="SPAT part: self-paced cross-entropy (needs --head cosine; "
                   f"{_method_default('self_paced_ce')})")
    g.add_argument("--hcp-ecp", dest="hcp_ecp", action=argparse.BooleanOptionalAction,
                   help="SPAT part: per-class weighted consistency Σ k_j(k_j+n) instead of KL "
                   f"({_method_default('hcp_ecp')})")
    g.add_argument("--m", type=float,
                   help=f"SPAT's self-paced margin m ({_method_default('m')})")
    g.add_argument("--n", type=float, help=f"SPAT's HCP-ECP offset n ({_method_default('n')})")
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
    g.add_argument("--amp", type=_switch, metavar="{auto,on,off}",
                   help="bf16 autocast of the training step (default auto: on for CUDA and for "
                   "a CPU with native bf16, AVX512-BF16/AMX; evaluation is always fp32)")
    g.add_argument("--channels-last", dest="channels_last", type=_switch,
                   metavar="{auto,on,off}", help="NHWC memory format (default auto: on for CPU "
                   "and CUDA)")
    g.add_argument("--compile", type=_switch, nargs="?", const="on", metavar="{auto,on,off}",
                   help="torch.compile the training model (default auto: off; a bare --compile "
                   "means on)")
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
    g.add_argument("--tensorboard", action="store_true", help="also log losses, learning "
                   "rate, accuracies and the validation confusion matrix to RUN/tensorboard/ "
                   "(needs the tensorboard package; metrics.jsonl stays the record)")
    g.add_argument("--threads", type=int, help="CPU threads of this process (default: "
                   "OMP_NUM_THREADS if set, else the free cores: affinity minus load average)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from spat.utils.threads import apply_threads

    apply_threads(getattr(args, "threads", None))
    from spat.train.config import FIELD_NAMES, config_from_dict, load_config_file
    from spat.train.run import train
    from spat.utils.distributed import init_distributed, shutdown_distributed
    from spat.utils.log import info as log_info
    from spat.utils.log import quiet as log_quiet

    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    values.update({k: v for k, v in vars(args).items() if k in FIELD_NAMES})
    cfg = config_from_dict(values, source=getattr(args, "config", None) or "command line")
    dist = init_distributed(cfg.device)
    try:
        log = log_info if dist.is_main else (lambda s: None)
        summary = train(cfg, resume=getattr(args, "resume", None),
                        overwrite=getattr(args, "overwrite", False),
                        progress=not (getattr(args, "no_progress", False) or log_quiet()),
                        dist=dist, log=log, explicit=set(values))
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
    from spat._version import __version__

    parser.add_argument("--version", action="version", version=f"spat {__version__}")
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show the traceback of an "
                        "unexpected error (accepted anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in SUBCOMMANDS:
        add(sub)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parsers(sub)
    _add_verbosity(parser, "")
    for command in sub.choices.values():  # accepted after the subcommand too
        _add_verbosity(command, "_sub")
    return parser


def _add_verbosity(p: argparse.ArgumentParser, suffix: str) -> None:
    # separate dests before and after the subcommand: argparse would otherwise let the
    # subcommand's default overwrite a -q given before it
    p.add_argument("-q", "--quiet", dest=f"quiet{suffix}", action="count", default=0,
                   help="only warnings and errors (no progress, no status lines)")
    p.add_argument("-v", "--verbose", dest=f"verbose{suffix}", action="count", default=0,
                   help="also debug detail")


def _verbosity(args: argparse.Namespace) -> int:
    """-v count minus -q count, before and after the subcommand together."""
    return (getattr(args, "verbose", 0) + getattr(args, "verbose_sub", 0)
            - getattr(args, "quiet", 0) - getattr(args, "quiet_sub", 0))


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_train_parser]
#: Modules that add their own subcommands: each has ``add_parsers(subparsers)``, and every parser
#: it adds sets ``func=<callable(args) -> int>``.
COMMAND_MODULES = ("spat.evaluation.command", "spat.analysis.command",
                   "spat.export.command", "spat.study.command")


#: Exit code of an unexpected exception (a bug in spat): 1, distinct from a user error's 2.
EXIT_INTERNAL = 1
DEBUG_FLAG = "--debug"


def _take_debug(argv: list[str]) -> tuple[bool, list[str]]:
    """``--debug`` anywhere before a ``--`` (before or after the subcommand), removed; or the
    environment variable ``SPAT_DEBUG=1``."""
    end = argv.index("--") if "--" in argv else len(argv)
    debug = DEBUG_FLAG in argv[:end]
    rest = [a for a in argv[:end] if a != DEBUG_FLAG] + argv[end:]
    return debug or os.environ.get("SPAT_DEBUG", "") not in ("", "0"), rest


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``spat`` with ``argv``; returns the exit code.

    0: success. 2: a user error (bad option or value, a missing, corrupted or refused file, an
    output path that cannot be written), printed as one line ``spat: error: ...``. 1: an
    unexpected exception (a bug), printed as one line ``spat: error: internal error: <type>:
    <message> (run with --debug for the traceback)``; ``--debug`` (anywhere on the command line)
    or ``SPAT_DEBUG=1`` lets it propagate with its traceback instead. 130: interrupted.
    """
    debug, args_list = _take_debug(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(args_list)
    configure_logging(_verbosity(args))
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except SpatError as e:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"spat: error: {one_line(e, None)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("spat: interrupted\n")
        return 130
    except OSError as e:  # the environment: a full disk, a permission, a path that is a file
        if debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        sys.stderr.write(f"spat: error: {e.strerror or one_line(e, None)}{where}\n")
        return EXIT_USAGE
    except Exception as e:
        if debug:
            raise
        sys.stderr.write(f"spat: error: internal error: {type(e).__name__}: "
                         f"{one_line(e, None)[:300]} (run with {DEBUG_FLAG} for the traceback)\n")
        return EXIT_INTERNAL


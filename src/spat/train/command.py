"""``spat train``: a training run on the command line.

Its flags are derived from :class:`~spat.config.TrainConfig`'s fields and their
:func:`~spat.utils.dataclass_flags.option` metadata
(:func:`spat.utils.dataclass_flags.add_dataclass_options`):
a field added to the config is a flag with no edit here. Every registered method's
hyperparameters (:func:`spat.methods.all_hyperparameters`: the method classes' fields, a
plugin's included) are flags of the "method" group, with the fields' help texts and types, and
each method's default read from the classes. Only the options that are not settings of the run
(``--config``, ``--resume``, ``--overwrite``, ``--no-progress``, ``--threads``) are written out
below.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any

from spat.config import TrainConfig
from spat.utils.dataclass_flags import add_dataclass_options, add_field_option, help_text

if TYPE_CHECKING:
    from spat.build import TrainResult

#: Option groups of ``spat train --help``, in order (keys: the ``group`` of a field's metadata).
GROUPS = {"data": "data", "model": "model", "method": "method and training attack",
          "optimisation": "optimisation", "evaluation": "validation and test",
          "runtime": "runtime and output"}
#: TrainConfig fields with no flag (none: every setting of a run can be given on the command
#: line; a field listed here is reachable through --config only).
NO_FLAG: tuple[str, ...] = ()


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) \
        else str(value)


def method_default(key: str) -> str | None:
    """Help text for a method hyperparameter's default, read from the method classes: one
    value (``default 6``), one per method (``default: 6 for trades, 5 for mart``), or for a
    switch the methods that take it and those where it is on."""
    from spat.methods import METHODS

    values = {name: cls.default(key) for name, cls in METHODS.items() if cls.takes(key)}
    if not values:
        return None
    if all(isinstance(v, bool) for v in values.values()):
        on = [name for name, v in values.items() if v]
        return f"valid with: {', '.join(values)}; on by default for: {', '.join(on) or 'none'}"
    if len({_show(v) for v in values.values()}) == 1:
        return f"default {_show(next(iter(values.values())))}"
    return "default: " + ", ".join(f"{_show(v)} for {name}" for name, v in values.items())


def _help_context() -> dict[str, str]:
    """Values of the ``{placeholders}`` in TrainConfig's help texts: the registered names."""
    from spat.data import dataset_names
    from spat.methods import METHODS
    from spat.models import model_names

    cosine = [name for name, cls in METHODS.items() if cls.default_head == "cosine"]
    return {"datasets": ", ".join(dataset_names()), "models": ", ".join(model_names()),
            "methods": ", ".join(METHODS),
            "head_default": f"default cosine for {', '.join(cosine)}, linear otherwise"}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model (SPAT, PGD-AT, TRADES, MART, standard)",
        description="Train a classifier adversarially. With no arguments: PGD-AT on the offline "
        "digits data with small_cnn, in about a minute on a CPU. Values left out come from the "
        "dataset's defaults (see README), then a --config TOML file, then these flags.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="TOML file of training settings, or a run's config.json "
                   "(flags override it)")
    groups = add_dataclass_options(p, TrainConfig, groups=GROUPS,
                                   exclude=(*NO_FLAG, "hyperparameters"),
                                   context=_help_context())
    add_hyperparameter_options(groups["method"])
    g = groups["runtime"]
    g.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last "
                   "checkpoint (its saved config is used; --epochs may extend it)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    g.add_argument("--no-progress", dest="no_progress", action="store_true",
                   help="no progress bar")
    g.add_argument("--threads", type=int, help="CPU threads of this process (default: "
                   "OMP_NUM_THREADS if set, else the free cores: affinity minus load average)")
    p.set_defaults(func=cmd_train)


def add_hyperparameter_options(group: argparse._ArgumentGroup) -> None:
    """One flag per method hyperparameter of the registered methods (a plugin's included):
    ``--NAME`` of its field's type, with its help text and each method's default."""
    from spat.methods import all_hyperparameters

    for h in all_hyperparameters().values():
        add_field_option(group, h.field, h.annotation,
                         help_text(h.field, note=method_default(h.name), text=h.help))


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that ``args`` gives: a ``--config`` file's values, then the flags over them
    (defaults are left out; :meth:`TrainConfig.resolved` fills them)."""
    from spat.config import load_config_file
    from spat.methods import all_hyperparameters

    names = {f.name for f in dataclasses.fields(TrainConfig)} | set(all_hyperparameters())
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    values.update({k: v for k, v in vars(args).items() if k in names})
    return values


def cmd_train(args: argparse.Namespace) -> int:
    from spat.utils.threads import apply_threads

    apply_threads(getattr(args, "threads", None))
    from spat.config import config_from_dict
    from spat.train.training import train
    from spat.utils.distributed import init_distributed, shutdown_distributed
    from spat.utils.log import info as log_info
    from spat.utils.log import quiet as log_quiet

    values = config_values(args)
    cfg = config_from_dict(values, source=getattr(args, "config", None) or "command line")
    dist = init_distributed(cfg.device)
    try:
        log = log_info if dist.is_main else (lambda s: None)
        result = train(cfg, resume=getattr(args, "resume", None),
                        overwrite=getattr(args, "overwrite", False),
                        progress=not (getattr(args, "no_progress", False) or log_quiet()),
                        dist=dist, log=log, explicit=set(values))
    except BaseException:
        shutdown_distributed(dist, meet=False)
        raise
    shutdown_distributed(dist)
    if dist.is_main:
        print_train_summary(result)
    return 0


def print_train_summary(s: TrainResult) -> None:
    """The end-of-run summary: test accuracy and where everything was written."""
    run = s.run_dir
    print()
    print(f"test  clean accuracy           {100 * s.test_clean_acc:6.2f}%   "
          f"({s.test_examples} examples, best-by-validation epoch {s.best_epoch})")
    print(f"test  {s.test_attack:<8} accuracy ε={s.test_eps:.4f} "
          f"{100 * s.test_robust_acc:6.2f}%")
    for g in s.guard:
        print(f"guard: epoch {g['epoch']}: {g['kind']}: {g['detail']}")
    print(f"run directory: {run}")
    print("  config.json, env.json, data.json   resolved settings, versions, data description")
    print("  metrics.jsonl                      one line per epoch (loss, accuracies, timings)")
    print("  checkpoints/                       last and best (model.safetensors + state.pt)")
    print("  summary.json                       these numbers")
    print(f"next: spat eval {run}")

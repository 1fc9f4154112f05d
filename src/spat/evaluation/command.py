"""``spat eval``: the robustness evaluation protocol on the command line.

The evaluation settings' flags are derived from :class:`~spat.evaluation.options.EvalOptions`'s
fields and their :func:`~spat.utils.dataclass_flags.option` metadata
(:func:`spat.utils.dataclass_flags.add_dataclass_options`), as ``spat train``'s from
``TrainConfig``;
the options that are not settings of the evaluation (the model, output, device, ...) are written
out below.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import textwrap
import time
from typing import Any

from spat.checkpoint import WHICH_HELP, check_which
from spat.errors import SpatError
from spat.evaluation.attacks import ATTACK_KEYS, ATTACKS, DEFAULT_ATTACKS
from spat.evaluation.options import EvalOptions
from spat.utils.dataclass_flags import DefaultsHelpFormatter, add_dataclass_options, flag_name

#: Option groups of ``spat eval --help`` holding EvalOptions' fields (keys: the ``group`` of a
#: field's metadata). Every field is a flag, derived from its metadata: a field added to
#: EvalOptions is a flag with no edit here.
GROUPS = {"settings": "evaluation settings"}


class _Formatter(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    """Keep the attack table's line breaks; show each option's default once."""


def _epilog() -> str:
    width = 92
    lines = ["attacks (--attacks, comma-separated; clean is always evaluated):"]
    for c in ATTACKS.values():
        lines += textwrap.wrap(c.summary, width, initial_indent=f"  {c.key:<9}",
                               subsequent_indent=" " * 11)
    paragraphs = [
        "White-box attacks (FGSM, PGD, CW) use the run's ε and norm unless --eps/--norm are "
        "given, step size η = ε/4 (2/255 at ε = 8/255) unless --step-size, and --restarts "
        "random starts (default 1); each starts from the clean image on every example, its "
        "random start seeded from --seed and the attack's name. AutoAttack runs with its "
        "official settings (seed --seed, batch size --batch-size) on the clean-correct "
        "examples. On one CPU core, standard AutoAttack takes 5-7 minutes for the 500 test "
        "digits of a small_cnn (aa-fast about 1.5 minutes); use --n-examples or aa-fast for "
        "a quick look.",
        "The 'worst case so far' column accumulates, per example, clean and every attack up to "
        "that row (order: " + ", ".join(ATTACK_KEYS) + "); its last value is the ensemble's "
        "robust accuracy.",
        "Sanity checks (warnings when they fail): eval mode, deterministic outputs, logits not "
        "probabilities, non-zero input gradients, PGD-20 accuracy falling with ε and ≈ 0 at "
        "a large ε, and the black-box Square attack not stronger than the white-box attacks.",
        "Output (--out, default RUN/eval/): report.json (accuracies, per-class accuracy, "
        "sanity checks, warnings, settings, versions) and predictions.npz (labels, clean, "
        "adv/<attack name>). Finished attacks are saved in OUT/attacks/ as they finish; a "
        "rerun with the same settings reuses them, and an interrupted AutoAttack continues "
        "from its last batch (--no-resume recomputes). See docs/evaluation.md.",
    ]
    for para in paragraphs:
        lines += ["", *textwrap.wrap(para, width, break_on_hyphens=False)]
    return "\n".join(lines)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``spat eval`` to the ``spat`` command line."""
    p = sub.add_parser(
        "eval", help="robustness evaluation: FGSM, PGD, CW, AutoAttack, sanity checks",
        description="Evaluate a trained run (or a checkpoint folder) on its test set: clean "
        "accuracy and accuracy under each attack, per class and as a per-example worst case, "
        "with sanity checks against gradient masking. Prints a table; writes report.json and "
        "predictions.npz. Any other classifier of [0,1] images: --model package.module:factory "
        "[--weights FILE] --dataset NAME (or --model official-spat/official-trades --weights "
        "an official SPAT/TRADES checkpoint, or --model a portable file from spat export).",
        epilog=_epilog(), formatter_class=_Formatter,
    )
    p.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT", nargs="?", default=None,
                   help="a run directory (from spat train) or a checkpoint folder (or --model)")
    add_dataclass_options(p, EvalOptions, groups=GROUPS, context={
        "attack_keys": ", ".join(ATTACK_KEYS), "default_attacks": ",".join(DEFAULT_ATTACKS)})
    g = p.add_argument_group("a model that is not a spat run (instead of RUN)")
    g.add_argument("--model", default=None,
                   help="package.module:attr (an nn.Module, a class or a no-argument factory "
                   "mapping [0,1] images to logits), official-trades / official-spat (with "
                   "--weights: the official TRADES/SPAT WideResNet or ResNet-18 checkpoint), or "
                   "a portable model file written by spat export")
    g.add_argument("--weights", default=None,
                   help="weights for --model: safetensors or a torch state-dict file (read "
                   "with weights_only=True; never unpickles code)")
    g.add_argument("--dataset", default=None, help="dataset whose test split is evaluated "
                   "(required with --model)")
    g.add_argument("--cosine-scale", dest="cosine_scale", type=float, default=None,
                   help="scale s of official-spat's cosine head: the attacked logits are s·z "
                   "(default 8, the official training's; only with --model official-spat)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, "
                   "cuda:N, mps")
    p.add_argument("--which", default="best", help=WHICH_HELP)
    p.add_argument("--out", default=None, help="output folder (default: RUN/eval; with "
                   "--model ./eval-<model>-<dataset>)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse attacks saved by an earlier run with the same settings and "
                   "continue an interrupted AutoAttack")
    p.add_argument("--data-dir", dest="data_dir", default=None,
                   help="where the dataset is (default: the run's data_dir)")
    p.add_argument("--no-progress", dest="no_progress", action="store_true",
                   help="no progress bars")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write the accuracies to the run's TensorBoard folder "
                   "(RUN/tensorboard/, at the checkpoint's epoch; needs the tensorboard package)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of this process (default: OMP_NUM_THREADS if set, else "
                   "the free cores: affinity minus load average)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """Run the evaluation, print the table, say where the files are."""
    from rich.console import Console

    from spat.evaluation.evaluate_run import evaluate_run
    from spat.evaluation.report import PREDICTIONS_FILE, REPORT_FILE, print_report
    from spat.utils.threads import apply_threads

    apply_threads(args.threads)
    check_which(args.which)
    opts = options_from_args(args)
    out = Console(highlight=False)
    t0 = time.perf_counter()
    if args.model is not None or args.run is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SpatError("--model evaluates in one process; run it without torchrun (a run "
                            "directory can be evaluated sharded)")
        report, out_dir = _eval_model(args, opts, out)
    else:
        for flag in ("weights", "dataset", "cosine_scale"):
            if getattr(args, flag) is not None:
                flag = flag.replace("_", "-")
                raise SpatError(f"--{flag} goes with --model, not with a run directory")
        from spat.utils.distributed import init_distributed, shutdown_distributed
        from spat.utils.log import info, quiet

        dist = init_distributed(args.device)  # under torchrun: one shard per rank
        try:
            report, out_dir = evaluate_run(
                args.run, opts, which=args.which, out=args.out, device=args.device,
                data_dir=args.data_dir, resume=args.resume,
                progress=not (args.no_progress or quiet()) and dist.is_main,
                log=info if dist.is_main else lambda s: None,
                dist=dist, tensorboard=args.tensorboard,
            )
        except BaseException:
            shutdown_distributed(dist, meet=False)
            raise
        shutdown_distributed(dist)
        if not dist.is_main:
            return 0
    print_report(report, out)
    out.print(f"wrote {out_dir / REPORT_FILE}", markup=False)
    out.print(f"      {out_dir / PREDICTIONS_FILE}", markup=False)
    out.print(f"evaluation took {time.perf_counter() - t0:.1f} s", markup=False)
    return 0


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    """The :class:`EvalOptions` of ``spat eval``'s flags: the fields given on the command line
    over the defaults, validated by EvalOptions; a bad value is a one-line error naming its
    flag."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalOptions)
             if hasattr(args, f.name)}
    for name, value in given.items():  # one at a time first, so that the message names it
        try:
            EvalOptions(**{name: value})
        except SpatError as e:
            raise SpatError(f"{flag_name(name)}: {e}") from None
    return EvalOptions(**given)


def _eval_model(args: argparse.Namespace, opts: EvalOptions, out: Any) -> tuple[Any, Any]:
    """``spat eval --model ...``: one call of :func:`spat.evaluation.evaluate_model`."""
    from spat.evaluation.evaluate_model import evaluate_model
    from spat.utils.log import info, quiet

    del out  # messages go through spat's logger (-q/-v), as for a run
    if args.model is None:
        raise SpatError("give a run directory, or --model (with --dataset)")
    if args.run is not None:
        raise SpatError("give either a run directory or --model, not both")
    if args.dataset is None:
        raise SpatError("--model needs --dataset (the test split to evaluate on)")
    return evaluate_model(
        args.model, opts, dataset=args.dataset, weights=args.weights, data_dir=args.data_dir,
        out=args.out, device=args.device, cosine_scale=args.cosine_scale, resume=args.resume,
        progress=not (args.no_progress or quiet()), log=info,
    )

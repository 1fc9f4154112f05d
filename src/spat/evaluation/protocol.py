"""The robustness evaluation protocol behind ``spat eval``: :func:`evaluate`.

:func:`evaluate` attacks a fixed subset of a split (:mod:`spat.evaluation.inputs`) with every
requested attack (:mod:`spat.evaluation.attack_runs`; each one from the clean image, on every
example; AutoAttack, :mod:`spat.evaluation.autoattack_run`, on the clean-correct ones), records
the predicted class of every example under every attack, runs the sanity checks
(:mod:`spat.evaluation.sanity`, :mod:`spat.evaluation.sanity_attacks`), and builds the report
(:func:`spat.evaluation.report.report_data`). With :attr:`Plumbing.state_dir` each finished
attack is saved at once (:mod:`spat.evaluation.result_cache`, keyed by a fingerprint of model,
data and settings, :mod:`spat.evaluation.fingerprint`) and AutoAttack saves its state after
every batch, so an interrupted evaluation resumes where it stopped and a rerun with the same
settings reuses what was computed. Random starts are seeded by :mod:`spat.evaluation.seeding`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spat.attacks.context import attack_mode
from spat.data import Split, batches
from spat.errors import SpatError
from spat.evaluation import sanity
from spat.evaluation.attack_runs import AttackOutcome, run_attack
from spat.evaluation.core import Predictions, predict_under_attacks
from spat.evaluation.fingerprint import common_fingerprint
from spat.evaluation.inputs import as_split, select_subset
from spat.evaluation.job import EvalJob, Log
from spat.evaluation.options import EvalOptions, attacked_model
from spat.evaluation.report import EvalReport, report_data
from spat.evaluation.result_cache import ResultCache
from spat.evaluation.sanity_attacks import black_box, eps_sweep
from spat.utils.distributed import SINGLE, DistContext
from spat.utils.progress import Progress


@dataclasses.dataclass(frozen=True)
class Plumbing:
    """How one :func:`evaluate` call saves, shows and shares its work; none of it changes a
    number of the report.

    Attributes:
        state_dir: where finished attacks and AutoAttack's running state are saved; None: no
            saving, no reuse.
        resume: reuse saved results with the same fingerprint (model weights, data subset,
            ε, norm, seed, batch size, device type, attack logits, attack settings) and continue
            an interrupted AutoAttack; False: recompute everything.
        progress: show progress bars (on standard error, when it is a terminal).
        log: receives one-line messages (reuse, recomputation); default: nothing.
        dist: under torchrun, every rank calls :func:`evaluate` and attacks its batches of the
            examples (:mod:`spat.evaluation.sharding`); every rank returns the whole report,
            which for the white-box attacks equals a one-process evaluation's. Rank 0 alone
            reads and writes saved results and runs the two attack-based sanity checks.
    """

    state_dir: str | os.PathLike[str] | None = None
    resume: bool = True
    progress: bool = False
    log: Log | None = None
    dist: DistContext = SINGLE


def evaluate(
    model: nn.Module,
    data: Split | tuple[torch.Tensor, torch.Tensor],
    options: EvalOptions,
    *,
    device: torch.device | str = "cpu",
    class_names: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
    plumbing: Plumbing | None = None,
) -> EvalReport:
    """Evaluate ``model`` on (a seeded subset of) ``data`` under ``options.attacks``.

    Args:
        model: any ``nn.Module`` that maps images in [0, 1] to logits (on ``device``);
            attacked in eval mode.
        data: the examples: a ``spat.data.Split`` (e.g. ``load_data(cfg).test``) or plain
            tensors ``(x, y)``, x float (N, C, H, W) in [0, 1] (or uint8 0..255), y (N,) class
            indices.
        options: the evaluation settings (:class:`~spat.evaluation.options.EvalOptions`: ε,
            attacks, norm, subset, seed, restarts, step size, batch size, sanity checks, attack
            logits); ``eps`` is required, the norm defaults to linf. Attacks run (and
            accumulate) in the canonical order fgsm, pgd20, pgd100, cw20, cw100, aa-fast, aa;
            random starts are seeded from ``seed`` (:mod:`spat.evaluation.seeding`).
        device: where the attacks run.
        class_names: for per-class accuracy (default "0", "1", ...).
        metadata: extra top-level fields of the report (run directory, config, ...).
        plumbing: saving and resuming, progress bars, messages, ranks (:class:`Plumbing`;
            default: nothing saved or shown, one process).

    Returns:
        An :class:`EvalReport` (JSON document in ``.data``, predictions in ``.predictions``).
        Clean predictions come from ``model`` itself; with ``attack_logits="unit_cosine"``
        every attack and attack-based check sees ``model(x) / s`` (same predictions).
    """
    t_start = time.perf_counter()
    if not isinstance(options, EvalOptions):
        raise SpatError(f"options must be an EvalOptions, got {type(options).__name__}")
    split = as_split(data)
    opts = options.with_threat(None, None)
    if len(split) == 0:
        raise SpatError("the split to evaluate is empty")
    device = torch.device(device)
    plumbing = plumbing or Plumbing()
    dist, log = plumbing.dist, plumbing.log or (lambda message: None)
    attacked, scale = attacked_model(model, opts.attack_logits)
    index = select_subset(len(split), opts.n_examples, opts.seed)
    sub = Split(images=split.images[index], labels=split.labels[index])
    n = len(sub)
    state_dir = Path(plumbing.state_dir) if plumbing.state_dir is not None else None
    cache = ResultCache(state_dir, plumbing.resume, log, dist)
    checks, num_classes = _model_checks(model, attacked, sub, device)
    names = list(class_names) if class_names is not None else [str(i) for i in
                                                               range(num_classes)]
    if len(names) != num_classes:
        raise SpatError(f"{len(names)} class names for a model with {num_classes} outputs")
    if int(sub.labels.max()) >= num_classes:
        raise SpatError(f"labels go up to {int(sub.labels.max())} but the model has "
                        f"{num_classes} outputs")

    outcomes: list[AttackOutcome] = []
    bars = Progress(plumbing.progress, description="{task.description:<28}", stderr=True)
    job = EvalJob(model=attacked, sub=sub, opts=opts, device=device, cache=cache,
                  common=common_fingerprint(model, sub, index, opts, device, scale),
                  progress=bars, log=log, dist=dist)
    with bars:
        clean_preds = predict_under_attacks(model, sub, [], batch_size=opts.batch_size,
                                            device=device).clean
        for key in opts.attacks:
            outcomes.append(run_attack(job, key))

        adversarial = {o.name: torch.tensor(o.predictions, dtype=torch.int64) for o in outcomes}
        preds = Predictions(labels=sub.labels.clone().to(torch.int64), clean=clean_preds,
                            adversarial=adversarial)

        # ---- attack-based sanity checks on a small subset --------------------------------
        m = min(opts.sanity_examples, n)
        if m > 0:
            # small (m examples): rank 0 runs them, with its own (non-collective) cache, and
            # the others receive the result
            own = dataclasses.replace(job, cache=cache.own())
            checks.append(dist.on_main(lambda: eps_sweep(own, m, num_classes)))
            checks.append(dist.on_main(lambda: black_box(own, m, preds, outcomes)))
        else:
            checks.append(sanity.Check("eps_sweep", None, "skipped (--sanity-examples 0)"))
            checks.append(sanity.Check("black_box", None, "skipped (--sanity-examples 0)"))

    warnings = [c.warning for c in checks if c.warning]
    for o in outcomes:
        warnings.extend(f"{o.name}: {w}" for w in o.warnings)
    doc = report_data(preds, outcomes, opts, class_names=names, checks=checks,
                      warnings=warnings, index=index, n_total=len(split), device=device,
                      scale=scale, processes=dist.world_size, metadata=metadata,
                      total_seconds=time.perf_counter() - t_start)
    return EvalReport(data=doc, predictions=preds, checks=checks, warnings=warnings)


def _model_checks(model: nn.Module, attacked: nn.Module, sub: Split, device: torch.device
                  ) -> tuple[list[sanity.Check], int]:
    """The cheap checks of the model itself on the first 128 examples (eval mode, determinism,
    logits, gradients) and its number of outputs; a model whose clean outputs are not finite is
    a one-line :class:`SpatError` (attacking it means nothing)."""
    checks = [sanity.check_eval_mode(model)]
    x0, y0 = next(batches(Split(images=sub.images[:128], labels=sub.labels[:128]), 128,
                          device=device))
    with attack_mode(model), torch.no_grad():
        out0 = model(x0)
    if not bool(torch.isfinite(out0).all()):
        bad = int((~torch.isfinite(out0)).any(dim=1).sum())
        raise SpatError(f"the model's outputs on clean test images are not finite (NaN or inf "
                        f"for {bad} of {len(x0)} examples); its weights are broken, nothing to "
                        f"evaluate")
    checks.append(sanity.check_deterministic(attacked, x0))
    checks.append(sanity.check_logits(attacked, x0))
    checks.append(sanity.check_gradients(attacked, x0, y0))
    return checks, int(out0.shape[1])

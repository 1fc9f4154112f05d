"""The two attack-based sanity checks of an evaluation, on a small subset (their judgement is in
:mod:`spat.evaluation.sanity`): PGD-20 at a sweep of radii around ε, and the black-box Square
attack on the points that every white-box attack left correct."""

from __future__ import annotations

import torch

from spat.attacks import autoattack as aa_mod
from spat.attacks.presets import pgd
from spat.data import Split, batches
from spat.evaluation import sanity
from spat.evaluation.attack_runs import AttackOutcome
from spat.evaluation.core import Predictions, predict_under_attacks
from spat.evaluation.fingerprint import json_digest
from spat.evaluation.job import EvalJob
from spat.evaluation.seeding import generator, sweep_seed


def eps_sweep(job: EvalJob, m: int, num_classes: int) -> sanity.Check:
    """PGD-20 accuracy on the first ``m`` examples at a sweep of radii around ε."""
    opts, sub, cache, device = job.opts, job.sub, job.cache, job.device
    eps_values = sanity.sweep_epsilons(job.eps, job.norm, int(sub.images[0].numel()))
    fp = {**job.common, "attack": "sanity-eps-sweep", "examples": m, "eps_values": eps_values}
    saved = cache.get("sanity-eps-sweep", "ε sweep", fp)
    if saved is None:
        small = Split(images=sub.images[:m], labels=sub.labels[:m])
        advance = job.progress.counter("sanity: ε sweep (PGD-20)", m * len(eps_values))
        accs = []
        for i, e in enumerate(eps_values):
            gen = generator(device, sweep_seed(opts.seed, i))
            p = predict_under_attacks(job.model, small, [pgd(e, steps=20, norm=job.norm)],
                                      batch_size=opts.batch_size, device=device, generator=gen,
                                      on_batch=advance)
            accs.append(p.accuracy(next(iter(p.adversarial))))
        saved = {"accuracy": accs}
        cache.put("sanity-eps-sweep", fp, saved)
    else:
        job.log("ε sweep: reusing the saved result")
    return sanity.check_eps_sweep(eps_values, saved["accuracy"], m, num_classes)


def black_box(job: EvalJob, m: int, preds: Predictions, outcomes: list[AttackOutcome]
              ) -> sanity.Check:
    """Square (black box) on the first ``m`` examples that every white-box attack left
    correct; or, when standard AutoAttack ran, its own Square step."""
    opts, sub, cache = job.opts, job.sub, job.cache
    queries = opts.square_queries
    for o in outcomes:
        if o.key == "aa":
            c = o.details["robust_count_after"]
            if "fab-t" in c and "square" in c:
                return sanity.check_black_box(c["fab-t"], c["fab-t"] - c["square"],
                                              "inside standard AutoAttack, after APGD-CE, "
                                              "APGD-T and FAB-T")
    if not outcomes:
        return sanity.Check("black_box", None, "skipped: no attack was run to compare with")
    robust = preds.robust_all()[:m]
    idx = torch.nonzero(robust).flatten()
    source = f"{queries} queries, on the first {m} examples"
    if idx.numel() == 0:
        return sanity.check_black_box(0, 0, source)
    fp = {**job.common, "attack": "sanity-square", "queries": int(queries),
          "points": json_digest(idx.tolist())}
    saved = cache.get("sanity-square", "Square check", fp)
    if saved is None:
        x, y = next(batches(Split(images=sub.images[idx], labels=sub.labels[idx]), len(idx),
                            device=job.device))
        update = job.progress.task(f"sanity: Square ({queries} queries)", 1)
        out = aa_mod.run_square(job.model, x, y, eps=job.eps, norm=job.norm, n_queries=queries,
                                seed=opts.seed, batch_size=opts.batch_size, device=job.device)
        update(completed=1)
        saved = {"broken": int((out != y.cpu()).sum())}
        cache.put("sanity-square", fp, saved)
    else:
        job.log("Square check: reusing the saved result")
    return sanity.check_black_box(int(idx.numel()), saved["broken"], source)

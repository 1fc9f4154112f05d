"""AutoAttack inside an evaluation: the official algorithm (:mod:`spat.attacks.autoattack`) on
the evaluated subset, with progress bars, a running state saved after every batch (continued
after an interruption), sharding under torchrun, and the per-sub-attack details of the
report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from spat.attacks import autoattack as aa_mod
from spat.data import Split, batches
from spat.evaluation.job import EvalJob
from spat.evaluation.sharding import combine, shard_index


def run_autoattack(job: EvalJob, key: str, name: str, version: str, fp: dict[str, Any]
                   ) -> dict[str, Any]:
    """Run AutoAttack ``version`` (attack ``key``, shown as ``name``, fingerprint ``fp``) on
    every example of the job's subset; returns the result record's ``predictions``, ``details``
    (robust count and accuracy after each sub-attack, timings, the largest perturbation, the
    settings) and ``warnings``."""
    opts, sub, cache, dist = job.opts, job.sub, job.cache, job.dist
    batch_size, device = opts.batch_size, job.device
    # Under torchrun each rank runs the official algorithm on its batches of the examples
    # (see spat.evaluation.sharding); an interrupted sharded run starts its AutoAttack over.
    state = cache.path(key, fp, ".aa-state.json") if not dist.enabled else None
    if state is not None and not cache.resume and state.exists():
        state.unlink()
    if state is not None and cache.resume and state.exists():
        cache.log(f"{name}: continuing the interrupted run from {state}")
    n_all = len(sub)
    mine = shard_index(n_all, batch_size, dist)
    if dist.enabled:
        sub = Split(images=sub.images[mine], labels=sub.labels[mine])
    x, y = next(batches(sub, len(sub), device=device))
    tasks: dict[str, Callable[..., None]] = {}

    def on_progress(s: str, done: int, total: int) -> None:
        if s not in tasks:
            tasks[s] = job.progress.task(f"{name}: {aa_mod.LABELS[s]}", total)
        tasks[s](completed=done, total=total)

    r = aa_mod.run_autoattack(job.model, x, y, eps=job.eps, norm=job.norm, version=version,
                              seed=opts.seed, batch_size=batch_size, device=device,
                              state_path=state, progress=on_progress)
    predictions, broken_by = r.predictions, r.broken_by
    max_perturbation = r.max_perturbation
    if dist.enabled:
        predictions = combine(predictions, mine, n_all, dist)
        broken_by = combine(broken_by, mine, n_all, dist)
        if max_perturbation is not None:
            max_perturbation = -float(dist.all_reduce_min(
                torch.tensor([-float(max_perturbation)], dtype=torch.float64))[0])
    n = n_all
    counts = {"clean": int((broken_by != 0).sum())}
    for i, s in enumerate(r.sub_attacks, start=1):
        counts[s] = int(((broken_by == -1) | (broken_by > i)).sum())
    details = {
        "sub_attacks": r.sub_attacks,
        "robust_accuracy_after": {aa_mod.LABELS[s]: counts[s] / n for s in r.sub_attacks},
        "robust_count_after": counts,
        "sub_attack_seconds": {aa_mod.LABELS[s]: v for s, v in r.seconds.items()},
        "max_perturbation": max_perturbation,
        "resumed": r.resumed,
        "autoattack": {**r.settings, "shards": dist.world_size},
    }
    if state is not None and state.exists():
        state.unlink()
    return {"predictions": predictions.tolist(), "details": details, "warnings": r.warnings}

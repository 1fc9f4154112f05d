"""One attack of an evaluation on every example of the subset, or its saved result
(:class:`AttackOutcome`): white-box attacks batch by batch (sharded under torchrun), AutoAttack
through :mod:`spat.evaluation.autoattack_run`."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from spat.evaluation.attacks import ATTACKS, attack_name, white_box_spec
from spat.evaluation.autoattack_run import run_autoattack
from spat.evaluation.job import EvalJob
from spat.evaluation.seeding import PER_BATCH_SEEDING, attack_seed
from spat.evaluation.sharding import predict_sharded_batches, shard_index
from spat.utils.log import logger
from spat.utils.rng import batch_seed


@dataclasses.dataclass(frozen=True)
class AttackOutcome:
    """One attack's result: the predicted class of every evaluated example (``predictions``,
    in subset order), the attack's settings and timing, and its ``details``/``warnings``
    (AutoAttack: robust counts after each sub-attack, ...). Its :meth:`from_record` reads the
    ``result`` of a saved cache file (the same fields except ``reused``); ``reused`` says
    whether it came from one."""

    key: str
    name: str
    kind: str
    settings: dict[str, Any]
    seconds: float
    predictions: list[int]
    details: dict[str, Any]
    warnings: list[str]
    reused: bool

    @classmethod
    def from_record(cls, record: dict[str, Any], *, reused: bool) -> AttackOutcome:
        """An outcome from a result record (as computed, or as saved in the cache)."""
        return cls(key=record["key"], name=record["name"], kind=record["kind"],
                   settings=record["settings"], seconds=float(record["seconds"]),
                   predictions=record["predictions"], details=record.get("details") or {},
                   warnings=list(record.get("warnings") or []), reused=reused)


def run_attack(job: EvalJob, key: str) -> AttackOutcome:
    """Run (or reuse the saved result of) the attack ``key`` on every example of the subset."""
    opts, n = job.opts, len(job.sub)
    choice = ATTACKS[key]
    name = attack_name(key, restarts=opts.restarts)
    if choice.kind == "autoattack":
        settings: dict[str, Any] = {"version": choice.version, "seed": opts.seed,
                                    "batch_size": opts.batch_size}
    else:
        spec = white_box_spec(key, job.eps, job.norm, restarts=opts.restarts,
                              step_size=opts.step_size)
        settings = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
        settings["seed"] = attack_seed(opts.seed, key)
        settings["random_start"] = PER_BATCH_SEEDING
    fp = {**job.common, "attack": key, "settings": settings}
    saved = job.cache.get(key, name, fp)
    if saved is not None:
        job.log(f"{name}: reusing the saved result ({saved['seconds']:.1f} s when computed) "
                f"from {job.cache.path(key, fp)}")
        return AttackOutcome.from_record(saved, reused=True)
    logger.debug("%s: computing on %d examples (rank %d of %d), settings %s", name, n,
                 job.dist.rank, job.dist.world_size, json.dumps(settings, sort_keys=True))
    t0 = time.perf_counter()
    if choice.kind == "autoattack":
        result = run_autoattack(job, key, name, choice.version or "standard", fp)
    else:
        advance = job.progress.counter(name, n if not job.dist.enabled else
                                       len(shard_index(n, opts.batch_size, job.dist)))
        adv = predict_sharded_batches(
            job.model, job.sub, spec, batch_size=opts.batch_size, device=job.device,
            dist=job.dist, seed_of=lambda b, s0=settings["seed"]: batch_seed(s0, b),
            on_batch=advance)
        result = {"details": {}, "warnings": [], "predictions": adv.tolist()}
    result.update(key=key, name=name, kind=choice.kind, settings=settings,
                  seconds=time.perf_counter() - t0)
    job.cache.put(key, fp, result)
    return AttackOutcome.from_record(result, reused=False)

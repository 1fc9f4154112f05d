"""The robustness evaluation protocol behind ``spat eval``.

:func:`evaluate` attacks a fixed subset of a split with every requested attack (each one from the
clean image, on every example; AutoAttack on the clean-correct ones), records the predicted
class of every example under every attack, runs the sanity checks of
:mod:`spat.evaluation.sanity`, and builds the report. With ``state_dir`` each finished attack is
saved at once (atomic JSON keyed by a fingerprint of model, data and settings) and AutoAttack
saves its state after every batch, so an interrupted evaluation resumes where it stopped and a
rerun with the same settings reuses what was computed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spat._version import __version__
from spat.attacks import autoattack as aa_mod
from spat.attacks.context import attack_mode
from spat.attacks.presets import pgd
from spat.data import Split, batches
from spat.data.subset import subset_indices
from spat.errors import SpatError
from spat.evaluation import sanity
from spat.evaluation.attacks import (
    ATTACKS,
    attack_name,
    white_box_spec,
)
from spat.evaluation.core import Predictions, predict_under_attacks
from spat.evaluation.options import EvalOptions, attacked_model
from spat.evaluation.report import SCHEMA, EvalReport, summarize
from spat.evaluation.sharding import combine, predict_sharded_batches, shard_index
from spat.utils.distributed import SINGLE, DistContext
from spat.utils.io import atomic_write_text
from spat.utils.log import logger
from spat.validation import loads_json

Log = Callable[[str], None]
CACHE_FORMAT = "spat.eval-cache/1"
#: How white-box random starts are seeded (recorded in each attack's settings, so results saved
#: under another rule are not reused): one generator per batch of ``batch_size``, seeded by
#: (attack seed, batch number), so the result does not depend on how batches are sharded.
PER_BATCH_SEEDING = "per batch: _derived_seed(attack seed, 'batch-<b>')"


def select_subset(n_total: int, n_examples: int | None, seed: int) -> torch.Tensor:
    """Indices of the evaluated examples: all (in order) when ``n_examples`` is None or ≥ the
    split size, else the first ``n_examples`` of ``torch.randperm(n_total)`` drawn from a CPU
    generator seeded with ``seed`` (the one rule, :mod:`spat.data.subset`)."""
    if n_examples is not None and n_examples < 1:
        raise SpatError(f"n-examples must be >= 1, got {n_examples}")
    return subset_indices(n_total, n_examples, seed)


def as_split(data: Split | tuple[torch.Tensor, torch.Tensor]) -> Split:
    """A :class:`~spat.data.Split` from a split or from plain tensors ``(x, y)`` (x float in
    [0, 1] or uint8, shape (N, C, H, W); y integer class indices, shape (N,)), on the CPU."""
    if isinstance(data, Split):
        return data
    if not (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)):
        raise SpatError("the data to evaluate must be a spat Split or a pair of tensors (x, y)")
    x, y = data
    if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise SpatError(f"expected x of shape (N, C, H, W) and y of shape (N,), got "
                        f"{tuple(x.shape)} and {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex():
        raise SpatError("labels y must be integer class indices")
    x = x.detach().cpu()
    if x.dtype != torch.uint8:
        x = x.float()
        if x.numel() and not (float(x.min()) >= 0.0 and float(x.max()) <= 1.0):
            raise SpatError(f"images must be in [0, 1] (got values in [{float(x.min()):.4g}, "
                            f"{float(x.max()):.4g}]); the model normalises inside itself")
    return Split(images=x, labels=y.detach().cpu().to(torch.int64))


def model_digest(model: nn.Module) -> str:
    """sha256 of the model's structure (``repr``) and every tensor of its ``state_dict``."""
    h = hashlib.sha256(repr(model).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
                 .tobytes())
    return h.hexdigest()[:16]


def _split_digest(split: Split, index: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in (index.to(torch.int64), split.images, split.labels):
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _derived_seed(seed: int, key: str) -> int:
    """A per-attack seed, so that an attack's random starts do not depend on which other
    attacks ran before it (needed to reuse and resume attacks one by one)."""
    return (int(seed) * 1_000_003 + zlib.crc32(key.encode())) % (2**62)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    dev = device if device.type in ("cpu", "cuda") else torch.device("cpu")
    return torch.Generator(device=dev).manual_seed(seed)


@dataclasses.dataclass(frozen=True)
class AttackOutcome:
    """One attack's result inside :func:`evaluate`: the predicted class of every evaluated
    example (``predictions``, in subset order), the attack's settings and timing, and its
    ``details``/``warnings`` (AutoAttack: robust counts after each sub-attack, ...). Its
    :meth:`from_record` reads the ``result`` of a saved cache file (the same fields except
    ``reused``); ``reused`` says whether it came from one."""

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


class _Cache:
    """Finished results as ``<root>/<key>-<fingerprint digest>.json`` (atomic writes)."""

    def __init__(self, root: Path | None, resume: bool, log: Log,
                 dist: DistContext = SINGLE) -> None:
        self.root = root
        self.resume = resume
        self.log = log
        self.dist = dist  # under torchrun rank 0 reads and writes, and tells the others

    def path(self, key: str, fp: dict[str, Any], suffix: str = ".json") -> Path | None:
        return None if self.root is None else self.root / f"{key}-{_digest(fp)}{suffix}"

    def get(self, key: str, label: str, fp: dict[str, Any]) -> dict[str, Any] | None:
        return self.dist.on_main(lambda: self._get(key, label, fp))

    def _get(self, key: str, label: str, fp: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(key, fp)
        if path is None or not self.resume:
            return None
        if path.is_file():
            try:
                doc = loads_json(path.read_text(encoding="utf-8"))
            except (ValueError, OSError):  # not JSON, not UTF-8, nested too deeply
                self.log(f"{label}: saved result {path} is unreadable; recomputing")
                return None
            if (isinstance(doc, dict) and doc.get("format") == CACHE_FORMAT
                    and doc.get("fingerprint") == fp):
                return doc["result"]
        assert self.root is not None
        own = re.compile(re.escape(key) + r"-[0-9a-f]{12}\.json")
        for other in sorted(self.root.glob(f"{key}-*.json")):
            if other == path or not own.fullmatch(other.name):
                continue
            try:
                old = loads_json(other.read_text(encoding="utf-8")).get("fingerprint", {})
            except (ValueError, OSError, AttributeError):
                continue
            changed = sorted(k for k in set(fp) | set(old) if fp.get(k) != old.get(k))
            self.log(f"{label}: a saved result exists for other settings "
                     f"({', '.join(changed)} differ); computing for these settings")
            break
        return None

    def put(self, key: str, fp: dict[str, Any], result: dict[str, Any]) -> None:
        path = self.path(key, fp)
        if path is not None and self.dist.is_main:
            atomic_write_text(path, json.dumps({"format": CACHE_FORMAT, "fingerprint": fp,
                                                "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                "result": result}))


class _Progress:
    """rich progress bars (or nothing)."""

    def __init__(self, enabled: bool, console: Any) -> None:
        self.enabled = enabled
        self.console = console
        self.bar: Any = None

    @contextmanager
    def running(self) -> Iterator[_Progress]:
        if not self.enabled:
            yield self
            return
        from rich.console import Console

        from spat.utils.progress import progress_bar

        console = self.console or Console(stderr=True)
        with progress_bar("{task.description:<28}", console=console) as bar:
            self.bar = bar
            try:
                yield self
            finally:
                self.bar = None

    def task(self, description: str, total: int) -> Callable[..., None]:
        """A task; returns ``update(advance=k)`` / ``update(completed=k, total=t, ...)``."""
        if self.bar is None:
            return lambda **kw: None
        tid = self.bar.add_task(description, total=total)
        return lambda **kw: self.bar.update(tid, **kw) if self.bar is not None else None


def evaluate(
    model: nn.Module,
    split: Split | tuple[torch.Tensor, torch.Tensor],
    options: EvalOptions | None = None,
    *,
    device: torch.device | str = "cpu",
    class_names: Sequence[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool = False,
    console: Any = None,
    log: Log | None = None,
    metadata: dict[str, Any] | None = None,
    dist: DistContext = SINGLE,
    **settings: Any,
) -> EvalReport:
    """Evaluate ``model`` on (a seeded subset of) ``split`` under ``options.attacks``.

    Args:
        model: any ``nn.Module`` that maps images in [0, 1] to logits (on ``device``);
            attacked in eval mode.
        split: the examples: a ``spat.data.Split`` (e.g. ``load_data(cfg).test``) or plain
            tensors ``(x, y)``, x float (N, C, H, W) in [0, 1] (or uint8 0..255), y (N,) class
            indices.
        options: the evaluation settings (:class:`~spat.evaluation.options.EvalOptions`: ε,
            attacks, norm, subset, seed, restarts, step size, batch size, sanity checks, attack
            logits); ``eps`` is required. Attacks run (and accumulate) in the canonical order
            fgsm, pgd20, pgd100, cw20, cw100, aa-fast, aa; each white-box attack's random start
            is seeded from (seed, attack key), AutoAttack gets ``seed`` itself.
        **settings: any :class:`EvalOptions` field (``eps=0.1, attacks=["pgd20"]``), replacing
            the value in ``options``.
        device: where the attacks run.
        class_names: for per-class accuracy (default "0", "1", ...).
        state_dir: where finished attacks and AutoAttack's running state are saved; None: no
            saving, no reuse.
        resume: reuse saved results with the same fingerprint (model weights, data subset,
            ε, norm, seed, batch size, device type, attack logits, attack settings) and continue
            an interrupted AutoAttack; False: recompute everything.
        progress: show rich progress bars (on ``console``, default stderr).
        log: receives one-line messages (reuse, recomputation); default: nothing.
        metadata: extra top-level fields of the report (run directory, config, ...).
        dist: under torchrun, every rank calls this and attacks its batches of the examples
            (:mod:`spat.evaluation.sharding`); every rank returns the whole report, which for
            the white-box attacks equals a one-process evaluation's. Rank 0 alone reads and
            writes saved results and runs the two attack-based sanity checks.

    Returns:
        An :class:`EvalReport` (JSON document in ``.data``, predictions in ``.predictions``).
        Clean predictions come from ``model`` itself; with ``attack_logits="unit_cosine"``
        every attack and attack-based check sees ``model(x) / s`` (same predictions).
    """
    t_start = time.perf_counter()
    log = log or (lambda s: None)
    split = as_split(split)
    opts = EvalOptions.of(options, **settings).with_threat(None, None)
    if len(split) == 0:
        raise SpatError("the split to evaluate is empty")
    device = torch.device(device)
    attacked, scale = attacked_model(model, opts.attack_logits)
    index = select_subset(len(split), opts.n_examples, opts.seed)
    sub = Split(images=split.images[index], labels=split.labels[index])
    n = len(sub)
    cache = _Cache(Path(state_dir) if state_dir is not None else None, resume, log, dist)
    warnings: list[str] = []
    checks: list[sanity.Check] = []

    # ---- checks on the model itself (cheap) -------------------------------------------
    checks.append(sanity.check_eval_mode(model))
    x0, y0 = next(batches(Split(images=sub.images[:128], labels=sub.labels[:128]), 128,
                          device=device))
    with attack_mode(model), torch.no_grad():
        out0 = model(x0)
        num_classes = int(out0.shape[1])
    if not bool(torch.isfinite(out0).all()):  # a broken model: attacking it means nothing
        bad = int((~torch.isfinite(out0)).any(dim=1).sum())
        raise SpatError(f"the model's outputs on clean test images are not finite (NaN or inf "
                        f"for {bad} of {len(x0)} examples); its weights are broken, nothing to "
                        f"evaluate")
    checks.append(sanity.check_deterministic(attacked, x0))
    checks.append(sanity.check_logits(attacked, x0))
    checks.append(sanity.check_gradients(attacked, x0, y0))
    names = list(class_names) if class_names is not None else [str(i) for i in
                                                               range(num_classes)]
    if len(names) != num_classes:
        raise SpatError(f"{len(names)} class names for a model with {num_classes} outputs")
    if int(sub.labels.max()) >= num_classes:
        raise SpatError(f"labels go up to {int(sub.labels.max())} but the model has "
                        f"{num_classes} outputs")

    common = {
        "model": model_digest(model), "data": _split_digest(sub, index), "eps": opts.eps,
        "norm": opts.norm, "seed": opts.seed, "batch_size": opts.batch_size,
        "device_type": device.type, "spat": __version__,
    }
    if opts.attack_logits != "model":  # absent: the model's logits (results saved before the
        common["attack_logits"] = opts.attack_logits  # option existed stay reusable)
        common["logit_scale"] = scale
    outcomes: list[AttackOutcome] = []
    prog = _Progress(progress, console)
    job = _Job(model=attacked, sub=sub, opts=opts, device=device, cache=cache, common=common,
               prog=prog, log=log, dist=dist)
    with prog.running():
        clean_preds = predict_under_attacks(model, sub, [], batch_size=opts.batch_size,
                                            device=device).clean
        for key in opts.attacks:
            outcomes.append(_attack(job, key))

        adversarial = {o.name: torch.tensor(o.predictions, dtype=torch.int64) for o in outcomes}
        preds = Predictions(labels=sub.labels.clone().to(torch.int64), clean=clean_preds,
                            adversarial=adversarial)

        # ---- attack-based sanity checks on a small subset --------------------------------
        m = min(opts.sanity_examples, n)
        if m > 0:
            # small (m examples): rank 0 runs them, with its own (non-collective) cache, and
            # the others receive the result
            own = dataclasses.replace(job, cache=_Cache(cache.root, cache.resume, log))
            checks.append(dist.on_main(lambda: _eps_sweep(own, m, num_classes)))
            checks.append(dist.on_main(lambda: _black_box(own, m, preds, outcomes)))
        else:
            checks.append(sanity.Check("eps_sweep", None, "skipped (--sanity-examples 0)"))
            checks.append(sanity.Check("black_box", None, "skipped (--sanity-examples 0)"))

    for c in checks:
        if c.warning:
            warnings.append(c.warning)
    for o in outcomes:
        warnings.extend(f"{o.name}: {w}" for w in o.warnings)

    data = _build(preds, outcomes, names, checks, warnings, index, len(split), job, scale,
                  metadata)
    data["settings"]["processes"] = dist.world_size
    data["timing"] = {"total_seconds": time.perf_counter() - t_start,
                      "attack_seconds": {o.name: o.seconds for o in outcomes}}
    return EvalReport(data=data, predictions=preds, checks=checks, warnings=warnings)


@dataclasses.dataclass(frozen=True)
class _Job:
    """What the steps of one :func:`evaluate` call share: the attacked module (the model, or
    its unit-cosine logits), the evaluated subset, the settings, and the plumbing (device,
    saved results, the fingerprint part common to every result, progress, log, ranks)."""

    model: nn.Module
    sub: Split
    opts: EvalOptions
    device: torch.device
    cache: _Cache
    common: dict[str, Any]
    prog: _Progress
    log: Log
    dist: DistContext


def _attack(job: _Job, key: str) -> AttackOutcome:
    """Run (or reuse the saved result of) the attack ``key`` on every example of the subset."""
    opts, n = job.opts, len(job.sub)
    choice = ATTACKS[key]
    name = attack_name(key, restarts=opts.restarts)
    if choice.kind == "autoattack":
        settings: dict[str, Any] = {"version": choice.version, "seed": opts.seed,
                                    "batch_size": opts.batch_size}
    else:
        assert opts.eps is not None and opts.norm is not None
        spec = white_box_spec(key, opts.eps, opts.norm, restarts=opts.restarts,
                              step_size=opts.step_size)
        settings = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
        settings["seed"] = _derived_seed(opts.seed, key)
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
        result = _run_autoattack(job, key, name, choice.version or "standard", fp)
    else:
        update = job.prog.task(name, n if not job.dist.enabled else
                               len(shard_index(n, opts.batch_size, job.dist)))
        adv = predict_sharded_batches(
            job.model, job.sub, spec, batch_size=opts.batch_size, device=job.device,
            dist=job.dist,
            seed_of=lambda b, s0=settings["seed"]: _derived_seed(s0, f"batch-{b}"),
            on_batch=lambda k, u=update: u(advance=k))
        result = {"details": {}, "warnings": [], "predictions": adv.tolist()}
    result.update(key=key, name=name, kind=choice.kind, settings=settings,
                  seconds=time.perf_counter() - t0)
    job.cache.put(key, fp, result)
    return AttackOutcome.from_record(result, reused=False)


def _full_batch(sub: Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return next(batches(sub, len(sub), device=device))


def _run_autoattack(job: _Job, key: str, name: str, version: str, fp: dict[str, Any]
                    ) -> dict[str, Any]:
    opts, sub, cache, dist = job.opts, job.sub, job.cache, job.dist
    batch_size, device = opts.batch_size, job.device
    assert opts.eps is not None and opts.norm is not None
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
    x, y = _full_batch(sub, device)
    tasks: dict[str, Callable[..., None]] = {}

    def on_progress(s: str, done: int, total: int) -> None:
        if s not in tasks:
            tasks[s] = job.prog.task(f"{name}: {aa_mod.LABELS[s]}", total)
        tasks[s](completed=done, total=total)

    r = aa_mod.run_autoattack(job.model, x, y, eps=opts.eps, norm=opts.norm, version=version,
                              seed=opts.seed, batch_size=batch_size, device=device,
                              state_path=state,
                              progress=on_progress)
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


def _eps_sweep(job: _Job, m: int, num_classes: int) -> sanity.Check:
    """PGD-20 accuracy on the first ``m`` examples at a sweep of radii around ε."""
    opts, sub, cache = job.opts, job.sub, job.cache
    eps, norm, seed = opts.eps, opts.norm, opts.seed
    assert eps is not None and norm is not None
    batch_size, device = opts.batch_size, job.device
    dim = int(sub.images[0].numel())
    eps_values = sanity.sweep_epsilons(eps, norm, dim)
    fp = {**job.common, "attack": "sanity-eps-sweep", "examples": m, "eps_values": eps_values}
    saved = cache.get("sanity-eps-sweep", "ε sweep", fp)
    if saved is None:
        small = Split(images=sub.images[:m], labels=sub.labels[:m])
        update = job.prog.task("sanity: ε sweep (PGD-20)", m * len(eps_values))
        accs = []
        for i, e in enumerate(eps_values):
            gen = _generator(device, _derived_seed(seed, f"sanity-eps-{i}"))
            p = predict_under_attacks(job.model, small, [pgd(e, steps=20, norm=norm)],
                                      batch_size=batch_size, device=device, generator=gen,
                                      on_batch=lambda k: update(advance=k))
            accs.append(p.accuracy(next(iter(p.adversarial))))
        saved = {"accuracy": accs}
        cache.put("sanity-eps-sweep", fp, saved)
    else:
        job.log("ε sweep: reusing the saved result")
    return sanity.check_eps_sweep(eps_values, saved["accuracy"], m, num_classes)


def _black_box(job: _Job, m: int, preds: Predictions, outcomes: list[AttackOutcome]
               ) -> sanity.Check:
    """Square (black box) on the first ``m`` examples that every white-box attack left
    correct; or, when standard AutoAttack ran, its own Square step."""
    opts, sub, cache = job.opts, job.sub, job.cache
    assert opts.eps is not None and opts.norm is not None
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
          "points": _digest(idx.tolist())}
    saved = cache.get("sanity-square", "Square check", fp)
    if saved is None:
        x, y = _full_batch(Split(images=sub.images[idx], labels=sub.labels[idx]), job.device)
        update = job.prog.task(f"sanity: Square ({queries} queries)", 1)
        out = aa_mod.run_square(job.model, x, y, eps=opts.eps, norm=opts.norm, n_queries=queries,
                                seed=opts.seed, batch_size=opts.batch_size, device=job.device)
        update(completed=1)
        saved = {"broken": int((out != y.cpu()).sum())}
        cache.put("sanity-square", fp, saved)
    else:
        job.log("Square check: reusing the saved result")
    return sanity.check_black_box(int(idx.numel()), saved["broken"], source)


def _build(preds: Predictions, outcomes: list[AttackOutcome], names: list[str],
           checks: list[sanity.Check], warnings: list[str], index: torch.Tensor, n_total: int,
           job: _Job, scale: float | None, metadata: dict[str, Any] | None) -> dict[str, Any]:
    opts = job.opts
    eps, norm, seed = opts.eps, opts.norm, opts.seed
    assert eps is not None and norm is not None
    labels = preds.labels
    clean = summarize(preds.correct(None), labels, names)
    cum = preds.correct(None)
    entries = []
    for o in outcomes:
        ok = preds.correct(o.name)
        cum = cum & ok
        s = summarize(ok, labels, names)
        entries.append({
            "key": o.key, "name": o.name, "kind": o.kind, "settings": o.settings,
            **s,
            "cumulative_accuracy": float(cum.sum()) / len(preds),
            "cumulative_correct": int(cum.sum()),
            "seconds": o.seconds, "reused": o.reused, "details": o.details,
        })
    ensemble = {**summarize(preds.robust_all(), labels, names),
                "attacks": [o.name for o in outcomes]}
    aa = next((e for e in entries if e["key"] == "aa"), None)
    subset = n_total != len(preds)
    data: dict[str, Any] = {
        "schema": SCHEMA,
        **(metadata or {}),
        "threat_model": aa_mod.AA_NORMS[norm],
        "norm": norm,
        "eps": float(eps),
        "n_examples": len(preds),
        "clean_acc": clean["accuracy"],
        "autoattack_acc": aa["accuracy"] if aa is not None else None,
        "robust_acc": ensemble["accuracy"],
        "subset": {
            "n_examples": len(preds), "of": n_total, "seed": int(seed),
            "rule": ("first n_examples of torch.randperm(of) with a CPU generator seeded by "
                     "seed" if subset else "the whole split, in order"),
            "indices": index.tolist() if subset else None,
        },
        "seed": int(seed),
        "settings": {
            "attacks": [o.key for o in outcomes], "restarts": opts.restarts,
            "step_size": opts.step_size, "default_step_size": "eps/4 (PGD/CW); eps (FGSM)",
            "batch_size": opts.batch_size, "device": str(job.device),
            "sanity_examples": opts.sanity_examples,
            "attack_logits": opts.attack_logits, "logit_scale": scale,
        },
        "classes": names,
        "class_counts": torch.bincount(labels, minlength=len(names))[:len(names)].tolist(),
        "clean": clean,
        "attacks": entries,
        "ensemble": ensemble,
        "sanity": {"passed": all(c.passed is not False for c in checks),
                   "checks": [c.to_dict() for c in checks]},
        "warnings": warnings,
        "versions": {"spat": __version__, "torch": torch.__version__,
                     "pyautoattack": aa_mod.pyautoattack_version()},
    }
    return data

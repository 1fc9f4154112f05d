"""AutoAttack (Croce & Hein, arXiv 2003.01690) through the ``pyautoattack`` package.

This is the only module that imports ``pyautoattack`` (a repackage of the official
fra31/auto-attack), and it does so lazily inside the functions. It runs the official
sub-attacks with the official settings:

* ``"standard"`` — APGD-CE (100 iterations, 1 restart), APGD-T (targeted DLR loss, 100
  iterations, the 9 most likely wrong classes as targets), FAB-T (targeted FAB, arXiv 1907.02044,
  100 iterations, 9 targets) and Square (black-box, arXiv 1912.00049, 5000 queries, p_init 0.8),
  each on the points that are still robust, in that order. APGD is "Reliable evaluation of
  adversarial robustness with an ensemble of diverse parameter-free attacks" (arXiv 2003.01690).
* ``"fast"`` — the first two of them (APGD-CE, APGD-T) with the same settings: exactly the
  prefix of the standard run, so per example the fast run's robust set contains the standard
  run's.

Why we drive the sub-attacks ourselves instead of calling ``run_standard_evaluation``: the loop
below is the official one (same order, same batching of the still-robust points, same seeding
of every sub-attack call), but it saves a resumable state after every batch. pyautoattack 0.2.0's
own ``state_path`` cannot resume: its state file stores the set of attacks as a string, so
reloading always raises "created with a different set of attacks", and on a restored state
``y_adv`` is never defined. Our state file is independent of that code.

AutoAttack's own checks (``pyautoattack.checks``: randomised defence, probability outputs,
dynamic defence, number of classes, zero gradients, Square stronger than the white-box attacks)
run as in the official code; what they log or warn is collected in
:attr:`AutoAttackResult.warnings` instead of being printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import logging.handlers
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spat.attacks.context import attack_mode
from spat.attacks.geometry import check_norm
from spat.errors import SpatError
from spat.utils.io import atomic_write_text
from spat.validation import loads_json

#: Sub-attacks of each version, in the order they run.
VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "fast": ("apgd-ce", "apgd-t"),
}
#: Report labels of the sub-attacks.
LABELS = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T", "square": "Square"}
#: The attribute of ``pyautoattack.AutoAttack`` that runs each sub-attack.
ATTACKERS = {"apgd-ce": "apgd", "apgd-t": "apgd_targeted", "fab-t": "fab", "square": "square"}
#: Our norm names -> AutoAttack's.
AA_NORMS = {"linf": "Linf", "l2": "L2"}
STATE_FORMAT = "spat.autoattack-state/1"
#: Progress callback: (sub-attack, examples done in it, examples it attacks).
Progress = Callable[[str, int, int], None]


@dataclass
class AutoAttackResult:
    """What one AutoAttack run found.

    Attributes:
        predictions: (N,) int64 CPU — the predicted class of each example after the attack
            (the clean prediction for examples misclassified clean or never broken).
        clean_predictions: (N,) int64 CPU — predictions on the clean images.
        broken_by: (N,) int64 CPU — 0: misclassified clean, i ≥ 1: first broken by sub-attack
            ``sub_attacks[i-1]``, -1: robust to every sub-attack.
        sub_attacks: the sub-attacks that were run, in order.
        robust_accuracy: ``{"clean": acc, "apgd-ce": acc, ...}`` — accuracy after each
            sub-attack, cumulative (as AutoAttack's log).
        seconds: wall time per sub-attack (summed over resumed sessions).
        max_perturbation: the largest ‖x_adv − x‖ (in the threat norm) over broken examples.
        warnings: messages of AutoAttack's checks and of this adapter (deduplicated).
        log: progress lines (what AutoAttack would have logged).
        resumed: True when an interrupted run was continued from ``state_path``.
        settings: version, norm, ε, seed, batch size, target classes, sub-attack settings.
        x_adv: adversarial images (only with ``return_adv``): for the examples broken in this
            call; the clean image elsewhere (also for examples broken before a resume).
    """

    predictions: torch.Tensor
    clean_predictions: torch.Tensor
    broken_by: torch.Tensor
    sub_attacks: list[str]
    robust_accuracy: dict[str, float]
    seconds: dict[str, float]
    max_perturbation: float
    warnings: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    resumed: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    x_adv: torch.Tensor | None = None


def aa_norm(norm: str) -> str:
    """``"linf"``/``"Linf"`` → ``"Linf"``, ``"l2"``/``"L2"`` → ``"L2"``."""
    return AA_NORMS[check_norm(norm.lower())]


def pyautoattack_version() -> str | None:
    """The installed pyautoattack version, or None when it is missing."""
    try:
        import pyautoattack
    except ImportError:
        return None
    return str(getattr(pyautoattack, "__version__", "unknown"))


@contextlib.contextmanager
def _session(model: nn.Module, x: torch.Tensor, device: torch.device | str | None,
             sink: list[str], log: list[str]) -> Iterator[tuple[Any, torch.device]]:
    """Yields ``(pyautoattack, device)`` with the model in attack mode, the caller's RNG state
    restored afterwards (every sub-attack call reseeds torch's global generator) and
    pyautoattack's output captured. ``device``: default where the model's parameters live
    (where ``x`` lives for a model without parameters)."""
    try:
        import pyautoattack
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise SpatError("AutoAttack needs the pyautoattack package (pip install "
                        f"pyautoattack==0.2.0): {e}") from None
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else x.device
    dev = torch.device(device)
    rng = ([dev.index if dev.index is not None else torch.cuda.current_device()]
           if dev.type == "cuda" else [])
    with attack_mode(model), torch.random.fork_rng(devices=rng), _captured(sink, log):
        yield pyautoattack, dev


@contextlib.contextmanager
def _captured(sink: list[str], log: list[str]) -> Iterator[None]:
    """Route pyautoattack's logger (warnings and above to ``sink``, the rest to ``log``),
    ``warnings.warn`` (to ``sink``) and prints (to ``log``)."""
    logger = logging.getLogger("auto-attack")
    saved = (logger.propagate, logger.level, logger.handlers)
    handler = logging.handlers.BufferingHandler(sys.maxsize)  # never flushes
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.DEBUG)
    out = io.StringIO()
    rec: list[warnings.WarningMessage] | None = []
    try:
        with warnings.catch_warnings(record=True) as rec, contextlib.redirect_stdout(out):
            warnings.simplefilter("always")
            yield
    finally:
        logger.propagate, logger.handlers = saved[0], saved[2]
        logger.setLevel(saved[1])
        for r in handler.buffer:
            (sink if r.levelno >= logging.WARNING else log).append(r.getMessage())
        sink.extend(str(w.message) for w in rec or ())
        log.extend(line for line in out.getvalue().splitlines() if line.strip())


def _fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(y.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _perturbation(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(p=2, dim=1)


def run_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    seed: int = 0,
    batch_size: int = 250,
    device: torch.device | str | None = None,
    state_path: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    return_adv: bool = False,
) -> AutoAttackResult:
    """Run AutoAttack ``version`` ("standard" or "fast") on ``(x, y)``; see the module docstring.

    Args:
        model: returns logits for images in [0, 1]; evaluated in eval mode with parameter
            gradients off (restored afterwards).
        x: images (N, C, H, W) in [0, 1]; y: labels (N,).
        eps: radius of the threat ball in [0, 1] pixel units.
        norm: "Linf"/"linf" or "L2"/"l2".
        version: "standard" (APGD-CE, APGD-T, FAB-T, Square) or "fast" (APGD-CE, APGD-T).
        seed: AutoAttack's seed (every sub-attack call reseeds torch's global generator with it,
            as the official code does; the caller's global RNG state is restored afterwards).
        batch_size: examples per sub-attack call (the official ``bs``; it changes the results
            slightly, since each call is seeded).
        device: where the model lives (default: the device of its first parameter).
        state_path: JSON file written after every batch; an interrupted run with the same
            settings and data continues from it; other settings or data start afresh.
        progress: called after each batch as ``progress(sub_attack, done, total)``.
        return_adv: also return the adversarial images (memory: one copy of ``x``).
    """
    if version not in VERSIONS:
        raise SpatError(f"unknown AutoAttack version {version!r} "
                        f"(valid: {', '.join(VERSIONS)})")
    if batch_size < 1:
        raise SpatError(f"batch size must be >= 1, got {batch_size}")
    if not eps >= 0:
        raise SpatError(f"eps must be >= 0, got {eps}")
    the_norm = aa_norm(norm)
    n = int(y.shape[0])
    if n == 0:
        raise SpatError("AutoAttack needs at least one example")
    x, y = x.detach(), y.detach().to(torch.int64)
    report = progress or (lambda sub, done, total: None)
    sink: list[str] = []
    log: list[str] = []
    with _session(model, x, device, sink, log) as (paa, dev):
        aa = paa.AutoAttack(model, norm=the_norm, eps=float(eps), seed=int(seed),
                            version="standard", device=dev)
        # what run_standard_evaluation sets before every sub-attack call (each attack's seed
        # is already the constructor's), then its checks on the type of defence
        aa.apgd.loss, aa.fab.targeted, aa.fab.n_restarts = "ce", True, 1
        subs, n_cls = _checks(paa, aa, x[:batch_size].to(dev), y[:batch_size].to(dev),
                              version, batch_size, sink)
        settings = {
            "version": version, "norm": the_norm, "eps": float(eps), "seed": int(seed),
            "batch_size": int(batch_size), "sub_attacks": subs, "n_classes": n_cls,
            "target_classes": aa.fab.n_target_classes,
            "apgd": {"n_iter": aa.apgd.n_iter, "n_restarts": aa.apgd.n_restarts,
                     "rho": aa.apgd.thr_decr, "eot_iter": aa.apgd.eot_iter},
            "apgd_t": {"n_iter": aa.apgd_targeted.n_iter,
                       "n_restarts": aa.apgd_targeted.n_restarts},
            "fab_t": {"n_iter": aa.fab.n_iter, "n_restarts": 1},
            "square": {"n_queries": aa.square.n_queries, "p_init": aa.square.p_init,
                       "n_restarts": aa.square.n_restarts},
            "pyautoattack": pyautoattack_version(),
        }
        key = {**settings, "n": n, "data": _fingerprint(x, y)}
        state = _load_state(state_path, key, log)
        resumed = state is not None
        if state is None:
            state = _fresh_state(aa, x, y, dev, batch_size, key)
            _save_state(state_path, state)
            log.append(f"initial accuracy: {state['robust_accuracy']['clean']:.2%}")
        else:
            log.append(f"resumed from {state_path}: done {', '.join(state['done']) or 'none'}")
        pred = torch.tensor(state["pred"], dtype=torch.int64)
        broken = torch.tensor(state["broken_by"], dtype=torch.int64)
        x_adv = x.clone() if return_adv else None
        for i, sub in enumerate(subs, start=1):
            if sub in state["done"]:
                continue
            cur = state["current"]
            if cur is None or cur["attack"] != sub:  # attack the points that are still robust
                order = torch.nonzero(broken == -1).flatten().tolist()
                cur = state["current"] = {"attack": sub, "order": order, "batches_done": 0}
                _save_state(state_path, state)
            order, total = cur["order"], len(cur["order"])
            report(sub, min(cur["batches_done"] * batch_size, total), total)
            seconds = state["seconds"]
            seconds.setdefault(sub, 0.0)
            for start in range(cur["batches_done"] * batch_size, total, batch_size):
                t0 = time.perf_counter()
                idx = torch.tensor(order[start:start + batch_size], dtype=torch.int64)
                xb, yb = x[idx.to(x.device)].to(dev), y[idx.to(y.device)].to(dev)
                adv = getattr(aa, ATTACKERS[sub]).perturb(xb, yb).detach()
                with torch.no_grad():
                    out = aa.get_logits(adv).argmax(1)
                fooled = out != yb
                hit = idx[fooled.cpu()]
                pred[hit], broken[hit] = out[fooled].cpu(), i
                if bool(fooled.any()):
                    size = float(_perturbation(adv[fooled] - xb[fooled], the_norm).max())
                    state["max_perturbation"] = max(state["max_perturbation"], size)
                    if x_adv is not None:
                        x_adv[hit.to(x_adv.device)] = adv[fooled].to(x_adv.device, x_adv.dtype)
                cur["batches_done"] += 1
                state["pred"], state["broken_by"] = pred.tolist(), broken.tolist()
                seconds[sub] += time.perf_counter() - t0
                _save_state(state_path, state)
                report(sub, min(start + batch_size, total), total)
            acc = state["robust_accuracy"][sub] = float((broken == -1).sum()) / n
            state["done"].append(sub)
            state["current"] = None
            _save_state(state_path, state)
            log.append(f"robust accuracy after {LABELS[sub]}: {acc:.2%} "
                       f"({seconds[sub]:.1f} s)")
        # AutoAttack's check that Square (black-box) did not beat the white-box attacks.
        paa.checks.check_square_sr(dict(state["robust_accuracy"]), logger=aa.logger)
        if state["max_perturbation"] > eps * (1 + 1e-5) + 1e-6:
            sink.append("AutoAttack returned a perturbation of size "
                        f"{state['max_perturbation']:.6f} > eps {eps:.6f}")
    return AutoAttackResult(
        predictions=pred, clean_predictions=torch.tensor(state["clean"], dtype=torch.int64),
        broken_by=broken, sub_attacks=subs, robust_accuracy=dict(state["robust_accuracy"]),
        seconds=dict(state["seconds"]), max_perturbation=float(state["max_perturbation"]),
        warnings=list(dict.fromkeys(sink)), log=log, resumed=resumed, settings=settings,
        x_adv=x_adv,
    )


def _checks(paa: Any, aa: Any, x: torch.Tensor, y: torch.Tensor, version: str,
            batch_size: int, sink: list[str]) -> tuple[list[str], int]:
    """AutoAttack's checks on the first batch (randomised defence, probability outputs, dynamic
    defence, number of classes); sets the number of target classes of APGD-T and FAB-T (9, or
    K − 1 for K ≤ 9 classes) and drops APGD-T below 4 classes. Returns the sub-attacks to run
    and K."""
    paa.checks.check_randomized(aa.get_logits, x, y, bs=batch_size, logger=aa.logger)
    n_cls = int(paa.checks.check_range_output(aa.get_logits, x, logger=aa.logger))
    paa.checks.check_dynamic(aa.model, x, False, logger=aa.logger)
    if n_cls < 2:
        raise SpatError(f"AutoAttack needs at least 2 classes, the model outputs {n_cls}")
    n_targets = aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = min(9, n_cls - 1)
    if n_targets < 9:
        sink.append(f"{n_cls} classes: APGD-T and FAB-T use {n_targets} target classes "
                    "instead of 9")
    subs = list(VERSIONS[version])
    if n_cls < 4 and "apgd-t" in subs:
        subs.remove("apgd-t")
        sink.append(f"{n_cls} classes: APGD-T skipped (its targeted DLR loss needs >= 4)")
    paa.checks.check_n_classes(n_cls, subs, n_targets, n_targets, logger=aa.logger)
    return subs, n_cls


def _fresh_state(aa: Any, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                 batch_size: int, key: dict[str, Any]) -> dict[str, Any]:
    """The state before the first sub-attack: the clean predictions; the correctly classified
    examples are the robust set (``broken_by`` -1), the others are broken by nothing (0)."""
    with torch.no_grad():
        clean = torch.cat([aa.get_logits(x[s:s + batch_size].to(device)).argmax(1).cpu()
                           for s in range(0, len(y), batch_size)])
    broken = torch.where(clean == y.cpu(), -1, 0)
    return {"format": STATE_FORMAT, "key": key, "clean": clean.tolist(),
            "pred": clean.tolist(), "broken_by": broken.tolist(), "done": [], "current": None,
            "robust_accuracy": {"clean": float((broken == -1).sum()) / len(y)},
            "seconds": {}, "max_perturbation": 0.0}


def _load_state(path: str | os.PathLike[str] | None, key: dict[str, Any],
                log: list[str]) -> dict[str, Any] | None:
    if path is None or not Path(path).is_file():
        return None
    try:
        state = loads_json(Path(path).read_text(encoding="utf-8"))
    except (ValueError, OSError):  # not JSON, not UTF-8, nested too deeply
        log.append(f"AutoAttack state {path} is unreadable; starting afresh")
        return None
    if (not isinstance(state, dict) or state.get("format") != STATE_FORMAT
            or state.get("key") != json.loads(json.dumps(key))):
        log.append(f"AutoAttack state {path} was made with other settings or data; "
                   "starting afresh")
        return None
    return state


def _save_state(path: str | os.PathLike[str] | None, state: dict[str, Any]) -> None:
    if path is not None:
        atomic_write_text(path, json.dumps(state))


def run_square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    n_queries: int = 1000,
    seed: int = 0,
    batch_size: int = 250,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The black-box Square attack alone (Andriushchenko et al., arXiv 1912.00049; AutoAttack's
    settings: p_init 0.8, margin loss, 1 restart) with ``n_queries`` queries.

    Returns the predicted class of every example after the attack, (N,) int64 on the CPU. Used by
    the evaluation's sanity check "the black-box attack is not stronger than the white-box ones".
    """
    the_norm = aa_norm(norm)
    out = torch.empty(int(y.shape[0]), dtype=torch.int64)
    with _session(model, x, device, [], []) as (paa, dev):
        sq = paa.square.SquareAttack(model, p_init=0.8, n_queries=int(n_queries),
                                     eps=float(eps), norm=the_norm, n_restarts=1,
                                     seed=int(seed), verbose=False, device=dev,
                                     resc_schedule=False)
        for s in range(0, int(y.shape[0]), batch_size):
            adv = sq.perturb(x[s:s + batch_size].to(dev), y[s:s + batch_size].to(dev))
            with torch.no_grad():
                out[s:s + batch_size] = model(adv).argmax(1).cpu()
    return out

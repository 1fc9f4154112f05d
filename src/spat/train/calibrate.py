"""``auto`` fast path of a training run by measurement: the run's own step, timed in every
candidate setting on a real batch (:mod:`spat.utils.calibration` holds the timing rules, the
choice and the cache; :mod:`spat.utils.hardware` the candidates' static rule)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from spat.config import TrainConfig
from spat.data import DataBundle, augment_batch, batches
from spat.methods import for_epoch as method_for_epoch
from spat.methods import hooks as method_hooks
from spat.train.optim import make_optimizer
from spat.train.step import train_step
from spat.utils import calibration as cal
from spat.utils import hardware
from spat.utils.hardware import FastPath, cpu_model, resolve_fast_path

Log = Callable[[str], None]


def with_attack_steps(method: Any, k: int) -> Any:
    """``method`` with its training attack cut to ``k`` steps (a frozen dataclass with a
    ``threat``), or ``method`` itself where it has no such field."""
    threat = getattr(method, "threat", None)
    if not (dataclasses.is_dataclass(method) and dataclasses.is_dataclass(threat)
            and hasattr(threat, "steps")) or threat.steps == k:
        return method
    return dataclasses.replace(method, threat=dataclasses.replace(threat, steps=k))


def calibration_key(cfg: TrainConfig, data: DataBundle, device: torch.device,
                    local_batch: int) -> dict[str, Any]:
    """What the step time depends on: the machine (CPU model, GPU, threads, torch) and the
    step (model, head, input shape, batch, method)."""
    info = data.info
    return {"cpu": cpu_model(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else device.type, "threads": torch.get_num_threads(),
            "model": cfg.model, "head": cfg.head,
            "input": [info.channels, info.height, info.width], "batch": local_batch,
            "method": cfg.method}


def _fast_path(setting: cal.Setting, static: FastPath, reason: str,
               record: dict[str, Any]) -> FastPath:
    reasons = dict(static.reasons)
    for k in ("amp", "channels_last", "compile"):
        if static.requested[k] == "auto":
            reasons[k] = reason
    return FastPath(amp=setting.amp, channels_last=setting.channels_last,
                    compile=setting.compile, requested=static.requested, reasons=reasons,
                    calibration=record)


def measure_fast_path(cfg: TrainConfig, data: DataBundle, model: nn.Module, method: Any,
                      device: torch.device, *, local_batch: int, run_steps: int,
                      log: Log) -> FastPath:
    """The fast path of a new run: the static rule for the switches given explicitly and where
    nothing is to choose; otherwise the fastest candidate, from the cache or measured now.

    ``--deterministic`` runs are not timed (a measurement could choose differently from one run
    to the next): they take the static rule. ``model`` and the optimizer state are not touched
    (each candidate trains a copy), and the random generators are restored afterwards.
    """
    static = resolve_fast_path(cfg.amp, cfg.channels_last, cfg.compile, device)
    settings = cal.candidates(static.requested, device.type,
                              native_bf16=hardware.cpu_bf16_support()[0] if device.type == "cpu"
                              else False)
    compile_auto = device.type == "cuda" and static.requested["compile"] == "auto"
    if len(settings) < 2 and not compile_auto:
        return static
    if cfg.deterministic:
        reasons = {k: (v + " (--deterministic: not timed)" if static.requested[k] == "auto"
                       else v) for k, v in static.reasons.items()}
        return dataclasses.replace(static, reasons=reasons)
    key_parts = calibration_key(cfg, data, device, local_batch)
    key = cal.cache_key(key_parts)
    names = [s.name for s in settings]
    by_name = {s.name: s for s in settings}
    cached = cal.lookup(key, names, log)
    if cached is not None:
        times = {n: float(cached["times_s"][n]) for n in names}
        for n in cached["times_s"] if compile_auto else ():
            try:
                setting = cal.Setting.from_name(n)
            except ValueError:  # a hand-edited cache: ignore the entry
                continue
            if setting.compile:
                times[n] = float(cached["times_s"][n])
                by_name[n] = setting
        best = cal.choose(times, run_steps=run_steps, first=cached.get("first_step_s"))
        record = {"source": "cache", "cache_file": str(cal.cache_dir() / cal.CACHE_FILE),
                  "key": key_parts, "chosen": best, **cached}
        reason = (f"auto: {best} was the fastest step measured on this machine "
                  f"({_times_text(times)}; cached)")
        log(f"fast path: {best} ({_times_text(times)}, from the cache)")
        return _fast_path(by_name[best], static, reason, record)

    k = int(getattr(getattr(method, "threat", None), "steps", 1) or 1)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        step_maker = _step_maker(cfg, data, model, method, device, local_batch)
        result = cal.calibrate(step_maker, settings, k=k, run_steps=run_steps,
                               compile_candidate=compile_auto)
    if result is None:
        log(f"fast path: not measured (the calibration would exceed its budget, "
            f"{cal.MIN_BUDGET_S:g} s or {100 * cal.BUDGET_FRACTION:g} % of the run); using the "
            f"static rule")
        reasons = {kk: (v + " (not measured: the run is too short for the calibration's "
                        "budget)"
                        if static.requested[kk] == "auto" else v)
                   for kk, v in static.reasons.items()}
        return dataclasses.replace(static, reasons=reasons)
    for n in result.times:
        if n not in by_name:
            by_name[n] = cal.Setting.from_name(n)
    best = cal.choose(result.times, run_steps=run_steps, first=result.first)
    measured = result.to_dict()
    written = cal.store(key, {**measured, "key": key_parts}, log)
    record = {"source": "measured", "key": key_parts, "chosen": best,
              "cache_file": str(cal.cache_dir() / cal.CACHE_FILE) if written else None,
              **measured}
    reason = f"auto: {best} was the fastest step measured ({_times_text(result.times)})"
    log(f"fast path: {best} ({_times_text(result.times)}; calibration {result.steps_run} "
        f"steps, {result.seconds:.1f} s)")
    return _fast_path(by_name[best], static, reason, record)


def _times_text(times: dict[str, float]) -> str:
    return ", ".join(f"{n} {1000 * t:.1f} ms" for n, t in sorted(times.items(),
                                                                 key=lambda kv: kv[1]))


def _step_maker(cfg: TrainConfig, data: DataBundle, model: nn.Module, method: Any,
                device: torch.device, local_batch: int
                ) -> Callable[[cal.Setting, int], Callable[[], None]]:
    """``make_step(setting, k)`` for :func:`spat.utils.calibration.calibrate`: one real
    training step of the run (its first batch, augmentation, method of epoch 1 with ``k``
    attack steps, optimizer and hooks) on a copy of ``model`` in ``setting``."""
    assert cfg.lr is not None and cfg.weight_decay is not None
    x0, y = next(iter(batches(data.train, local_batch, device=device, shuffle=True,
                              generator=torch.Generator().manual_seed(0))))
    epoch_method = method_for_epoch(method, 0)
    before, after = method_hooks(epoch_method)
    # the optimizer's one-time set-up (its first construction imports torch._dynamo, ~1 s) is
    # the run's cost, not a candidate's: paid here, outside the timed budget
    make_optimizer(model, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                   nesterov=cfg.nesterov, device=device)

    def make_step(setting: cal.Setting, k: int) -> Callable[[], None]:
        m = copy.deepcopy(model)
        if setting.channels_last:
            m = m.to(memory_format=torch.channels_last)
        train_model: nn.Module = torch.compile(m) if setting.compile else m
        train_model.train()
        opt = make_optimizer(m, lr=cfg.lr, momentum=cfg.momentum,
                             weight_decay=cfg.weight_decay, nesterov=cfg.nesterov,
                             device=device)
        meth = with_attack_steps(epoch_method, k)
        aug_gen = torch.Generator().manual_seed(1)
        attack_gen = torch.Generator(device=device).manual_seed(2)

        def step() -> None:
            x = augment_batch(x0, data.info.augment, aug_gen)
            if setting.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            train_step(train_model, opt, meth, x, y, generator=attack_gen,
                       amp_device=device.type if setting.amp else None,
                       before_step=before, after_step=after)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        return step

    return make_step

"""Time our SPAT / TRADES / PGD-AT training step and PGD-20 evaluation side by side with the
official-style reference (``benchmarks/reference.py``), in one run, on the same model, batch, K
and inputs, after checking that both compute the same losses.

    PYTHONPATH=src:. python benchmarks/bench.py --device cpu            # CPU, small_cnn 28x28x1
    PYTHONPATH=src:. python benchmarks/bench.py --device cpu --model resnet18 --batch 32
    PYTHONPATH=src:. python benchmarks/bench.py --device cuda --model preact_resnet18

See ``benchmarks/README.md`` for what is measured and how to read ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT / "src"), str(ROOT)) if p not in sys.path]

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import common as C  # noqa: E402
from benchmarks import reference as R  # noqa: E402
from spat.attacks import cross_entropy, perturb, pgd  # noqa: E402
from spat.data import DataBundle, DatasetInfo, Split, augment_batch, batches  # noqa: E402
from spat.evaluation.core import predict_under_attacks  # noqa: E402
from spat.methods import PGDAT, ThreatModel, spat, trades  # noqa: E402
from spat.models import build_model  # noqa: E402
from spat.train.optim import make_optimizer  # noqa: E402
from spat.utils.hardware import resolve_fast_path  # noqa: E402

METHODS = ("spat", "trades", "pgd_at")
HEAD = {"spat": "cosine", "trades": "linear", "pgd_at": "linear"}
LABEL = {"spat": "SPAT", "trades": "TRADES", "pgd_at": "PGD-AT"}
NUM_CLASSES = 10
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 2e-4
#: Dense peak throughput (TFLOP/s) of known GPUs: (bf16 tensor core, fp32 non-tensor core).
#: CPU settings of our step timed side by side: name -> (bf16 autocast, channels_last, compile).
SETTINGS = {"fp32": (False, False, False), "bf16": (True, False, False),
            "channels_last": (False, True, False), "bf16+channels_last": (True, True, False),
            "bf16+channels_last+compile": (True, True, True)}
GPU_PEAKS = {"H100": (989.4, 66.9), "H200": (989.4, 66.9), "A100": (312.0, 19.5),
             "L40S": (362.1, 91.6), "A10": (125.0, 31.2), "L4": (121.0, 30.3)}


# ============================================================================== building blocks


def input_spec(model_name: str) -> tuple[int, int, int, str]:
    """(channels, height, width, augmentation): 28x28x1 MNIST-like for small_cnn (no
    augmentation), 32x32x3 CIFAR-like with crop + flip for the ResNets/WRNs."""
    return (1, 28, 28, "none") if model_name == "small_cnn" else (3, 32, 32, "crop_flip")


def synthetic_split(n: int, model_name: str, seed: int) -> Split:
    c, h, w, _ = input_spec(model_name)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    return Split(images=images, labels=torch.randint(0, NUM_CLASSES, (n,), generator=g))


def threat_for(name: str, steps: int) -> ThreatModel:
    """The methods' own training adversaries: ε 0.031 / η 0.007 (TRADES, SPAT; normal start),
    ε 8/255 / η 2/255 (PGD-AT; uniform start); K = ``steps``."""
    if name == "pgd_at":
        return ThreatModel(eps=8 / 255, step_size=2 / 255, steps=steps, init="uniform")
    return ThreatModel(eps=0.031, step_size=0.007, steps=steps, init="normal")


def ours_method(name: str, steps: int):
    t = threat_for(name, steps)
    if name == "spat":
        return spat(threat=t)
    if name == "trades":
        return trades(threat=t)
    return PGDAT(threat=t)


def ref_loss_fn(name: str, steps: int, scale: float | None,
                generator: torch.Generator | None) -> Callable[..., torch.Tensor]:
    """``loss(model, x, y, optimizer, x_adv=None)`` of the reference, hyperparameters bound."""
    t = threat_for(name, steps)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             optimizer: torch.optim.Optimizer, x_adv: torch.Tensor | None = None) -> torch.Tensor:
        if name == "spat":
            assert scale is not None
            return R.spat_loss(model, x, y, optimizer, step_size=t.step_size, epsilon=t.eps,
                               perturb_steps=t.steps, beta=6.0, m=0.2, n=0.2, s=scale,
                               num_classes=NUM_CLASSES, generator=generator, x_adv=x_adv)
        if name == "trades":
            return R.trades_loss(model, x, y, optimizer, step_size=t.step_size, epsilon=t.eps,
                                 perturb_steps=t.steps, beta=6.0, generator=generator,
                                 x_adv=x_adv)
        return R.pgd_at_loss(model, x, y, optimizer, step_size=t.step_size, epsilon=t.eps,
                             perturb_steps=t.steps, generator=generator, x_adv=x_adv)

    return loss


def build_pair(name: str, model_name: str, seed: int, device: torch.device
               ) -> tuple[nn.Module, R.RefNet, float | None]:
    """Our model and the reference network with identical initial weights, on ``device``."""
    c, h, w, _ = input_spec(model_name)
    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=NUM_CLASSES, in_channels=c, image_size=(h, w),
                        head=HEAD[name])
    ref, scale = R.reference_model(model)
    return model.to(device), ref.to(device), scale


def device_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_dropout(model: nn.Module, p: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


# ============================================================================== the two steps


class OursTrainer:
    """One training step exactly as ``spat.train.loop.Trainer.train_epoch`` runs it: batches of
    the device-resident split (``spat.data.batches``), batched augmentation, channels_last and
    bf16 autocast when the setting says so (the loop's ``auto``: see ``spat.utils.hardware``), the
    method, ``zero_grad(set_to_none)``, backward, the project's SGD
    (fused on CUDA, foreach on CPU), metrics accumulated on the device without host reads."""

    def __init__(self, model: nn.Module, method: Any, split: Split, *, batch: int,
                 device: torch.device, augment: str, amp: bool, compile_: bool,
                 channels_last: bool, seed: int) -> None:
        self.model, self.method, self.split, self.batch = model, method, split, batch
        self.device, self.augment, self.amp = device, augment, amp
        self.channels_last = channels_last
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.train_model = torch.compile(model) if compile_ else model
        self.optimizer = make_optimizer(model, lr=LR, momentum=MOMENTUM,
                                        weight_decay=WEIGHT_DECAY, nesterov=False, device=device)
        self.data_gen = torch.Generator().manual_seed(seed)
        self.aug_gen = torch.Generator().manual_seed(seed + 1)
        self.attack_gen = device_generator(device, seed + 2)
        zero = torch.zeros((), device=device)
        self.loss_sum, self.n_seen, self.adv_ok = zero.clone(), zero.clone(), zero.clone()
        self._it = self._forever()
        self.train_model.train()

    def _forever(self):
        while True:
            yield from batches(self.split, self.batch, device=self.device, shuffle=True,
                               generator=self.data_gen, drop_last=True)

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def step(self) -> None:
        x, y = next(self._it)
        for g in self.optimizer.param_groups:
            g["lr"] = LR
        x = augment_batch(x, self.augment, self.aug_gen)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = self.method(self.train_model, x, y, generator=self.attack_gen)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        b = y.shape[0]
        self.loss_sum += out.loss.detach().float() * b
        self.n_seen += b
        if out.logits_adv is not None:
            self.adv_ok += (out.logits_adv.argmax(1) == y).sum()


class RefTrainer:
    """One step of the official ``train()`` loop: the next DataLoader batch (per-sample CPU
    transforms), ``.to(device)``, the official-style loss (attack inside), backward, plain
    ``optim.SGD``; the loss is read on the host every 80 batches as the official progress print."""

    def __init__(self, ref: nn.Module, loss: Callable[..., torch.Tensor], split: Split, *,
                 batch: int, device: torch.device, augment: str, seed: int) -> None:
        self.ref, self.loss, self.device = ref, loss, device
        self.loader = R.make_loader(split.images, split.labels, batch_size=batch, device=device,
                                    shuffle=True, augment=augment,
                                    generator=torch.Generator().manual_seed(seed),
                                    drop_last=True)
        self.optimizer = R.make_optimizer(ref, LR, MOMENTUM, WEIGHT_DECAY)
        self.batch_idx = 0
        self._it = self._forever()
        self.ref.train()

    def _forever(self):
        while True:
            yield from self.loader

    def step(self) -> None:
        data, target = next(self._it)
        data, target = data.to(self.device), target.to(self.device)
        self.optimizer.zero_grad()
        loss = self.loss(self.ref, data, target, self.optimizer)
        loss.backward()
        self.optimizer.step()
        if self.batch_idx % 80 == 0:
            loss.item()
        self.batch_idx += 1


def loop_setting(args: argparse.Namespace, device: torch.device, name: str = "spat"
                 ) -> tuple[bool, bool, bool]:
    """(amp, channels_last, compile) as ``spat train`` resolves its defaults (``auto``) for
    method ``name`` on ``device``: measured by the loop's own calibration
    (:func:`spat.train.calibrate.measure_fast_path`, fresh unless ``--auto-cache``), with
    ``--amp/--no-amp`` and ``--compile`` overriding. Measured once per method and run."""
    memo = args.__dict__.setdefault("_auto", {})
    if name not in memo:
        memo[name] = measure_auto(args, device, name)
    fp = memo[name]["fast_path"]
    return fp.amp, fp.channels_last, fp.compile


def measure_auto(args: argparse.Namespace, device: torch.device, name: str) -> dict[str, Any]:
    """The loop's ``auto`` decision for method ``name`` (bench's model, batch, K, synthetic
    images), and what its calibration measured and cost."""
    import os
    import tempfile

    from spat.config import TrainConfig
    from spat.train.calibrate import measure_fast_path

    c, h, w, augment = input_spec(args.model)
    cfg = TrainConfig(dataset="digits", model=args.model, head=HEAD[name], method=name,
                      steps=args.steps, epochs=1, batch_size=args.batch, lr=LR,
                      weight_decay=WEIGHT_DECAY, schedule="constant", device=device.type,
                      amp="auto" if args.amp is None else ("on" if args.amp else "off"),
                      compile="on" if args.compile else "off", val_size=0).resolved()
    info = DatasetInfo(name="synthetic", num_classes=NUM_CLASSES, channels=c, height=h, width=w,
                       class_names=tuple(str(i) for i in range(NUM_CLASSES)), mean=(0.0,) * c,
                       std=(1.0,) * c, augment=augment, family="custom")
    split = synthetic_split(args.batch, args.model, args.seed + 7)
    empty = Split(images=split.images[:0], labels=split.labels[:0])
    data = DataBundle(info=info, train=split, val=empty, test=empty)
    model, _, _ = build_pair(name, args.model, args.seed, device)
    saved = os.environ.get("SPAT_CACHE_DIR")
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="spat_bench_cache_") as tmp:
        if not args.auto_cache:
            os.environ["SPAT_CACHE_DIR"] = tmp  # a fresh measurement, as on a new machine
        try:
            t0 = time.perf_counter()
            fp = measure_fast_path(cfg, data, model, ours_method(name, args.steps), device,
                                   local_batch=args.batch, run_steps=args.auto_run_steps,
                                   log=notes.append)
            seconds = time.perf_counter() - t0
        finally:
            if saved is None:
                os.environ.pop("SPAT_CACHE_DIR", None)
            else:
                os.environ["SPAT_CACHE_DIR"] = saved
    print(f"[auto] {LABEL[name]:7s} {' '.join(notes)} ({seconds:.1f} s)", flush=True)
    return {"fast_path": fp, "seconds": seconds, "record": fp.to_dict()}


def setting_name(setting: tuple[bool, bool, bool]) -> str:
    return {v: k for k, v in SETTINGS.items()}[setting]


def variant_setting(args: argparse.Namespace, device: torch.device, variant: str,
                    name: str = "spat") -> tuple[bool, bool, bool]:
    """"ours" is the loop's default for method ``name``; "ours:<setting>" one of
    :data:`SETTINGS`."""
    if variant == "ours":
        return loop_setting(args, device, name)
    return SETTINGS[variant.split(":", 1)[1]]


def train_variants(args: argparse.Namespace, device: torch.device, name: str = "spat"
                   ) -> tuple[str, ...]:
    """The reference and, on a CPU, ours in every ``--cpu-settings`` setting (and in the loop's
    measured ``auto`` if that is none of them); on CUDA, ours as the loop runs it."""
    if device.type == "cpu" and args.cpu_settings:
        extra = () if setting_name(loop_setting(args, device, name)) in args.cpu_settings \
            else ("ours",)
        return ("reference", *(f"ours:{s}" for s in args.cpu_settings), *extra)
    return ("ours", "reference")


def make_trainers(args: argparse.Namespace, device: torch.device, name: str, split: Split,
                  *, steps: int, batch: int, variants: tuple[str, ...] = ("ours", "reference")
                  ) -> dict[str, Any]:
    """Trainers for ``variants`` ("reference", "ours": the loop's default setting on
    ``device``, "ours:<setting>": a setting of :data:`SETTINGS`), all starting from the same
    weights."""
    model, ref, scale = build_pair(name, args.model, args.seed, device)
    _, _, _, augment = input_spec(args.model)
    out: dict[str, Any] = {}
    for v in variants:
        if v == "reference":
            loss = ref_loss_fn(name, steps, scale, device_generator(device, args.seed + 2))
            out[v] = RefTrainer(ref, loss, split, batch=batch, device=device, augment=augment,
                                seed=args.seed)
        else:
            amp, cl, comp = variant_setting(args, device, v, name)
            out[v] = OursTrainer(copy.deepcopy(model), ours_method(name, steps), split,
                                 batch=batch, device=device, augment=augment, amp=amp,
                                 compile_=comp, channels_last=cl, seed=args.seed)
    return out


def time_interleaved(steps: dict[str, Callable[[], None]], *, repeats: int, warmup: int,
                     device: torch.device, first: dict[str, float] | None = None
                     ) -> dict[str, list[float]]:
    """Warm each up, then time them in rotating order (AB BA AB …), so drifting background
    load hits every variant alike. Returns the seconds of each timed call; ``first`` receives
    the seconds of each variant's first (warm-up) call, which includes any compilation."""
    names = list(steps)
    for i in range(warmup):
        for n in names:
            t0 = time.perf_counter()
            steps[n]()
            sync(device)
            if i == 0 and first is not None:
                first[n] = time.perf_counter() - t0
    sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            sync(device)
            t0 = time.perf_counter()
            steps[n]()
            sync(device)
            times[n].append(time.perf_counter() - t0)
    return times


def paired_ratios(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True)]


def count_flops(step: Callable[[], None]) -> int | None:
    """FLOPs of one call of ``step``, counted with ``torch.utils.flop_counter``'s formulas
    (convolutions and matrix products, forward and backward). ``FlopCounterMode`` itself cannot
    be used: its module tracker fails on ``autograd.grad`` w.r.t. a leaf (the attacks), so the
    same registry is applied from a plain dispatch mode."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry
    except ImportError:  # pragma: no cover
        return None

    class _Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            packet = func._overloadpacket
            if packet in flop_registry:
                _Count.total += int(flop_registry[packet](*args, **kwargs, out_val=out))
            return out

    with _Count():
        step()
    return _Count.total


def gpu_peak(device: torch.device) -> tuple[str, float] | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (bf16, _fp32) in GPU_PEAKS.items():
        if key in name:
            return f"{key} dense bf16", bf16
    return None


# ============================================================================== fairness check


def check_method(args: argparse.Namespace, device: torch.device, name: str, split: Split
                 ) -> dict[str, Any]:
    """Same initial weights, same inputs, same attack noise, same dropout masks: compare
    (1) the adversarial examples, (2) the whole step's loss (each side attacking itself),
    (3) the loss (and, for linear heads, the parameter gradients) on identical adversarial
    examples. fp32, eager, contiguous for both sides."""
    k = args.steps
    n = min(args.check_batch, len(split))
    x = split.images[:n].to(device).float().div_(255.0)
    y = split.labels[:n].to(device)
    model, _, _ = build_pair(name, args.model, args.seed, device)
    if name == "trades":
        # The official TRADES draws a third dropout mask (model(x_natural) again in the robust
        # term); with dropout active the two sides differ by design, so dropout is off here.
        set_dropout(model, 0.0)
    method = ours_method(name, k)
    t = method.threat
    seed = args.seed + 11

    def ours_adv() -> torch.Tensor:
        gen = device_generator(device, seed)
        if name == "pgd_at":
            return perturb(model, x, y, cross_entropy, eps=t.eps, step_size=t.step_size,
                           steps=t.steps, norm=t.norm, init=t.init, generator=gen)
        return method.adversarial(model, x, y, gen)

    model.train()
    a = ours_adv()
    ref, scale = R.reference_model(model)
    ref.eval()
    b = R.reference_attack(name, ref, x, y, eps=t.eps, step_size=t.step_size, steps=k,
                           scale=scale, generator=device_generator(device, seed))
    agree = float((a == b).float().mean())

    model.train()
    torch.manual_seed(seed)
    out = method(model, x, y, generator=device_generator(device, seed))
    ours_loss = float(out.loss.detach())
    model.zero_grad(set_to_none=True)
    out.loss.backward()

    ref, scale = R.reference_model(model)
    ref.train()
    opt = R.make_optimizer(ref, LR)
    torch.manual_seed(seed)
    ref_loss = float(ref_loss_fn(name, k, scale, device_generator(device, seed))(
        ref, x, y, opt).detach())

    ref2, scale = R.reference_model(model)
    ref2.train()
    opt2 = R.make_optimizer(ref2, LR)
    torch.manual_seed(seed)
    given = ref_loss_fn(name, k, scale, None)(ref2, x, y, opt2, x_adv=a)
    given.backward()
    given_loss = float(given.detach())
    grad_rel = None
    if HEAD[name] == "linear":
        worst = 0.0
        for (pn, p), (_, q) in zip(model.named_parameters(), ref2.named_parameters(),
                                   strict=True):
            assert p.grad is not None and q.grad is not None, pn
            scale_g = float(p.grad.abs().max()) + 1e-12
            worst = max(worst, float((p.grad - q.grad).abs().max()) / scale_g)
        grad_rel = worst

    def rel(u: float, v: float) -> float:
        return abs(u - v) / max(abs(v), 1e-12)

    res = {
        "method": name, "batch": n, "steps": k, "ours_loss": ours_loss, "ref_loss": ref_loss,
        "rel_end_to_end": rel(ours_loss, ref_loss), "ref_loss_same_adv": given_loss,
        "rel_same_adv": rel(ours_loss, given_loss), "adv_pixels_equal": agree,
        "grad_rel_same_adv": grad_rel, "dropout": "off" if name == "trades" else "on",
    }
    failures = []
    if res["rel_same_adv"] > args.rtol:
        failures.append(f"loss on identical adversarial examples differs by "
                        f"{res['rel_same_adv']:.2e} (> rtol {args.rtol:g})")
    if res["rel_end_to_end"] > args.rtol_step:
        failures.append(f"whole-step loss differs by {res['rel_end_to_end']:.2e} "
                        f"(> rtol {args.rtol_step:g})")
    if agree < args.min_adv_agreement:
        failures.append(f"only {100 * agree:.2f}% of adversarial pixels agree "
                        f"(< {100 * args.min_adv_agreement:.0f}%)")
    if grad_rel is not None and grad_rel > args.grad_rtol:
        failures.append(f"parameter gradients differ by {grad_rel:.2e} of their max "
                        f"(> {args.grad_rtol:g})")
    res["failures"] = failures
    return res


@contextlib.contextmanager
def strict_fp32(device: torch.device):
    """fp32 without TF32 and with deterministic cuDNN for the check (no-op on the CPU)."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved


def fairness_check(args: argparse.Namespace, device: torch.device, split: Split
                   ) -> list[dict[str, Any]]:
    results = []
    with strict_fp32(device):
        for name in args.methods:
            r = check_method(args, device, name, split)
            results.append(r)
            status = "ok" if not r["failures"] else "FAILED"
            print(f"[check] {LABEL[name]:7s} ours {r['ours_loss']:.7f}  reference "
                  f"{r['ref_loss']:.7f}  rel {r['rel_end_to_end']:.1e}  | same x_adv: rel "
                  f"{r['rel_same_adv']:.1e}  | x_adv pixels equal "
                  f"{100 * r['adv_pixels_equal']:.2f}%  -> {status}", flush=True)
    bad = [r for r in results if r["failures"]]
    if bad:
        lines = [f"  {LABEL[r['method']]}: " + "; ".join(r["failures"]) for r in bad]
        raise SystemExit("FAIRNESS CHECK FAILED — ours and the reference do not compute the "
                         "same losses on the same inputs, weights and attack noise, so no "
                         "timing is reported:\n" + "\n".join(lines))
    return results


def eval_check(ours_preds: Any, ref_counts: tuple[int, int, int, float]) -> dict[str, Any]:
    clean_ok, adv_ok, total, _ = ref_counts
    ours_clean = int(ours_preds.correct(None).sum())
    name = next(iter(ours_preds.adversarial))
    ours_adv = int(ours_preds.correct(name).sum())
    res = {"n": total, "ours_clean": ours_clean, "ref_clean": clean_ok, "ours_adv": ours_adv,
           "ref_adv": adv_ok}
    if len(ours_preds) != total or ours_clean != clean_ok or abs(ours_adv - adv_ok) > max(
            1, total // 100):
        raise SystemExit(f"FAIRNESS CHECK FAILED — PGD-20 evaluation disagrees: {res}")
    return res


# ============================================================================== measurements


def bench_train(args: argparse.Namespace, device: torch.device, split: Split
                ) -> list[dict[str, Any]]:
    rows = []
    peak = gpu_peak(device)
    for name in args.methods:
        variants = train_variants(args, device, name)
        trainers = make_trainers(args, device, name, split, steps=args.steps, batch=args.batch,
                                 variants=variants)
        first: dict[str, float] = {}
        times = time_interleaved({v: tr.step for v, tr in trainers.items()},
                                 repeats=args.repeats, warmup=args.warmup, device=device,
                                 first=first)
        for v, tr in trainers.items():
            s = C.summary(times[v])
            row: dict[str, Any] = {"method": name, "impl": v, "batch": args.batch,
                                   "steps": args.steps, "times": times[v], **s,
                                   "first_step_s": first.get(v),
                                   "setting": None if v == "reference" else
                                   setting_name(variant_setting(args, device, v, name)),
                                   "images_per_s": args.batch / s["median"]}
            if v != "reference":
                ratios = paired_ratios(times[v], times["reference"])
                row["ratio"] = C.summary(ratios)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                tr.step()
                sync(device)
                row["peak_mem_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
                row["peak_mem_abs_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            if not (row["setting"] or "").endswith("compile") and not args.no_flops:
                flops = count_flops(tr.step)
                if flops:
                    row["gflop_per_step"] = flops / 1e9
                    row["achieved_tflops"] = flops / s["median"] / 1e12
                    if peak is not None:
                        row["peak_name"], row["peak_tflops"] = peak
                        row["pct_of_peak"] = 100 * row["achieved_tflops"] / peak[1]
            rows.append(row)
            print(f"[train] {LABEL[name]:7s} {v:31s} step {C.fmt_time(s)} s  "
                  f"{row['images_per_s']:.1f} img/s"
                  + (f"  ratio {row['ratio']['median']:.3f}" if "ratio" in row else ""),
                  flush=True)
        del trainers
    return rows


def bench_eval(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """PGD-20 (ε 8/255, η 2/255, uniform start, CE) over ``eval_images`` images: ours
    ``predict_under_attacks`` vs the official-style evaluation loop, same model and batches."""
    split = synthetic_split(args.eval_images, args.model, args.seed + 100)
    model, ref, _ = build_pair("pgd_at", args.model, args.seed, device)
    # spat eval's model format (the static rule of its --channels-last auto); always fp32
    if resolve_fast_path("off", "auto", "off", device).channels_last:
        model = model.to(memory_format=torch.channels_last)
    spec = pgd(8 / 255, steps=20)
    loader = R.make_loader(split.images, split.labels, batch_size=args.eval_batch,
                           device=device, shuffle=False)

    def ours():
        return predict_under_attacks(model, split, [spec], batch_size=args.eval_batch,
                                     device=device, generator=device_generator(device, 5))

    def reference():
        return R.eval_adv_test(ref, device, loader, epsilon=spec.eps, num_steps=spec.steps,
                               step_size=spec.step_size, generator=device_generator(device, 5))

    with strict_fp32(device):
        check = eval_check(ours(), reference())
    print(f"[check] PGD-20 eval: {check}", flush=True)
    times = time_interleaved({"ours": ours, "reference": reference}, repeats=args.eval_repeats,
                             warmup=0, device=device)
    res: dict[str, Any] = {"images": args.eval_images, "batch": args.eval_batch, "check": check}
    for v in ("ours", "reference"):
        s = C.summary(times[v])
        res[v] = {**s, "times": times[v], "images_per_s": args.eval_images / s["median"]}
    res["ratio"] = C.summary(paired_ratios(times["ours"], times["reference"]))
    print(f"[eval] PGD-20 ours {C.fmt_time(res['ours'])} s  reference "
          f"{C.fmt_time(res['reference'])} s  ratio {res['ratio']['median']:.3f}", flush=True)
    return res


def bench_sweep(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """SPAT step time against K (at ``--batch``) and against the batch size (at ``--steps``)."""
    points = [(k, args.batch) for k in args.sweep_steps]
    points += [(args.steps, b) for b in args.sweep_batches if b != args.batch]
    rows = []
    for k, b in points:
        split = synthetic_split(b * (args.sweep_repeats + 3), args.model, args.seed)
        trainers = make_trainers(args, device, "spat", split, steps=k, batch=b)
        times = time_interleaved({v: tr.step for v, tr in trainers.items()},
                                 repeats=args.sweep_repeats, warmup=1, device=device)
        row = {"steps": k, "batch": b,
               "ours": C.summary(times["ours"]), "reference": C.summary(times["reference"]),
               "ratio": C.summary(paired_ratios(times["ours"], times["reference"]))}
        rows.append(row)
        print(f"[sweep] K={k:2d} batch={b:3d}: ours {C.fmt_time(row['ours'])} s  reference "
              f"{C.fmt_time(row['reference'])} s  ratio {row['ratio']['median']:.3f}",
              flush=True)
    return rows


def bench_e2e(args: argparse.Namespace) -> dict[str, Any] | None:
    """``spat train --method spat`` end to end, before (``--amp off --channels-last off``, the
    CPU path before the fast path existed) and after (the defaults), alternated ``--e2e-rounds``
    times; the second epoch's ``train_images_per_s`` of each run (the first warms up)."""
    import os
    import tempfile

    data = Path(args.data_dir)
    if (data / "FashionMNIST").is_dir():
        what = (f"Fashion-MNIST, small_cnn 28×28, {args.e2e_images} training images, batch "
                f"128, K = 10, {args.threads} thread(s)")
        ds = ["--dataset", "fashion_mnist", "--data-dir", str(data), "--batch-size", "128",
              "--train-subset", str(args.e2e_images)]
    else:
        what = f"digits (no Fashion-MNIST under {data}), small_cnn 8×8, batch 64, K = 10"
        ds = ["--dataset", "digits", "--batch-size", "64"]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(args.threads, 1)),
           "MKL_NUM_THREADS": str(max(args.threads, 1))}
    common = ["--method", "spat", "--steps", "10", "--epochs", "2", "--val-size", "0",
              "--test-subset", "50", "--test-steps", "1", "--no-progress", "--overwrite"]
    res: dict[str, Any] = {"what": what, "before": [], "after": [],
                           "command": "spat train " + " ".join(ds + common[:-2])}
    with tempfile.TemporaryDirectory(prefix="spat_bench_e2e_") as tmp:
        for _ in range(args.e2e_rounds):
            for label, extra in (("before", ["--amp", "off", "--channels-last", "off"]),
                                 ("after", [])):
                cmd = [sys.executable, "-m", "spat", "train", *ds, *common, "--out-dir", tmp,
                       "--name", label, *extra]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if out.returncode != 0:
                    raise SystemExit(f"end-to-end run failed:\n{out.stderr[-2000:]}")
                lines = (Path(tmp) / label / "metrics.jsonl").read_text().splitlines()
                ips = json.loads(lines[-1])["train_images_per_s"]
                res[label].append(ips)
                print(f"[e2e] {label:6s} {ips:.0f} img/s", flush=True)
    ratios = [b / a for a, b in zip(res["before"], res["after"], strict=True)]
    res["ratios"] = ratios
    res["ratio_median"] = statistics.median(ratios)
    return res


# ----------------------------------------------------------------------- child processes


def child(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Measurements that need a fresh process (CPU peak RSS is a per-process high-water mark):
    ``mem:<method>:<impl>`` = peak RSS of two training steps above the RSS after set-up;
    ``epochs:<impl>`` = RSS after each of ``--mem-epochs`` epochs (ours: the real Trainer)."""
    kind, *rest = args.child.split(":")
    if kind == "mem":
        name, impl = rest[0], ":".join(rest[1:])
        split = synthetic_split(args.batch * 4, args.model, args.seed)
        tr = make_trainers(args, device, name, split, steps=args.steps, batch=args.batch,
                           variants=(impl,))[impl]
        base = C.rss_kb() or 0
        C.reset_peak_rss()
        tr.step()
        tr.step()
        peak = C.peak_rss_kb() or 0
        return {"base_mb": base / 1024, "peak_mb": peak / 1024, "delta_mb": (peak - base) / 1024}
    if kind == "epochs":
        return epochs_memory(args, device, rest[0])
    raise SystemExit(f"unknown child task {args.child!r}")


def epochs_memory(args: argparse.Namespace, device: torch.device, impl: str) -> dict[str, Any]:
    from spat.config import TrainConfig
    from spat.train.loop import Trainer

    b, k = args.mem_batch, args.mem_steps
    split = synthetic_split(b * args.mem_batches, args.model, args.seed)
    c, h, w, augment = input_spec(args.model)
    model, ref, scale = build_pair("spat", args.model, args.seed, device)
    rss, peaks = [], []

    def record() -> None:
        if device.type == "cuda":
            sync(device)
            rss.append(torch.cuda.memory_allocated(device) / 2**20)
            peaks.append(torch.cuda.max_memory_allocated(device) / 2**20)
        else:
            rss.append((C.rss_kb() or 0) / 1024)
            peaks.append((C.peak_rss_kb() or 0) / 1024)

    record()
    if impl == "ours":
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        cfg = TrainConfig(dataset="digits", model=args.model, head="cosine", method="spat",
                          steps=k, epochs=args.mem_epochs, batch_size=b, lr=LR,
                          weight_decay=WEIGHT_DECAY, schedule="constant", device=device.type,
                          amp=args.amp, compile=args.compile, val_size=0).resolved()
        info = DatasetInfo(name="synthetic", num_classes=NUM_CLASSES, channels=c, height=h,
                           width=w, class_names=tuple(str(i) for i in range(NUM_CLASSES)),
                           mean=(0.0,) * c, std=(1.0,) * c, augment=augment, family="custom")
        empty = Split(images=split.images[:0], labels=split.labels[:0])
        data = DataBundle(info=info, train=split, val=empty, test=empty)
        trainer = Trainer(cfg, data, model, ours_method("spat", k), device, run_dir=None,
                          progress=False, log=lambda _: None)
        for epoch in range(args.mem_epochs):
            trainer.train_epoch(epoch, None)
            record()
    else:
        loader = R.make_loader(split.images, split.labels, batch_size=b, device=device,
                               shuffle=True, augment=augment, drop_last=True)
        opt = R.make_optimizer(ref, LR, MOMENTUM, WEIGHT_DECAY)
        loss = ref_loss_fn("spat", k, scale, None)
        for _ in range(args.mem_epochs):
            R.train_epoch(ref, device, loader, opt, loss)
            record()
    return {"after_setup_and_epochs_mb": rss, "peak_mb": peaks, "batch": b, "steps": k,
            "batches_per_epoch": args.mem_batches}


def run_child(task: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--child", task]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child {task} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_memory(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if device.type == "cpu":
        for name in args.methods:
            # every setting for SPAT; the loop's default and the reference for the others
            impls = train_variants(args, device, name) if name == "spat" else (
                "reference", f"ours:{setting_name(loop_setting(args, device, name))}")
            for impl in impls:
                r = run_child(f"mem:{name}:{impl}")
                res[f"{name}:{impl}"] = r
                print(f"[mem] {LABEL[name]:7s} {impl:31s} peak RSS {r['peak_mb']:.0f} MB "
                      f"(+{r['delta_mb']:.0f} MB over set-up)", flush=True)
    if args.mem_epochs > 0:
        for impl in ("ours", "reference"):
            r = run_child(f"epochs:{impl}") if device.type == "cpu" else epochs_memory(
                args, device, impl)
            res[f"epochs:{impl}"] = r
            print(f"[mem] epochs {impl:9s} RSS after set-up, then each epoch (MB): "
                  + ", ".join(f"{v:.0f}" for v in r["after_setup_and_epochs_mb"]), flush=True)
    return res


# ============================================================================== report


def _mb(row: dict[str, Any], memory: dict[str, Any], device: torch.device) -> str:
    if device.type == "cuda":
        return f"{row['peak_mem_mb']:.0f}" if "peak_mem_mb" in row else ""
    key = f"{row['method']}:{row['impl']}"
    if key in memory:
        return f"{memory[key]['peak_mb']:.0f} (+{memory[key]['delta_mb']:.0f})"
    return ""


def report(args: argparse.Namespace, device: torch.device, env: dict[str, Any],
           checks: list[dict[str, Any]], train: list[dict[str, Any]],
           evaluation: dict[str, Any] | None, sweep: list[dict[str, Any]],
           memory: dict[str, Any], e2e: dict[str, Any] | None = None) -> str:
    threads = torch.get_num_threads()
    dev = "GPU " + env.get("gpu", "") if device.type == "cuda" else \
        f"CPU ({threads} thread{'s' if threads > 1 else ''})"
    c, h, w, _ = input_spec(args.model)
    defaults = {n: setting_name(loop_setting(args, device, n)) for n in args.methods}
    if device.type == "cuda":
        mode = "the loop's `auto`, measured per method: " + ", ".join(
            f"{LABEL[n]} {d}" for n, d in defaults.items())
    else:
        mode = ("each setting below, in the same rounds as the reference; the loop's `auto` on "
                "this CPU, measured per method by its calibration: " + ", ".join(
                    f"{LABEL[n]} **{d}**" for n, d in defaults.items()))
    lines = [f"## {dev}: {args.model} on {h}x{w}x{c}, batch {args.batch}, K = {args.steps}", ""]
    lines += C.environment_lines(env) + [""]
    lines += [f"Ours: {mode}. Reference: fp32, eager, contiguous, official-style loop "
              f"(`benchmarks/reference.py`). Synthetic uint8 images; {args.repeats} timed steps "
              f"per implementation after {args.warmup} warm-up step(s), interleaved in rotating "
              f"order (AB BA …). Times: median [IQR] in seconds; ratio = ours / reference, the "
              f"median [min–max] of the per-round paired ratios.", ""]
    lines += ["### Fairness check (before any timing)", "",
              "| method | batch | K | loss ours | loss reference | rel. diff | rel. diff on "
              "identical x_adv | x_adv pixels equal | grad rel. diff | dropout |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in checks:
        g = "n/a (cosine head)" if r["grad_rel_same_adv"] is None else \
            f"{r['grad_rel_same_adv']:.1e}"
        lines.append(f"| {LABEL[r['method']]} | {r['batch']} | {r['steps']} | "
                     f"{r['ours_loss']:.7f} | {r['ref_loss']:.7f} | {r['rel_end_to_end']:.1e} | "
                     f"{r['rel_same_adv']:.1e} | {100 * r['adv_pixels_equal']:.2f}% | {g} | "
                     f"{r['dropout']} |")
    mem_head = "peak mem MB (GPU, above set-up)" if device.type == "cuda" else \
        "peak RSS MB (+ over set-up)"
    flop_head = "TFLOP/s achieved" + (" (% of peak)" if device.type == "cuda" else "")
    lines += ["", "### Training step (attack + forward + backward + SGD step, data path included)",
              "", f"| method | impl | step s, median [IQR] | min–max | images/s | s / 50k images "
              f"| ours/ref | {mem_head} | GFLOP/step | {flop_head} |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in train:
        ratio = (f"**{r['ratio']['median']:.3f}** [{r['ratio']['min']:.2f}–"
                 f"{r['ratio']['max']:.2f}]") if "ratio" in r else "1"
        gf = f"{r['gflop_per_step']:.1f}" if "gflop_per_step" in r else ""
        tf = f"{r['achieved_tflops']:.4f}" if "achieved_tflops" in r else ""
        if "pct_of_peak" in r:
            tf += f" ({r['pct_of_peak']:.1f}% of {r['peak_name']} {r['peak_tflops']:.0f})"
        impl = "reference" if r["impl"] == "reference" else f"ours, {r['setting']}" + (
            " (loop's auto)" if r["setting"] == defaults[r["method"]] else "")
        lines.append(f"| {LABEL[r['method']]} | {impl} | {C.fmt_time(r)} | {r['min']:.3f}–"
                     f"{r['max']:.3f} | {r['images_per_s']:.1f} | "
                     f"{50000 / r['images_per_s']:.0f} | {ratio} | "
                     f"{_mb(r, memory, device)} | {gf} | {tf} |")
    targets = {"spat": 0.35, "trades": 0.40, "mart": 0.40, "pgd_at": 0.55}
    best = {r["method"]: r for r in train if r["impl"] != "reference"
            and r["setting"] == defaults[r["method"]]}
    lines += auto_lines(args, train, defaults)
    if best and device.type == "cpu":
        lines += ["", "Targets (issue 14; time per image, ours in the loop's measured `auto` "
                      "/ reference, same cores, same run):", "",
                  "| method | ours/ref (median [min–max] of paired rounds) | target | met |",
                  "| --- | --- | --- | --- |"]
        for name, r in best.items():
            t = targets.get(name)
            ok = "yes" if t is not None and r["ratio"]["median"] <= t else "no"
            lines.append(f"| {LABEL[name]} | {r['ratio']['median']:.3f} [{r['ratio']['min']:.2f}–"
                         f"{r['ratio']['max']:.2f}] | ≤ {t:.2f} | {ok} |")
    for r in train:
        if not (r["setting"] or "").endswith("compile") or r.get("first_step_s") is None:
            continue
        eager = next((q for q in train if q["method"] == r["method"]
                      and q["setting"] == "bf16+channels_last"), None)
        if eager is None or eager.get("first_step_s") is None:
            continue
        gain = eager["median"] - r["median"]
        extra = r["first_step_s"] - eager["first_step_s"]
        pays = (f"pays off after {extra / gain:.0f} steps" if gain > 0 else
                "never pays off (the compiled step is not faster)")
        lines += ["", f"torch.compile ({LABEL[r['method']]}): first step {r['first_step_s']:.1f} s "
                      f"(compilation) vs {eager['first_step_s']:.1f} s eager; then "
                      f"{r['median']:.3f} s vs {eager['median']:.3f} s per step: {pays}."]
    if e2e:
        lines += ["", f"### End to end: `spat train --method spat` ({e2e['what']})", "",
                  f"Images/s of the second epoch from `metrics.jsonl`, runs alternated "
                  f"(before = `--amp off --channels-last off`, exactly the CPU path before the "
                  f"fast path; after = the defaults, `auto`). Command: `{e2e['command']}`.", "",
                  "| round | before img/s | after img/s | after/before |",
                  "| --- | --- | --- | --- |"]
        for i, (a, b) in enumerate(zip(e2e["before"], e2e["after"], strict=True)):
            lines.append(f"| {i + 1} | {a:.0f} | {b:.0f} | {b / a:.2f}× |")
        lines.append(f"| median | | | **{e2e['ratio_median']:.2f}×** (target ≥ 2×) |")
    if evaluation is not None:
        e = evaluation
        lines += ["", f"### PGD-20 evaluation ({e['images']} images, batch {e['batch']}, "
                      f"ε 8/255, η 2/255)", "",
                  "| impl | pass s, median [IQR] | min–max | images/s | ours/ref |",
                  "| --- | --- | --- | --- | --- |"]
        for v in ("ours", "reference"):
            s = e[v]
            ratio = f"**{e['ratio']['median']:.3f}** [{e['ratio']['min']:.2f}–" \
                    f"{e['ratio']['max']:.2f}]" if v == "ours" else "1"
            lines.append(f"| {v} | {C.fmt_time(s)} | {s['min']:.3f}–{s['max']:.3f} | "
                         f"{s['images_per_s']:.1f} | {ratio} |")
        ck = e["check"]
        lines += ["", f"Check: clean correct {ck['ours_clean']} (ours) = {ck['ref_clean']} "
                      f"(reference), PGD-20 correct {ck['ours_adv']} (ours) vs {ck['ref_adv']} "
                      f"(reference), of {ck['n']}."]
    if sweep:
        lines += ["", "### SPAT step time against K and batch size", "",
                  "| K | batch | ours s, median [IQR] | reference s, median [IQR] | ours/ref | "
                  "ours ms/image |", "| --- | --- | --- | --- | --- | --- |"]
        for r in sweep:
            lines.append(f"| {r['steps']} | {r['batch']} | {C.fmt_time(r['ours'])} | "
                         f"{C.fmt_time(r['reference'])} | {r['ratio']['median']:.3f} "
                         f"[{r['ratio']['min']:.2f}–{r['ratio']['max']:.2f}] | "
                         f"{1000 * r['ours']['median'] / r['batch']:.2f} |")
    ep = {k[7:]: v for k, v in memory.items() if k.startswith("epochs:")}
    if ep:
        any_r = next(iter(ep.values()))
        unit = "GPU memory allocated (MB)" if device.type == "cuda" else "RSS (MB)"
        lines += ["", f"### Memory across epochs (SPAT, batch {any_r['batch']}, K = "
                      f"{any_r['steps']}, {any_r['batches_per_epoch']} batches per epoch)", "",
                  f"{unit} after set-up and after each epoch; ours runs the real "
                  "`spat.train.loop.Trainer.train_epoch`, the reference the official-style "
                  "loop; each in a fresh process.", "",
                  "| impl | after set-up | " + " | ".join(
                      f"epoch {i + 1}" for i in range(len(any_r['peak_mb']) - 1))
                  + " | growth epoch 1 → last | peak |",
                  "| --- " * (len(any_r["peak_mb"]) + 3) + "|"]
        for impl, r in ep.items():
            v = r["after_setup_and_epochs_mb"]
            lines.append(f"| {impl} | " + " | ".join(f"{x:.0f}" for x in v)
                         + f" | {v[-1] - v[1]:+.1f} | {max(r['peak_mb']):.0f} |")
    return "\n".join(lines) + "\n"


def auto_lines(args: argparse.Namespace, train: list[dict[str, Any]],
               defaults: dict[str, str]) -> list[str]:
    """The table of the loop's measured ``auto``: what its calibration timed and cost, and the
    chosen setting's step against the fastest setting timed here (issue 23: within 5 %)."""
    memo = args.__dict__.get("_auto", {})
    if not memo:
        return []
    lines = ["", "### `auto` by measurement (the loop's calibration, then the rounds above)", "",
             "| method | auto chose | calibration: best step per setting (K) | calibration "
             "cost | auto step median | fastest setting here | auto vs fastest | within 5 % |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, d in defaults.items():
        rec = memo.get(name, {}).get("record", {})
        cal = rec.get("calibration") or {}
        times = cal.get("times_s", {})
        timed = ", ".join(f"{n} {1000 * t:.0f} ms" for n, t in sorted(times.items(),
                                                                       key=lambda kv: kv[1]))
        timed = f"{timed} (K = {cal.get('k')})" if times else "not measured"
        cost = (f"{memo[name]['seconds']:.1f} s, {cal.get('steps_run')} steps"
                if cal else f"{memo.get(name, {}).get('seconds', 0.0):.1f} s")
        rows = [r for r in train if r["method"] == name and r["impl"] != "reference"]
        auto = next((r for r in rows if r["setting"] == d), None)
        if not rows or auto is None:
            lines.append(f"| {LABEL[name]} | {d} | {timed} | {cost} | | | | |")
            continue
        fastest = min(rows, key=lambda r: r["median"])
        gap = auto["median"] / fastest["median"] - 1
        lines.append(f"| {LABEL[name]} | **{d}** | {timed} | {cost} | {auto['median']:.3f} s | "
                     f"{fastest['setting']} {fastest['median']:.3f} s | {100 * gap:+.1f} % | "
                     f"{'yes' if gap <= 0.05 else 'no'} |")
    return lines


# ============================================================================== main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--model", default=None,
                   help="small_cnn, preact_resnet18, resnet18, wrn34_10, … (default: small_cnn "
                        "on a CPU, preact_resnet18 on CUDA)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="K, attack steps of training")
    p.add_argument("--repeats", type=int, default=7, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op CPU threads (default: 1 on a CPU — on a shared, "
                        "oversubscribed machine OpenMP barriers with 2 threads cost more than "
                        "they gain, see RESULTS.md; 0: torch's default)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for ours (default: as the loop's auto — CUDA, or a "
                        "CPU with native bf16)")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (the loop's "
                   "--compile)")
    p.add_argument("--cpu-settings", default="fp32,bf16,channels_last,bf16+channels_last",
                   help=f"settings of ours timed side by side on a CPU (of {', '.join(SETTINGS)}"
                        f"; --compile adds bf16+channels_last+compile); empty: the loop's "
                        f"default only")
    p.add_argument("--auto-cache", action=argparse.BooleanOptionalAction, default=False,
                   help="take the loop's auto from the user's fast-path cache when it holds "
                        "this key (default: measure afresh, as on a new machine)")
    p.add_argument("--auto-run-steps", type=int, default=None,
                   help="training steps of the run the calibration budgets for (default: 10 "
                        "epochs of 50,000 images)")
    p.add_argument("--e2e", action=argparse.BooleanOptionalAction, default=True,
                   help="on a CPU: end-to-end `spat train --method spat` epochs, before/after")
    p.add_argument("--e2e-rounds", type=int, default=2)
    p.add_argument("--e2e-images", type=int, default=1536)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"),
                   help="where FashionMNIST/ is (the end-to-end run; digits if absent)")
    p.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--eval-images", type=int, default=256)
    p.add_argument("--eval-batch", type=int, default=128)
    p.add_argument("--eval-repeats", type=int, default=3)
    p.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True,
                   help="SPAT step time against K and batch size")
    p.add_argument("--sweep-steps", default="1,5,10,20")
    p.add_argument("--sweep-batches", default="32,64,128,256")
    p.add_argument("--sweep-repeats", type=int, default=3)
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="peak memory per step and memory across epochs")
    p.add_argument("--mem-epochs", type=int, default=5)
    p.add_argument("--mem-batch", type=int, default=64)
    p.add_argument("--mem-batches", type=int, default=4, help="batches per epoch")
    p.add_argument("--mem-steps", type=int, default=2, help="K of the memory-across-epochs run")
    p.add_argument("--no-flops", action="store_true")
    p.add_argument("--check-batch", type=int, default=64)
    p.add_argument("--rtol", type=float, default=1e-5,
                   help="loss tolerance on identical adversarial examples")
    p.add_argument("--rtol-step", type=float, default=1e-4,
                   help="tolerance of the whole step's loss (each side attacking itself)")
    p.add_argument("--grad-rtol", type=float, default=1e-4)
    p.add_argument("--min-adv-agreement", type=float, default=0.90,
                   help="fraction of adversarial pixels both sides must agree on (TRADES at "
                        "K = 10, batch 64: 94.4%% with torch 2.14, losses equal to 4e-7)")
    p.add_argument("--check-only", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="3 repeats, no sweep/memory, 1 eval pass; writes nothing unless --write")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=None,
                   help="write the section of RESULTS.md (default: yes unless --quick)")
    p.add_argument("--json", default=None, help="also dump every number to this JSON file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in args.methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r} (valid: {', '.join(METHODS)})")
    args.cpu_settings = [v.strip() for v in args.cpu_settings.split(",") if v.strip()]
    for v in args.cpu_settings:
        if v not in SETTINGS:
            p.error(f"unknown setting {v!r} (valid: {', '.join(SETTINGS)})")
    if args.compile and "bf16+channels_last+compile" not in args.cpu_settings:
        args.cpu_settings.append("bf16+channels_last+compile")
    args.sweep_steps = [int(v) for v in args.sweep_steps.split(",")]
    args.sweep_batches = [int(v) for v in args.sweep_batches.split(",")]
    if args.auto_run_steps is None:
        args.auto_run_steps = 10 * -(-50000 // args.batch)
    if args.quick:
        args.repeats, args.eval_repeats = min(args.repeats, 3), 1
        args.sweep, args.memory, args.e2e = False, False, False
        args.eval_images = min(args.eval_images, args.eval_batch)
    if args.write is None:
        args.write = not args.quick
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but no CUDA GPU is available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if args.model is None:
        args.model = "small_cnn" if device.type == "cpu" else "preact_resnet18"
    if args.threads is None:
        args.threads = 1 if device.type == "cpu" else 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.child:
        print(json.dumps(child(args, device)))
        return 0
    env = C.environment(device)
    env["command"] = "python benchmarks/bench.py " + " ".join(sys.argv[1:])
    print("\n".join(C.environment_lines(env)), flush=True)
    # enough batches that no implementation starts a second epoch (a new DataLoader worker on
    # CUDA) while it is timed: warm-up + timed steps + the memory and FLOP steps
    split = synthetic_split(args.batch * (args.warmup + args.repeats + 4), args.model, args.seed)
    checks = fairness_check(args, device, split)
    if args.check_only:
        return 0
    train = bench_train(args, device, split)
    evaluation = bench_eval(args, device) if args.eval else None
    sweep = bench_sweep(args, device) if args.sweep else []
    memory = bench_memory(args, device) if args.memory else {}
    e2e = bench_e2e(args) if args.e2e and device.type == "cpu" else None
    env["load_average_end"] = C.load_average()
    text = report(args, device, env, checks, train, evaluation, sweep, memory, e2e)
    print("\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"env": env, "args": {k: v for k, v in vars(args).items() if k != "_auto"},
             "auto": {n: {"seconds": a["seconds"], **a["record"]}
                      for n, a in vars(args).get("_auto", {}).items()},
             "checks": checks, "train": train,
             "eval": evaluation, "sweep": sweep, "memory": memory, "e2e": e2e}, indent=1,
            default=str))
    if args.write:
        key = f"bench {device.type} {args.model} b{args.batch} k{args.steps}"
        if device.type == "cpu":
            key += f" threads{torch.get_num_threads()}"
        if args.compile:
            key += " compile"
        C.write_section(key, text)
        print(f"wrote section '{key}' of {C.RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

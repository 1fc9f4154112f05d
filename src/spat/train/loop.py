"""The one training loop: any method, any model, one device or several (DDP), resumable.

Per epoch: shuffled, augmented batches resident on the device; the method's loss (its own
training attack inside); SGD; then validation (clean + PGD on the held-out split, through the
same evaluation routine as ``spat eval``); then an atomic checkpoint (``last``, and ``best`` by
validation robust accuracy). Metrics accumulate on the device; the host reads them only when the
progress bar refreshes (a few times per epoch), never inside the attack's inner loop.

Randomness: data order, augmentation, attack random starts and dropout are drawn from
generators seeded by (seed, epoch, rank), and the global RNG states are also checkpointed, so a
run resumed from a checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spat import checkpoint as ckpt
from spat.attacks.presets import pgd
from spat.data import DataBundle, Split, augment_batch, batches, num_batches
from spat.errors import SpatError
from spat.evaluation.core import Predictions, predict_under_attacks
from spat.train.config import TrainConfig
from spat.train.distributed import SINGLE, DistContext
from spat.train.optim import lr_factor, make_optimizer
from spat.utils.io import append_jsonl
from spat.utils.rng import get_rng_state, set_rng_state

Log = Callable[[str], None]


class NonFiniteLoss(SpatError):
    """The training loss became NaN or infinite; the run stops, the last good checkpoint stays."""


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


@dataclass
class EpochStats:
    loss: float
    clean_acc: float | None
    adv_acc: float | None
    seconds: float
    images: int
    parts: dict[str, float] = field(default_factory=dict)


def _unwrapped(model: nn.Module) -> nn.Module:
    from spat.models import unwrap

    return unwrap(model)


def validation_attack(cfg: TrainConfig):
    """PGD-``val_steps`` at the training ε (CE, uniform start, step ε/4)."""
    assert cfg.eps is not None
    return pgd(cfg.eps, steps=cfg.val_steps, norm=cfg.norm)


def evaluate_split(
    model: nn.Module, split: Split, cfg: TrainConfig, device: torch.device, steps: int, seed: int
) -> Predictions:
    """Clean + PGD-``steps`` predictions on ``split`` (training ε), reproducible by ``seed``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    assert cfg.eps is not None
    attack = pgd(cfg.eps, steps=steps, norm=cfg.norm)
    return predict_under_attacks(model, split, [attack], batch_size=cfg.eval_batch_size,
                                 device=device, generator=gen)


class Trainer:
    """Holds the state of one training run; :meth:`fit` runs the remaining epochs."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: DataBundle,
        model: nn.Module,
        method: Callable[..., Any],
        device: torch.device,
        *,
        run_dir: Path | None,
        dist: DistContext = SINGLE,
        progress: bool = True,
        log: Log = print,
    ) -> None:
        assert cfg.epochs is not None and cfg.batch_size is not None and cfg.lr is not None
        assert cfg.weight_decay is not None
        self.cfg, self.data, self.method, self.device = cfg, data, method, device
        self.run_dir, self.dist, self.progress, self.log = run_dir, dist, progress, log
        self.model = model
        self.train_model: nn.Module = model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # BatchNorm: each rank normalises with its own shard's batch statistics (no SyncBN),
            # as single-GPU training with the per-rank batch; buffers are broadcast from rank 0.
            self.train_model = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        self.optimizer = make_optimizer(model, lr=cfg.lr, momentum=cfg.momentum,
                                        weight_decay=cfg.weight_decay, nesterov=cfg.nesterov,
                                        device=device)
        if cfg.batch_size % dist.world_size:
            raise SpatError(f"batch size {cfg.batch_size} is not divisible by the number of "
                            f"processes ({dist.world_size})")
        self.local_batch = cfg.batch_size // dist.world_size
        n_train = len(data.train)
        self.drop_last = n_train > cfg.batch_size
        self.steps_per_epoch = num_batches(n_train, self.local_batch, self.drop_last,
                                           dist.world_size)
        self.start_epoch = 0
        self.best_val = -math.inf
        self.best_epoch = -1
        self.amp = bool(cfg.amp) if cfg.amp is not None else device.type == "cuda"
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ state
    @property
    def ckpt_root(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoints"

    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "format": 1,
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "rng": get_rng_state(),
            "config": self.cfg.to_dict(),
            "best_val_robust_acc": self.best_val,
            "best_epoch": self.best_epoch,
            "num_classes": self.data.info.num_classes,
        }

    def load(self, folder: Path) -> None:
        """Restore model, optimizer, counters and RNG from a checkpoint folder."""
        from spat.experiment import check_compatible

        state = ckpt.load_state(folder)
        weights = ckpt.load_weights(folder)
        check_compatible(self.model, weights, state, folder)
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch = int(state["epoch"]) + 1
        self.best_val = float(state["best_val_robust_acc"])
        self.best_epoch = int(state["best_epoch"])
        set_rng_state(state["rng"])

    def _save(self, epoch: int, is_best: bool, val_acc: float | None) -> None:
        if not self.dist.is_main or self.ckpt_root is None:
            return
        root = self.ckpt_root
        tag = f"epoch_{epoch + 1:04d}"
        ckpt.save_checkpoint(root, tag, self.model.state_dict(), self.state_dict(epoch))
        if is_best:
            ckpt.set_pointer(root, "best", tag, epoch=epoch + 1, val_robust_acc=val_acc)
        ckpt.set_pointer(root, "last", tag, epoch=epoch + 1)
        keep = {tag}
        best = ckpt.read_pointer(root, "best")
        if best is not None:
            keep.add(best)
        ckpt.prune(root, keep)

    # ------------------------------------------------------------------ epochs
    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_epoch(self, epoch: int, on_step: Callable[[int, dict[str, float]], None] | None
                    ) -> EpochStats:
        cfg, dev = self.cfg, self.device
        seed = derive_seed(cfg.seed, epoch, self.dist.rank)
        torch.manual_seed(seed)  # dropout and anything else drawing from the global generator
        # data order: the same on all ranks (each takes its shard of one permutation)
        data_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, 1))
        aug_gen = torch.Generator().manual_seed(derive_seed(seed, 2))
        attack_gen = torch.Generator(device=dev).manual_seed(derive_seed(seed, 3))
        self.train_model.train()
        zero = torch.zeros((), device=dev)
        loss_sum, n_seen = zero.clone(), zero.clone()
        clean_ok, adv_ok = zero.clone(), zero.clone()
        parts_sum: dict[str, torch.Tensor] = {}
        first_bad = torch.full((), self.steps_per_epoch, device=dev, dtype=torch.long)
        has_clean = has_adv = False
        refresh = max(1, self.steps_per_epoch // 20)
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(
            batches(self.data.train, self.local_batch, device=dev, shuffle=True,
                    generator=data_gen, drop_last=self.drop_last, rank=self.dist.rank,
                    world_size=self.dist.world_size)
        ):
            lr = cfg.lr * lr_factor(cfg.schedule, epoch, step, self.steps_per_epoch, cfg.epochs)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            x = augment_batch(x, self.data.info.augment, aug_gen)
            if dev.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                out = self.method(self.train_model, x, y, generator=attack_gen)
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            self.optimizer.step()
            loss = out.loss.detach().float()
            first_bad = torch.where(torch.isfinite(loss) | (first_bad < step), first_bad,
                                    torch.full_like(first_bad, step))
            b = y.shape[0]
            loss_sum += loss * b
            n_seen += b
            if out.logits_clean is not None:
                has_clean = True
                clean_ok += (out.logits_clean.argmax(1) == y).sum()
            if out.logits_adv is not None:
                has_adv = True
                adv_ok += (out.logits_adv.argmax(1) == y).sum()
            for k, v in out.parts.items():
                parts_sum[k] = parts_sum.get(k, zero) + v.float() * b
            last = step + 1 == self.steps_per_epoch
            if on_step is not None and ((step + 1) % refresh == 0 or last):
                self._check_finite(first_bad, epoch)
                n = max(1.0, n_seen.item())
                live = {"loss": loss_sum.item() / n}
                if has_adv:
                    live["adv_acc"] = adv_ok.item() / n
                if has_clean:
                    live["clean_acc"] = clean_ok.item() / n
                on_step(step + 1, live)
        self._check_finite(first_bad, epoch)
        sums = torch.stack([loss_sum, n_seen, clean_ok, adv_ok, *parts_sum.values()])
        sums = self.dist.all_reduce_sum(sums).tolist()
        n = max(1.0, sums[1])
        return EpochStats(
            loss=sums[0] / n,
            clean_acc=sums[2] / n if has_clean else None,
            adv_acc=sums[3] / n if has_adv else None,
            seconds=time.perf_counter() - t0,
            images=int(sums[1]),
            parts={k: v / n for k, v in zip(parts_sum, sums[4:], strict=True)},
        )

    def _check_finite(self, first_bad: torch.Tensor, epoch: int) -> None:
        bad = int(first_bad.item())
        if bad < self.steps_per_epoch:
            raise NonFiniteLoss(
                f"non-finite training loss at epoch {epoch + 1}, step {bad + 1}; the run stopped "
                f"and the last good checkpoint is kept (try a lower lr or --amp off)"
            )

    def validate(self, epoch: int) -> dict[str, Any]:
        if len(self.data.val) == 0:
            return {}
        preds = evaluate_split(self.model, self.data.val, self.cfg, self.device,
                               self.cfg.val_steps, derive_seed(self.cfg.seed, epoch, 4))
        name = next(iter(preds.adversarial))
        k = self.data.info.num_classes
        return {
            "val_clean_acc": preds.accuracy(None),
            "val_robust_acc": preds.accuracy(name),
            "val_attack": name,
            "val_adv_confusion": preds.confusion(name, k).tolist(),
        }

    def fit(self) -> list[dict[str, Any]]:
        """Train epochs ``start_epoch .. epochs-1``; returns the per-epoch metric records."""
        cfg = self.cfg
        assert cfg.epochs is not None
        bar = _Progress(self.progress and self.dist.is_main, self.steps_per_epoch)
        with bar:
            for epoch in range(self.start_epoch, cfg.epochs):
                bar.start(epoch, cfg.epochs)
                stats = self.train_epoch(epoch, bar.update)
                t_val = time.perf_counter()
                val = self.validate(epoch) if self.dist.is_main else {}
                val_seconds = time.perf_counter() - t_val
                val_acc = val.get("val_robust_acc")
                score = val_acc if val_acc is not None else epoch  # no val split: newest is best
                is_best = score > self.best_val
                if is_best:
                    self.best_val, self.best_epoch = score, epoch
                record = {
                    "epoch": epoch + 1,
                    "lr": cfg.lr * lr_factor(cfg.schedule, epoch, 0, self.steps_per_epoch,
                                             cfg.epochs),
                    "train_loss": stats.loss,
                    "train_clean_acc": stats.clean_acc,
                    "train_adv_acc": stats.adv_acc,
                    **{f"train_{k}": v for k, v in stats.parts.items()},
                    "train_seconds": stats.seconds,
                    "train_images_per_s": stats.images / max(stats.seconds, 1e-9),
                    "val_seconds": val_seconds,
                    **val,
                }
                self.history.append(record)
                if self.dist.is_main and self.run_dir is not None:
                    append_jsonl(self.run_dir / "metrics.jsonl", record)
                self._save(epoch, is_best, val_acc)
                bar.end_epoch(record)
                self.dist.barrier()
        return self.history


class _Progress:
    """A rich progress bar with live loss/accuracy; silent when disabled."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self._p = None
        self._task = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(TextColumn("{task.description}"), BarColumn(),
                               MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                               TextColumn("{task.fields[live]}"), transient=False)
            self._p.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.__exit__(None, None, None)

    def start(self, epoch: int, epochs: int) -> None:
        if self._p is not None:
            self._task = self._p.add_task(f"epoch {epoch + 1}/{epochs}", total=self.total,
                                          live="")

    def update(self, step: int, live: dict[str, float]) -> None:
        if self._p is not None and self._task is not None:
            text = "  ".join(f"{k} {v:.3f}" if k == "loss" else f"{k} {100 * v:.1f}%"
                             for k, v in live.items())
            self._p.update(self._task, completed=step, live=text)

    def end_epoch(self, record: dict[str, Any]) -> None:
        if self._p is not None and self._task is not None:
            extra = ""
            if record.get("val_robust_acc") is not None:
                extra = (f"  val clean {100 * record['val_clean_acc']:.1f}%  "
                         f"val {record['val_attack']} {100 * record['val_robust_acc']:.1f}%")
            self._p.update(self._task, live=self._p.tasks[-1].fields["live"] + extra)

"""The one training loop: any method, any model, one device or several (DDP), resumable.

Per epoch: shuffled, augmented batches resident on the device; the method's loss (its own
training attack inside); SGD; then validation (clean + PGD on the held-out split, through the
same evaluation routine as ``spat eval``); then an atomic checkpoint (``last``, and ``best`` by
validation robust accuracy). Metrics accumulate on the device; the host reads them only at a few
check points per epoch (progress refresh and the NaN/inf check), never inside the attack's inner
loop.

Randomness: data order, augmentation, attack random starts and dropout are drawn from
generators seeded by (seed, epoch, rank) at the start of each epoch, so a run resumed from the
checkpoint of epoch k continues exactly (bitwise, on the same machine and software) as the
uninterrupted run would have; the global RNG states are checkpointed as well.

Several processes (torchrun): every rank draws the same permutation of the training set and
takes its shard of every global batch (``batch_size`` is global); the attack's random starts
and dropout are drawn per rank; gradients are averaged by DDP; epoch metrics are summed over
ranks. Validation and the final test are sharded too, batch by batch as ``spat eval`` shards
(:mod:`spat.evaluation.sharding`: batch ``b`` on rank ``b mod W``, its random start seeded by
``batch_seed(stream seed, b)``), so their predictions do not depend on the number of ranks.
BatchNorm uses per-rank batch statistics (no SyncBatchNorm) and rank 0's running statistics are
broadcast before each forward, as in most adversarial-training code bases.
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
from spat.config import TrainConfig, lr_remedy
from spat.data import DataBundle, augment_batch, batches, num_batches
from spat.errors import SpatError
from spat.methods import for_epoch as method_for_epoch
from spat.methods import hooks as method_hooks
from spat.train.guard import findings_for, guard_line
from spat.train.optim import lr_factor, make_optimizer
from spat.train.step import train_step
from spat.train.validate import evaluate_split
from spat.utils.distributed import SINGLE, DistContext
from spat.utils.hardware import FastPath
from spat.utils.io import append_jsonl, atomic_write_text, read_jsonl_lines
from spat.utils.log import info as log_info
from spat.utils.log import logger
from spat.utils.progress import Progress
from spat.utils.rng import (
    RANK_STREAM_ATTACK,
    RANK_STREAM_AUGMENT,
    STREAM_DATA,
    STREAM_VAL,
    derive_seed,
    get_rng_state,
    rank_seed,
    set_rng_state,
)
from spat.validation import one_line

Log = Callable[[str], None]

METRICS = "metrics.jsonl"
#: Fields of a metrics record that measure time, not training (they differ between runs).
TIMING_FIELDS = ("train_seconds", "train_images_per_s", "val_seconds")


class NonFiniteLoss(SpatError):
    """The training loss became NaN or infinite; the run stops, the last good checkpoint stays."""


class CollapseStop(SpatError):
    """The collapse guard saw a collapse, a divergence or a plateau and ``--on-collapse stop``
    was given: the run stops (exit 2); the epoch's record is in metrics.jsonl, its weights are
    not checkpointed, the earlier checkpoints stay."""


@dataclass
class EpochStats:
    loss: float
    clean_acc: float | None
    adv_acc: float | None
    seconds: float
    images: int
    parts: dict[str, float] = field(default_factory=dict)


def truncate_metrics(path: Path, epochs: int) -> list[dict[str, Any]]:
    """Keep the records of epochs ``1..epochs`` in ``path`` (first copy of each, in order).

    A process killed after appending an epoch's record but before its checkpoint was complete
    leaves a record (possibly torn) for an epoch that will be trained again; this removes it, by
    an atomic rewrite, so the finished file equals that of an uninterrupted run. The file is left
    untouched when nothing needs removing. Returns the kept records.
    """
    kept: list[tuple[dict[str, Any], str]] = []
    seen: set[int] = set()
    for rec, line in read_jsonl_lines(path):
        e = rec.get("epoch") if isinstance(rec, dict) else None
        if isinstance(e, int) and 1 <= e <= epochs and e not in seen:
            seen.add(e)
            kept.append((rec, line))
    text = "".join(line + "\n" for _, line in kept)
    if path.is_file() and path.read_text(encoding="utf-8", errors="replace") != text:
        atomic_write_text(path, text)
    return [rec for rec, _ in kept]


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
        log: Log = log_info,
        fast_path: FastPath | None = None,
    ) -> None:
        """``fast_path``: the settings to train with (a resumed run's recorded ones); ``None``
        decides them now, ``auto`` switches by measurement
        (:func:`spat.train.calibrate.measure_fast_path`; rank 0 measures, all ranks follow)."""
        assert cfg.epochs is not None and cfg.batch_size is not None and cfg.lr is not None
        assert cfg.weight_decay is not None
        if cfg.batch_size % dist.world_size:
            raise SpatError(f"batch size {cfg.batch_size} is not divisible by the number of "
                            f"processes ({dist.world_size}); the batch size is global")
        self.cfg, self.data, self.method, self.device = cfg, data, method, device
        # a method's optional optimizer hooks (AWP-style weight perturbation; MethodDefaults);
        # train_epoch takes them from the method of its epoch (the for_epoch hook)
        self._before_step, self._after_step = method_hooks(method)
        self.run_dir, self.dist, self.progress, self.log = run_dir, dist, progress, log
        self.local_batch = cfg.batch_size // dist.world_size
        n_train = len(data.train)
        self.drop_last = n_train > cfg.batch_size
        self.steps_per_epoch = num_batches(n_train, self.local_batch, self.drop_last,
                                           dist.world_size)
        # the fast path (bf16 autocast, channels_last, compile): "auto" measured for this
        # device and model, with reasons (recorded in env.json by spat.train.training.train)
        if fast_path is None:
            from spat.train.calibrate import measure_fast_path

            fast_path = dist.on_main(measure_fast_path, cfg, data, model, method, device,
                                     local_batch=self.local_batch,
                                     run_steps=self.steps_per_epoch * cfg.epochs, log=log)
        self.fast_path = fast_path
        if self.fast_path.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.train_model: nn.Module = model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # BatchNorm: each rank normalises with its own shard's batch statistics (no SyncBN),
            # as most adversarial-training code; rank 0's buffers (running statistics) are
            # broadcast before every forward, so all ranks attack and evaluate with the same ones.
            self.train_model = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if self.fast_path.compile:
            self.train_model = torch.compile(self.train_model)
        self.optimizer = make_optimizer(model, lr=cfg.lr, momentum=cfg.momentum,
                                        weight_decay=cfg.weight_decay, nesterov=cfg.nesterov,
                                        device=device)
        self.start_epoch = 0
        self.best_val = -math.inf
        self.best_epoch = -1
        self.amp = self.fast_path.amp
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ state
    @property
    def ckpt_root(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoints"

    def state_dict(self, epoch: int) -> dict[str, Any]:
        """Everything but the weights, as tensors and plain values (``weights_only``-loadable)."""
        return {
            "format": 1,
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "rng": get_rng_state(),
            "config": self.cfg.to_dict(),
            "best_val_robust_acc": self.best_val,
            "best_epoch": self.best_epoch,
            "num_classes": self.data.info.num_classes,
            "world_size": self.dist.world_size,
            "steps_per_epoch": self.steps_per_epoch,
        }

    def load(self, folder: Path) -> None:
        """Restore model, optimizer, counters and RNG from a checkpoint folder.

        The optimizer's hyperparameters (lr, momentum, weight decay, Nesterov, dampening, ...)
        stay those of the configuration, as :func:`~spat.train.optim.make_optimizer` set them:
        a ``--resume`` override of one takes effect; the checkpoint gives the momentum buffers.

        Rank 0 reads the folder and broadcasts its content, so other ranks need not see it.
        A checkpoint of another architecture or number of classes is a one-line ``SpatError``
        on every rank.
        """
        from spat.validation import check_optimizer_fits

        where = str(folder / ckpt.STATE)
        state, weights = self.dist.on_main(self._read_checkpoint, folder)
        self.model.load_state_dict(weights)
        # the hyperparameters come from the configuration (resolved, with the resume's
        # overrides), not from the checkpoint: it contributes the per-parameter buffers only
        hyper = [{k: v for k, v in g.items() if k != "params"}
                 for g in self.optimizer.param_groups]
        try:  # what the schema cannot see (group sizes, RNG internals) fails here, in one line
            self.optimizer.load_state_dict(state["optimizer"])
            for group, own in zip(self.optimizer.param_groups, hyper, strict=True):
                group.update(own)
            check_optimizer_fits(self.optimizer, where)
            set_rng_state(state["rng"])
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
            if isinstance(e, SpatError):
                raise
            raise SpatError(f"{where}: the optimizer or random-generator state is corrupted "
                            f"({type(e).__name__}: {one_line(e, 160)})") from None
        self.start_epoch = int(state["epoch"]) + 1
        self.best_val = float(state["best_val_robust_acc"])
        self.best_epoch = int(state["best_epoch"])
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.dist.world_size:
            self.log(f"note: the checkpoint was written by {saved_world} process(es), this run "
                     f"has {self.dist.world_size}: the global batches are the same, but the "
                     f"per-rank random streams (attack starts, dropout) differ from then on")

    def prepare_resume(self) -> None:
        """Tidy a run directory for resuming from ``start_epoch`` (rank 0; others no-op).

        Removes leftovers of an interrupted checkpoint save and cuts ``metrics.jsonl`` back to
        the checkpointed epochs; :attr:`history` becomes those epochs' records.
        """
        if self.run_dir is None:
            return
        self.history = self.dist.on_main(self._tidy_for_resume)

    def _read_checkpoint(self, folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The state and weights of the checkpoint ``folder``, checked (rank 0)."""
        from spat.validation import check_state

        where = str(folder / ckpt.STATE)
        state = ckpt.load_state(folder)
        check_state(state, where, for_resume=True)  # types, RNG shapes, finite buffers
        weights = ckpt.load_weights(folder)
        ckpt.check_compatible(self.model, weights, state, folder, cfg=self.cfg,
                              num_classes=self.data.info.num_classes)
        return state, weights

    def _tidy_for_resume(self) -> list[dict[str, Any]]:
        """Remove torn writes and cut metrics.jsonl back to ``start_epoch`` (rank 0); returns
        the records kept."""
        assert self.run_dir is not None and self.ckpt_root is not None
        ckpt.clean_stale(self.ckpt_root)
        for p in self.run_dir.glob(".*.tmp"):  # torn atomic writes of the run's files
            if p.is_file():
                p.unlink(missing_ok=True)
        return truncate_metrics(self.run_dir / METRICS, self.start_epoch)

    def _save(self, epoch: int, is_best: bool, val_acc: float | None) -> None:
        if not self.dist.is_main or self.ckpt_root is None:
            return
        root = self.ckpt_root
        tag = ckpt.epoch_tag(epoch + 1)
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
    def train_epoch(self, epoch: int, on_step: Callable[[int, dict[str, float]], None] | None
                    ) -> EpochStats:
        """One epoch of SGD over the (rank's shard of the) training set; returns its metrics
        summed over ranks. Raises :class:`NonFiniteLoss` (on every rank) at the first check
        point after a NaN/inf loss on any rank, naming the (1-based) epoch and step.

        The method of the epoch is ``for_epoch(method, epoch)`` (:mod:`spat.methods.base`): a
        method with a schedule over epochs (the warm-ups) gives that epoch's hyperparameters,
        a pure function of ``epoch``, so a resumed run trains each epoch as an uninterrupted one.
        """
        cfg, dev = self.cfg, self.device
        method = method_for_epoch(self.method, epoch)
        self._before_step, self._after_step = method_hooks(method)
        seed = rank_seed(cfg.seed, epoch, self.dist.rank)
        torch.manual_seed(seed)  # dropout and anything else drawing from the global generator
        # data order: the same on all ranks (each takes its shard of one permutation)
        data_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, STREAM_DATA))
        aug_gen = torch.Generator().manual_seed(derive_seed(seed, RANK_STREAM_AUGMENT))
        attack_gen = torch.Generator(device=dev).manual_seed(
            derive_seed(seed, RANK_STREAM_ATTACK))
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
            if self.fast_path.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = train_step(self.train_model, self.optimizer, method, x, y,
                             generator=attack_gen, amp_device=dev.type if self.amp else None,
                             before_step=self._before_step, after_step=self._after_step)
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
            if (step + 1) % refresh == 0 or last:
                # the same steps on every rank (equal shards), so this collective lines up
                self._check_finite(first_bad, epoch)
                if on_step is not None:
                    n = max(1.0, n_seen.item())
                    live = {"loss": loss_sum.item() / n}
                    if has_adv:
                        live["adv_acc"] = adv_ok.item() / n
                    if has_clean:
                        live["clean_acc"] = clean_ok.item() / n
                    on_step(step + 1, live)
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
        bad = int(self.dist.all_reduce_min(first_bad).item())
        if bad < self.steps_per_epoch:
            run = self.run_dir if self.run_dir is not None else "RUN"
            lr, why = lr_remedy(self.cfg)
            lower = f"{lr:g} ({why})"
            if epoch > 0 and self.run_dir is not None:  # epoch `epoch` (0-based) was saved
                kept = (f"its last good checkpoint ({ckpt.epoch_tag(epoch)}) is kept; continue "
                        f"with a lower learning rate: spat train --resume {run} --lr {lower}")
            else:
                kept = (f"no checkpoint was written yet; start again with a lower learning "
                        f"rate: spat train --resume {run} --lr {lower}" if self.run_dir is not None
                        else "lower the learning rate")
            raise NonFiniteLoss(
                f"non-finite training loss (NaN or inf) at epoch {epoch + 1}, step {bad + 1}; "
                f"the run stopped and {kept} (or try --amp off)"
            )

    def _stop_text(self, line: str, epoch: int) -> str:
        """The error of ``--on-collapse stop`` at (0-based) ``epoch``: the guard's line, what
        is kept, and the command that continues with the remedy's lr."""
        run = self.run_dir if self.run_dir is not None else "RUN"
        lr, _ = lr_remedy(self.cfg)
        if epoch > 0 and self.run_dir is not None:
            best = ckpt.epoch_tag(self.best_epoch + 1) if self.best_epoch >= 0 else None
            kept = (f"its checkpoints up to epoch {epoch} are kept (last {ckpt.epoch_tag(epoch)}"
                    + (f", best {best}" if best else "") + f"); continue with: spat train "
                    f"--resume {run} --lr {lr:g}")
        else:
            kept = "no checkpoint was written"
        return (f"collapse guard: {line}; the run stopped (--on-collapse stop) before saving "
                f"epoch {epoch + 1}: {kept}")

    def validate(self, epoch: int) -> dict[str, Any]:
        """Clean and PGD-``val_steps`` accuracy on the validation split (sharded over ranks,
        the same result on every rank); ``{}`` without a validation split."""
        if len(self.data.val) == 0:
            return {}
        preds = evaluate_split(self.model, self.data.val, self.cfg, self.device,
                               self.cfg.val_steps,
                               derive_seed(self.cfg.seed, epoch, STREAM_VAL), dist=self.dist)
        name = next(iter(preds.adversarial))
        k = self.data.info.num_classes
        counts = torch.bincount(preds.clean, minlength=k)
        return {
            "val_clean_acc": preds.accuracy(None),
            # the share of the most predicted class: ~1 for a constant output (spat.train.guard)
            "val_clean_top_share": float(counts.max()) / max(1, int(counts.sum())),
            "val_robust_acc": preds.accuracy(name),
            "val_attack": name,
            "val_adv_confusion": preds.confusion(name, k).tolist(),
        }

    def _tensorboard(self) -> Any:
        """The TensorBoard writer of ``--tensorboard`` (rank 0 with a run directory), else
        None; on resume its purge step is the first epoch trained again."""
        if not getattr(self.cfg, "tensorboard", False) or not self.dist.is_main \
                or self.run_dir is None:
            return None
        from spat.utils.tensorboard import TensorBoardLog

        return TensorBoardLog(self.run_dir,
                              purge_step=self.start_epoch + 1 if self.start_epoch else None)

    def fit(self) -> list[dict[str, Any]]:
        """Train epochs ``start_epoch .. epochs-1``; returns the per-epoch metric records
        (on resume, those of the earlier epochs first)."""
        cfg = self.cfg
        assert cfg.epochs is not None
        # a bar with live loss/accuracy on a terminal; one plain line per epoch otherwise
        bars = Progress(self.progress and self.dist.is_main, extra=("{task.fields[live]}",))
        tb = self._tensorboard()
        with bars, contextlib.closing(tb) if tb is not None else contextlib.nullcontext():
            for epoch in range(self.start_epoch, cfg.epochs):
                title = f"epoch {epoch + 1}/{cfg.epochs}"
                update = bars.task(title, self.steps_per_epoch, live="")
                stats = self.train_epoch(epoch, lambda step, live, u=update:
                                         u(completed=step, live=_live_text(live)))
                t_val = time.perf_counter()
                val = self.validate(epoch)
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
                # the collapse guard: what holds at this epoch, from the records (same on
                # every rank: the records are); one line, and the record keeps it
                found = [f for f in findings_for(cfg, self.data.info.num_classes,
                                                 [*self.history, record])
                         if f.epoch == epoch + 1]
                if found:
                    record["guard"] = [f.to_dict() for f in found]
                self.history.append(record)
                # Order matters for crash safety: the record is appended (fsynced) before the
                # checkpoint; a kill in between leaves a record that resume removes.
                if self.dist.is_main and self.run_dir is not None:
                    append_jsonl(self.run_dir / METRICS, record)
                if tb is not None:
                    tb.epoch(record, self.data.info.class_names)
                if found:
                    line = guard_line(found, cfg)
                    if cfg.on_collapse == "stop":  # before this epoch's checkpoint
                        raise CollapseStop(self._stop_text(line, epoch))
                    if self.dist.is_main:
                        logger.warning(f"warning: {line}")
                self._save(epoch, is_best, val_acc)
                if bars.shown:
                    update(live=_epoch_text(record))
                elif bars.enabled:  # a file or a pipe (cluster logs)
                    log_info(f"{title}  {_epoch_text(record)}  ({record['train_seconds']:.1f} s, "
                             f"{record['train_images_per_s']:.0f} img/s)")
                self.dist.barrier()
        return self.history


def _live_text(live: dict[str, float]) -> str:
    """``loss 0.812  adv_acc 61.2%  clean_acc 80.1%``: the progress bar's live column."""
    return "  ".join(f"{k} {v:.3f}" if k == "loss" else f"{k} {100 * v:.1f}%"
                     for k, v in live.items())


def _epoch_text(record: dict[str, Any]) -> str:
    """An epoch's training loss and accuracies, then its validation accuracies."""
    train = {k: record[f"train_{k}"] for k in ("loss", "adv_acc", "clean_acc")
             if record.get(f"train_{k}") is not None}
    extra = ""
    if record.get("val_robust_acc") is not None:
        extra = (f"  val clean {100 * record['val_clean_acc']:.1f}%  "
                 f"val {record['val_attack']} {100 * record['val_robust_acc']:.1f}%")
    return _live_text(train) + extra

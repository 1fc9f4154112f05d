"""torchrun / DistributedDataParallel plumbing, one small object the loop asks questions of.

Single-process runs use :data:`SINGLE`, for which every collective below is the identity; under
``torchrun`` (WORLD_SIZE > 1 in the environment) :func:`init_distributed` joins the process
group (NCCL on CUDA, gloo on CPU).

What runs where: every rank trains on its shard and evaluates its shard; rank 0 alone reads
checkpoints and configs (then broadcasts them) and writes files, so a multi-node run needs no
shared filesystem except for ``--resume`` convenience. :meth:`DistContext.on_main` runs such
rank-0-only work and hands the result — or the same one-line error — to every rank, so a bad
input stops all ranks together instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import torch
import torch.distributed as dist

from spat.errors import SpatError
from spat.validation import one_line

T = TypeVar("T")
P = ParamSpec("P")


@dataclass(frozen=True)
class DistContext:
    """Rank ``rank`` of ``world_size`` processes; ``local_rank`` picks the GPU on a node.

    ``backend`` is the process group's ("gloo" or "nccl"); NCCL collectives need CUDA tensors,
    which :meth:`all_gather` and :meth:`broadcast_` take care of.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "gloo"
    #: whether :func:`init_distributed` created the process group (and so
    #: :func:`shutdown_distributed` destroys it); a group the caller created is left alone.
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def comm_device(self) -> torch.device:
        """Where tensors must live for this backend's collectives."""
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks (on a copy); identity in a single process."""
        return self._all_reduce(t, dist.ReduceOp.SUM)

    def all_reduce_min(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise minimum of ``t`` over ranks (on a copy); identity in a single process."""
        return self._all_reduce(t, dist.ReduceOp.MIN)

    def _all_reduce(self, t: torch.Tensor, op: Any) -> torch.Tensor:
        if not self.enabled:
            return t
        c = t.detach().to(self.comm_device, copy=True)
        dist.all_reduce(c, op=op)
        return c.to(t.device)

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """``t`` of every rank, in rank order (all ranks must pass the same shape and dtype)."""
        if not self.enabled:
            return [t]
        c = t.detach().to(self.comm_device).contiguous()
        out = [torch.empty_like(c) for _ in range(self.world_size)]
        dist.all_gather(out, c)
        return [o.to(t.device) for o in out]

    def broadcast_(self, tensors: list[torch.Tensor], src: int = 0) -> None:
        """Overwrite each tensor in place with rank ``src``'s (same shapes on every rank)."""
        if not self.enabled:
            return
        for t in tensors:
            c = t.detach().to(self.comm_device).contiguous()
            dist.broadcast(c, src=src)
            with torch.no_grad():
                t.copy_(c.to(t.device))

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """Rank ``src``'s ``obj`` (any picklable value) on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]  # type: ignore[return-value]

    def on_main(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on rank 0 only and return its result on every rank.

        If ``fn`` raises :class:`SpatError` on rank 0, every rank raises the same message; any
        other exception on rank 0 becomes a ``RuntimeError`` naming it on the other ranks (and
        the original on rank 0). In a single process this is just ``fn()``.
        """
        if not self.enabled:
            return fn(*args, **kwargs)
        result: Any = None
        error: tuple[str, str] | None = None
        original: BaseException | None = None
        if self.is_main:
            try:
                result = fn(*args, **kwargs)
            except Exception as e:  # handed to the other ranks, re-raised below
                original = e
                error = (type(e).__name__, one_line(e, None))
                if isinstance(e, SpatError):
                    error = ("SpatError", str(e))
        result, error = self.broadcast_object((result, error))
        if original is not None:
            raise original
        if error is not None:
            if error[0] == "SpatError":
                raise SpatError(error[1])
            raise RuntimeError(f"rank 0 failed: {error[0]}: {error[1]}")
        return result

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


SINGLE = DistContext()


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun set up through the environment, if any.

    Reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (set by torchrun); with WORLD_SIZE unset
    or 1 this is :data:`SINGLE` and nothing is initialised. The backend is NCCL when CUDA is
    available and the device is ``auto``/``cuda`` (the rank's GPU is ``cuda:LOCAL_RANK``),
    else gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    backend = "nccl" if use_cuda else "gloo"
    owns = not dist.is_initialized()
    if owns:
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    else:
        backend = str(dist.get_backend())
    return DistContext(rank=rank, world_size=world, local_rank=local, backend=backend,
                       owns_group=owns)


def shutdown_distributed(ctx: DistContext, *, meet: bool = True) -> None:
    """Leave the process group if :func:`init_distributed` created it (no-op otherwise).

    ``meet``: the ranks first wait for each other at a barrier, so that none tears its group
    down while a peer is still using it (under load, gloo aborted such a peer: "terminate
    called without an active exception"). Pass ``False`` when leaving because of an error: a
    rank that failed must not wait for peers that may never arrive.

    A process that trains several times under one torchrun launch (a script calling
    ``spat.cli.main`` twice, say) should create the group itself, once: re-creating the default
    group after destroying it reuses torchrun's rendezvous store under the same key prefix, and
    the ranks can then wait on each other forever.
    """
    if ctx.enabled and ctx.owns_group and dist.is_initialized():
        if meet:
            dist.barrier()
        dist.destroy_process_group()

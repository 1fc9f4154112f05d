"""Mini-batches from a :class:`Split` on any device, with optional sharding and augmentation."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from spat.data.types import AUGMENTS, Split
from spat.errors import SpatError, unknown_name

CROP_PAD = 4  # pixels of zero padding on each side for "crop_flip"


def _check_augment(kind: str) -> None:
    if kind not in AUGMENTS:
        raise unknown_name("augmentation", kind, list(AUGMENTS))


def num_batches(n: int, batch_size: int, drop_last: bool, world_size: int = 1) -> int:
    """How many batches :func:`batches` yields per rank for a split of ``n`` examples.

    Each rank gets ``ceil(n / world_size)`` examples (the order is padded by wrap-around);
    that is cut into batches of ``batch_size``, the last one partial unless ``drop_last``.
    """
    if batch_size < 1 or world_size < 1 or n < 0:
        raise SpatError(f"need batch_size >= 1, world_size >= 1 and n >= 0, got batch_size "
                        f"{batch_size}, world_size {world_size}, n {n}")
    per_rank = math.ceil(n / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def shard_order(n: int, *, shuffle: bool, generator: torch.Generator | None, rank: int,
                world_size: int) -> torch.Tensor:
    """The example indices (CPU, ``int64``) that rank ``rank`` visits, in order.

    The order is ``torch.randperm(n, generator=generator)`` (one draw) if ``shuffle``, else
    ``0..n-1``. With ``world_size > 1`` it is padded by wrap-around to a multiple of
    ``world_size`` and rank ``r`` takes ``order[r::world_size]``, as ``DistributedSampler``
    does, so all ranks get the same count and together cover every example.
    """
    if shuffle:
        gen_device = generator.device if generator is not None else "cpu"
        order = torch.randperm(n, generator=generator, device=gen_device).cpu()
    else:
        order = torch.arange(n)
    if world_size > 1 and n > 0:
        total = math.ceil(n / world_size) * world_size
        if total > n:
            order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
        order = order[rank::world_size]
    return order


def batches(
    split: Split,
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: str = "none",
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate over ``split`` in mini-batches ``(x, y)`` on ``device``.

    ``x`` is ``float32`` (B, C, H, W) in [0,1] pixel units (``uint8`` images divided by 255; a
    split holding float images is passed through as ``float32``), ``y`` is ``int64`` (B,). The
    whole split is copied to ``device`` once (kept on the split for later calls) as ``uint8``;
    each batch is gathered and converted there.

    ``shuffle`` draws one ``torch.randperm`` from ``generator`` per call (the global generator if
    ``None``); the same generator state gives the same batches. ``augment`` (``"none"`` or
    ``"crop_flip"``) is applied per batch with :func:`augment_batch` on the same generator.
    With ``world_size > 1`` this yields rank ``rank``'s shard (see :func:`shard_order`).
    :func:`num_batches` gives the number of batches. Arguments are checked at call time; the
    permutation is also drawn at call time.
    """
    if batch_size < 1:
        raise SpatError(f"batch size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise SpatError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    _check_augment(augment)
    n = len(split)
    if split.images.shape[0] != n:
        raise SpatError(f"split has {split.images.shape[0]} images but {n} labels")
    order = shard_order(n, shuffle=shuffle, generator=generator, rank=rank,
                        world_size=world_size)
    count = num_batches(n, batch_size, drop_last, world_size)
    return _iterate(split, order, batch_size, count, torch.device(device), augment, generator)


def _iterate(split: Split, order: torch.Tensor, batch_size: int, count: int,
             device: torch.device, augment: str, generator: torch.Generator | None
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if count == 0:
        return
    images, labels = split.on_device(device)
    order = order.to(device)
    for i in range(count):
        idx = order[i * batch_size:(i + 1) * batch_size]
        x = images.index_select(0, idx)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if augment != "none":
            x = augment_batch(x, augment, generator)
        yield x, labels.index_select(0, idx)


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    """Randomly augment a batch ``x`` (B, C, H, W) on its own device, without a Python loop.

    ``"none"`` returns ``x`` itself. ``"crop_flip"``: zero-pad 4 px on each side, cut a random
    H x W window per example (offsets uniform in 0..8 px on each axis), then flip each example
    horizontally with probability 0.5. The offsets and flips are drawn from ``generator`` (on
    its own device, e.g. a CPU generator for a CUDA batch; the global generator if ``None``) as
    ``randint(0, 9, (2, B))`` then ``randint(0, 2, (B,))``, so a fixed generator state gives the
    same output. Unknown kinds raise ``SpatError``.
    """
    _check_augment(kind)
    if kind == "none":
        return x
    if x.ndim != 4:
        raise SpatError(f"augment_batch needs a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")
    offsets = torch.randint(0, 2 * CROP_PAD + 1, (2, b), generator=generator, device=gen_device)
    flips = torch.randint(0, 2, (b,), generator=generator, device=gen_device)
    offsets, flips = offsets.to(x.device), flips.to(x.device).bool()
    padded = F.pad(x, (CROP_PAD, CROP_PAD, CROP_PAD, CROP_PAD))  # (B, C, H+8, W+8), zeros
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # a flip reads the columns backwards
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * CROP_PAD))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))

"""Seeding and capture/restore of every random number generator a run uses.

Exact resume needs Python's ``random``, NumPy's global generator, torch's CPU generator and
(when present) every CUDA generator, plus any explicit ``torch.Generator`` the run owns.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (CPU and all CUDA devices).

    ``deterministic=True`` also asks torch for deterministic kernels (slower on GPU).
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


#: Random streams of a training epoch: ``derive_seed(seed, epoch, stream, ...)``.
STREAM_RANK, STREAM_DATA, STREAM_VAL = 0, 1, 4
#: A rank's own streams within an epoch: ``derive_seed(rank_seed(seed, epoch, rank), stream)``
#: for augmentation and the training attack's random starts (dropout draws from the global
#: generator, seeded with the rank seed itself).
RANK_STREAM_AUGMENT, RANK_STREAM_ATTACK = 2, 3
#: The final test's PGD random starts are seeded by ``seed + FINAL_TEST_OFFSET`` (the value every
#: recorded run used; changing it changes ``test_robust_acc`` of every new run).
FINAL_TEST_OFFSET = 12345
#: The seed range of a run or an evaluation: non-negative 63-bit, as every derived stream
#: (:func:`derive_seed`); torch takes seeds below 2**64, and the final test adds
#: ``FINAL_TEST_OFFSET`` to the seed.
MAX_SEED = 2**63 - 1


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from integers and names (stable across processes and Python versions): the
    one way spat derives a seed from another.

    FNV-1a over the 64-bit two's-complement words of ``parts``; a string part is its length in
    UTF-8 bytes, then each byte, as words (so ``("ab",)`` and ``("a", "b")`` differ).
    ``derive_seed(seed, epoch, stream)`` names one random stream of one epoch of one run;
    ``derive_seed(seed, "pgd20")`` an evaluation attack's random starts
    (:mod:`spat.evaluation.seeding`).
    """
    h = 1469598103934665603
    words: list[int] = []
    for p in parts:
        if isinstance(p, str):
            data = p.encode()
            words += [len(data), *data]
        else:
            words.append(p)
    for w in words:
        h = ((h ^ (w & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of rank ``rank``'s own streams in ``epoch`` (dropout, augmentation, attack
    starts). Rank 0's is ``derive_seed(seed, epoch, STREAM_RANK)``; other ranks extend it with
    their rank, so no rank's seed coincides with the data-order or validation stream of the
    epoch."""
    base = (seed, epoch, STREAM_RANK)
    return derive_seed(*base) if rank == 0 else derive_seed(*base, rank)


def batch_seed(seed: int, batch: int) -> int:
    """The seed of the attack's random starts in batch ``batch`` (0-based, batches in order) of
    an evaluation whose stream seed is ``seed`` (training's validation and final test; each
    white-box attack of ``spat eval``, :mod:`spat.evaluation.seeding`):
    ``seed`` itself for the first batch (a split that fits in one batch is attacked as it always
    was), ``derive_seed(seed, batch)`` for the others. One generator per batch, so each
    example's start does not depend on which rank attacks it (:mod:`spat.evaluation.sharding`).
    """
    return seed if batch == 0 else derive_seed(seed, batch)


def final_test_seed(seed: int) -> int:
    """The seed of the final test's attack starts in a run of seed ``seed``:
    ``seed + FINAL_TEST_OFFSET`` (kept so that every recorded run's test accuracy reproduces)."""
    return seed + FINAL_TEST_OFFSET


def get_rng_state() -> dict[str, Any]:
    """All global RNG states as tensors / plain values (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _python_state_to_plain(random.getstate()),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured."""
    random.setstate(_python_state_from_plain(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(s: tuple) -> dict[str, Any]:
    version, internal, gauss = s
    internal_t = torch.tensor(internal, dtype=torch.int64)
    return {"version": version, "internal": internal_t, "gauss": gauss}


def _python_state_from_plain(d: dict[str, Any]) -> tuple:
    return (int(d["version"]), tuple(int(v) for v in d["internal"].tolist()), d["gauss"])

"""How an evaluation seeds its random starts: every seed is derived from ``--seed`` by the one
rule of :func:`spat.utils.rng.derive_seed`.

A white-box attack's seed is ``derive_seed(seed, attack key)``, so its random starts do not
depend on which other attacks ran before it (needed to reuse and resume attacks one by one);
each batch of ``batch_size`` examples then draws from its own generator seeded by
:func:`spat.utils.rng.batch_seed` ``(attack seed, batch number)`` (the rule training's validation
uses too), so the result does not depend on how the batches are sharded.
The ε-sweep sanity check's i-th radius uses ``derive_seed(seed, "sanity-eps", i)``. AutoAttack
gets ``seed`` itself (as the official code).
"""

from __future__ import annotations

import torch

from spat.utils.rng import derive_seed

#: The per-batch rule, recorded in each white-box attack's settings (so results saved under
#: another rule are not reused).
PER_BATCH_SEEDING = "per batch: batch_seed(attack seed, b)"


def attack_seed(seed: int, key: str) -> int:
    """The seed of attack ``key``'s random starts in an evaluation seeded by ``seed``."""
    return derive_seed(seed, key)


def sweep_seed(seed: int, i: int) -> int:
    """The seed of the ε-sweep check's PGD-20 at the ``i``-th radius."""
    return derive_seed(seed, "sanity-eps", i)


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` (on the CPU for a device without its own generators)."""
    dev = device if device.type in ("cpu", "cuda") else torch.device("cpu")
    return torch.Generator(device=dev).manual_seed(seed)

"""A plugin attack (tests/test_plugins.py loads this file): an objective plus one entry.

``mpgd5``: 5 PGD steps on the probability margin max_{j≠y} p_j − p_y (a bounded CW-style
objective on the softmax), reported as "MPGD-5".
"""

from __future__ import annotations

import torch

from spat.evaluation import register_attack

CALLS: list[int] = []  # batch sizes the objective saw (the test checks it ran)


def probability_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j≠y} p_j − p_y per example: positive when the example is misclassified."""
    CALLS.append(len(y))
    p = logits.float().softmax(1)
    true = p.gather(1, y[:, None]).squeeze(1)
    other = p.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true


register_attack("mpgd5", probability_margin, steps=5, prefix="MPGD",
                summary="MPGD-5: 5 PGD steps on the probability margin max_{j!=y} p_j - p_y "
                "(a plugin's attack, tests/plugins/margin_pgd.py)")

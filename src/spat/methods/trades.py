"""TRADES (Zhang et al., arXiv 1901.08573): SPAT's objective with all of SPAT's parts off.

L = CE(f(x), y) + β · mean_i KL(p_i‖q_i), x' maximising KL(p‖q) from x + 0.001·N(0, I); the class
is :class:`spat.methods.spat.ConsistencyAT` (TRADES is its default), defined with SPAT's parts.
"""

from __future__ import annotations

from spat.methods.spat import ConsistencyAT


def trades(**kwargs) -> ConsistencyAT:
    """TRADES with its reference defaults (β = 6, ε 0.031, η 0.007, K 10, normal start)."""
    return ConsistencyAT(name="trades", **kwargs)


__all__ = ["ConsistencyAT", "trades"]

"""Confidence intervals for proportions, as drawn on the analysis figures' bars.

A per-class accuracy or a flow share is a proportion ``k / n`` of a small number of examples
(a class of 50 test images, or the 3 misclassified examples of a robust class), so a bar needs
an interval. The normal ("Wald") interval ``p ± z·sqrt(p(1−p)/n)`` collapses to zero width at
``p = 0`` or ``1`` and leaves [0, 1] for small ``n``; the Wilson score interval (Wilson, *J. Am.
Stat. Assoc.* 22 (1927) 209–212; recommended by Brown, Cai & DasGupta, *Statist. Sci.* 16 (2001)
101–133) does neither:

    centre    = (p + z²/(2n)) / (1 + z²/n)
    half-width = z / (1 + z²/n) · sqrt(p(1−p)/n + z²/(4n²))

with ``p = k/n`` and ``z`` the standard normal quantile (1.959964 for 95 %).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The two-sided 95 % standard normal quantile, Φ⁻¹(0.975).
Z95 = 1.959963984540054


def wilson_interval(successes: Any, n: Any, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval ``(low, high)`` of the proportion ``successes / n``.

    Works elementwise on arrays (numpy broadcasting); both bounds lie in [0, 1]; NaN where
    ``n == 0``. ``successes`` may be a float count (a share times ``n``); it is clipped to
    [0, n]. ``z`` is the normal quantile of the two-sided level (default 95 %).
    """
    k = np.asarray(successes, np.float64)
    m = np.asarray(n, np.float64)
    k, m = np.broadcast_arrays(k, m)
    low = np.full(k.shape, np.nan)
    high = np.full(k.shape, np.nan)
    ok = m > 0
    if np.any(ok):
        nn = m[ok]
        p = np.clip(k[ok], 0.0, nn) / nn
        z2 = z * z
        denom = 1.0 + z2 / nn
        centre = (p + z2 / (2 * nn)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn))
        low[ok] = np.clip(centre - half, 0.0, 1.0)
        high[ok] = np.clip(centre + half, 0.0, 1.0)
    return low, high


def error_bar_extents(p: Any, n: Any, z: float = Z95) -> np.ndarray:
    """``(2, M)`` distances below and above each proportion ``p`` to its Wilson interval (the
    ``yerr``/``xerr`` matplotlib's ``bar`` takes); 0 where the interval is undefined."""
    p_arr = np.asarray(p, np.float64).ravel()
    n_arr = np.broadcast_to(np.asarray(n, np.float64), p_arr.shape)
    low, high = wilson_interval(np.nan_to_num(p_arr) * n_arr, n_arr, z)
    below = np.where(np.isnan(low) | np.isnan(p_arr), 0.0, p_arr - low)
    above = np.where(np.isnan(high) | np.isnan(p_arr), 0.0, high - p_arr)
    return np.vstack([np.maximum(below, 0.0), np.maximum(above, 0.0)])


__all__ = ["Z95", "error_bar_extents", "wilson_interval"]

"""Hard-class-pair statistics: pure functions of a (K, K) confusion matrix of counts.

Convention everywhere: ``conf[i, j]`` is the number of examples of *true* class ``i`` that were
*predicted* as class ``j`` (under an attack, or clean). Row ``i`` of the matrix therefore holds
``n_i = Σ_j conf[i, j]`` examples, of which ``e_i = n_i − conf[i, i]`` are misclassified.

SPAT (Hou, Han & Li, AAAI-23, arXiv 2210.15068) observes that untargeted adversarial examples
of class ``i`` do not spread over the ``K − 1`` wrong classes but land mostly on the class most
similar to ``i`` (cat → dog, shirt → T-shirt): the *hard class pair*. The functions here measure
that:

* :func:`row_normalized` — ``conf[i, j] / n_i`` (share of all of class ``i``'s examples);
* :func:`error_normalized` — ``conf[i, j] / e_i`` for ``j ≠ i`` (share of class ``i``'s
  *misclassified* examples; the diagonal is 0);
* :func:`directed_flows` / :func:`symmetric_flows` — the class pairs ranked by how many
  examples flow between them;
* :func:`concentration` — per class, the share of the top wrong class among the misclassified
  examples and the normalised entropy of the wrong-class distribution (1 = uniform over the
  ``K − 1`` wrong classes, 0 = a single target);
* :func:`offdiag_spearman` — how well a class-similarity matrix predicts the flows.

Undefined quantities (a class with no examples, or no misclassified ones) are ``NaN``, never an
exception or a division warning.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from spat.errors import SpatError
from spat.utils.io import nan_to_none

ArrayLike = Any  # numpy array, torch tensor or nested lists


def as_counts(conf: ArrayLike) -> np.ndarray:
    """``conf`` as a float64 (K, K) numpy array of non-negative counts; :class:`SpatError` if it
    is not square, has fewer than 2 classes, or holds negative or non-finite values."""
    if hasattr(conf, "detach"):  # torch tensor
        conf = conf.detach().cpu().numpy()
    a = np.asarray(conf, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise SpatError(f"a confusion matrix must be square (K, K), got shape {a.shape}")
    if a.shape[0] < 2:
        raise SpatError(f"a confusion matrix needs at least 2 classes, got {a.shape[0]}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise SpatError("a confusion matrix must hold non-negative finite counts")
    return a


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with NaN where ``den == 0`` (no warnings)."""
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def class_totals(conf: ArrayLike) -> np.ndarray:
    """``n_i``: examples per true class, shape (K,)."""
    return as_counts(conf).sum(axis=1)


def class_errors(conf: ArrayLike) -> np.ndarray:
    """``e_i``: misclassified examples per true class (row sum minus diagonal), shape (K,)."""
    a = as_counts(conf)
    return a.sum(axis=1) - np.diag(a)


def per_class_accuracy(conf: ArrayLike) -> np.ndarray:
    """``conf[i, i] / n_i`` per class (NaN for a class with no examples)."""
    a = as_counts(conf)
    return _divide(np.diag(a), a.sum(axis=1))


def accuracy(conf: ArrayLike) -> float:
    """Overall accuracy: trace / total (NaN for an empty matrix)."""
    a = as_counts(conf)
    total = a.sum()
    return float(np.trace(a) / total) if total > 0 else math.nan


def row_normalized(conf: ArrayLike) -> np.ndarray:
    """``conf[i, j] / n_i``: each row is the distribution of predictions for the examples of
    class ``i`` (sums to 1, diagonal = per-class accuracy); NaN rows for empty classes."""
    a = as_counts(conf)
    return _divide(a, a.sum(axis=1, keepdims=True))


def error_normalized(conf: ArrayLike) -> np.ndarray:
    """``conf[i, j] / e_i`` for ``j ≠ i`` and 0 on the diagonal: each row is the distribution of
    the wrong predictions of class ``i`` (sums to 1); NaN rows for classes with no errors."""
    a = as_counts(conf).copy()
    np.fill_diagonal(a, 0.0)
    out = _divide(a, a.sum(axis=1, keepdims=True))
    k = a.shape[0]
    ok = a.sum(axis=1) > 0
    out[np.arange(k)[ok], np.arange(k)[ok]] = 0.0
    return out


@dataclass(frozen=True)
class Flow:
    """Examples flowing from true class ``source`` to predicted class ``target``.

    ``share_of_errors``: ``conf[s, t] / e_s`` (share of the source's misclassified examples);
    ``share_of_class``: ``conf[s, t] / n_s`` (share of all of the source's examples).
    """

    source: int
    target: int
    count: int
    share_of_errors: float
    share_of_class: float

    def label(self, names: Sequence[str] | None = None) -> str:
        """``"Shirt→T-shirt/top"`` (class indices when ``names`` is None)."""
        return f"{_name(names, self.source)}→{_name(names, self.target)}"

    def to_dict(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        d = asdict(self)
        if names is not None:
            d.update(source_name=names[self.source], target_name=names[self.target])
        return {"pair": self.label(names), **d}


@dataclass(frozen=True)
class PairFlow:
    """Examples flowing either way between classes ``a < b``: ``count = conf[a,b] + conf[b,a]``.

    ``share_of_errors``: ``count / (e_a + e_b)`` (share of the two classes' misclassified
    examples); ``share_of_class``: ``count / (n_a + n_b)``; ``share_of_all_errors``:
    ``count / Σ_i e_i`` (share of every misclassified example of the matrix).
    """

    a: int
    b: int
    count: int
    a_to_b: int
    b_to_a: int
    share_of_errors: float
    share_of_class: float
    share_of_all_errors: float

    def label(self, names: Sequence[str] | None = None) -> str:
        """``"T-shirt/top↔Shirt"``."""
        return f"{_name(names, self.a)}↔{_name(names, self.b)}"

    def to_dict(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        d = asdict(self)
        if names is not None:
            d.update(a_name=names[self.a], b_name=names[self.b])
        return {"pair": self.label(names), **d}


def _name(names: Sequence[str] | None, i: int) -> str:
    return str(i) if names is None else str(names[i])


RANK_KEYS = ("class", "errors", "count")


def _rank_key(by: str):  # noqa: ANN202
    if by not in RANK_KEYS:
        raise SpatError(f"unknown ranking {by!r} (valid: {', '.join(RANK_KEYS)})")

    def nan_low(v: float) -> float:
        return -math.inf if math.isnan(v) else v

    if by == "class":
        return lambda f: (nan_low(f.share_of_class), f.count, nan_low(f.share_of_errors))
    if by == "errors":
        return lambda f: (nan_low(f.share_of_errors), f.count, nan_low(f.share_of_class))
    return lambda f: (f.count, nan_low(f.share_of_class), nan_low(f.share_of_errors))


def directed_flows(conf: ArrayLike, by: str = "class", include_zero: bool = False) -> list[Flow]:
    """All off-diagonal pairs ``i → j``, hardest first.

    ``by="class"`` ranks by ``share_of_class`` (the rate at which class ``i``'s examples become
    ``j``; the default, robust for classes with few errors), ``"errors"`` by ``share_of_errors``
    (the paper's "x% of misclassified dogs become cats"), ``"count"`` by the raw count. Ties are
    broken by the other measures, then by ``(source, target)``. Pairs with no examples are left
    out unless ``include_zero``.
    """
    a = as_counts(conf)
    n = a.sum(axis=1)
    e = n - np.diag(a)
    k = a.shape[0]
    flows = [
        Flow(i, j, int(round(a[i, j])),
             float(a[i, j] / e[i]) if e[i] > 0 else math.nan,
             float(a[i, j] / n[i]) if n[i] > 0 else math.nan)
        for i in range(k) for j in range(k) if i != j and (include_zero or a[i, j] > 0)
    ]
    key = _rank_key(by)
    return sorted(flows, key=lambda f: (*(-v for v in key(f)), f.source, f.target))


def symmetric_flows(conf: ArrayLike, by: str = "class", include_zero: bool = False
                    ) -> list[PairFlow]:
    """All unordered pairs ``i ↔ j`` (``i < j``) with their combined flow, hardest first
    (same ``by`` choices as :func:`directed_flows`)."""
    a = as_counts(conf)
    n = a.sum(axis=1)
    e = n - np.diag(a)
    total_errors = e.sum()
    k = a.shape[0]
    out = []
    for i in range(k):
        for j in range(i + 1, k):
            c = a[i, j] + a[j, i]
            if c == 0 and not include_zero:
                continue
            ee, nn = e[i] + e[j], n[i] + n[j]
            out.append(PairFlow(
                i, j, int(round(c)), int(round(a[i, j])), int(round(a[j, i])),
                float(c / ee) if ee > 0 else math.nan,
                float(c / nn) if nn > 0 else math.nan,
                float(c / total_errors) if total_errors > 0 else math.nan,
            ))
    key = _rank_key(by)
    return sorted(out, key=lambda f: (*(-v for v in key(f)), f.a, f.b))


def directed_flow_matrix(conf: ArrayLike, normalize: str = "class") -> np.ndarray:
    """The directed flow ``i → j`` as a (K, K) matrix with a NaN diagonal: ``normalize="class"``
    divides by ``n_i``, ``"errors"`` by ``e_i``, ``"none"`` keeps counts."""
    a = as_counts(conf)
    if normalize == "class":
        m = row_normalized(a)
    elif normalize == "errors":
        m = error_normalized(a)
    elif normalize == "none":
        m = a.copy()
    else:
        raise SpatError(f"unknown normalisation {normalize!r} (valid: class, errors, none)")
    np.fill_diagonal(m, np.nan)
    return m


def symmetric_flow_matrix(conf: ArrayLike) -> np.ndarray:
    """``(conf[i,j] + conf[j,i]) / (n_i + n_j)`` as a symmetric (K, K) matrix, NaN diagonal."""
    a = as_counts(conf)
    n = a.sum(axis=1)
    m = _divide(a + a.T, n[:, None] + n[None, :])
    np.fill_diagonal(m, np.nan)
    return m


@dataclass(frozen=True)
class Concentration:
    """Per-class target concentration of the misclassified examples (arrays of shape (K,)).

    ``top_target``: the most frequent wrong class (-1 if none); ``top_share``: its share of the
    class's misclassified examples (NaN if none); ``entropy``: Shannon entropy (nats) of the
    wrong-class distribution; ``normalized_entropy``: ``entropy / log(K − 1)`` (1 = uniform
    over the wrong classes, 0 = one target; NaN when undefined: no errors, or K = 2);
    ``errors``: ``e_i``. :attr:`UNIFORM` is the value of a uniform spread.
    """

    top_target: np.ndarray
    top_share: np.ndarray
    entropy: np.ndarray
    normalized_entropy: np.ndarray
    errors: np.ndarray

    UNIFORM = 1.0

    @property
    def mean_top_share(self) -> float:
        """Mean of ``top_share`` over the classes that have misclassified examples."""
        return _nanmean(self.top_share)

    @property
    def mean_normalized_entropy(self) -> float:
        """Mean of ``normalized_entropy`` over the classes where it is defined."""
        return _nanmean(self.normalized_entropy)

    @property
    def uniform_top_share(self) -> float:
        """``1 / (K − 1)``: the top share if errors spread uniformly over the wrong classes."""
        return 1.0 / (len(self.errors) - 1)


def _nanmean(v: np.ndarray) -> float:
    v = np.asarray(v, np.float64)
    ok = ~np.isnan(v)
    return float(v[ok].mean()) if ok.any() else math.nan


def concentration(conf: ArrayLike) -> Concentration:
    """Per-class top-target share and normalised entropy of the wrong-class distribution."""
    a = as_counts(conf)
    k = a.shape[0]
    p = error_normalized(a)
    errors = class_errors(a)
    has = errors > 0
    off = p.copy()
    np.fill_diagonal(off, -1.0)  # never the top target
    top = np.where(has, np.argmax(np.nan_to_num(off, nan=-1.0), axis=1), -1)
    top_share = np.where(has, np.nanmax(np.where(has[:, None], off, 0.0), axis=1), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    entropy = np.where(has, -plogp.sum(axis=1), np.nan)
    entropy = np.where(has, np.maximum(entropy, 0.0), np.nan)  # −0.0 and rounding
    if k > 2:
        norm = entropy / math.log(k - 1)
    else:
        norm = np.full(k, np.nan)
    return Concentration(top_target=top.astype(np.int64), top_share=top_share.astype(np.float64),
                         entropy=entropy, normalized_entropy=norm, errors=errors)


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman rank correlation between two sets of pair values."""

    rho: float
    p_value: float
    n_pairs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """``"ρ = 0.62 (p = 3e-05, 45 pairs)"``."""
        if math.isnan(self.rho):
            return f"ρ undefined ({self.n_pairs} pairs)"
        return f"ρ = {self.rho:.2f} (p = {self.p_value:.2g}, {self.n_pairs} pairs)"


def offdiag_values(m: ArrayLike, symmetric: bool = False) -> np.ndarray:
    """The off-diagonal entries of a (K, K) matrix: all ``K(K−1)`` in row-major order, or for
    ``symmetric`` the ``K(K−1)/2`` entries above the diagonal."""
    a = np.asarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m, np.float64)
    k = a.shape[0]
    if symmetric:
        return a[np.triu_indices(k, 1)]
    return a[~np.eye(k, dtype=bool)]


def offdiag_spearman(similarity: ArrayLike, flow: ArrayLike, symmetric: bool = False
                     ) -> RankCorrelation:
    """Spearman's ρ (``scipy.stats.spearmanr``) between the off-diagonal similarities and flows.

    Directed (``symmetric=False``): the ``K(K−1)`` ordered pairs ``(i, j)``, ``flow[i, j]`` the
    flow ``i → j``. Symmetric: both matrices are symmetrised (mean with the transpose) and the
    ``K(K−1)/2`` unordered pairs are used. Pairs where either value is NaN are dropped; with
    fewer than 3 pairs or a constant input ρ is NaN.
    """
    from scipy.stats import spearmanr

    s = np.asarray(similarity.detach().cpu().numpy() if hasattr(similarity, "detach")
                   else similarity, np.float64)
    f = np.asarray(flow.detach().cpu().numpy() if hasattr(flow, "detach") else flow, np.float64)
    if s.shape != f.shape or s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise SpatError(f"similarity {s.shape} and flow {f.shape} must be the same (K, K) shape")
    if symmetric:
        s, f = (s + s.T) / 2, (f + f.T) / 2
    x, y = offdiag_values(s, symmetric), offdiag_values(f, symmetric)
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    n = int(ok.sum())
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return RankCorrelation(math.nan, math.nan, n)
    res = spearmanr(x, y)
    return RankCorrelation(float(res.statistic), float(res.pvalue), n)


def cosine_similarity_matrix(rows: ArrayLike, center: bool = False) -> np.ndarray:
    """``cos(r_i, r_j)`` between the rows of a (K, d) matrix, shape (K, K).

    ``center`` subtracts the mean row first (useful for class-mean features, which after a ReLU
    all share a large common component). A zero (or NaN) row gives NaN similarities.
    """
    r = np.asarray(rows.detach().cpu().numpy() if hasattr(rows, "detach") else rows, np.float64)
    if r.ndim != 2:
        raise SpatError(f"expected a (K, d) matrix of rows, got shape {r.shape}")
    if center:
        r = r - np.nanmean(r, axis=0, keepdims=True)
    norms = np.linalg.norm(r, axis=1)
    unit = _divide(r, norms[:, None])
    sim = unit @ unit.T
    return np.clip(sim, -1.0, 1.0)


def flow_summary(conf: ArrayLike, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The headline numbers of one confusion matrix (JSON-ready; NaN → None).

    ``accuracy``; ``top_pair`` (the hardest directed pair by share of the source class, with
    ``share_of_errors`` and ``share_of_class``); ``top_symmetric_pair`` (with its share of all
    misclassified examples); ``mean_top_share`` and ``mean_normalized_entropy`` (means over
    classes with errors) and their uniform references ``1/(K−1)`` and 1.0.
    """
    a = as_counts(conf)
    d = directed_flows(a)
    s = symmetric_flows(a)
    c = concentration(a)
    return {
        "accuracy": nan_to_none(accuracy(a)),
        "errors": int(round(class_errors(a).sum())),
        "top_pair": d[0].to_dict(names) if d else None,
        "top_symmetric_pair": s[0].to_dict(names) if s else None,
        "mean_top_share": nan_to_none(c.mean_top_share),
        "uniform_top_share": c.uniform_top_share,
        "mean_normalized_entropy": nan_to_none(c.mean_normalized_entropy),
        "uniform_normalized_entropy": Concentration.UNIFORM,
    }


# ----------------------------------------------------------------------------- honest nulls
# A class with few errors "looks concentrated" by chance alone: with e errors spread uniformly
# over the K − 1 wrong classes, one error gives a top share of 100 % and an entropy of 0. Every
# concentration number is therefore reported beside its expectation under that null for the
# *same* error count, as an excess over it, and with a test of uniformity.

#: Classes with fewer errors than this are marked (their concentration says little on its own);
#: the study pools them over seeds.
MIN_ERRORS = 5
#: Exact computation of the null top share up to this many errors; above it a seeded Monte-Carlo
#: estimate (200,000 draws; standard error < 1e-3) is used.
EXACT_MAX_ERRORS = 500


@functools.lru_cache(maxsize=4096)
def null_normalized_entropy(errors: int, wrong_classes: int) -> float:
    """``E[H(X/e)] / log(m)`` for ``X ~ Multinomial(e, uniform over m = K − 1 classes)``, exact.

    By linearity the expected entropy is ``m · E[−(B/e) log(B/e)]`` with ``B ~ Binomial(e, 1/m)``
    (each wrong class's count is binomial), a finite sum. NaN for ``e = 0`` or ``m < 2``.
    """
    e, m = int(errors), int(wrong_classes)
    if e <= 0 or m < 2:
        return math.nan
    from scipy.stats import binom

    b = np.arange(1, e + 1)
    p = binom.pmf(b, e, 1.0 / m)
    q = b / e
    return float(m * np.sum(p * -(q * np.log(q))) / math.log(m))


@functools.lru_cache(maxsize=4096)
def null_top_share(errors: int, wrong_classes: int, *, rng_seed: int = 0) -> float:
    """``E[max_j X_j] / e`` for ``X ~ Multinomial(e, uniform over m = K − 1 classes)``.

    Exact for ``e ≤`` :data:`EXACT_MAX_ERRORS`: ``E[max] = Σ_{t≥1} P(max ≥ t)`` with
    ``P(max ≤ c)`` computed by sampling the multinomial as a chain of binomials
    (``X_k | X_1..X_{k−1} ~ Binomial(remaining, 1/(m − k + 1))``) and a dynamic programme over
    the remaining count. With K = 10: 1.0, 0.556, 0.440 and 0.293 for e = 1, 2, 3, 10.
    NaN for ``e = 0``; 1.0 for ``m = 1``.
    """
    e, m = int(errors), int(wrong_classes)
    if e <= 0 or m < 1:
        return math.nan
    if m == 1:
        return 1.0
    if e > EXACT_MAX_ERRORS:
        draws = np.random.default_rng(rng_seed).multinomial(e, np.full(m, 1.0 / m), 200_000)
        return float(draws.max(axis=1).mean() / e)
    from scipy.stats import binom

    r = np.arange(e + 1)
    # trans[k][rem, rem − x] = P(X_k = x | rem remaining) for category k = 0..m−1
    gap = r[:, None] - r[None, :]  # x = rem − new_rem
    trans = [np.where(gap >= 0, binom.pmf(np.maximum(gap, 0), r[:, None], 1.0 / (m - k)), 0.0)
             for k in range(m)]
    lo = -(-e // m)  # the max is at least ceil(e / m): P(max ≥ t) = 1 for t ≤ lo
    expected_max = float(lo)
    for c in range(lo, e):  # add P(max ≥ c + 1) = 1 − P(max ≤ c)
        band = gap <= c
        state = np.zeros(e + 1)
        state[e] = 1.0  # all e errors remaining before the first category
        for k in range(m):
            state = state @ np.where(band, trans[k], 0.0)
        tail = 1.0 - float(state[0])
        expected_max += tail
        if tail < 1e-15:
            break
    return expected_max / e


@dataclass(frozen=True)
class UniformityTest:
    """G-test of "class ``i``'s errors spread uniformly over the ``K − 1`` wrong classes".

    ``g``: ``2 Σ_j x_j log(x_j / (e/m))``; ``p_value``: the exact (Monte-Carlo, seeded) tail
    probability of ``g`` under the uniform multinomial with the same ``e`` — valid for any ``e``,
    unlike the χ² approximation (also given, ``p_chi2``, with ``m − 1`` degrees of freedom).
    NaN when ``e = 0``.
    """

    errors: int
    g: float
    p_value: float
    p_chi2: float


def g_statistic(counts: ArrayLike) -> np.ndarray:
    """``G = 2 Σ_j x_j log(x_j / (e/m))`` of each row of ``counts`` (shape (..., m))."""
    x = np.asarray(counts, np.float64)
    e = x.sum(axis=-1, keepdims=True)
    m = x.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0) * m / np.where(e > 0, e, 1)),
                         0.0)
    return 2.0 * terms.sum(axis=-1)


def uniformity_test(wrong_counts: ArrayLike, *, draws: int = 20_000, rng_seed: int = 0
                    ) -> UniformityTest:
    """G-test of uniformity of one class's wrong-class counts (length ``m = K − 1``)."""
    from scipy.stats import chi2

    x = np.asarray(wrong_counts, np.float64).round()
    e, m = int(x.sum()), x.shape[0]
    if e == 0 or m < 2:
        return UniformityTest(e, math.nan, math.nan, math.nan)
    g = float(g_statistic(x))
    sims = np.random.default_rng(rng_seed).multinomial(e, np.full(m, 1.0 / m), draws)
    gs = g_statistic(sims)
    p = float((1 + np.sum(gs >= g - 1e-9)) / (1 + draws))
    return UniformityTest(e, g, p, float(chi2.sf(g, m - 1)))


def wrong_counts(conf: ArrayLike) -> np.ndarray:
    """(K, K−1): each row's counts on its wrong classes (the diagonal removed)."""
    a = as_counts(conf)
    k = a.shape[0]
    return a[~np.eye(k, dtype=bool)].reshape(k, k - 1)


@dataclass(frozen=True)
class HonestConcentration:
    """Per-class concentration beside its null (arrays of shape (K,)).

    ``null_top_share`` / ``null_normalized_entropy``: the expectation under uniform wrong
    targets for the class's own error count ``errors``; ``excess_top_share`` =
    observed − null (> 0: more concentrated than chance), ``entropy_deficit`` = null − observed
    (> 0: less spread than chance); ``g``/``p_value``: :func:`uniformity_test`; ``few_errors``:
    ``errors < min_errors`` (marked: concentration is mostly chance there).
    """

    observed: Concentration
    null_top_share: np.ndarray
    null_normalized_entropy: np.ndarray
    excess_top_share: np.ndarray
    entropy_deficit: np.ndarray
    g: np.ndarray
    p_value: np.ndarray
    few_errors: np.ndarray
    min_errors: int

    def _mean(self, v: np.ndarray) -> float:
        ok = ~self.few_errors & ~np.isnan(v)
        return float(v[ok].mean()) if ok.any() else math.nan

    @property
    def mean_excess_top_share(self) -> float:
        """Mean excess top share over the classes with at least ``min_errors`` errors."""
        return self._mean(self.excess_top_share)

    @property
    def mean_entropy_deficit(self) -> float:
        """Mean entropy deficit over the classes with at least ``min_errors`` errors."""
        return self._mean(self.entropy_deficit)

    @property
    def mean_null_top_share(self) -> float:
        """Mean null top share over all classes with errors (compare with
        ``observed.mean_top_share``)."""
        return _nanmean(self.null_top_share)

    @property
    def mean_null_normalized_entropy(self) -> float:
        """Mean null normalised entropy over the classes where it is defined."""
        return _nanmean(self.null_normalized_entropy)

    @property
    def n_significant(self) -> int:
        """Classes (with enough errors) whose uniformity test rejects at 5 % (unadjusted)."""
        ok = ~self.few_errors & ~np.isnan(self.p_value)
        return int(np.sum(self.p_value[ok] < 0.05))

    @property
    def n_tested(self) -> int:
        return int(np.sum(~self.few_errors & ~np.isnan(self.p_value)))

    def to_dict(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready (NaN → None)."""
        def lst(v: np.ndarray) -> list[Any]:
            return [nan_to_none(float(x)) for x in v]

        return {
            "min_errors": self.min_errors,
            "classes": list(names) if names is not None else None,
            "errors": [int(x) for x in self.observed.errors],
            "top_share": lst(self.observed.top_share),
            "null_top_share": lst(self.null_top_share),
            "excess_top_share": lst(self.excess_top_share),
            "normalized_entropy": lst(self.observed.normalized_entropy),
            "null_normalized_entropy": lst(self.null_normalized_entropy),
            "entropy_deficit": lst(self.entropy_deficit),
            "g": lst(self.g), "p_value": lst(self.p_value),
            "few_errors": [bool(x) for x in self.few_errors],
            "mean_top_share": nan_to_none(self.observed.mean_top_share),
            "mean_null_top_share": nan_to_none(self.mean_null_top_share),
            "mean_excess_top_share": nan_to_none(self.mean_excess_top_share),
            "mean_normalized_entropy": nan_to_none(self.observed.mean_normalized_entropy),
            "mean_null_normalized_entropy": nan_to_none(self.mean_null_normalized_entropy),
            "mean_entropy_deficit": nan_to_none(self.mean_entropy_deficit),
            "significant_classes": self.n_significant, "tested_classes": self.n_tested,
        }


def honest_concentration(conf: ArrayLike, *, min_errors: int = MIN_ERRORS,
                         rng_seed: int = 0) -> HonestConcentration:
    """:func:`concentration` with, per class, its null for the same error count, the excess
    over it, a G-test of uniformity and a mark for classes with fewer than ``min_errors``."""
    a = as_counts(conf)
    k = a.shape[0]
    c = concentration(a)
    wc = wrong_counts(a)
    nt = np.array([null_top_share(int(e), k - 1) if e > 0 else math.nan for e in c.errors])
    ne = np.array([null_normalized_entropy(int(e), k - 1) if e > 0 else math.nan
                   for e in c.errors])
    tests = [uniformity_test(wc[i], rng_seed=rng_seed + i) for i in range(k)]
    return HonestConcentration(
        observed=c, null_top_share=nt, null_normalized_entropy=ne,
        excess_top_share=c.top_share - nt, entropy_deficit=ne - c.normalized_entropy,
        g=np.array([t.g for t in tests]), p_value=np.array([t.p_value for t in tests]),
        few_errors=c.errors < min_errors, min_errors=min_errors)


@dataclass(frozen=True)
class MantelResult:
    """A rank correlation with a Mantel-style permutation p-value.

    ``p_value``: two-sided, ``(1 + #{|ρ_π| ≥ |ρ|}) / (1 + permutations)`` where ``ρ_π`` is the
    correlation after relabelling the classes of the similarity matrix by a random permutation
    ``π`` (rows and columns together). This keeps the dependence among pairs sharing a class,
    which the ordinary Spearman p-value ignores (it treats the K(K−1) pairs, with their tied
    zeros, as independent).
    """

    rho: float
    p_value: float
    permutations: int
    n_pairs: int

    def to_dict(self) -> dict[str, Any]:
        return {"rho": nan_to_none(self.rho), "p_value": nan_to_none(self.p_value),
                "permutations": self.permutations, "n_pairs": self.n_pairs}

    def text(self) -> str:
        if math.isnan(self.rho):
            return f"ρ undefined ({self.n_pairs} pairs)"
        return (f"ρ = {self.rho:.2f} (Mantel permutation p = {self.p_value:.2g}, "
                f"{self.permutations} permutations, {self.n_pairs} pairs)")


def _spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import rankdata

    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx @ ry) / math.sqrt((rx @ rx) * (ry @ ry)))


def mantel_spearman(similarity: ArrayLike, flow: ArrayLike, *, symmetric: bool = False,
                    permutations: int = 999, rng_seed: int = 0) -> MantelResult:
    """Spearman's ρ between off-diagonal similarities and flows (as :func:`offdiag_spearman`)
    with a Mantel permutation null: the class labels of ``similarity`` are permuted jointly in
    rows and columns ``permutations`` times (seeded)."""
    s = np.asarray(similarity.detach().cpu().numpy() if hasattr(similarity, "detach")
                   else similarity, np.float64)
    f = np.asarray(flow.detach().cpu().numpy() if hasattr(flow, "detach") else flow, np.float64)
    if s.shape != f.shape or s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise SpatError(f"similarity {s.shape} and flow {f.shape} must be the same (K, K) shape")
    if symmetric:
        s, f = (s + s.T) / 2, (f + f.T) / 2
    y = offdiag_values(f, symmetric)
    rho = _spearman_rho(offdiag_values(s, symmetric), y)
    n = int((~(np.isnan(offdiag_values(s, symmetric)) | np.isnan(y))).sum())
    if math.isnan(rho):
        return MantelResult(math.nan, math.nan, 0, n)
    rng = np.random.default_rng(rng_seed)
    k = s.shape[0]
    hits = 0
    for _ in range(permutations):
        pi = rng.permutation(k)
        r = _spearman_rho(offdiag_values(s[np.ix_(pi, pi)], symmetric), y)
        if not math.isnan(r) and abs(r) >= abs(rho) - 1e-12:
            hits += 1
    return MantelResult(rho, (1 + hits) / (1 + permutations), permutations, n)


# ----------------------------------------------------------------------------- over seeds
@dataclass(frozen=True)
class Interval:
    """A mean (or mean difference) over ``n`` seeds with its standard deviation and a
    ``level`` confidence interval ``[low, high]`` (NaN where undefined, e.g. n < 2)."""

    mean: float
    std: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return {k: (nan_to_none(v) if isinstance(v, float) else v)
                for k, v in asdict(self).items()}


def t_interval(values: ArrayLike, level: float = 0.95) -> Interval:
    """Mean, sample std (ddof 1) and Student-t interval ``mean ± t_{(1+level)/2, n−1}·s/√n``.

    NaN values are dropped; with one value the std and interval are NaN."""
    from scipy.stats import t as student_t

    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    n = int(v.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0, level)
    mean = float(v.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, math.nan, n, level)
    sd = float(v.std(ddof=1))
    half = float(student_t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, sd, mean - half, mean + half, n, level)


def paired_t_interval(values: ArrayLike, baseline: ArrayLike, level: float = 0.95) -> Interval:
    """The paired t interval of ``mean(values − baseline)`` (same seeds, same order); pairs
    with a NaN on either side are dropped."""
    a, b = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
    if a.shape != b.shape:
        raise SpatError(f"paired values need the same seeds: {a.shape} vs {b.shape}")
    return t_interval(a - b, level)


def paired_bootstrap_interval(values: ArrayLike, baseline: ArrayLike, level: float = 0.95,
                              resamples: int = 10_000, rng_seed: int = 0) -> Interval:
    """Percentile bootstrap interval of ``mean(values − baseline)``: the seeds (pairs) are
    resampled with replacement ``resamples`` times with a fixed RNG seed. ``std`` is the
    sample std of the differences. With fewer than 2 pairs the interval is NaN."""
    a, b = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
    if a.shape != b.shape:
        raise SpatError(f"paired values need the same seeds: {a.shape} vs {b.shape}")
    d = a - b
    d = d[~np.isnan(d)]
    n = int(d.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0, level)
    if n < 2:
        return Interval(float(d.mean()), math.nan, math.nan, math.nan, n, level)
    rng = np.random.default_rng(rng_seed)
    means = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(d.mean()), float(d.std(ddof=1)), float(lo), float(hi), n, level)

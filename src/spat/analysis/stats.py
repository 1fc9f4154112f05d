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

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from spat.errors import SpatError

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
        "accuracy": _json_float(accuracy(a)),
        "errors": int(round(class_errors(a).sum())),
        "top_pair": d[0].to_dict(names) if d else None,
        "top_symmetric_pair": s[0].to_dict(names) if s else None,
        "mean_top_share": _json_float(c.mean_top_share),
        "uniform_top_share": c.uniform_top_share,
        "mean_normalized_entropy": _json_float(c.mean_normalized_entropy),
        "uniform_normalized_entropy": Concentration.UNIFORM,
    }


def _json_float(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

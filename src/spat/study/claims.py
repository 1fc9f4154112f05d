"""Claims declared in a study file, judged by one written rule.

A study file may declare the claims its table is run to test, before the runs::

    [[claims]]
    name = "spat_beats_trades_aa"    # a plain identifier, unique in the file
    dataset = "digits"               # optional when the study has one dataset
    variant = "spat"
    baseline = "trades"
    metric = "AutoAttack"            # any metric of the study's table
    direction = "higher"             # the claim: variant's metric is higher (or "lower")
    family = "primary"               # or "exploratory"
    margin = 2.0                     # δ in the metric's difference unit (points for a
                                     # percentage): differences within ±δ are equivalent
    minus = ["spat_x1", "trades_x1"] # optional: an interaction, (variant − baseline) minus
                                     # (minus[0] − minus[1]), all on the same seeds

**The rule** (the only place verdict words come from). Per seed, d = variant − baseline in
the metric's difference unit (:func:`spat.study.metrics.metric_unit`: points for a percentage;
minus the ``minus`` pair's difference for an interaction). The interval is the paired
Student-t interval of mean(d) at level 1 − α/m for a primary claim, where α = 0.05 and m is
the number of primary claims in the file (Bonferroni), and at level 1 − α for an exploratory
one. Read from that interval [L, U], with the claim's direction ("higher": a positive d favours
it; "lower": a negative one):

- **holds**: the interval lies wholly on the claimed side of 0;
- **does not hold**: the interval lies wholly on the other side of 0 (the opposite is shown);
- **equivalent within δ**: neither, and −δ ≤ L and U ≤ δ (two one-sided tests at that level);
- **inconclusive**: anything else, and every claim with fewer than 2 paired seeds.

An exploratory claim's word carries "(exploratory)": such a claim was named after the results
were seen (for example a class pair picked from the pooled confusion), so its interval is not
a test. *Why Bonferroni and not Holm:* Holm's step-down rejects at least as often as
Bonferroni but gives no confidence interval per claim, and the four words are read off one
interval; Bonferroni intervals have simultaneous coverage ≥ 1 − α over the family, so no primary
verdict of a file is wrong with probability above α (under the t model).

**Seeds planned by precision.** For each claim, the smallest number of seeds n ≥ 2 whose
interval half-width t_{1−(1−level)/2, n−1} · s / √n is ≤ δ, with s the observed standard
deviation of d (:func:`seeds_for_margin`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from spat.analysis.stats import t_interval
from spat.errors import SpatError
from spat.study.metrics import metric_unit
from spat.utils.reporting import MISSING, md_table, number

#: The verdict words, in the order the rule tries them.
HOLDS, NOT_HOLDS, EQUIVALENT, INCONCLUSIVE = ("holds", "does not hold", "equivalent within δ",
                                              "inconclusive")
EXPLORATORY_SUFFIX = " (exploratory)"
#: The word of a claim while a cell of a variant it names is unfinished: the rule is applied at
#: the sample size the study file declares (its seeds), never at whichever count of finished
#: seeds first looks decisive. The interval is still shown, for planning.
PENDING = "pending"
#: Family-wise error rate of each study file's primary claims.
ALPHA = 0.05
DIRECTIONS = ("higher", "lower")
FAMILIES = ("primary", "exploratory")
CLAIM_KEYS = {"name": str, "dataset": str, "variant": str, "baseline": str, "metric": str,
              "direction": str, "family": str, "margin": float, "minus": list}
_CLAIM_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")
#: The largest seed count :func:`seeds_for_margin` searches.
MAX_PLANNED_SEEDS = 10_000


@dataclass(frozen=True)
class Claim:
    """One declared claim: ``variant`` beats ``baseline`` on ``metric`` in ``direction``."""

    name: str
    dataset: str
    variant: str
    baseline: str
    metric: str
    direction: str
    family: str
    margin: float
    minus: tuple[str, str] | None = None

    @property
    def contrast(self) -> str:
        """The difference the claim is about, as text."""
        d = f"{self.variant} − {self.baseline}"
        if self.minus:
            return f"({d}) − ({self.minus[0]} − {self.minus[1]})"
        return d


@dataclass(frozen=True)
class ClaimResult:
    """A claim's paired differences (in the metric's difference unit, one per seed with every
    cell finished), their interval at ``level`` and the verdict of the rule."""

    claim: Claim
    differences: tuple[float, ...]
    mean: float
    std: float
    low: float
    high: float
    level: float
    verdict: str
    seeds_needed: int | None

    @property
    def n(self) -> int:
        return len(self.differences)

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return None if math.isnan(v) else round(v, 6)

        c = self.claim
        return {"name": c.name, "dataset": c.dataset, "variant": c.variant,
                "baseline": c.baseline, "minus": list(c.minus) if c.minus else None,
                "metric": c.metric, "direction": c.direction, "family": c.family,
                "margin": c.margin, "n": self.n,
                "differences": [num(d) for d in self.differences], "mean": num(self.mean),
                "std": num(self.std), "low": num(self.low), "high": num(self.high),
                "level": self.level, "verdict": self.verdict,
                "seeds_needed": self.seeds_needed}


def judge(low: float, high: float, margin: float, direction: str) -> str:
    """The verdict word of the interval ``[low, high]`` (points) for a claim in
    ``direction`` with equivalence margin ``margin`` (the module's rule, without the
    exploratory suffix)."""
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    if direction == "lower":
        low, high = -high, -low
    if low > 0:
        return HOLDS
    if high < 0:
        return NOT_HOLDS
    if -margin <= low and high <= margin:
        return EQUIVALENT
    return INCONCLUSIVE


def claim_level(family: str, primaries: int) -> float:
    """The interval level of a claim: 1 − α/m for a primary claim of a family of m, else
    1 − α."""
    if family == "primary":
        return 1 - ALPHA / max(primaries, 1)
    return 1 - ALPHA


def seeds_for_margin(std: float, margin: float, level: float) -> int | None:
    """The smallest n ≥ 2 with t_{(1+level)/2, n−1} · std / √n ≤ margin (``None`` when
    ``std`` is unknown, or more than :data:`MAX_PLANNED_SEEDS` would be needed)."""
    from scipy.stats import t as student_t

    if math.isnan(std) or margin <= 0:
        return None
    q = (1 + level) / 2
    n = 2
    while n <= MAX_PLANNED_SEEDS:
        if student_t.ppf(q, n - 1) * std / math.sqrt(n) <= margin:
            return n
        n += 1
    return None


def evaluate_claims(claims: Sequence[Claim], values: dict[tuple[str, str], dict[str, list]],
                    unfinished: Collection[tuple[str, str]] = ()) -> list[ClaimResult]:
    """Judge every claim from ``values[(dataset, variant)][metric]``: the per-seed values
    (fractions, NaN where a cell is unfinished; the study's seeds in one order). A seed
    counts when every variant the claim names has it; a claim with no such seed is
    inconclusive with n = 0. A claim that names a ``(dataset, variant)`` of ``unfinished``
    (some of its declared cells have not finished) is :data:`PENDING`."""
    primaries = sum(1 for c in claims if c.family == "primary")
    out = []
    for c in claims:
        names = [c.variant, c.baseline, *(c.minus or ())]
        # a metric no finished cell reports yet (the study file's metrics are checked when it
        # is read) leaves the claim without seeds
        cols = [values.get((c.dataset, v), {}).get(c.metric) for v in names]
        diffs = []
        if all(col is not None for col in cols):
            for row in zip(*cols, strict=True):
                if any(x is None or math.isnan(x) for x in row):
                    continue
                unit = metric_unit(c.metric)
                d = unit.shown(row[0] - row[1])
                if c.minus:
                    d -= unit.shown(row[2] - row[3])
                diffs.append(d)
        level = claim_level(c.family, primaries)
        iv = t_interval(diffs, level)
        mean, std, low, high = iv.mean, iv.std, iv.low, iv.high
        pending = any((c.dataset, v) in unfinished for v in names)
        word = PENDING if pending else judge(low, high, c.margin, c.direction)
        if c.family == "exploratory":
            word += EXPLORATORY_SUFFIX
        out.append(ClaimResult(c, tuple(diffs), mean, std, low, high, level, word,
                               seeds_for_margin(std, c.margin, level)))
    return out


def claims_markdown(results: Sequence[ClaimResult], seeds: int) -> list[str]:
    """The claims section of study.md: one row per claim, in the file's order."""
    if not results:
        return []
    prim = sum(1 for r in results if r.claim.family == "primary")
    units = " or ".join(sorted({metric_unit(r.claim.metric).difference for r in results}))
    lines = ["## Claims", "",
             f"Declared in the study file; verdicts by the rule of `spat.study.claims`: the "
             f"paired t interval of the difference in {units} at level 1 − 0.05/{prim} for "
             f"each of the {prim} primary claims (Bonferroni), 0.95 for exploratory ones; "
             f"**holds** when it lies on the claimed side of 0, **does not hold** when on "
             f"the other side, **equivalent within δ** when inside ±δ, else "
             f"**inconclusive**. \"seeds for ±δ\": the seeds the observed spread needs for a "
             f"half-width ≤ δ ({seeds} in this file)."
             + (f" **{PENDING}**: some of the claim's declared cells have not finished; the "
                f"rule is applied only at the declared seeds."
                if any(r.verdict.startswith(PENDING) for r in results) else ""), ""]
    rows = []
    for r in results:
        c = r.claim
        rows.append([c.name, c.dataset, c.contrast, c.metric, c.direction, c.family,
                     f"{c.margin:g}", claim_interval_text(r), f"{100 * r.level:.4g} %", r.n,
                     MISSING if r.seeds_needed is None else r.seeds_needed,
                     f"**{r.verdict}**"])
    lines.append(md_table(["claim", "dataset", "difference", "metric", "claimed", "family", "δ",
                           "mean [interval]", "level", "seeds", "seeds for ±δ", "verdict"],
                          rows))
    return lines + [""]


def claim_interval_text(r: ClaimResult) -> str:
    """``+1.2 [-0.3, +2.7]``: the claim's mean difference and its interval, in the digits of
    its metric's unit."""
    digits = metric_unit(r.claim.metric).digits
    return (f"{number(r.mean, digits, sign=True)} [{number(r.low, digits, sign=True)}, "
            f"{number(r.high, digits, sign=True)}]")


def parse_claims(src: str, raw: Any, variants: Sequence[str], datasets: Sequence[str]
                 ) -> tuple[Claim, ...]:
    """Validate the ``[[claims]]`` tables of study file ``src`` (their keys and value types
    already checked against :data:`CLAIM_KEYS` by the study file's table checker): required
    keys, names, variants, datasets, direction, family and margin."""
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise SpatError(f"{src}: claims must be [[claims]] tables")
    out: list[Claim] = []
    for i, t in enumerate(raw):
        where = f"{src}: claims[{i}]"
        for k in ("name", "variant", "baseline", "metric", "direction", "family", "margin"):
            if k not in t:
                raise SpatError(f"{where}: missing key {k!r}")
        name = t["name"]
        if not _CLAIM_NAME.match(name):
            raise SpatError(f"{where}: name must be lower-case letters, digits and _, got "
                            f"{name!r}")
        if any(c.name == name for c in out):
            raise SpatError(f"{where}: claim name {name!r} is used twice")
        ds = t.get("dataset")
        if ds is None:
            if len(datasets) != 1:
                raise SpatError(f"{where}: dataset is required when the study has several "
                                f"({', '.join(datasets)})")
            ds = datasets[0]
        elif ds not in datasets:
            raise SpatError(f"{where}: dataset {ds!r} is not a dataset of the study "
                            f"({', '.join(datasets)})")
        minus = t.get("minus")
        if minus is not None and (len(minus) != 2
                                  or not all(isinstance(v, str) for v in minus)):
            raise SpatError(f"{where}: minus must be two variant names, got {minus!r}")
        for v in (t["variant"], t["baseline"], *(minus or ())):
            if v not in variants:
                raise SpatError(f"{where}: {v!r} is not a variant (valid: "
                                f"{', '.join(variants)})")
        if t["variant"] == t["baseline"]:
            raise SpatError(f"{where}: variant and baseline are both {t['variant']!r}")
        if t["direction"] not in DIRECTIONS:
            raise SpatError(f"{where}: direction must be one of {', '.join(DIRECTIONS)}, got "
                            f"{t['direction']!r}")
        if t["family"] not in FAMILIES:
            raise SpatError(f"{where}: family must be one of {', '.join(FAMILIES)}, got "
                            f"{t['family']!r}")
        margin = float(t["margin"])
        if not math.isfinite(margin) or margin <= 0:
            raise SpatError(f"{where}: margin is δ in points (in the metric's own unit for a "
                            f"statistic that is not a percentage) and must be a finite number "
                            f"> 0, got {t['margin']!r}")
        out.append(Claim(name=name, dataset=ds, variant=t["variant"], baseline=t["baseline"],
                         metric=t["metric"], direction=t["direction"], family=t["family"],
                         margin=margin, minus=(minus[0], minus[1]) if minus else None))
    return tuple(out)

"""Claims declared in a study file and the one rule that gives their verdict words
(spat.study.claims): values computed by hand, the rule's four outcomes, the Bonferroni level,
seeds planned by precision, interactions, and the refusals of a bad [[claims]] table."""

from __future__ import annotations

import math

import pytest

from spat.errors import SpatError
from spat.study.claims import (
    EQUIVALENT,
    HOLDS,
    INCONCLUSIVE,
    NOT_HOLDS,
    PENDING,
    Claim,
    claim_level,
    evaluate_claims,
    judge,
    parse_claims,
    seeds_for_margin,
)
from spat.study.spec import parse_study


def _claim(**kw) -> Claim:
    base = dict(name="c", dataset="digits", variant="a", baseline="b", metric="m",
                direction="higher", family="primary", margin=2.0)
    return Claim(**{**base, **kw})


@pytest.mark.parametrize("low, high, direction, margin, word", [
    (0.5, 3.0, "higher", 2.0, HOLDS),
    (-3.0, -0.5, "higher", 2.0, NOT_HOLDS),
    (-3.0, -0.5, "lower", 2.0, HOLDS),
    (0.5, 3.0, "lower", 2.0, NOT_HOLDS),
    (-1.5, 1.5, "higher", 2.0, EQUIVALENT),
    (-2.0, 2.0, "lower", 2.0, EQUIVALENT),
    (-1.5, 2.5, "higher", 2.0, INCONCLUSIVE),
    (math.nan, math.nan, "higher", 2.0, INCONCLUSIVE),
])
def test_the_rule_reads_the_interval(low, high, direction, margin, word) -> None:
    assert judge(low, high, margin, direction) == word


def test_values_computed_by_hand() -> None:
    # differences 1, 2, 3 points: mean 2, sd 1; t_{0.975, 2} = 4.302653 -> half-width 2.484138
    vals = {("digits", "a"): {"m": [0.51, 0.52, 0.53]},
            ("digits", "b"): {"m": [0.50, 0.50, 0.50]}}
    (r,) = evaluate_claims([_claim(family="exploratory", margin=5.0)], vals)
    assert r.n == 3 and r.mean == pytest.approx(2.0) and r.std == pytest.approx(1.0)
    assert r.low == pytest.approx(2 - 2.484138, abs=1e-5)
    assert r.high == pytest.approx(2 + 2.484138, abs=1e-5)
    assert r.level == 0.95
    assert r.verdict == "equivalent within δ (exploratory)"
    (r,) = evaluate_claims([_claim(family="exploratory", margin=2.0)], vals)
    assert r.verdict == "inconclusive (exploratory)"


def test_primary_claims_share_a_bonferroni_level() -> None:
    # two primary claims: level 1 - 0.05/2; t_{0.9875, 2} = 6.205347 -> half-width 3.582661
    vals = {("digits", "a"): {"m": [0.55, 0.56, 0.57]},
            ("digits", "b"): {"m": [0.50, 0.50, 0.50]}}
    claims = [_claim(name="one"), _claim(name="two", direction="lower"),
              _claim(name="three", family="exploratory")]
    r1, r2, r3 = evaluate_claims(claims, vals)
    assert r1.level == r2.level == pytest.approx(0.975) == claim_level("primary", 2)
    assert r1.low == pytest.approx(6 - 3.582661, abs=1e-5)
    assert r1.verdict == HOLDS and r2.verdict == NOT_HOLDS
    assert r3.level == 0.95


def test_seeds_for_margin_by_hand() -> None:
    # t_{0.975, n-1}/sqrt(n): n = 6: 2.5706/2.4495 = 1.049 > 1; n = 7: 2.4469/2.6458 = 0.925
    assert seeds_for_margin(1.0, 1.0, 0.95) == 7
    assert seeds_for_margin(math.nan, 1.0, 0.95) is None
    assert seeds_for_margin(0.0, 1.0, 0.95) == 2


def test_interaction_and_unfinished_seeds() -> None:
    # (a - b) - (c - d) per seed: (0.6-0.5) - (0.5-0.5) = 10 points; seed 2 unfinished in c
    nan = math.nan
    vals = {("digits", "a"): {"m": [0.6, 0.6, 0.6]}, ("digits", "b"): {"m": [0.5, 0.5, 0.5]},
            ("digits", "c"): {"m": [0.5, 0.52, nan]}, ("digits", "d"): {"m": [0.5, 0.5, 0.5]}}
    (r,) = evaluate_claims([_claim(minus=("c", "d"))], vals)
    assert r.differences == pytest.approx((10.0, 8.0))
    assert "(a − b) − (c − d)" == r.claim.contrast
    (r,) = evaluate_claims([_claim(metric="not_yet")], vals)
    assert r.n == 0 and r.verdict == INCONCLUSIVE


def test_a_claim_is_pending_until_its_declared_cells_finish() -> None:
    """The rule is applied at the declared seeds: with a cell of a named variant unfinished
    the verdict is "pending", even where the finished seeds' interval is decisive; the
    interval is still computed (for planning). A claim on other variants is judged."""
    nan = math.nan
    vals = {("digits", "a"): {"m": [0.60, 0.61, nan]}, ("digits", "b"): {"m": [0.5, 0.5, 0.5]},
            ("digits", "c"): {"m": [0.5, 0.5, 0.5]}}
    unfinished = {("digits", "a")}
    r, judged = evaluate_claims([_claim(family="exploratory"),
                                 _claim(name="d", variant="c", family="exploratory")],
                                vals, unfinished)
    assert r.verdict == PENDING + " (exploratory)" and r.differences == pytest.approx((10, 11))
    assert judge(r.low, r.high, 2.0, "higher") == HOLDS  # decisive, yet not read
    assert judged.verdict == "equivalent within δ (exploratory)"
    (done,) = evaluate_claims([_claim()], vals)
    assert done.verdict == HOLDS


def _doc(claims: list[dict]) -> dict:
    return {"study": {"name": "s", "datasets": ["digits"], "seeds": [0], "baseline": "pgd_at"},
            "train": {"epochs": 1},
            "variants": {"pgd_at": {"method": "pgd_at"}, "spat": {"method": "spat"}},
            "eval": {"attacks": ["pgd20"]}, "claims": claims}


GOOD = {"name": "spat_beats_pgd_at", "variant": "spat", "baseline": "pgd_at",
        "metric": "PGD-20", "direction": "higher", "family": "primary", "margin": 2}


def test_a_study_file_declares_claims() -> None:
    spec = parse_study(_doc([GOOD]), "s.toml")
    (c,) = spec.claims
    assert (c.name, c.dataset, c.metric, c.margin) == ("spat_beats_pgd_at", "digits", "PGD-20",
                                                       2.0)


@pytest.mark.parametrize("change, needle", [
    ({"metric": "AutoAttack"}, "not reported for variant"),
    ({"variant": "trades"}, "is not a variant"),
    ({"direction": "up"}, "direction must be one of"),
    ({"family": "secondary"}, "family must be one of"),
    ({"margin": 0}, "margin is δ in points"),
    ({"margin": "2"}, "'claims\\[0\\].margin' must be a number"),
    ({"name": "Bad Name"}, "name must be"),
    ({"baseline": "spat"}, "variant and baseline are both"),
    ({"minus": ["spat"]}, "minus must be two variant names"),
    ({"dataset": "mnist"}, "not a dataset of the study"),
    ({"colour": "red"}, "unknown key"),
])
def test_a_bad_claim_is_refused_before_any_run(change, needle) -> None:
    with pytest.raises(SpatError, match=needle):
        parse_study(_doc([{**GOOD, **change}]), "s.toml")


def test_a_claim_name_is_used_once() -> None:
    with pytest.raises(SpatError, match="used twice"):
        parse_study(_doc([GOOD, GOOD]), "s.toml")
    with pytest.raises(SpatError, match="must be"):
        parse_claims("s.toml", {"name": "x"}, ["a"], ["digits"])


def test_dry_run_plans_seeds_from_the_committed_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    """``spat study --dry-run`` prints each claim's verdict now and the seeds its observed
    spread needs for ±δ (the committed digits budget table: 11 seeds for ×3 vs TRADES)."""
    from pathlib import Path

    from spat.study.runner import dry_run
    from spat.study.spec import load_study

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    path = Path("docs/study/digits_budget.toml")
    if not (repo / "docs/study/results/digits_budget/study.json").is_file():
        pytest.skip("the committed digits_budget results are not in this checkout")
    lines: list[str] = []
    dry_run(load_study(path), 1, 1, log=lines.append)
    claims = {ln.split(":")[0].strip(): ln for ln in lines if ln.startswith("  ") and ": " in ln
              and "seeds for" in ln}
    assert "inconclusive;" in claims["spat_more_robust_than_trades_x3"]
    assert claims["spat_more_robust_than_trades_x3"].endswith("11 seeds for ±2")
    assert "holds (exploratory)" in claims["budget_x3_lifts_spat_over_trades"]


def test_most_similar_share_by_hand() -> None:
    """Claim 2 as the paper states it: per class with ≥ 5 errors, the share of its errors in its
    most similar class, averaged over those classes."""
    import numpy as np

    from spat.study.aggregate import most_similar_share

    names = ["a", "b", "c"]
    conf = np.array([[10, 4, 2],   # a: 6 errors, 4 in b -> 4/6
                     [1, 20, 5],   # b: 6 errors, 1 in a -> 1/6 (most similar to b: a)
                     [1, 1, 30]])  # c: 2 errors (< 5): left out
    share = most_similar_share(conf, names, {"a": "b", "b": "a", "c": "a"})
    assert share == pytest.approx((4 / 6 + 1 / 6) / 2)
    assert math.isnan(most_similar_share(conf, names, {"c": "a"}))
    with pytest.raises(SpatError, match="not a class of this dataset"):
        most_similar_share(conf, names, {"a": "z"})


def test_a_study_names_its_most_similar_map(tmp_path) -> None:
    import json

    good = tmp_path / "sim.json"
    good.write_text(json.dumps({"most_similar": {"8": "1", "1": "7"}}), encoding="utf-8")
    doc = _doc([{**GOOD, "metric": "most-similar share", "direction": "lower"}])
    doc["study"]["most_similar"] = {"digits": str(good)}
    spec = parse_study(doc, "s.toml")
    assert spec.most_similar == {"digits": {"8": "1", "1": "7"}}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"most_similar": {"8": "8"}}), encoding="utf-8")
    doc["study"]["most_similar"] = {"digits": str(bad)}
    with pytest.raises(SpatError, match="holds no 'most_similar' map"):
        parse_study(doc, "s.toml")
    doc["study"]["most_similar"] = {"digits": str(tmp_path / "missing.json")}
    with pytest.raises(SpatError, match="must name an existing JSON file"):
        parse_study(doc, "s.toml")
    # without the map, the metric is not one the variants report
    del doc["study"]["most_similar"]
    with pytest.raises(SpatError, match="not reported for variant"):
        parse_study(doc, "s.toml")

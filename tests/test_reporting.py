"""One home for report formatting (spat.utils.reporting): the missing-value glyph, percentages,
the Markdown/CSV table writers, and the study metrics' units (a statistic that is not a
percentage is shown in its own unit in the tables and the claims)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from spat.study import metrics as mt
from spat.study.claims import Claim, claims_markdown, evaluate_claims
from spat.utils.reporting import (
    MISSING,
    PERCENT,
    RATIO,
    csv_text,
    md_table,
    percent,
)


def test_percent_and_the_one_missing_glyph() -> None:
    assert percent(0.4123) == "41.2%" and percent(0.4123, 2) == "41.23%"
    assert percent(0.012, sign=True, symbol=False) == "+1.2"
    assert percent(None) == percent(math.nan) == MISSING == "–"
    assert PERCENT.format(0.5) == "50.0" and RATIO.format(0.5) == "0.500"
    assert PERCENT.format(-0.013, sign=True) == "-1.3" and RATIO.format(None) == MISSING


def test_md_table_escapes_pipes_and_csv_writes_missing_as_empty() -> None:
    t = md_table(["a|b", "c"], [["x|y", 1.5]]).split("\n")
    assert t == ["| a\\|b | c |", "|---|---|", "| x\\|y | 1.5 |"]
    assert csv_text(["n", "v"], [[1, 0.123456789], [None, math.nan]]) == (
        "n,v\n1,0.123457\n,\n")


STUDY = """
[study]
name = "units"
out_dir = "{out}"
datasets = ["digits"]
seeds = [0, 1, 2]
baseline = "a"
[train]
device = "cpu"
[variants.a]
method = "pgd_at"
[variants.b]
method = "trades"
[eval]
attacks = ["pgd20"]
"""


def test_a_ratio_metric_is_shown_as_a_ratio(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A statistic registered with the ratio unit: its table cells and its paired differences
    are the ratio itself (not ×100, no %), its column says the unit, and a claim on it is
    judged and written in the ratio's units; the percentages beside it are unchanged."""
    from spat.study.aggregate import CellResult, aggregate
    from spat.study.outputs import render_markdown
    from spat.study.spec import load_study, plan_cells

    name = "calibration ratio"
    monkeypatch.setitem(mt.METRIC_UNITS, name, RATIO)
    assert mt.metric_unit(name) is RATIO and mt.metric_unit("PGD-20") is PERCENT
    p = tmp_path / "units.toml"
    p.write_text(STUDY.format(out=(tmp_path / "out").as_posix()))
    spec = load_study(p)
    ratio = {"a": [1.20, 1.25, 1.30], "b": [1.50, 1.55, 1.60]}
    results = [CellResult(c, {"clean": 0.9, "PGD-20": 0.4, name: ratio[c.variant][c.seed]})
               for c in plan_cells(spec)]
    aggs, metrics = aggregate(spec, results)
    assert metrics[-1] == name  # after the attacks, in the order of METRIC_UNITS
    md = render_markdown(spec, aggs, metrics, results, [])
    lines = md.split("\n")
    assert "| variant (cells) | clean | PGD-20 | calibration ratio (ratio) |" in lines
    row = next(ln for ln in lines if ln.startswith("| a (3/3) |"))
    assert row.endswith("| 1.250 ± 0.050 [1.126, 1.374] |")  # t_{.975,2} · 0.05 / √3
    assert "| 90.0 ± 0.0 [90.0, 90.0] | 40.0 ± 0.0 [40.0, 40.0] |" in row  # percentages
    diff = next(ln for ln in lines if ln.startswith("| b |"))
    assert diff.split(" | ")[-1].startswith("+0.300 [")
    assert "%" not in row and "%" not in diff and "125" not in row and "30.0" not in diff
    claim = Claim(name="r", dataset="digits", variant="b", baseline="a", metric=name,
                  direction="higher", family="primary", margin=0.1)
    (r,) = evaluate_claims([claim], {(a.dataset, a.variant): a.values for a in aggs})
    assert r.mean == pytest.approx(0.3) and r.verdict == "holds"
    text = "\n".join(claims_markdown([r], 3))
    assert "difference in ratio units" in text and "| +0.300 [+0.300, +0.300] |" in text

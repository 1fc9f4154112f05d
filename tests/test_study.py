"""`spat study` and the honest statistics: hand-computed nulls and intervals, the study file's
validation, the worker plan, and small studies (2 variants × 2 seeds on the digits) through the
local pool, through submitit's local executor, and killed midway then resumed."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spat.analysis import stats
from spat.errors import SpatError
from spat.study.pool import plan_pool
from spat.study.spec import load_study, plan_cells
from spat.utils import threads as th

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- nulls by hand
def _compositions(n: int, m: int):
    """Every (x_1..x_m) of non-negative integers summing to n."""
    for bars in itertools.combinations(range(n + m - 1), m - 1):
        prev, out = -1, []
        for b in (*bars, n + m - 1):
            out.append(b - prev - 1)
            prev = b
        yield out


def _enumerated_nulls(n: int, m: int) -> tuple[float, float]:
    """E[top share] and E[normalised entropy] by enumerating every composition with its
    multinomial probability (independent of the library's recursion)."""
    top = ent = 0.0
    for xs in _compositions(n, m):
        p = math.factorial(n) / math.prod(math.factorial(x) for x in xs) / m ** n
        top += p * max(xs) / n
        ent += p * -sum(x / n * math.log(x / n) for x in xs if x) / math.log(m)
    return top, ent


def test_null_top_share_and_entropy_by_hand() -> None:
    m = 9  # K = 10 classes
    # n = 1: one target, share 1, entropy 0
    assert stats.null_top_share(1, m) == pytest.approx(1.0)
    assert stats.null_normalized_entropy(1, m) == pytest.approx(0.0, abs=1e-12)
    # n = 2: same class with probability 1/9 (share 1, entropy 0), else 1/2 and log 2
    assert stats.null_top_share(2, m) == pytest.approx(1 / 9 + 8 / 9 * 0.5)
    assert stats.null_normalized_entropy(2, m) == pytest.approx(8 / 9 * math.log(2) / math.log(9))
    # n = 3: all three equal 1/81, a pair 24/81, all distinct 56/81
    assert stats.null_top_share(3, m) == pytest.approx((1 * 3 + 24 * 2 + 56 * 1) / 81 / 3)
    h21 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert stats.null_normalized_entropy(3, m) == pytest.approx(
        (24 / 81 * h21 + 56 / 81 * math.log(3)) / math.log(9))
    # n = 10 (43,758 compositions) and the issue's rounded values for 1, 2, 3, 10 errors
    top10, ent10 = _enumerated_nulls(10, m)
    assert stats.null_top_share(10, m) == pytest.approx(top10, rel=1e-9)
    assert stats.null_normalized_entropy(10, m) == pytest.approx(ent10, rel=1e-9)
    issue = {1: (1.00, 0.00), 2: (0.56, 0.28), 3: (0.44, 0.43), 10: (0.29, 0.78)}
    for n, (share, ent) in issue.items():
        assert round(stats.null_top_share(n, m), 2) == share
        assert round(stats.null_normalized_entropy(n, m), 2) == ent
    assert math.isnan(stats.null_top_share(0, m))
    # large n: the seeded Monte-Carlo branch agrees with the exact one near the switch
    big = stats.EXACT_MAX_ERRORS
    assert stats.null_top_share(big + 1, m) == pytest.approx(stats.null_top_share(big, m),
                                                             abs=2e-3)


def test_uniformity_g_test() -> None:
    x = [3, 1, 0, 0, 0, 0, 0, 0, 0]
    g = 2 * (3 * math.log(3 * 9 / 4) + 1 * math.log(9 / 4))
    t = stats.uniformity_test(x)
    assert t.g == pytest.approx(g)
    from scipy.stats import chi2

    assert t.p_chi2 == pytest.approx(chi2.sf(g, 8))
    assert 0 < t.p_value < 1
    assert stats.uniformity_test([40] + [0] * 8).p_value < 1e-3  # all on one target
    assert stats.uniformity_test([5] * 9).p_value == 1.0  # perfectly uniform
    assert math.isnan(stats.uniformity_test([0] * 9).g)


def test_honest_concentration_marks_few_errors_and_removes_the_chance_part() -> None:
    k = 10
    conf = np.diag(np.full(k, 50.0))
    for i in range(k):  # each class: one error, so "top share 100 %" by chance alone
        conf[i, (i + 1) % k] = 1
    hc = stats.honest_concentration(conf)
    assert np.allclose(hc.observed.top_share, 1.0)
    assert np.allclose(hc.null_top_share, 1.0)
    assert np.allclose(hc.excess_top_share, 0.0)
    assert hc.few_errors.all() and math.isnan(hc.mean_excess_top_share)
    conf[0, 1] = 30  # class 0: 30 errors on one target: far above its null
    hc = stats.honest_concentration(conf)
    assert not hc.few_errors[0]
    assert hc.excess_top_share[0] == pytest.approx(1.0 - stats.null_top_share(30, 9))
    assert hc.mean_excess_top_share == pytest.approx(hc.excess_top_share[0])
    assert hc.p_value[0] < 1e-3 and hc.n_tested == 1 and hc.n_significant == 1
    d = hc.to_dict([str(i) for i in range(k)])
    json.dumps(d)  # JSON-ready
    assert d["errors"][0] == 30 and d["few_errors"][1] is True


def test_mantel_permutation_null() -> None:
    rng = np.random.default_rng(0)
    k = 8
    sim = rng.random((k, k))
    sim = (sim + sim.T) / 2
    flow = sim ** 2  # a monotone function of the similarity: ρ = 1
    r = stats.mantel_spearman(sim, flow, permutations=199)
    assert r.rho == pytest.approx(1.0)
    assert r.p_value == pytest.approx(1 / 200)  # no relabelling reaches ρ = 1
    unrelated = rng.random((k, k))
    r2 = stats.mantel_spearman(sim, unrelated, permutations=199)
    assert r2.p_value > 0.05
    assert r2.rho == pytest.approx(stats.offdiag_spearman(sim, unrelated).rho)


def test_paired_intervals_on_a_fixed_table() -> None:
    variant = [0.52, 0.55, 0.50]
    baseline = [0.50, 0.51, 0.49]  # differences 0.02, 0.04, 0.01
    t = stats.paired_t_interval(variant, baseline)
    sd = math.sqrt(((0.02 - 0.07 / 3) ** 2 + (0.04 - 0.07 / 3) ** 2 + (0.01 - 0.07 / 3) ** 2) / 2)
    half = 4.302652729749464 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert (t.mean, t.std, t.n) == (pytest.approx(0.07 / 3), pytest.approx(sd), 3)
    assert (t.low, t.high) == (pytest.approx(0.07 / 3 - half), pytest.approx(0.07 / 3 + half))
    # bootstrap of 3 pairs: an all-0.01 (or all-0.04) resample has probability 1/27 > 2.5 %,
    # so the percentile interval is exactly [min, max] of the differences
    b = stats.paired_bootstrap_interval(variant, baseline)
    assert (b.low, b.high) == (pytest.approx(0.01), pytest.approx(0.04))
    assert stats.paired_bootstrap_interval(variant, baseline) == b  # fixed seed
    one = stats.t_interval([0.3])
    assert one.mean == 0.3 and math.isnan(one.low)
    with pytest.raises(SpatError):
        stats.paired_t_interval([1, 2], [1, 2, 3])


# ----------------------------------------------------------------------------- threads, plan
def test_thread_count_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert th.default_threads() == (3, "OMP_NUM_THREADS")
    assert th.resolve_threads(2) == (2, "--threads")
    with pytest.raises(SpatError):
        th.resolve_threads(0)
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(th, "busy_cores", lambda: 0)
    assert th.default_threads()[0] == th.available_cores()
    monkeypatch.setattr(th, "busy_cores", lambda: 10_000)  # a saturated machine: still 1
    assert th.default_threads()[0] == 1


STUDY = """
[study]
name = "{name}"
out_dir = "{out}"
datasets = ["digits"]
seeds = [0, 1]
baseline = "pgd_at"
[train]
train_subset = 200
epochs = 1
steps = 2
val_steps = 2
test_steps = 2
test_subset = 50
deterministic = true
device = "cpu"
[variants.pgd_at]
method = "pgd_at"
[variants.trades]
method = "trades"
[eval]
attacks = ["fgsm", "pgd20"]
n_examples = 50
analyze = {analyze}
{extra}
"""


def _write(tmp: Path, name: str, analyze: bool = False, extra: str = "") -> Path:
    p = tmp / f"{name}.toml"
    p.write_text(STUDY.format(name=name, out=tmp.as_posix(), analyze=str(analyze).lower(),
                              extra=extra))
    return p


def test_pool_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("spat.study.pool.available_cores", lambda: 8)
    cells = plan_cells(load_study(_write(tmp_path, "p")))
    assert len(cells) == 4
    plan = plan_pool(cells)
    assert (plan.workers, plan.threads) == (4, 2)  # 4 cells on 8 cores: 4 × 2
    assert (plan_pool(cells * 3).workers, plan_pool(cells * 3).threads) == (8, 1)
    assert plan_pool(cells, threads=4).workers == 2
    with pytest.raises(SpatError, match="oversubscribe"):
        plan_pool(cells, workers=4, threads=4)
    # a node with 2 CUDA GPUs: one worker per GPU, the cores shared among them
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    import dataclasses

    auto = [dataclasses.replace(c, config={**c.config, "device": "auto"}) for c in cells]
    assert plan_pool(cells).gpus == ()  # the file says device = "cpu"
    gpu = plan_pool(auto)
    assert (gpu.workers, gpu.threads, gpu.gpus) == (2, 4, (0, 1))


@pytest.mark.parametrize("edit, field", [
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\ncolour = 1\n'
     '[variants.a]\nmethod = "pgd_at"', "study.colour"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = "0"\n[variants.a]\nmethod = "pgd_at"',
     "study.seeds"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[variants.a]\nlearning = 1',
     "variants.a.learning"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[variants.a]\nepochs = "3"',
     "variants.a.epochs"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[variants.a]\nmethod = "nope"',
     "variants.a"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\nbaseline = "b"\n'
     '[variants.a]\nmethod = "pgd_at"', "study.baseline"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[train]\nseed = 3\n'
     '[variants.a]\nmethod = "pgd_at"', "train.seed"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[variants.a]\nmethod = "pgd_at"'
     '\n[eval]\nattacks = ["pgd7"]', "eval.attacks"),
    # [eval] goes through spat eval's own validator (EvalOptions), before any cell trains
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[variants.a]\nmethod = "pgd_at"'
     '\n[eval]\neps = 0.0', "eval.eps"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[variants.a]\nmethod = "pgd_at"'
     '\n[eval]\neps = 1.5', "eval.eps"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[variants.a]\nmethod = "pgd_at"'
     '\n[eval]\nrestarts = 0', "eval.restarts"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[variants.a]\nmethod = "pgd_at"'
     '\n[eval]\nseed = -1', "eval.seed"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[variants.a]\nmethod = "pgd_at"'
     '\n[eval]\nn_examples = 0', "eval.n_examples"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[variants.a]\nmethod = "pgd_at"'
     '\neval = { attack_logits = "z" }', "variants.a.eval.attack_logits"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[variants.a]\nmethod = "spat"\n'
     'head = "linear"', "variants.a"),
    # the types of spat.validation.check_value, as `spat train --config` checks them
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[train]\nepochs = 2.5\n'
     '[variants.a]\nmethod = "pgd_at"', "'train.epochs' must be an integer"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[train]\nsteps = 99999999999'
     '999999999999\n[variants.a]\nmethod = "pgd_at"', "'train.steps' must be an integer that"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[variants.a]\nmethod = "pgd_at"'
     '\neps = "8/256x"', "'variants.a.eps' must be a number or a fraction"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[variants.a]\nmethod = "pgd_at"'
     '\nlr = inf', "'variants.a.lr' must be a finite number"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[variants.a]\nmethod = "pgd_at"'
     '\n[engine]\nworkers = true', "'engine.workers' must be an integer"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\nreuse = ["no_such_study"]\n'
     '[variants.a]\nmethod = "pgd_at"', "study.reuse[0]: no study folder"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\nreuse = ["x"]\n'
     '[variants.a]\nmethod = "pgd_at"', "study.reuse[0] names this study itself"),
    ('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\nreuse = ["../up"]\n'
     '[variants.a]\nmethod = "pgd_at"', "study.reuse[0] must be the name of another study"),
])
def test_study_file_errors_name_file_and_field(tmp_path: Path, edit: str, field: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(edit)
    with pytest.raises(SpatError) as e:
        load_study(p)
    msg = str(e.value)
    assert str(p) in msg and field in msg and "\n" not in msg


def test_study_settings_take_fractions_as_spat_train_does(tmp_path: Path) -> None:
    p = tmp_path / "f.toml"
    p.write_text('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[train]\n'
                 'eps = "8/255"\n[variants.a]\nmethod = "pgd_at"\nstep_size = "2/255"\n'
                 '[eval]\neps = "8/255"\n')
    spec = load_study(p)
    assert spec.train["eps"] == spec.eval.eps == 8 / 255
    assert spec.variants["a"]["step_size"] == 2 / 255


PAIRS_STUDY = """
[study]
name = "pairs"
out_dir = "{out}"
datasets = ["digits"]
seeds = [0, 1, 2, 3]
baseline = "a"
{pairs}
[train]
device = "cpu"
[variants.a]
method = "pgd_at"
[variants.b]
method = "trades"
[variants.c]
method = "spat"
[eval]
attacks = ["pgd20"]
"""


def _pairs_spec(tmp: Path, pairs: str, name: str = "pairs.toml"):
    p = tmp / name
    p.write_text(PAIRS_STUDY.format(out=(tmp / "out").as_posix(), pairs=pairs))
    return load_study(p)


@pytest.mark.parametrize("pairs, why", [
    ('pairs = "c"', "must be a list"),
    ('pairs = ["c", "b"]', "two variant names"),
    ('pairs = [["c"]]', "two variant names"),
    ('pairs = [["c", "b", "a"]]', "two variant names"),
    ('pairs = [["c", 1]]', "two variant names"),
    ('pairs = [["c", "d"]]', "'d' is not a variant"),
    ('pairs = [["b", "b"]]', "with itself"),
    ('pairs = [["c", "b"], ["c", "b"]]', "twice"),
])
def test_study_pairs_errors_name_file_and_field(tmp_path: Path, pairs: str, why: str) -> None:
    with pytest.raises(SpatError) as e:
        _pairs_spec(tmp_path, pairs)
    msg = str(e.value)
    assert str(tmp_path / "pairs.toml") in msg and "study.pairs" in msg and why in msg
    assert "\n" not in msg


def _pairs_results(spec) -> list:
    """Hand-made finished cells: PGD-20 per seed for a, b, c; c's seed 3 is unfinished."""
    from spat.study.aggregate import CellResult

    pgd = {"a": [0.40, 0.42, 0.41, 0.43], "b": [0.50, 0.51, 0.49, 0.47],
           "c": [0.52, 0.55, 0.50, None]}
    out = []
    for cell in plan_cells(spec):
        v = pgd[cell.variant][cell.seed]
        out.append(CellResult(cell, {"clean": 0.9, "PGD-20": v} if v is not None else {}))
    return out


def test_named_pair_difference_on_a_fixed_table(tmp_path: Path) -> None:
    """c − b on the seeds both finished (0, 1, 2: differences 0.02, 0.04, 0.01, as in
    test_paired_intervals_on_a_fixed_table); seed 3, unfinished for c, is left out. A pair
    whose second variant is the baseline gives the baseline table's numbers exactly."""
    from spat.study.aggregate import aggregate, pair_differences

    spec = _pairs_spec(tmp_path, 'pairs = [["c", "b"], ["b", "a"]]')
    assert spec.pairs == (("c", "b"), ("b", "a"))
    aggs, metrics = aggregate(spec, _pairs_results(spec))
    cb, ba = pair_differences(spec, aggs, metrics)
    assert (cb.dataset, cb.variant, cb.minus, cb.label) == ("digits", "c", "b", "c − b")
    t, b = cb.diff_t["PGD-20"], cb.diff_boot["PGD-20"]
    sd = math.sqrt(((0.02 - 0.07 / 3) ** 2 + (0.04 - 0.07 / 3) ** 2 + (0.01 - 0.07 / 3) ** 2) / 2)
    half = 4.302652729749464 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert (t.mean, t.std, t.n) == (pytest.approx(0.07 / 3), pytest.approx(sd), 3)
    assert (t.low, t.high) == (pytest.approx(0.07 / 3 - half), pytest.approx(0.07 / 3 + half))
    assert (b.low, b.high, b.n) == (pytest.approx(0.01), pytest.approx(0.04), 3)
    assert cb.differences["PGD-20"][:3] == pytest.approx([0.02, 0.04, 0.01])
    assert math.isnan(cb.differences["PGD-20"][3])
    assert cb.diff_t["clean"].mean == 0.0
    by = {a.variant: a for a in aggs}
    assert ba.diff_t == by["b"].diff_t and ba.diff_boot == by["b"].diff_boot  # same numbers
    assert ba.diff_t["PGD-20"].mean == pytest.approx(0.0775)  # 4 seeds: 0.1, .09, .08, .04


def test_named_pairs_in_md_csv_json_and_absent_pairs_change_nothing(tmp_path: Path) -> None:
    from spat.study.aggregate import aggregate
    from spat.study.outputs import write_outputs

    # the same study (same folder) with and without pairs, each output read right after writing
    with_pairs = _pairs_spec(tmp_path, 'pairs = [["c", "b"]]')
    plain = _pairs_spec(tmp_path, "", name="plain.toml")
    assert plain.pairs == () and plain.study_dir == with_pairs.study_dir
    files = {}
    for key, spec in (("w", with_pairs), ("p", plain)):
        results = _pairs_results(spec)
        aggs, metrics = aggregate(spec, results)
        write_outputs(spec, aggs, metrics, results, figures=False)
        files[key] = {f: (spec.study_dir / f"study.{f}").read_text() for f in ("md", "csv", "json")}
    w, p = files["w"], files["p"]
    # study.md: the pair's table right after the baseline's paired table, same cell format
    md = w["md"].split("\n")
    row = next(line for line in md if line.startswith("| c − b |"))
    assert row == "| c − b | +0.0 [+0.0, +0.0] {+0.0, +0.0} | +2.3 [-1.5, +6.1] {+1.0, +4.0} |"
    i = md.index(row)
    assert md[i - 2] == "| pair | clean | PGD-20 |" and md[i - 4].startswith(
        "Paired differences between named pairs")
    assert md[i - 6].startswith("| c |")  # the last row of the baseline's paired table
    # without pairs: the same document less that table
    block = "\n".join(md[i - 4:i + 2]) + "\n"
    assert block in w["md"]
    assert w["md"].replace(block, "", 1).replace("pairs.toml", "plain.toml") == p["md"]
    # study.csv: a `minus` column; the baseline rows name the baseline; the pair's rows after
    wrows = list(csv.DictReader(w["csv"].splitlines()))
    prows = list(csv.DictReader(p["csv"].splitlines()))
    assert "minus" not in prows[0] and list(wrows[0])[-1] == "minus"
    assert len(wrows) == len(prows) + 2
    for a, b in zip(wrows, prows, strict=False):
        assert {k: v for k, v in a.items() if k != "minus"} == b
        assert a["minus"] == ("" if a["variant"] == "a" else "a")
    pair = {r["metric"]: r for r in wrows[-2:]}
    assert pair["PGD-20"]["variant"] == "c" and pair["PGD-20"]["minus"] == "b"
    assert float(pair["PGD-20"]["diff_mean"]) == pytest.approx(0.07 / 3, abs=1e-6)
    assert (float(pair["PGD-20"]["diff_boot_low"]), float(pair["PGD-20"]["diff_boot_high"])) \
        == (pytest.approx(0.01), pytest.approx(0.04))
    # study.json: a `pairs` list, the differences per seed; none without pairs
    wj, pj = json.loads(w["json"]), json.loads(p["json"])
    assert "pairs" not in pj and set(wj) - set(pj) == {"pairs"}
    (entry,) = wj["pairs"]
    assert (entry["dataset"], entry["variant"], entry["minus"]) == ("digits", "c", "b")
    got = entry["metrics"]["PGD-20"]
    assert got["differences"][:3] == pytest.approx([0.02, 0.04, 0.01])
    assert got["differences"][3] is None
    assert got["paired_t"]["mean"] == pytest.approx(0.07 / 3) and got["paired_t"]["n"] == 3
    assert got["paired_bootstrap"]["low"] == pytest.approx(0.01)
    assert {k: v for k, v in wj.items() if k not in ("pairs", "file")} == \
        {k: v for k, v in pj.items() if k != "file"}


def test_study_cli_error_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture
                                            ) -> None:
    from spat.cli import main

    p = tmp_path / "bad.toml"
    p.write_text('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n'
                 '[variants.a]\nmethod = "pgd_at"\nepochs = 0\n')
    assert main(["study", str(p), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spat: error: ") and "variants.a" in err and "\n" not in err


def test_dry_run_lists_cells(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from spat.cli import main

    assert main(["study", str(_write(tmp_path, "dry")), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for key in ("digits/pgd_at/seed0", "digits/trades/seed1"):
        assert key in out
    assert "4 cells" in out and "new" in out
    assert not (tmp_path / "dry" / "digits").exists()  # nothing ran


def test_cells_run_seed_by_seed(tmp_path: Path) -> None:
    """The plan lists variant-major; the run order is seed-major, so a study stopped early has
    every variant of its first seeds (whole paired comparisons)."""
    from spat.study.runner import seed_major

    spec = load_study(_write(tmp_path, "order"))
    cells = plan_cells(spec)
    assert [(c.variant, c.seed) for c in cells] == [
        ("pgd_at", 0), ("pgd_at", 1), ("trades", 0), ("trades", 1)]
    assert [(c.variant, c.seed) for c in seed_major(cells, spec.seeds)] == [
        ("pgd_at", 0), ("trades", 0), ("pgd_at", 1), ("trades", 1)]
    reversed_seeds = seed_major(cells, list(reversed(spec.seeds)))
    assert [c.seed for c in reversed_seeds] == [1, 1, 0, 0]


# ----------------------------------------------------------------------------- studies
def _table(study_dir: Path) -> list[dict[str, str]]:
    with open(study_dir / "study.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def pool_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The reference: 2 variants × 2 seeds through the local pool (2 workers × 1 thread).

    Run once per test session, also under pytest-xdist: the first worker that needs it runs it
    under a file lock in the session's shared temporary folder, the others read its records."""
    import fcntl

    from spat.study.runner import run_study

    base = tmp_path_factory.getbasetemp()
    # under xdist each worker's base is <session>/popen-gwN; the session folder is shared
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / \
        "spat_study_reference"
    shared.mkdir(exist_ok=True)
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = shared / "records.json"
        if not records.is_file():
            spec = load_study(_write(shared, "ref"))
            out = run_study(spec, workers=2, threads=1, progress=False, log=lambda s: None)
            records.write_text(json.dumps({k: out[k] for k in ("records", "failed")}))
    return shared / "ref", json.loads(records.read_text())


def test_study_through_local_pool(pool_study: tuple[Path, dict]) -> None:
    study_dir, out = pool_study
    assert not out["failed"], out["failed"]
    assert sorted(r["key"] for r in out["records"]) == [
        f"digits/{v}/seed{k}" for v in ("pgd_at", "trades") for k in (0, 1)]
    assert [r["stages"] for r in out["records"]] == [["new", "eval"]] * 4
    assert {r["threads"] for r in out["records"]} == {1}  # each worker got its share
    for name in ("study.md", "study.csv", "study.json", "study_digits.pdf", "study_digits.png"):
        assert (study_dir / name).stat().st_size > 0, name
    doc = json.loads((study_dir / "study.json").read_text())
    for cell in doc["cells"]:  # every cell is an ordinary run directory
        run = Path(cell["run_dir"])
        for f in ("config.json", "summary.json", "eval/report.json", "eval/predictions.npz"):
            assert (run / f).is_file(), run / f
        assert json.loads((run / "env.json").read_text())["cpu_threads"] == 1
        rep = json.loads((run / "eval" / "report.json").read_text())
        assert cell["metrics"]["clean"] == rep["clean_acc"]
        assert cell["metrics"]["PGD-20"] == rep["attacks"][1]["accuracy"]
        assert rep["n_examples"] == 50
    agg = {(a["variant"]): a for a in doc["aggregates"]}
    base, var = agg["pgd_at"]["metrics"]["PGD-20"], agg["trades"]["metrics"]["PGD-20"]
    diffs = [a - b for a, b in zip(var["values"], base["values"], strict=True)]
    assert var["paired_t"]["mean"] == pytest.approx(np.mean(diffs))
    assert var["summary"]["mean"] == pytest.approx(np.mean(var["values"]))
    assert agg["pgd_at"]["metrics"]["PGD-20"]["paired_t"] is None  # the baseline itself
    md = (study_dir / "study.md").read_text()
    assert "Paired difference to **pgd_at**" in md and "null" in md
    # a second run has nothing to do and writes the same table
    from spat.study.runner import run_study

    before, stamp = _table(study_dir), (study_dir / "study.csv").stat().st_mtime_ns
    again = run_study(load_study(study_dir.parent / "ref.toml"), progress=False, figures=False,
                      log=lambda s: None)
    assert again["records"] == []
    assert (study_dir / "study.csv").stat().st_mtime_ns != stamp  # written again (atomically)
    assert _table(study_dir) == before and len(before) == 2 * len(doc["metrics"])
    # a cell directory made with other settings is refused, not silently reused
    from spat.study.cell import cell_state
    from spat.study.pool import dataclasses_asdict

    cell = dataclasses_asdict(plan_cells(load_study(study_dir.parent / "ref.toml"))[0])
    assert cell_state(cell) == "done"
    cell["config"]["epochs"] = 2
    with pytest.raises(SpatError, match="other settings.*epochs"):
        cell_state(cell)


def test_read_cell_class_pair_share_from_the_saved_predictions(
        pool_study: tuple[Path, dict]) -> None:
    """The 8 → 1 share of a real cell, recomputed from predictions.npz with numpy alone; a
    class the dataset does not have is an error naming the study file and the field."""
    from spat.study.aggregate import read_cell

    cells = plan_cells(load_study(pool_study[0].parent / "ref.toml"))
    checked = 0
    for cell in cells:
        with np.load(Path(cell.run_dir) / "eval" / "predictions.npz") as f:
            y, adv = f["labels"], f["adv/PGD-20"]
        wrong8 = (y == 8) & (adv != 8)
        got = read_cell(cell, [("8", "1")]).metrics["8→1"]
        if wrong8.sum():
            assert got == pytest.approx(((adv == 1) & wrong8).sum() / wrong8.sum())
            checked += 1
        else:
            assert math.isnan(got)
    assert checked  # at least one cell has misclassified 8s
    with pytest.raises(SpatError, match=r"^x\.toml: study\.class_pairs\.digits: 'eight' is "
                       r"not a class of this dataset \(classes: 0, 1, 2"):
        read_cell(cells[0], [("eight", "1")], "x.toml")


def test_cell_analysis_stage_then_done(pool_study: tuple[Path, dict]) -> None:
    """A finished cell whose study asks for the per-run analysis gets it (spat analyze's
    files), and is then done: a rerun does nothing."""
    from spat.study.cell import cell_state, run_cell
    from spat.study.pool import dataclasses_asdict

    spec = load_study(pool_study[0].parent / "ref.toml")
    cell = dataclasses_asdict(plan_cells(spec)[0])
    cell["eval"]["analyze"] = True
    assert cell_state(cell) == "analyze"
    rec = run_cell(cell, threads=1, log_path=str(pool_study[0] / "logs" / "analyze.log"))
    assert rec["error"] is None and rec["stages"] == ["analyze"]
    run = Path(cell["run_dir"])
    assert (run / "analysis" / "report.md").is_file()
    assert "null" in (run / "analysis" / "report.md").read_text()
    assert cell_state(cell) == "done"
    assert run_cell(cell, threads=1)["stages"] == []
    # an analysis killed after analysis.json but before its figures and report.md: not done
    (run / "analysis" / "report.md").unlink()
    assert (run / "analysis" / "analysis.json").is_file() and cell_state(cell) == "analyze"
    assert run_cell(cell, threads=1)["stages"] == ["analyze"] and cell_state(cell) == "done"


def test_study_through_submitit_local_executor(tmp_path: Path,
                                               pool_study: tuple[Path, dict]) -> None:
    pytest.importorskip("submitit", reason="submitit (the slurm extra) is not installed")
    from spat.study.runner import run_study

    spec = load_study(_write(tmp_path, "sub", extra='[engine]\nkind = "submitit"\n'
                                                    'cluster = "local"'))
    out = run_study(spec, workers=2, threads=1, progress=False, figures=False,
                    log=lambda s: None)
    assert not out["failed"], out["failed"]
    assert all(r.get("job_id") for r in out["records"])
    assert len({r["pid"] for r in out["records"]}) == 4  # one process per job
    assert _table(spec.study_dir) == _table(pool_study[0])  # same numbers as the pool


def test_study_killed_midway_resumes_to_the_same_table(tmp_path: Path,
                                                       pool_study: tuple[Path, dict]) -> None:
    from spat.study.runner import run_study

    path = _write(tmp_path, "kill")
    study = tmp_path / "kill"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "spat", "study", str(path), "--workers", "2",
                             "--threads", "1", "--no-figures"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if list(study.glob("digits/*/seed*/checkpoints/last.json")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the study finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the study and its workers, mid-run
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    finished = list(study.glob("digits/*/seed*/eval/report.json"))
    assert len(finished) < 4
    out = run_study(load_study(path), workers=2, threads=1, progress=False, figures=False,
                    log=lambda s: None)
    assert not out["failed"], out["failed"]
    assert _table(study) == _table(pool_study[0])


TINY_STUDY = """
[study]
name = "{name}"
out_dir = "{out}"
datasets = ["digits"]
seeds = {seeds}
[train]
epochs = 1
train_subset = 64
val_steps = 1
test_steps = 1
test_subset = 20
device = "cpu"
[variants.a]
method = "pgd_at"
[eval]
attacks = ["fgsm"]
n_examples = 20
analyze = false
"""


def _tiny(tmp: Path, name: str, seeds: str = "[0]") -> Path:
    """A study of one cell per seed (64 training images, 1 epoch, FGSM on 20)."""
    path = tmp / f"{name}.toml"
    path.write_text(TINY_STUDY.format(name=name, out=(tmp / "out").as_posix(), seeds=seeds))
    return path


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_cell_held_is_busy_and_a_dead_holders_cell_is_taken_over(tmp_path: Path) -> None:
    """The study holds a cell by RUN/.study.lock: a live holder makes the cell busy (not
    failed; the record names the lock and the holder); a lock whose pid is dead on this host
    (a study killed mid-cell) is taken over and the cell runs."""
    import socket

    from spat.study.cell import CELL_LOCK, cell_state, run_cell
    from spat.study.pool import dataclasses_asdict, describe
    from spat.utils.lock import FolderLock, lock_holder

    (cell,) = plan_cells(load_study(_tiny(tmp_path, "takeover")))
    c, run = dataclasses_asdict(cell), Path(cell.run_dir)
    run.mkdir(parents=True)
    with FolderLock(run, "the study cell", name=CELL_LOCK):
        assert lock_holder(run / CELL_LOCK)["pid"] == os.getpid()
        rec = run_cell(c, threads=1)
        assert rec["error"] is None and rec["stages"] == [], rec
        assert rec["busy_lock"] == str(run / CELL_LOCK) and rec["holder"]["pid"] == os.getpid()
        assert describe(rec).startswith("digits/a/seed0: skipped, another process holds it")
    assert lock_holder(run / CELL_LOCK) is None and cell_state(c) == "new"
    dead = _dead_pid()
    stale = json.dumps({"pid": dead, "host": socket.gethostname(), "argv": ["spat", "study"]})
    for name in (CELL_LOCK, ".lock"):  # the study's and the run's: both left by a kill
        (run / name).write_text(stale)
        assert lock_holder(run / name) is None  # dead: free, without touching it
    rec = run_cell(c, threads=1)
    assert rec["error"] is None and rec["busy"] is None, rec
    assert rec["stages"] == ["new", "eval"] and rec["took_over"]["pid"] == dead
    assert cell_state(c) == "done"
    assert not (run / CELL_LOCK).exists() and not (run / ".lock").exists()


def test_a_cell_another_process_holds_is_waited_for(tmp_path: Path) -> None:
    """A cell whose run another live process holds (here a `spat train` of it, by RUN/.lock)
    is left to it, not failed; at the end the study waits for the lock, and as that holder
    left the cell unfinished, runs it itself: the table has every cell."""
    from spat.study.cell import cell_state
    from spat.study.pool import dataclasses_asdict
    from spat.study.runner import run_study
    from spat.utils.lock import FolderLock

    spec = load_study(_tiny(tmp_path, "busy"))
    (cell,) = plan_cells(spec)
    run = Path(cell.run_dir)
    run.mkdir(parents=True)
    lock = FolderLock(run, "the run").acquire()
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("study: waiting for cell"):
            lock.release()  # the holder ends without finishing the cell

    try:
        out = run_study(spec, workers=1, threads=1, progress=False, figures=False, log=log,
                        poll_s=0.05)
    finally:
        lock.release()
    text = "\n".join(lines)
    assert "digits/a/seed0: skipped, another process holds it" in text
    assert f"study: waiting for cell digits/a/seed0 held by pid {os.getpid()}" in text
    assert "left unfinished by its holder; running it here" in text and "FAILED" not in text
    assert not out["failed"] and [r["key"] for r in out["busy"]] == ["digits/a/seed0"]
    assert out["records"][0]["stages"] == ["new", "eval"]
    assert cell_state(dataclasses_asdict(cell)) == "done" and (run / "study_cell.json").exists()
    assert _table(spec.study_dir)[0]["n"] == "1"


def test_two_studies_of_one_file_share_the_cells(tmp_path: Path) -> None:
    """Two `spat study` of one file started together: each cell is trained by one of them,
    neither fails a cell the other holds, each waits for the other's cells, and both end
    with exit 0 and the same study.csv, holding every cell."""
    path = _tiny(tmp_path, "shared", seeds="[0, 1, 2]")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "spat", "study", str(path), "--workers", "1", "--threads", "1",
           "--no-figures", "--no-progress"]
    study = tmp_path / "out" / "shared"
    logs = [tmp_path / f"study{i}.out" for i in range(2)]
    files = [open(f, "w") for f in logs]
    procs = [subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT) for f in files]
    tables: list[bytes] = []  # study.csv as each process left it, in the order they ended
    try:
        deadline = time.time() + 240
        running = list(procs)
        while running and time.time() < deadline:
            for p in [p for p in running if p.poll() is not None]:
                running.remove(p)
                tables.append((study / "study.csv").read_bytes())
            time.sleep(0.05)
    finally:
        for p, f in zip(procs, files, strict=True):
            if p.poll() is None:
                p.kill()
                p.wait()
            f.close()
    outs = [f.read_text() for f in logs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
        assert "FAILED" not in out and "already exists" not in out, out
    keys = [f"digits/a/seed{s}" for s in (0, 1, 2)]
    for k in keys:  # trained once, by one of the two
        assert sum(o.count(f"{k}: trained") for o in outs) == 1, outs
    assert len(tables) == 2 and tables[0] == tables[1]
    doc = json.loads((study / "study.json").read_text())
    assert [c["key"] for c in doc["cells"] if c["done"]] == keys
    assert _table(study)[0]["n"] == "3"


def test_compare_warns_when_runs_were_evaluated_differently(tmp_path: Path,
                                                            pool_study: tuple[Path, dict]
                                                            ) -> None:
    import shutil

    from spat.analysis.compare import compare_runs
    from spat.evaluation.evaluate_run import evaluate_run

    doc = json.loads((pool_study[0] / "study.json").read_text())
    a, b = (Path(c["run_dir"]) for c in doc["cells"][:2])
    rows, _ = compare_runs([a, b], out_dir=tmp_path / "same", plots_too=False, device="cpu",
                           log=lambda s: None)
    same = json.loads((tmp_path / "same" / "comparison.json").read_text())
    assert same["warnings"] == [] and not rows[0]["protocol_mismatch"]
    other = tmp_path / "other"
    shutil.copytree(b, other)
    evaluate_run(other, attacks=["pgd20"], n_examples=40, sanity_examples=0, device="cpu",
                 progress=False, log=lambda s: None)
    compare_runs([a, other], out_dir=tmp_path / "diff", plots_too=False, device="cpu",
                 log=lambda s: None)
    diff = json.loads((tmp_path / "diff" / "comparison.json").read_text())
    text = " ".join(diff["warnings"])
    assert len(diff["warnings"]) == 2 and "50" in text and "40" in text
    assert "different attacks" in text
    assert all(r["protocol_mismatch"] for r in diff["runs"])
    md = (tmp_path / "diff" / "comparison.md").read_text()
    assert md.startswith("> **Warning:**") and "not comparable" in md


def _children(pid: int) -> set[int]:
    """Live (non-zombie) processes whose parent is ``pid``, from /proc."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
def test_sigterm_stops_the_study_and_its_workers(tmp_path: Path) -> None:
    """``kill`` (SIGTERM, a batch system's time limit) on a running ``spat study`` stops its
    worker processes too (exit 130, like Ctrl-C) instead of leaving them running."""
    path = _write(tmp_path, "term")
    path.write_text(path.read_text().replace("epochs = 1\n", "epochs = 200\n"))  # still running
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "spat", "study", str(path), "--workers", "2",
                             "--threads", "1", "--no-figures"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    workers: set[int] = set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if list((tmp_path / "term").glob("digits/*/seed*/config.json")):
                workers = {p for p in _children(proc.pid) if "spawn_main" in
                           Path(f"/proc/{p}/cmdline").read_text(errors="replace")}
                if len(workers) == 2:
                    break
            time.sleep(0.05)
        assert proc.poll() is None and len(workers) == 2, "no two running workers to stop"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
        deadline = time.time() + 20
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers), "workers left running after SIGTERM"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.parametrize("entry, why", [
    ('class_pairs = [["8", "1"]]', "must be a table"),
    ('class_pairs = { mnist = [["8", "1"]] }', "'mnist' is not a dataset of this study"),
    ('class_pairs = { digits = [] }', "non-empty list"),
    ('class_pairs = { digits = [["8"]] }', "two class names"),
    ('class_pairs = { digits = [["8", 1]] }', "two class names"),
    ('class_pairs = { digits = [["8", ""]] }', "two class names"),
    ('class_pairs = { digits = [["8", "8"]] }', "with itself"),
    ('class_pairs = { digits = [["8", "1"], ["8", "1"]] }', "twice"),
])
def test_study_class_pairs_errors_name_file_and_field(tmp_path: Path, entry: str,
                                                      why: str) -> None:
    with pytest.raises(SpatError) as e:
        _pairs_spec(tmp_path, entry)
    msg = str(e.value)
    assert str(tmp_path / "pairs.toml") in msg and "class_pairs" in msg and why in msg
    assert "\n" not in msg


@pytest.mark.parametrize("dry", [True, False])
def test_unknown_class_pair_name_is_refused_before_any_cell(
        tmp_path: Path, capsys: pytest.CaptureFixture, dry: bool) -> None:
    """A class_pairs name that is not a class of the dataset stops `spat study` when the file
    is read (exit 2, one line naming the name and the valid ones), with --dry-run as without:
    no cell is trained first."""
    from spat.cli import main

    path = _tiny(tmp_path, "cpname")
    path.write_text(path.read_text().replace(
        'seeds = [0]', 'seeds = [0]\nclass_pairs = { digits = [["0", "x"]] }'))
    assert main(["study", str(path), *(["--dry-run"] if dry else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"spat: error: {path}: study.class_pairs.digits: 'x' is not a class of "
                   f"digits (classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad, field", [("eps = 0.0", "eval.eps: eps must be > 0"),
                                        ('attacks = ["pgd7"]', "unknown attack 'pgd7'"),
                                        ("batch_size = 0", "eval.batch_size")])
def test_a_bad_eval_table_is_refused_before_any_training(
        tmp_path: Path, capsys: pytest.CaptureFixture, bad: str, field: str) -> None:
    """[eval] goes through EvalOptions when the file is read: a run of `spat study` (not only
    --dry-run) stops with one line, exit 2, before any cell trains; nothing is written."""
    from spat.cli import main

    path = _tiny(tmp_path, "badeval")
    path.write_text(path.read_text().replace('attacks = ["fgsm"]', bad))
    assert main(["study", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"spat: error: {path}: ") and field in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_class_names_known_without_loading_the_data(tmp_path: Path) -> None:
    """dataset_class_names: the names load_dataset gives, from fixed lists or small files only;
    None where the files are absent (then class_pairs are checked when results are read)."""
    from spat.data import dataset_class_names, load_dataset

    assert dataset_class_names("digits") == load_dataset("digits").info.class_names
    assert dataset_class_names("fashion_mnist")[0] == "T-shirt/top"
    assert dataset_class_names("cifar10", tmp_path) is None
    assert dataset_class_names("npz", tmp_path / "none.npz") is None
    x = np.zeros((4, 8, 8), dtype=np.uint8)
    y = np.array([0, 1, 0, 1])
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y,
             class_names=np.array(["cat", "dog"]))
    np.savez(tmp_path / "n.npz", x_train=x, y_train=y, x_test=x, y_test=y + 1)
    for f in ("d.npz", "n.npz"):
        assert dataset_class_names("npz", tmp_path / f) == \
            load_dataset("npz", data_dir=tmp_path / f).info.class_names
    assert dataset_class_names("npz", tmp_path / "d.npz") == ("cat", "dog")
    path = tmp_path / "npz.toml"
    path.write_text(TINY_STUDY.format(name="npz", out=tmp_path.as_posix(), seeds="[0]")
                    .replace('datasets = ["digits"]', 'datasets = ["npz"]\n'
                             'class_pairs = { npz = [["cat", "cow"]] }')
                    .replace("[train]", f'[train]\ndata_dir = "{(tmp_path / "d.npz").as_posix()}"'))
    with pytest.raises(SpatError, match=r"class_pairs.npz: 'cow' is not a class of npz "
                                        r"\(classes: cat, dog\)"):
        load_study(path)


def test_study_help_prints_a_single_percent_sign(capsys: pytest.CaptureFixture) -> None:
    from spat.cli import main

    with pytest.raises(SystemExit) as e:
        main(["study", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "95%" in out and "%%" not in out


def test_class_pair_counts_and_shares_by_hand() -> None:
    """Row = true class. Class 0 has 2 + 6 + 2 = 10 errors, 6 of them to class 1: 0 → 1 is
    0.6, 0 → 2 is 0.2; class 2 has no error, so 2 → 0 is NaN (not 0)."""
    from spat.study.aggregate import class_pair_counts, class_pair_shares

    conf = np.array([[5, 6, 2, 2], [1, 9, 0, 0], [0, 0, 7, 0], [0, 3, 0, 4]])
    names = ["zero", "one", "two", "three"]
    pairs = [("zero", "one"), ("zero", "two"), ("two", "zero"), ("three", "one")]
    assert class_pair_counts(conf, names, pairs) == {
        "zero→one": (6, 10), "zero→two": (2, 10), "two→zero": (0, 0), "three→one": (3, 3)}
    shares = class_pair_shares(conf, names, pairs)
    assert shares["zero→one"] == 0.6 and shares["zero→two"] == 0.2
    assert math.isnan(shares["two→zero"]) and shares["three→one"] == 1.0
    with pytest.raises(SpatError, match=r"study.class_pairs: 'four' is not a class .*zero"):
        class_pair_counts(conf, names, [("four", "one")])


def _class_pair_results(spec, shares: bool = True) -> list:
    """Hand-made cells of the pairs study with PGD-20 confusions over 3 digit classes (named
    "8", "1", "3"): 8's errors that land in 1 are 3/4, 1/2, 2/4 for a and 1/4, 0/2, 1/2 for c,
    so c − a is -0.5, -0.5, 0.0 on seeds 0-2 (seed 3 of c unfinished). ``shares``: add the
    8 → 1 metric (as read_cell does with study.class_pairs)."""
    from spat.study.aggregate import class_pair_shares

    to_1 = {"a": [(3, 1), (1, 1), (2, 2), (1, 1)], "b": [(2, 2)] * 4,
            "c": [(1, 3), (0, 2), (1, 1), None]}
    names = ["8", "1", "3"]
    out = []
    for r in _pairs_results(spec):
        split = to_1[r.cell.variant][r.cell.seed]
        if split is not None:
            conf = np.array([[6, split[0], split[1]], [0, 10, 0], [0, 1, 9]])
            r.confusion, r.class_names, r.primary = conf, names, "PGD-20"
            if shares:
                r.metrics.update(class_pair_shares(conf, names, [("8", "1")]))
        out.append(r)
    return out


def test_class_pairs_table_in_md_json_and_absent_class_pairs_change_nothing(
        tmp_path: Path) -> None:
    from spat.study.aggregate import aggregate
    from spat.study.outputs import write_outputs

    with_cp = _pairs_spec(tmp_path, 'class_pairs = { digits = [["8", "1"]] }')
    plain = _pairs_spec(tmp_path, "", name="plain.toml")
    assert with_cp.class_pairs == {"digits": (("8", "1"),)} and plain.class_pairs == {}
    docs = {}
    for key, spec in (("w", with_cp), ("p", plain)):
        results = _class_pair_results(spec, shares=key == "w")
        aggs, metrics = aggregate(spec, results)
        assert metrics[-1] == ("8→1" if key == "w" else "PGD-20")
        write_outputs(spec, aggs, metrics, results, figures=False)
        docs[key] = {f: (spec.study_dir / f"study.{f}").read_text() for f in ("md", "json")}
    md = docs["w"]["md"].split("\n")
    # the accuracy tables keep their columns; the class pair has its own table
    assert "| variant (cells) | clean | PGD-20 |" in md
    i = md.index("| variant | 8→1 |")
    assert md[i - 2].startswith("Named class pairs (`study.class_pairs`), the measure of the "
                                "paper's Fig. 1: of class a's test images that PGD-20")
    # a: shares .75 .5 .5 .5 -> mean 56.25, sd 12.5; pooled 7 of 12 errors
    assert md[i + 2] == "| a | 56.2 ± 12.5 [36.4, 76.1] (7/12) |"
    # c: .25 0 .5 on seeds 0-2, pooled 2 of 8
    assert md[i + 4] == "| c | 25.0 ± 25.0 [-37.1, 87.1] (2/8) |"
    # c − a: -0.5, -0.5, 0 -> mean -1/3, sd sqrt(1/12), t_{0.975,2} = 4.3027 -> [-105.0, +38.4]
    j = md.index("| variant | 8→1 |", i + 1)
    assert md[j + 3] == "| c | -33.3 [-105.0, +38.4] {-50.0, +0.0} |"
    # without class pairs: the same document less that block
    block = "\n".join(md[i - 2:j + 5]) + "\n"
    assert docs["w"]["md"].replace(block, "", 1).replace("pairs.toml", "plain.toml") \
        == docs["p"]["md"]
    wj = json.loads(docs["w"]["json"])
    assert wj["class_pairs"] == {"digits": [["8", "1"]]} and "class_pairs" not in json.loads(
        docs["p"]["json"])
    pooled = {a["variant"]: a["hard_pairs_pooled"]["class_pairs"]["8→1"]
              for a in wj["aggregates"]}
    assert pooled["a"] == {"count": 7, "errors": 12, "share": 7 / 12}
    assert pooled["c"] == {"count": 2, "errors": 8, "share": 0.25}


def test_named_pairs_also_compare_the_class_pair_shares(tmp_path: Path) -> None:
    """With study.pairs and study.class_pairs, the named pair c − b gets its own table of
    share differences after the baseline's: b sends 2 of 4 errors of 8 to 1 on every seed,
    c 1/4, 0/2, 2/4 on seeds 0-2, so c − b is -0.25, -0.5, 0.0 (seed 3 of c unfinished)."""
    from spat.study.aggregate import aggregate, pair_differences
    from spat.study.outputs import write_outputs

    both = 'pairs = [["c", "b"]]\nclass_pairs = { digits = [["8", "1"]] }'
    spec = _pairs_spec(tmp_path, both)
    cp_only = _pairs_spec(tmp_path, 'class_pairs = { digits = [["8", "1"]] }', name="cp.toml")
    docs = {}
    for key, s in (("both", spec), ("cp", cp_only)):
        results = _class_pair_results(s)
        aggs, metrics = aggregate(s, results)
        write_outputs(s, aggs, metrics, results, figures=False,
                      pairs=pair_differences(s, aggs, metrics))
        docs[key] = (s.study_dir / "study.md").read_text()
    md = docs["both"].split("\n")
    i = md.index("| pair | 8→1 |")
    assert md[i - 2].startswith("Paired differences of these shares between named pairs")
    # mean -0.25, sd 0.25, t_{0.975,2} = 4.3027: half-width 0.621; bootstrap of 3 values
    assert md[i + 2] == "| c − b | -25.0 [-87.1, +37.1] {-50.0, +0.0} |"
    # it comes right after the baseline's share differences (whose last row is c's)
    assert md[i - 4].startswith("| c | -33.3 [-105.0, +38.4]")
    # without study.pairs that table (and the accuracy pair table) are the only difference
    block = "\n".join(md[i - 2:i + 4]) + "\n"
    acc = md.index("| pair | clean | PGD-20 |")
    acc_block = "\n".join(md[acc - 2:acc + 4]) + "\n"
    assert docs["both"].replace(block, "", 1).replace(acc_block, "", 1).replace(
        "pairs.toml", "cp.toml") == docs["cp"]


def test_a_session_that_ran_no_stage_keeps_the_cells_record(tmp_path: Path) -> None:
    """A cell planned as new that another process finished meanwhile runs no stage; its
    study_cell.json (stages, seconds: what --dry-run estimates from) must stay the finisher's."""
    from spat.study.runner import _save_record

    run = tmp_path / "run"
    run.mkdir()
    done = {"key": "d/v/seed0", "run_dir": str(run), "stages": ["new", "eval"], "error": None,
            "busy": None, "seconds": 120.0}
    _save_record(done)
    first = json.loads((run / "study_cell.json").read_text())
    assert first["stages"] == ["new", "eval"] and first["seconds"] == 120.0
    _save_record({**done, "stages": [], "seconds": 0.01})
    assert json.loads((run / "study_cell.json").read_text()) == first
    # with no record yet, an empty session is still written (the cell was found done)
    other = tmp_path / "other"
    other.mkdir()
    _save_record({**done, "run_dir": str(other), "stages": [], "seconds": 0.01})
    assert json.loads((other / "study_cell.json").read_text())["stages"] == []


def test_a_run_creation_killed_before_its_config_is_started_again(tmp_path: Path) -> None:
    """A new run writes env.json and data.json, then config.json. A kill in between leaves a
    folder that is not a run: the study starts that cell again (and trains it), while a folder
    with anything else in it and no config.json is still refused."""
    from spat.study.cell import cell_state, run_cell
    from spat.study.pool import dataclasses_asdict

    path = tmp_path / "killed.toml"
    path.write_text(f"""
[study]
name = "killed"
out_dir = "{(tmp_path / 'out').as_posix()}"
datasets = ["digits"]
seeds = [0]
[train]
epochs = 1
train_subset = 64
device = "cpu"
[variants.a]
method = "pgd_at"
[eval]
attacks = ["fgsm"]
n_examples = 20
analyze = false
""")
    (cell,) = plan_cells(load_study(path))
    run = Path(cell.run_dir)
    run.mkdir(parents=True)
    (run / "env.json").write_text("{}")
    (run / "data.json").write_text('{"partial')
    (run / ".lock").write_text("")
    c = dataclasses_asdict(cell)
    assert cell_state(c) == "new"
    rec = run_cell(c, threads=1)
    assert rec["error"] is None and rec["stages"][0] == "new", rec
    assert cell_state(c) == "done"
    assert json.loads((run / "data.json").read_text())  # written again, whole
    other = tmp_path / "out" / "killed" / "digits" / "b" / "seed0"
    other.mkdir(parents=True)
    (other / "env.json").write_text("{}")
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SpatError, match="no readable config.json"):
        cell_state({**c, "run_dir": str(other)})


def test_a_study_copies_the_cells_another_study_finished_with_its_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``study.reuse``: a cell whose training and evaluation settings are those of a finished
    cell of another study (same dataset and seed) is copied from it, file for file, with a
    record naming the source; a cell with another setting (here the lr; or the attacks) or
    another seed is trained. --dry-run says which cells are copies."""
    from spat.study.runner import dry_run, run_study

    first = load_study(_tiny(tmp_path, "first", seeds="[1]"))
    run_study(first, workers=1, threads=1, progress=False, figures=False, log=lambda _: None)
    src = Path(plan_cells(first)[0].run_dir)
    text = TINY_STUDY.format(name="second", out=(tmp_path / "out").as_posix(), seeds="[0, 1]")
    text = text.replace('seeds = [0, 1]', 'seeds = [0, 1]\nreuse = ["first"]')
    text = text.replace('[eval]', '[variants.b]\nmethod = "pgd_at"\nlr = 0.011\n[eval]')
    (tmp_path / "second.toml").write_text(text)
    second = load_study(tmp_path / "second.toml")
    dry_run(second, 1, 1)
    out = capsys.readouterr().out
    states = {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if ln.startswith("  digits")}
    assert states == {"digits/a/seed0": "new", "digits/a/seed1": "reuse",
                      "digits/b/seed0": "new", "digits/b/seed1": "new"}, out
    assert "1 cells are copied from other studies" in out
    res = run_study(second, workers=1, threads=1, progress=False, figures=False,
                    log=lambda _: None)
    stages = {r["key"]: r["stages"] for r in res["records"]}
    assert stages == {"digits/a/seed0": ["new", "eval"], "digits/a/seed1": ["reuse"],
                      "digits/b/seed0": ["new", "eval"], "digits/b/seed1": ["new", "eval"]}
    assert res["records"][0]["key"] == "digits/a/seed1", "the copy runs before any training"
    copy = tmp_path / "out" / "second" / "digits" / "a" / "seed1"
    rec = json.loads((copy / "study_cell.json").read_text())
    assert rec["reused_from"] == str(src) and rec["stages"] == ["reuse"]
    assert rec["source_record"] == json.loads((src / "study_cell.json").read_text())
    for f in ("config.json", "summary.json", "eval/report.json", "eval/predictions.npz",
              "metrics.jsonl"):
        assert (copy / f).read_bytes() == (src / f).read_bytes(), f
    assert not (copy / ".lock").exists() and not (copy / ".study.lock").exists()
    rows = {r["variant"]: r for r in _table(second.study_dir)}
    assert rows["a"]["n"] == "2"
    # the same training with other attacks is not the same cell
    third_text = TINY_STUDY.format(name="third", out=(tmp_path / "out").as_posix(), seeds="[1]")
    third_text = third_text.replace('seeds = [1]', 'seeds = [1]\nreuse = ["first"]')
    third_text = third_text.replace('attacks = ["fgsm"]', 'attacks = ["fgsm", "pgd20"]')
    (tmp_path / "third.toml").write_text(third_text)
    res = run_study(load_study(tmp_path / "third.toml"), workers=1, threads=1, progress=False,
                    figures=False, log=lambda _: None)
    assert [r["stages"] for r in res["records"]] == [["new", "eval"]]


def test_copied_cells_do_not_count_towards_the_eta() -> None:
    """Cells copied from another study take no time: no ETA is extrapolated from them, and the
    first cell that ran sets it."""
    from spat.study.pool import StudyProgress

    lines: list[str] = []
    bar = StudyProgress(4, log=lines.append, terminal=False)
    bar.advance("a: copied", copied=True)
    bar.advance("b: copied", copied=True)
    assert bar.eta() is None and "ETA" not in lines[-1]
    time.sleep(0.05)
    bar.advance("c: trained")
    eta = bar.eta()
    assert eta is not None and eta >= 0.05 and "ETA" in lines[-1]  # one run cell left
    bar.close()

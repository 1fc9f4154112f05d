"""``spat eval``: the protocol end to end on a small digits run, the report's consistency
(per-class counts, worst case per example, AutoAttack ≤ PGD-100 ≤ PGD-20 ≤ clean), resuming,
the AutoAttack adapter, and the sanity checks firing on gradient-masked models only."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from torch import nn

from spat.attacks import autoattack as aa_mod
from spat.build import load_data, load_run
from spat.cli import main
from spat.config import TrainConfig
from spat.errors import SpatError
from spat.evaluation import EvalOptions, Predictions, evaluate, parse_attacks, sanity, select_subset
from spat.evaluation.attacks import ATTACK_KEYS
from spat.train.training import train
from tests.conftest import linear_problem

N = 64
CLI_ATTACKS = "fgsm,pgd20,pgd100,aa-fast"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models and batches: one intra-op thread is faster, and far faster on a busy
    machine (two spinning OpenMP threads per worker thrash 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder shared by the xdist workers of this session (else this process's own)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PGD-AT on the digits for 3 short epochs (~80% clean, ~55% PGD accuracy), trained once
    per session even with xdist."""
    shared = _shared_dir(tmp_path_factory)
    run = shared / "eval_runs" / "run"
    with FileLock(str(shared / "eval_run.lock")):
        if not (run / "summary.json").is_file():
            cfg = TrainConfig(out_dir=str(run.parent), name="run", epochs=3, steps=3,
                              step_size=0.04, batch_size=32, val_steps=2, test_steps=2,
                              device="cpu", seed=0)
            train(cfg, progress=False, log=lambda s: None, overwrite=True)
    return run


@pytest.fixture(scope="module")
def evaluated(run_dir: Path) -> tuple[Path, str]:
    """``spat eval`` once on the run (once per session); returns the run directory and what
    it printed."""
    printed = run_dir / "eval_printed.txt"
    with FileLock(str(run_dir / "eval.lock")):
        if not printed.is_file():
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                code = main(["eval", str(run_dir), "--attacks", CLI_ATTACKS, "--n-examples",
                             str(N), "--sanity-examples", "32", "--batch-size", "64",
                             "--no-progress"])
            assert code == 0
            printed.write_text(buf.getvalue())
    return run_dir, printed.read_text()


# ---------------------------------------------------------------------------- command line
def test_help_lists_every_attack_with_defaults(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())  # help texts wrap at the terminal's width
    for key in ("clean", *ATTACK_KEYS):
        assert f"  {key} " in out or key in out
    for text in ("ε/4", "uniform random", "no random start", "--restarts", "5000 queries",
                 "100 iterations", "9 target", "FAB-T", "Square", "APGD-CE", "APGD-T",
                 "report.json", "predictions.npz", "--no-resume", "(default 500)",
                 "fgsm,pgd20,pgd100,cw20,aa", "(default: best)"):
        assert text in flat, text
    # each default once: the derived flags state theirs in the text, argparse adds none
    assert flat.count("(default 500)") == 1 and "(default: 500)" not in flat
    assert flat.count("default 1000") == 1 and "default: 1000" not in flat


def test_unknown_attack_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code = main(["eval", str(tmp_path), "--attacks", "pgd20,pgd7"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "unknown attack 'pgd7'" in err and "aa-fast" in err


def test_missing_run_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["eval", str(tmp_path / "nope"), "--attacks", "fgsm"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_parse_attacks_canonical_order():
    assert parse_attacks("aa, pgd20,clean,FGSM,pgd20") == ["fgsm", "pgd20", "aa"]
    assert parse_attacks("clean") == []
    with pytest.raises(SpatError, match="unknown attack"):
        parse_attacks("pgd")


# ------------------------------------------------------------------------- the protocol
def test_eval_prints_table_and_writes_consistent_report(evaluated: tuple[Path, str]):
    run, printed = evaluated
    for text in ("clean", "FGSM", "PGD-20", "PGD-100", "AutoAttack-fast", "ensemble",
                 "sanity checks: 6/6 passed", "report.json"):
        assert text in printed, text
    report = json.loads((run / "eval" / "report.json").read_text())
    preds = Predictions.load(run / "eval" / "predictions.npz")
    cfg = load_run(run).config
    names = ["FGSM", "PGD-20", "PGD-100", "AutoAttack-fast"]
    assert list(preds.adversarial) == names
    assert len(preds) == N == report["n_examples"]
    # RobustBench-style fields and the run's settings.
    assert report["eps"] == cfg.eps and report["threat_model"] == "Linf"
    assert report["dataset"] == "digits" and report["architecture"] == "small_cnn"
    assert report["autoattack_acc"] is None  # standard AutoAttack was not run
    assert report["clean_acc"] == pytest.approx(preds.accuracy(None))
    assert report["config"]["method"] == "pgd_at" and report["environment"]["torch"]
    data = load_data(cfg)
    assert report["subset"]["indices"] == select_subset(len(data.test), N, 0).tolist()
    assert torch.equal(preds.labels, data.test.labels[select_subset(len(data.test), N, 0)])
    # Per attack: accuracy, per-class counts that add up, worst class.
    counts = torch.bincount(preds.labels, minlength=10)
    assert report["class_counts"] == counts.tolist()
    for entry in [report["clean"], *report["attacks"]]:
        ok = preds.correct(None if entry is report["clean"] else entry["name"])
        assert entry["correct"] == int(ok.sum())
        assert entry["accuracy"] == pytest.approx(float(ok.float().mean()))
        per = torch.bincount(preds.labels[ok], minlength=10)
        assert entry["per_class_correct"] == per.tolist()
        assert sum(entry["per_class_correct"]) == entry["correct"]
        accs = {c: (int(per[i]) / int(counts[i]) if counts[i] else None)
                for i, c in enumerate(report["classes"])}
        assert entry["per_class_accuracy"] == pytest.approx(accs)
        worst = entry["worst_class"]
        assert worst["accuracy"] == min(a for a in accs.values() if a is not None)
    # The worst case so far is nested per example: AA ≤ PGD-100 ≤ PGD-20 ≤ FGSM ≤ clean.
    cum = preds.correct(None)
    previous = 1.0
    for entry in report["attacks"]:
        new = cum & preds.correct(entry["name"])
        assert bool((new <= cum).all())
        cum = new
        assert entry["cumulative_correct"] == int(cum.sum())
        assert entry["cumulative_accuracy"] <= previous + 1e-12
        previous = entry["cumulative_accuracy"]
    assert report["attacks"][-1]["cumulative_accuracy"] <= report["clean_acc"]
    # AutoAttack only attacks clean-correct points: its correct set is inside clean's.
    assert bool((preds.correct("AutoAttack-fast") <= preds.correct(None)).all())
    # The ensemble is the per-example minimum over clean and all attacks.
    ens = torch.stack([preds.correct(None)] + [preds.correct(a) for a in names]).all(0)
    assert torch.equal(ens, preds.robust_all())
    assert report["ensemble"]["correct"] == int(ens.sum()) == int(cum.sum())
    assert report["robust_acc"] == pytest.approx(float(ens.float().mean()))
    # AutoAttack's own breakdown and ball.
    aa = report["attacks"][-1]["details"]
    assert list(aa["robust_accuracy_after"]) == ["APGD-CE", "APGD-T"]
    assert aa["robust_accuracy_after"]["APGD-T"] == pytest.approx(report["attacks"][-1]
                                                                  ["accuracy"])
    assert aa["max_perturbation"] <= cfg.eps + 1e-6
    # A normal adversarially trained model passes every sanity check quietly.
    assert report["sanity"]["passed"], report["warnings"]
    assert report["warnings"] == []
    assert {c["name"] for c in report["sanity"]["checks"]} == {
        "eval_mode", "deterministic", "logits", "gradients", "eps_sweep", "black_box"}


def test_rerun_reuses_saved_attacks(evaluated: tuple[Path, str], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]):
    run, _ = evaluated
    out_dir = tmp_path / "eval"
    shutil.copytree(run / "eval", out_dir)
    before = json.loads((out_dir / "report.json").read_text())

    def fail(*args, **kwargs):
        raise AssertionError("an attack ran again")

    monkeypatch.setattr(aa_mod, "run_autoattack", fail)
    monkeypatch.setattr(aa_mod, "run_square", fail)
    monkeypatch.setattr("spat.attacks.presets.AttackSpec.run", fail)
    code = main(["eval", str(run), "--attacks", CLI_ATTACKS, "--n-examples", str(N),
                 "--sanity-examples", "32", "--batch-size", "64", "--no-progress",
                 "--out", str(out_dir)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("reusing the saved result") >= 4
    after = json.loads((out_dir / "report.json").read_text())
    assert all(a["reused"] for a in after["attacks"])
    assert [a["accuracy"] for a in after["attacks"]] == [a["accuracy"] for a in before["attacks"]]
    # Other settings are recomputed, and the terminal says which setting changed.
    monkeypatch.undo()
    code = main(["eval", str(run), "--attacks", "fgsm", "--eps", "1/20", "--n-examples", str(N),
                 "--sanity-examples", "0", "--no-progress", "--batch-size", "64",
                 "--out", str(out_dir)])
    out = capsys.readouterr().out
    assert code == 0 and "eps" in out and "other settings" in out
    report = json.loads((out_dir / "report.json").read_text())
    assert report["eps"] == 0.05 and not report["attacks"][0]["reused"]


def test_interrupted_autoattack_resumes_where_it_stopped(tmp_path: Path):
    model, x, y = linear_problem()
    state = tmp_path / "aa.json"
    seen: list[tuple[str, int]] = []

    def stop_in_apgd_t(sub: str, done: int, total: int) -> None:
        seen.append((sub, done))
        if sub == "apgd-t" and done > 0:
            raise KeyboardInterrupt

    kw = dict(eps=0.05, norm="Linf", version="fast", seed=3, batch_size=8)
    with pytest.raises(KeyboardInterrupt):
        aa_mod.run_autoattack(model, x, y, state_path=state, progress=stop_in_apgd_t, **kw)
    saved = json.loads(state.read_text())
    assert saved["done"] == ["apgd-ce"] and saved["current"]["batches_done"] == 1
    resumed = aa_mod.run_autoattack(model, x, y, state_path=state, **kw)
    fresh = aa_mod.run_autoattack(model, x, y, **kw)
    assert resumed.resumed and not fresh.resumed
    assert torch.equal(resumed.predictions, fresh.predictions)
    assert resumed.robust_accuracy == pytest.approx(fresh.robust_accuracy)


# ------------------------------------------------------------------- AutoAttack adapter
@pytest.mark.parametrize("norm,eps", [("Linf", 0.03), ("L2", 0.25)])
def test_autoattack_adapter_on_a_linear_model(norm: str, eps: float):
    model, x, y = linear_problem()
    r = aa_mod.run_autoattack(model, x, y, eps=eps, norm=norm, version="fast", seed=0,
                              batch_size=16, return_adv=True)
    assert r.predictions.shape == (24,) and r.predictions.dtype == torch.int64
    assert r.sub_attacks == ["apgd-ce", "apgd-t"]
    assert r.x_adv is not None
    delta = (r.x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5 and r.max_perturbation <= eps + 1e-5
    assert float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0
    with torch.no_grad():
        assert torch.equal(model(r.x_adv).argmax(1), r.predictions)
    clean_ok = r.clean_predictions == y
    assert torch.equal(r.broken_by == 0, ~clean_ok)
    assert bool(((r.predictions == y) <= clean_ok).all())
    assert r.robust_accuracy["clean"] == pytest.approx(float(clean_ok.float().mean()))
    assert 0 < int((r.broken_by > 0).sum())  # the attack breaks something at this ε
    assert r.robust_accuracy["apgd-t"] == pytest.approx(float((r.predictions == y).float()
                                                              .mean()))
    assert r.warnings == []


def test_autoattack_adapter_rejects_bad_input():
    model, x, y = linear_problem(4)
    with pytest.raises(SpatError, match="version"):
        aa_mod.run_autoattack(model, x, y, eps=0.1, version="plus")
    with pytest.raises(SpatError, match="norm"):
        aa_mod.run_autoattack(model, x, y, eps=0.1, norm="L1")


# ------------------------------------------------------------------------- sanity checks
class _Scaled(nn.Module):
    """Logits × 1e4: the softmax saturates and the cross-entropy gradient is exactly zero."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 1e4


class _Quantized(nn.Module):
    """Rounds the input to 5 grey levels: zero gradient almost everywhere."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)


class _Probabilities(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).softmax(1)


class _Noisy(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x + 0.05 * torch.randn_like(x))


def _failed(report) -> set[str]:
    return {c.name for c in report.checks if c.passed is False}


@pytest.mark.parametrize("wrapper,expected", [
    (_Scaled, {"gradients", "eps_sweep", "black_box"}),
    (_Quantized, {"gradients", "eps_sweep"}),
    (_Probabilities, {"logits"}),
    (_Noisy, {"deterministic"}),
])
def test_sanity_checks_fire_on_masked_models(run_dir: Path, wrapper, expected: set[str]):
    loaded = load_run(run_dir)
    model, cfg = loaded.model, loaded.config
    test = load_data(cfg).test
    masked = wrapper(model).eval()
    report = evaluate(masked, test, EvalOptions(eps=cfg.eps, attacks=["pgd20"], n_examples=48,
                                                sanity_examples=48, square_queries=500,
                                                batch_size=64))
    assert expected <= _failed(report), [c.detail for c in report.checks]
    assert not report.data["sanity"]["passed"]
    assert all(any(name in w for w in report.warnings) for name in expected)
    if wrapper is _Probabilities:
        assert _failed(report) == {"logits"}


def test_sanity_checks_quiet_on_the_trained_model_and_flag_train_mode(run_dir: Path):
    loaded = load_run(run_dir)
    model, cfg = loaded.model, loaded.config
    test = load_data(cfg).test
    report = evaluate(model, test, EvalOptions(eps=cfg.eps, attacks=[], n_examples=48,
                                               sanity_examples=48))
    assert _failed(report) == set() and report.warnings == []
    assert {c.name: c.passed for c in report.checks}["black_box"] is None  # nothing to compare
    model.train()
    report = evaluate(model, test, EvalOptions(eps=cfg.eps, attacks=[], n_examples=16,
                                               sanity_examples=0))
    assert _failed(report) == {"eval_mode"}
    assert model.training  # the caller's mode is left as it was


def test_eps_sweep_and_black_box_rules():
    eps = sanity.sweep_epsilons(0.1, "linf", 64)
    assert eps == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5])
    assert sanity.sweep_epsilons(0.5, "l2", 64)[-1] == pytest.approx(4.0)
    assert sanity.check_eps_sweep(eps, [0.9, 0.8, 0.3, 0.0, 0.0], 100, 10).passed
    rising = sanity.check_eps_sweep(eps, [0.9, 0.8, 0.85, 0.0, 0.0], 100, 10)
    assert rising.passed is False and "rises" in rising.detail
    stuck = sanity.check_eps_sweep(eps, [0.9, 0.8, 0.5, 0.3, 0.2], 100, 10)
    assert stuck.passed is False and "≈ 0" in stuck.detail
    assert sanity.check_black_box(100, 1, "x").passed
    assert sanity.check_black_box(100, 2, "x").passed
    assert sanity.check_black_box(100, 3, "x").passed is False
    assert sanity.check_black_box(0, 0, "x").passed is None


def test_evaluate_rejects_bad_settings(run_dir: Path):
    loaded = load_run(run_dir)
    model, cfg = loaded.model, loaded.config
    test = load_data(cfg).test
    for kw, match in [(dict(eps=0.0), "eps"), (dict(eps=0.1, norm="l1"), "norm"),
                      (dict(eps=0.1, n_examples=0), "n-examples"),
                      (dict(eps=0.1, attacks="pgd3"), "unknown attack")]:
        with pytest.raises(SpatError, match=match):
            evaluate(model, test, EvalOptions(**kw))

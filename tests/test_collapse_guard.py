"""The collapse and plateau guard (issue 23): its detectors on hand-made per-epoch records and
on the study's committed runs, and in a real (tiny) training run: a forced divergence is one
line, recorded in metrics.jsonl and summary.json, and ``--on-collapse stop`` ends the run with
exit 2 keeping the checkpoints before it; a healthy run is not flagged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from spat import checkpoint as ckpt
from spat.cli import main
from spat.config import TrainConfig
from spat.methods import METHODS
from spat.train.guard import (
    ADV_DROP,
    EXPLODE_FACTOR,
    chance_level,
    guard_line,
    run_findings,
    scan,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "study" / "results"
K = 10
U = math.log(K)
TINY = ["--train-subset", "32", "--val-size", "16", "--steps", "1", "--val-steps", "1",
        "--test-steps", "1", "--test-subset", "16", "--batch-size", "16", "--no-progress"]


def rec(epoch: int, *, loss: float = 1.0, val: float | None = 0.9, top: float | None = 0.12,
        adv: float | None = 0.6, clean: float | None = None) -> dict:
    r: dict = {"epoch": epoch, "train_loss": loss, "train_adv_acc": adv, "train_clean_acc": clean}
    if val is not None:
        r.update(val_clean_acc=val, val_robust_acc=val / 2, val_clean_top_share=top)
    return r


def kinds(records: list[dict], plateau: int = 10, uniform: float = U) -> list[tuple[str, int]]:
    return [(f.kind, f.epoch) for f in scan(records, num_classes=K, uniform_loss=uniform,
                                            plateau_epochs=plateau)]


# ------------------------------------------------------------------------------ detectors
def test_a_healthy_history_has_no_finding() -> None:
    h = [rec(e, loss=2.2 - 0.05 * e, val=0.5 + 0.02 * e, adv=0.3 + 0.02 * e) for e in range(1, 21)]
    assert kinds(h) == []


def test_constant_output_after_learning_is_a_collapse_but_not_before() -> None:
    learned = [rec(1), rec(2), rec(3, val=0.1, top=0.97, adv=0.55)]
    assert kinds(learned) == [("collapsed", 3)]
    # the self-paced plateau: one class from the start, then learning: not a collapse
    plateau = [rec(1, val=0.1, top=1.0), rec(2, val=0.25, top=0.95), rec(3, val=0.1, top=0.98),
               rec(4, val=0.8)]
    assert kinds(plateau) == []
    # 89 % in one class is below the threshold
    assert kinds([rec(1), rec(2, val=0.15, top=0.89)]) == []


def test_uniform_loss_needs_chance_accuracy_for_two_epochs() -> None:
    u = METHODS["mart"].uniform_loss(K)
    assert u == pytest.approx(math.log(10) - math.log(0.9001))
    no_val = [rec(1, val=None, clean=0.8), rec(2, val=None, clean=0.9),
              rec(3, loss=u * 1.005, val=None, clean=0.1),
              rec(4, loss=u * 0.995, val=None, clean=0.11)]
    assert kinds(no_val, uniform=u) == [("collapsed", 4)]
    assert kinds(no_val[:3], uniform=u) == []  # one epoch at U: not yet
    # a healthy MART run passes through U on its way down with 40 % accuracy: not a collapse
    passing = [rec(1, val=None, clean=0.6), rec(2, val=None, clean=0.7),
               rec(3, loss=u, val=None, clean=0.4), rec(4, loss=u, val=None, clean=0.45)]
    assert kinds(passing, uniform=u) == []


def test_a_sudden_drop_of_the_training_adversary_accuracy() -> None:
    assert kinds([rec(1, adv=0.8), rec(2, adv=0.8 - ADV_DROP - 0.01)]) == [("adv_drop", 2)]
    assert kinds([rec(1, adv=0.8), rec(2, adv=0.8 - ADV_DROP + 0.05)]) == []


def test_an_exploding_or_non_finite_loss_is_a_divergence() -> None:
    assert kinds([rec(1, loss=EXPLODE_FACTOR * U * 1.01)]) == [("diverged", 1)]
    assert kinds([rec(1, loss=EXPLODE_FACTOR * U * 0.99)]) == []
    assert kinds([rec(1), rec(2, loss=math.inf)]) == [("diverged", 2)]


def test_a_plateau_at_chance_after_n_epochs_and_each_kind_once() -> None:
    chance = chance_level(K)
    stuck = [rec(e, val=chance - 0.01, top=0.5) for e in range(1, 7)]
    assert kinds(stuck, plateau=4) == [("plateau", 4)]
    assert kinds(stuck[:3], plateau=4) == []
    left = [*stuck[:2], rec(3, val=chance + 0.05), *stuck[3:]]
    assert kinds(left, plateau=4) == []
    diverging = [rec(e, loss=1e3 * e) for e in range(1, 5)]
    assert kinds(diverging) == [("diverged", 1)]  # reported once, at the first epoch


def test_the_line_names_the_epoch_and_a_remedy_the_study_selected() -> None:
    cfg = TrainConfig(method="mart", lr=0.05).resolved()
    f = scan([rec(1), rec(2, adv=0.1)], num_classes=K, uniform_loss=U, plateau_epochs=10)
    line = guard_line(f, cfg)
    assert "\n" not in line and line.startswith("epoch 2: training became unstable")
    assert "--lr 0.02" in line and "the study selected 0.02 for mart on digits" in line
    spat = TrainConfig(method="spat", cosine_scale=32.0).resolved()
    p = scan([rec(e, val=0.1, top=0.3) for e in range(1, 11)], num_classes=K, uniform_loss=U,
             plateau_epochs=10)
    assert "--cosine-scale" in guard_line(p, spat) and "--self-paced-after" in guard_line(p, spat)


# ------------------------------------------------------------------------ committed runs
def _cell(study: str, variant: str, seed: int) -> Path:
    run = RESULTS / study / study.split("_")[0] / variant / f"seed{seed}"
    if not (run / "metrics.jsonl").is_file():
        pytest.skip(f"{run} is not committed")
    return run


def test_the_committed_mart_collapse_is_found_and_the_selected_runs_are_not() -> None:
    """Issue 23's example: MART on the digits at lr 0.05, seed 101, sat at ln 10 − ln 0.9001
    for its last 10 epochs; at the selected lr 0.02 (table 1, 5 seeds) no method is flagged."""
    found = run_findings(_cell("digits_tuning", "mart_lr0.05", 101))
    assert {f.kind for f in found} == {"adv_drop", "collapsed"}
    assert any(f.kind == "collapsed" and f.epoch <= 23 for f in found)
    for method in ("pgd_at", "trades", "mart", "spat"):
        for seed in range(5):
            assert run_findings(_cell("digits_main", method, seed)) == [], (method, seed)


def test_spat_at_a_large_scale_is_a_plateau() -> None:
    found = run_findings(_cell("digits_sensitivity", "s16", 100))
    assert [(f.kind, f.epoch) for f in found] == [("plateau", 10)]


# ----------------------------------------------------------------------------- training
def test_a_healthy_run_is_not_flagged(tmp_path: Path, capsys) -> None:
    assert main(["train", *TINY, "--epochs", "2", "--out-dir", str(tmp_path),
                 "--name", "ok"]) == 0
    out = capsys.readouterr()
    assert "warning: epoch" not in out.out + out.err
    records = [json.loads(x) for x in (tmp_path / "ok" / "metrics.jsonl").read_text()
               .splitlines()]
    assert all("guard" not in r and 0 < r["val_clean_top_share"] <= 1 for r in records)
    assert json.loads((tmp_path / "ok" / "summary.json").read_text())["guard"] == []


def test_a_forced_divergence_is_one_line_and_recorded(tmp_path: Path, capsys) -> None:
    assert main(["train", *TINY, "--epochs", "1", "--lr", "1000", "--out-dir", str(tmp_path),
                 "--name", "big"]) == 0
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if "training diverged" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: epoch 1: training diverged")
    assert "remedy: lower --lr (try --lr 0.05" in lines[0]
    rec1 = json.loads((tmp_path / "big" / "metrics.jsonl").read_text())
    assert [g["kind"] for g in rec1["guard"]] == ["diverged"]
    summary = json.loads((tmp_path / "big" / "summary.json").read_text())
    assert summary["guard"] == rec1["guard"]
    assert "guard: epoch 1: diverged" in out.out  # the printed summary says it too


def test_on_collapse_stop_exits_2_and_keeps_the_good_checkpoints(tmp_path: Path, capsys
                                                                  ) -> None:
    run = tmp_path / "r"
    assert main(["train", *TINY, "--epochs", "2", "--out-dir", str(tmp_path), "--name",
                 "r"]) == 0
    capsys.readouterr()
    code = main(["train", "--resume", str(run), "--epochs", "3", "--lr", "1000",
                 "--on-collapse", "stop", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("spat: error: collapse guard: epoch 3: "
                                               "training diverged"), err
    assert f"spat train --resume {run} --lr 0.05" in err[0]
    root = run / "checkpoints"
    assert ckpt.read_pointer(root, "last") == "epoch_0002"
    for which in ("last", "best"):  # loadable: the loader refuses NaN/inf weights
        weights = ckpt.load_weights(root / ckpt.read_pointer(root, which))
        assert all(bool(w.isfinite().all()) for w in weights.values() if w.is_floating_point())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[2]["guard"][0]["kind"] == "diverged"
    # the remedy works: resuming at the suggested lr retrains epoch 3 from epoch 2
    assert main(["train", "--resume", str(run), "--lr", "0.05", "--on-collapse", "warn",
                 "--no-progress"]) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and "guard" not in records[2]

"""Records and logs: TensorBoard event files mirror metrics.jsonl (and eval results), ``-q/-v``,
the final test's status line, and ``--which`` errors that say what exists."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from spat.cli import main

TINY = ["--dataset", "digits", "--train-subset", "200", "--val-size", "64", "--steps", "2",
        "--val-steps", "1", "--test-steps", "1", "--test-subset", "50", "--batch-size", "50",
        "--device", "cpu", "--no-progress"]


def _one_thread(fn):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(n)


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0,
                                                                    "tensors": 0})
    ea.Reload()
    return ea


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    out = tmp_path_factory.mktemp("runs")
    assert _one_thread(lambda: main(["train", *TINY, "--epochs", "2", "--tensorboard",
                                     "--out-dir", str(out), "--name", "tb"])) == 0
    return out / "tb"


def test_tensorboard_scalars_equal_metrics_jsonl(tb_run: Path) -> None:
    records = _records(tb_run)
    assert [r["epoch"] for r in records] == [1, 2]
    assert json.loads((tb_run / "config.json").read_text())["tensorboard"] is True
    ea = _events(tb_run)
    tags = set(ea.Tags()["scalars"])
    # pgd_at logs its loss, clean and adversarial accuracy and one loss part (loss_adv)
    expected = {"lr": "lr", "train/loss": "train_loss", "train/adv_acc": "train_adv_acc",
                "train/images_per_s": "train_images_per_s", "train/seconds": "train_seconds",
                "val/clean_acc": "val_clean_acc", "val/robust_acc": "val_robust_acc",
                "val/seconds": "val_seconds", "val/clean_top_share": "val_clean_top_share"}
    assert set(expected) <= tags
    assert records[0]["train_loss_adv"] is not None
    expected["train/loss_adv"] = "train_loss_adv"
    if records[0]["train_clean_acc"] is not None:  # pgd_at trains on adversarial inputs only
        expected["train/clean_acc"] = "train_clean_acc"
    assert tags == set(expected)  # nothing else, nothing missing
    for tag, field in expected.items():
        events = ea.Scalars(tag)
        assert [e.step for e in events] == [1, 2], tag
        for e, r in zip(events, records, strict=True):
            assert e.value == pytest.approx(r[field], rel=1e-6, abs=1e-7), tag  # float32
    # the validation adversarial confusion matrix as an image, one per epoch
    assert ea.Tags()["images"] == ["val/adv_confusion"]
    images = ea.Images("val/adv_confusion")
    assert [i.step for i in images] == [1, 2] and images[0].width > 100
    assert images[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_tensorboard_without_duplicates(tb_run: Path, tmp_path: Path) -> None:
    """A run killed after writing epoch 3's events but before its checkpoint: resuming purges
    those events (purge_step) so each epoch appears once, with the values of metrics.jsonl."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "tb"
    shutil.copytree(tb_run, run)
    stale = SummaryWriter(str(run / "tensorboard"))
    stale.add_scalar("train/loss", 999.0, 3)  # the interrupted epoch 3
    stale.close()
    assert _one_thread(lambda: main(["train", "--resume", str(run), "--epochs", "3",
                                     "--no-progress"])) == 0
    ea = _events(run)
    loss = ea.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["train_loss"] for r in _records(run)],
                                                    rel=1e-6)
    assert 999.0 not in [e.value for e in loss]


def test_eval_tensorboard_writes_into_the_run(tb_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "tb"
    shutil.copytree(tb_run, run)
    assert _one_thread(lambda: main(["eval", str(run), "--attacks", "fgsm", "--n-examples", "40",
                                     "--sanity-examples", "0", "--no-progress", "--device",
                                     "cpu", "--tensorboard"])) == 0
    report = json.loads((run / "eval" / "report.json").read_text())
    ea = _events(run)
    step = report["epoch"]
    assert ea.Scalars("eval/clean_acc")[0].step == step
    assert ea.Scalars("eval/clean_acc")[0].value == pytest.approx(report["clean_acc"])
    assert ea.Scalars("eval/FGSM")[0].value == pytest.approx(report["attacks"][0]["accuracy"])
    assert ea.Scalars("eval/worst_case")[0].value == pytest.approx(report["robust_acc"])
    assert "train/loss" in ea.Tags()["scalars"]  # the same run's folder


def test_tensorboard_missing_is_one_line_and_writes_nothing(tmp_path: Path, monkeypatch,
                                                            capsys) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    code = main(["train", *TINY, "--epochs", "1", "--tensorboard", "--out-dir",
                 str(tmp_path / "runs"), "--name", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("spat: error: --tensorboard needs the tensorboard package"), err
    assert not (tmp_path / "runs" / "x").exists()


def test_scalar_tags_mapping() -> None:
    from spat.utils.tensorboard import scalar_tags

    rec = {"epoch": 3, "lr": 0.1, "train_loss": 1.5, "train_clean_acc": None, "train_kl": 0.25,
           "val_robust_acc": 0.5, "val_attack": "PGD-10", "val_adv_confusion": [[1]],
           "flag": True, "bad": float("nan")}
    assert scalar_tags(rec) == {"lr": 0.1, "train/loss": 1.5, "train/kl": 0.25,
                                "val/robust_acc": 0.5}


# --------------------------------------------------------------------------- -q / -v


def test_quiet_hides_status_keeps_results_verbose_after_subcommand(tmp_path: Path,
                                                                   capsys) -> None:
    out = str(tmp_path / "runs")
    progress = [a for a in TINY if a != "--no-progress"]
    assert _one_thread(lambda: main(["-q", "train", *progress, "--epochs", "2", "--out-dir",
                                     out, "--name", "q"])) == 0
    text = capsys.readouterr().out
    assert not [ln for ln in text.splitlines() if ln.startswith(("epoch ", "test:"))]
    assert "test  clean accuracy" in text and "run directory:" in text  # the result stays
    # normal: one plain line per epoch and the final test's status line
    assert _one_thread(lambda: main(["train", *progress, "--epochs", "2", "--out-dir", out,
                                     "--name", "n"])) == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2
    assert "test: clean and PGD-1 on 50 examples, best checkpoint epoch_000" in text
    # -q after the subcommand works as well; eval keeps its table under -q
    assert main(["eval", str(tmp_path / "runs" / "n"), "--attacks", "fgsm", "--n-examples",
                 "20", "--sanity-examples", "0", "--device", "cpu", "-q"]) == 0
    text = capsys.readouterr().out
    assert "FGSM" in text and "wrote " in text
    assert main(["eval", str(tmp_path / "runs" / "n"), "--attacks", "fgsm", "--n-examples",
                 "20", "--sanity-examples", "0", "--device", "cpu", "--no-progress"]) == 0
    assert "reusing the saved result" in capsys.readouterr().out  # status shown normally
    assert main(["eval", str(tmp_path / "runs" / "n"), "--attacks", "fgsm", "--n-examples",
                 "20", "--sanity-examples", "0", "--device", "cpu", "-q"]) == 0
    assert "reusing" not in capsys.readouterr().out
    # -v adds debug detail (what is computed, with which settings); the default does not
    base = ["eval", str(tmp_path / "runs" / "n"), "--attacks", "fgsm", "--n-examples", "20",
            "--sanity-examples", "0", "--device", "cpu", "--no-progress", "--no-resume"]
    assert main([*base, "-v"]) == 0
    assert "FGSM: computing on 20 examples (rank 0 of 1), settings {" in capsys.readouterr().out
    assert main(base) == 0
    assert "computing on" not in capsys.readouterr().out


def test_verbosity_levels() -> None:
    import logging

    from spat.cli import _verbosity, build_parser
    from spat.utils.log import configure, logger

    parser = build_parser()
    assert _verbosity(parser.parse_args(["-q", "eval", "r"])) == -1
    assert _verbosity(parser.parse_args(["eval", "r", "-v"])) == 1
    assert _verbosity(parser.parse_args(["-v", "train", "-v"])) == 2
    assert _verbosity(parser.parse_args(["train"])) == 0
    for v, level in ((-3, logging.WARNING), (-1, logging.WARNING), (0, logging.INFO),
                     (1, logging.DEBUG), (5, logging.DEBUG)):
        configure(v)
        assert logger.level == level
        assert sum(1 for h in logger.handlers if type(h).__name__ == "_StdoutHandler") == 1
    configure(0)


# --------------------------------------------------------------------------- --which


def test_which_errors_name_what_exists(tb_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "w"
    shutil.copytree(tb_run, run)

    def error(argv: list[str]) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    for cmd in (["eval", str(run)], ["analyze", str(run)], ["compare", str(run), str(run)]):
        e = error([*cmd, "--which", "latest"])
        assert e == ("spat: error: unknown checkpoint 'latest' for --which (valid: best, last, "
                     "epoch_NNNN)"), e
    ckpts = run / "checkpoints"
    have = sorted(p.name for p in ckpts.iterdir() if p.is_dir())
    best = json.loads((ckpts / "best.json").read_text())["tag"]
    # a checkpoint that was never kept
    e = error(["eval", str(run), "--which", "epoch_0099"])
    assert f"checkpoint epoch_0099 not found in {ckpts} (available: {', '.join(have)})" in e
    # the best checkpoint was pruned or deleted by hand: the pointer names a missing folder
    shutil.rmtree(ckpts / best)
    left = ", ".join(t for t in have if t != best) or "none"
    for cmd in (["eval", str(run)], ["analyze", str(run)]):
        e = error([*cmd, "--which", "best"])
        assert f"best.json names checkpoint {best}, which is missing" in e, e
        assert f"available: {left}" in e, e

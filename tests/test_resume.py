"""Exact resume: a run killed with SIGKILL at arbitrary moments, resumed each time with
``--resume``, ends with bitwise the same weights and the same metrics.jsonl records (timing
fields excluded) as an uninterrupted run; a finished run resumed just re-reports; a NaN loss
stops the run naming the epoch and step and keeps the last good checkpoint."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spat import checkpoint as ckpt
from spat.cli import main
from spat.train.loop import TIMING_FIELDS, truncate_metrics
from tests.conftest import REPO

# 256 training images, batch 32: 8 steps per epoch, 6 epochs; a PGD-2 training attack.
ARGS = ["--dataset", "digits", "--train-subset", "256", "--epochs", "6", "--val-size", "64",
        "--steps", "2", "--val-steps", "1", "--test-steps", "1", "--test-subset", "64",
        "--batch-size", "32", "--no-progress", "--deterministic"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO),
                                         env.get("PYTHONPATH", "")])
    # one thread: the same kernels in every process (and no oversubscription on shared CPUs)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _spat(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "spat", "train", *args], cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _records(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for k in TIMING_FIELDS:
            rec.pop(k)
        out.append(rec)
    return out


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "epoch_0006" / ckpt.WEIGHTS))


def _summary(run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text())
    s.pop("train_seconds_this_session")
    s.pop("run_dir")
    s["checkpoint"] = Path(s["checkpoint"]).name
    for k in TIMING_FIELDS:
        s["last_epoch"].pop(k)
    return s


def _lines(run: Path) -> int:
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _kill_when(proc: subprocess.Popen, ready, extra: float, limit: float = 60.0) -> bool:
    """SIGKILL ``proc`` ``extra`` seconds after ``ready()`` holds; False if it ended first."""
    t0 = time.monotonic()
    while proc.poll() is None and not ready() and time.monotonic() - t0 < limit:
        time.sleep(0.005)
    time.sleep(extra)
    if proc.poll() is not None:
        return False
    proc.kill()
    proc.wait()
    return True


@pytest.fixture
def one_thread():
    """Run in-process training on one thread (several threads crawl on busy shared CPUs)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path: Path, capsys,
                                                        one_thread) -> None:
    rng = random.Random(1234)
    out = tmp_path / "runs"
    ref, run = out / "ref", out / "killed"
    p = _spat(*ARGS, "--out-dir", str(out), "--name", "ref")
    log = p.communicate(timeout=120)[0]
    assert p.returncode == 0, log

    # Kill points: right after the run directory appears (no checkpoint yet), right after
    # epoch 2's metrics line is appended (between the metrics write and the checkpoint), and at
    # a random moment of epoch 4.
    epoch_seconds = max(r["train_seconds"] + r["val_seconds"]
                        for r in map(json.loads, (ref / "metrics.jsonl").read_text().splitlines()))
    kills = [
        lambda: (run / "config.json").exists(),
        lambda: _lines(run) >= 2,
        lambda: _lines(run) >= 3,
    ]
    extras = [0.0, 0.0, rng.uniform(0.0, epoch_seconds)]
    killed, resumed_from_checkpoint = 0, 0
    for ready, extra in zip(kills, extras, strict=True):
        args = ["--resume", str(run), "--no-progress"] if run.exists() else [
            *ARGS, "--out-dir", str(out), "--name", "killed"]
        p = _spat(*args)
        killed += _kill_when(p, ready, extra)
        text = p.stdout.read() if p.stdout else ""
        resumed_from_checkpoint += "from epoch_" in text
        if p.returncode == 0:  # finished before the kill: nothing left to interrupt
            break
    assert killed >= 2
    p = _spat("--resume", str(run), "--no-progress")
    log = p.communicate(timeout=120)[0]
    assert p.returncode == 0, log
    resumed_from_checkpoint += "from epoch_" in log
    assert resumed_from_checkpoint >= 1, log

    a, b = _final_weights(ref), _final_weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise
    assert _records(run) == _records(ref)
    assert _summary(run) == _summary(ref)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]

    # Resuming the finished run only reports again (in-process; restore the global flag that
    # --deterministic sets).
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    was = torch.are_deterministic_algorithms_enabled()
    try:
        assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    finally:
        torch.use_deterministic_algorithms(was)
    text = capsys.readouterr().out
    assert "already finished" in text and "test  clean accuracy" in text
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_truncate_metrics_drops_redone_and_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"epoch": e, "train_loss": 1.0 / e}, sort_keys=True) for e in (1, 2, 3)]
    # epoch 3 was appended, the process died before its checkpoint; the redo appended again
    # and died mid-line
    path.write_text("\n".join(lines) + "\n" + lines[2] + "\n" + lines[2][:7])
    kept = truncate_metrics(path, 2)
    assert [r["epoch"] for r in kept] == [1, 2]
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
    assert truncate_metrics(path, 0) == [] and path.read_text() == ""


# --------------------------------------------------------------------------- NaN / inf loss


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_naming_epoch_and_step(tmp_path: Path, monkeypatch, capsys,
                                                     one_thread, bad: float) -> None:
    """The method returns a NaN (or inf) loss at epoch 2, step 3: exit code 2, a one-line error
    naming both, the checkpoint of epoch 1 kept and pointed to, no metrics for epoch 2."""
    import spat.build

    real = spat.build.method_for
    steps_per_epoch = 4  # 64 training images, batch 16

    def poisoned(cfg):
        method = real(cfg)
        calls = {"n": 0}

        def call(model, x, y, generator=None):
            out = method(model, x, y, generator=generator)
            if calls["n"] == steps_per_epoch + 2:  # epoch 2 (1-based), step 3
                out.loss = out.loss * bad
            calls["n"] += 1
            return out

        return call

    monkeypatch.setattr(spat.build, "method_for", poisoned)
    out = tmp_path / "runs"
    # a fixed fast path: no calibration steps (spat.train.calibrate) call the counted method
    code = main(["train", "--train-subset", "64", "--val-size", "16", "--batch-size", "16",
                 "--epochs", "3", "--steps", "1", "--val-steps", "1", "--test-subset", "16",
                 "--out-dir", str(out), "--name", "nan", "--no-progress", "--amp", "off",
                 "--channels-last", "off"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spat: error: non-finite training loss"), err
    assert "epoch 2, step 3" in err[0] and "last good checkpoint" in err[0]
    root = out / "nan" / "checkpoints"
    assert ckpt.read_pointer(root, "last") == "epoch_0001"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["epoch_0001"]
    assert [json.loads(x)["epoch"] for x in (out / "nan" / "metrics.jsonl").read_text()
            .splitlines()] == [1]
    assert not (out / "nan" / "summary.json").exists()

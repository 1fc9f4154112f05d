"""Reliability under a hostile user (issue 15): wrong-typed configs, corrupted state.pt contents,
NaN weights, the top-level error line and --debug, resume overrides, the run-directory lock,
output paths, devices, and "nothing written before a refusal" in eval/analyze/compare."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import spat.build
import spat.train.folder
from spat import checkpoint as ckpt
from spat.cli import main
from spat.errors import SpatError
from spat.utils.lock import LOCK_NAME, FolderClaim, FolderLock
from tests.conftest import train_finished_run

TINY = ["--train-subset", "32", "--val-size", "16", "--epochs", "1", "--steps", "1",
        "--val-steps", "1", "--test-steps", "1", "--test-subset", "16", "--batch-size", "16",
        "--no-progress"]
TINY_TOML = {"train_subset": 32, "val_size": 16, "epochs": 1, "steps": 1, "val_steps": 1,
             "test_steps": 1, "test_subset": 16, "batch_size": 16}
FAST_EVAL = ["--attacks", "fgsm", "--sanity-examples", "0", "--n-examples", "16",
             "--batch-size", "16", "--no-progress"]
FAST_ANALYZE = ["--max-examples", "16", "--steps", "1", "--batch-size", "16"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One tiny finished digits run (trained once for this module; tests work on copies)."""
    return train_finished_run(tmp_path_factory, TINY)




def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the md5 of each file ("dir" for folders)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else
                                        hashlib.md5(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def refused(capsys, argv: list[str], *words: str) -> str:
    """``spat argv`` exits 2 with one line ``spat: error: ...`` holding ``words``."""
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith("spat: error: "), err
    assert "Traceback" not in err[0]
    for w in words:
        assert w in err[0], (w, err[0])
    return err[0]


# ----------------------------------------------------------------------------- typed configs
@pytest.mark.parametrize(("line", "field", "expected"), [
    ('lr = "x"', "lr", "a number"),
    ('epochs = "3"', "epochs", "an integer"),
    ("eps = [1]", "eps", "a number"),
    ("data_dir = 5", "data_dir", "a string"),
    ("epochs = 2.5", "epochs", "an integer"),
    ('deterministic = "yes"', "deterministic", "true or false"),
    ("epochs = true", "epochs", "an integer"),
    ("name = 5", "name", "a string"),
    ("lr = nan", "lr", "a finite number"),
    ('eps = "8/0"', "eps", "a fraction"),
])
def test_toml_of_the_wrong_type_is_one_line_and_writes_nothing(tmp_path: Path, capsys,
                                                              line: str, field: str,
                                                              expected: str) -> None:
    cfg = tmp_path / "bad.toml"
    # tiny settings (a bug that let the file through must not start a long run) + the bad line
    tiny = {k: v for k, v in TINY_TOML.items() if k != field}
    cfg.write_text("".join(f"{k} = {v}\n" for k, v in tiny.items()) + line + "\n")
    out = tmp_path / "runs"
    refused(capsys, ["train", "--config", str(cfg), "--out-dir", str(out)],
            str(cfg), f"field {field!r}", expected)
    assert not out.exists()


def test_toml_fraction_string_is_accepted_like_the_command_line(tmp_path: Path) -> None:
    from spat.config import config_from_dict, load_config_file

    cfg = tmp_path / "ok.toml"
    cfg.write_text('eps = "8/255"\nstep_size = "2/255"\n')
    c = config_from_dict(load_config_file(cfg), source=str(cfg)).resolved()
    assert c.eps == 8 / 255 and c.step_size == 2 / 255


def test_check_value_rules() -> None:
    from spat.validation import check_value

    def bad(v, t):
        with pytest.raises(SpatError, match=r"f: field 'k(\[1\])?' must be"):
            check_value(v, t, where="f", field="k")

    assert check_value(3, float, where="f", field="k") == 3
    assert check_value(None, int | None, where="f", field="k") is None
    assert check_value([1, 2], tuple[int, ...], where="f", field="k") == (1, 2)
    assert check_value("1/4", float, where="f", field="eps") == 0.25
    for v, t in [(True, int), (2.5, int), ("3", int), (1, bool), ("yes", bool), (5, str),
                 (float("inf"), float), (True, float), ("1/4", float), (None, int),
                 ([1, "a"], tuple[int, ...]), ({}, list)]:
        bad(v, t)


# ----------------------------------------------------------------------------- top level
def test_unexpected_exception_is_one_line_exit_1_and_debug_shows_it(monkeypatch, capsys
                                                                    ) -> None:
    import spat.evaluation.command as ev

    def boom(args):
        raise IndexError("list index out of range")

    real = ev.add_parsers

    def add(sub):
        real(sub)
        sub.choices["eval"].set_defaults(func=boom)

    monkeypatch.setattr(ev, "add_parsers", add)
    assert main(["eval", "somewhere"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["spat: error: internal error: IndexError: list index out of range (run with "
                   "--debug for the traceback)"]
    with pytest.raises(IndexError):
        main(["eval", "somewhere", "--debug"])
    with pytest.raises(IndexError):
        main(["--debug", "eval", "somewhere"])


# ----------------------------------------------------------------------------- NaN weights
def _poison_weights(run: Path) -> None:
    for folder in (run / "checkpoints").iterdir():
        if folder.is_dir():
            w = load_file(str(folder / ckpt.WEIGHTS))
            name = next(k for k, v in w.items() if v.is_floating_point())
            w[name] = w[name].clone()
            w[name].view(-1)[0] = float("nan")
            save_file(w, str(folder / ckpt.WEIGHTS))


@pytest.mark.parametrize("command", ["resume", "eval", "analyze", "compare", "export"])
def test_nan_weights_are_refused_everywhere(run: Path, tmp_path: Path, capsys,
                                            command: str) -> None:
    _poison_weights(run)
    before = snapshot(run)
    argv = {"resume": ["train", "--resume", str(run), "--epochs", "2", "--no-progress"],
            "eval": ["eval", str(run), *FAST_EVAL],
            "analyze": ["analyze", str(run), *FAST_ANALYZE],
            "compare": ["compare", str(run), str(run), *FAST_ANALYZE, "--out",
                        str(tmp_path / "cmp")],
            "export": ["export", str(run), "--format", "portable", "--out",
                       str(tmp_path / "cmp")]}[command]
    refused(capsys, argv, "non-finite", "NaN", ckpt.WEIGHTS)
    assert snapshot(run) == before
    assert not (tmp_path / "cmp").exists()


def test_load_weights_refuses_inf_naming_the_tensor(tmp_path: Path) -> None:
    save_file({"a": torch.zeros(3), "b": torch.tensor([1.0, float("inf")])},
              str(tmp_path / ckpt.WEIGHTS))
    with pytest.raises(SpatError, match="tensor 'b' holds 1 non-finite"):
        ckpt.load_weights(tmp_path)


def test_eval_stops_when_clean_outputs_are_not_finite() -> None:
    from spat.evaluation import EvalOptions, evaluate

    class NaNNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x.flatten(1)) * float("nan")

    x, y = torch.rand(8, 1, 2, 2), torch.arange(8) % 3
    with pytest.raises(SpatError, match="not finite .*for 8 of 8 examples"):
        evaluate(NaNNet(), (x, y), EvalOptions(eps=0.1, attacks="fgsm", sanity_examples=0))


# ----------------------------------------------------------------------------- state.pt
def _edit_state(run: Path, fn) -> None:
    folder = ckpt.resolve(run, "best")
    state = torch.load(folder / ckpt.STATE, weights_only=True)
    fn(state)
    torch.save(state, folder / ckpt.STATE)


@pytest.mark.parametrize(("edit", "argv", "words"), [
    (lambda s: s["config"].update(eps="x"), "eval", ["field 'eps'", "a number"]),
    (lambda s: s["config"].update(eps="x"), "analyze", ["field 'eps'"]),
    (lambda s: s["config"].update(epochs=2.5), "compare", ["field 'epochs'"]),
    (lambda s: s.pop("optimizer"), "resume", ["missing field 'optimizer'"]),
    (lambda s: s["rng"].pop("torch"), "resume", ["rng", "missing field 'torch'"]),
    (lambda s: s.update(epoch="3"), "resume", ["field 'epoch'", "an integer"]),
    (lambda s: s.update(epoch=4), "resume", ["field 'epoch' says 5", "checkpoint of epoch 1"]),
    (lambda s: s.update(num_classes=1.5), "eval", ["field 'num_classes'"]),
    (lambda s: s["optimizer"]["param_groups"][0].update(params=[0]), "resume",
     ["optimizer or random-generator state is corrupted"]),
])
def test_state_contents_of_the_wrong_type_are_refused(run: Path, tmp_path: Path, capsys, edit,
                                                      argv: str, words: list[str]) -> None:
    _edit_state(run, edit)
    before = snapshot(run)
    full = {"resume": ["train", "--resume", str(run), "--epochs", "2", "--no-progress"],
            "eval": ["eval", str(run), *FAST_EVAL],
            "analyze": ["analyze", str(run), *FAST_ANALYZE],
            "compare": ["compare", str(run), str(run), *FAST_ANALYZE, "--out",
                        str(tmp_path / "c")]}[argv]
    refused(capsys, full, ckpt.STATE, *words)
    assert snapshot(run) == before


def test_eval_accepts_a_state_without_optimizer(run: Path, capsys) -> None:
    _edit_state(run, lambda s: s.pop("optimizer"))
    assert main(["eval", str(run), *FAST_EVAL]) == 0


@pytest.mark.parametrize("data", [b"\x80\x02.", b"M", b"", b"\x80\x04\x95", b"PK\x03\x04"])
def test_garbage_state_bytes_are_one_line(run: Path, capsys, data: bytes) -> None:
    (ckpt.resolve(run, "best") / ckpt.STATE).write_bytes(data)
    refused(capsys, ["eval", str(run), *FAST_EVAL], ckpt.STATE)


# ----------------------------------------------------------------------------- resume
def test_resume_with_overrides_applies_and_records_them(run: Path, capsys) -> None:
    assert main(["train", "--resume", str(run), "--epochs", "2", "--lr", "0.01",
                 "--schedule", "constant", "--no-progress"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["epochs"], cfg["lr"], cfg["schedule"]) == (2, 0.01, "constant")
    records = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["from_epoch"] == 1
    assert records[0]["changes"] == {"epochs": {"from": 1, "to": 2},
                                     "lr": {"from": 0.05, "to": 0.01},
                                     "schedule": {"from": "piecewise", "to": "constant"}}
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[1]["lr"] == pytest.approx(0.01)  # constant schedule at the new lr
    state = torch.load(ckpt.resolve(run, "last") / ckpt.STATE, weights_only=True)
    assert state["config"]["lr"] == 0.01
    assert "lr 0.05 → 0.01" in capsys.readouterr().out


def test_resume_refuses_settings_that_define_the_run(run: Path, capsys) -> None:
    before = snapshot(run)
    refused(capsys, ["train", "--resume", str(run), "--method", "trades", "--seed", "3"],
            "cannot change", "method ('pgd_at' → 'trades')", "seed (0 → 3)")
    refused(capsys, ["train", "--resume", str(run), "--epochs", "2", "--eps", "0.2"],
            "eps (0.1 → 0.2)")
    assert snapshot(run) == before


def test_resume_cannot_cut_below_the_trained_epochs(run: Path, capsys) -> None:
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    capsys.readouterr()
    before = snapshot(run)
    refused(capsys, ["train", "--resume", str(run), "--epochs", "1"],
            "to 1 epochs (--epochs): it has already trained 2")
    assert snapshot(run) == before


def test_nan_in_the_first_epoch_says_no_checkpoint_and_the_lr_remedy_works(
        tmp_path: Path, monkeypatch, capsys) -> None:
    real = spat.build.method_for
    calls = {"n": 0}

    def poisoned(cfg):
        method = real(cfg)

        def call(model, x, y, generator=None):
            out = method(model, x, y, generator=generator)
            if cfg.lr > 0.02:  # the remedy: a lower lr no longer diverges
                out.loss = out.loss * float("nan")
            calls["n"] += 1
            return out

        return call

    monkeypatch.setattr(spat.build, "method_for", poisoned)
    out = tmp_path / "runs"
    err = refused(capsys, ["train", *TINY, "--out-dir", str(out), "--name", "nan"],
                  "epoch 1, step 1", "no checkpoint was written yet",
                  f"spat train --resume {out / 'nan'} --lr 0.005 (a tenth of the current lr)")
    assert "last good checkpoint" not in err
    assert main(["train", "--resume", str(out / "nan"), "--lr", "0.01", "--no-progress"]) == 0
    assert ckpt.read_pointer(out / "nan" / "checkpoints", "last") == "epoch_0001"
    rec = json.loads((out / "nan" / "resumes.jsonl").read_text())
    assert rec["changes"] == {"lr": {"from": 0.05, "to": 0.01}} and rec["from_epoch"] == 0


# ----------------------------------------------------------------------------- locks
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_refuses_a_second_holder_and_takes_over_a_dead_ones(tmp_path: Path) -> None:
    with FolderLock(tmp_path, "the run") as first:
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(SpatError, match=f"in use: the run is being written by pid "
                                            f"{os.getpid()} on {socket.gethostname()}"):
            FolderLock(tmp_path, "the run").acquire()
        assert first.held
    assert not (tmp_path / LOCK_NAME).exists()
    dead = _dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    with FolderLock(tmp_path) as lock:  # a lock file nobody holds: its process is gone
        assert lock.took_over is not None and lock.took_over["pid"] == dead
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_held_by_another_process_refuses_train_resume(run: Path, capsys) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from spat.utils.lock import FolderLock; "
         f"FolderLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = snapshot(run)
        refused(capsys, ["train", "--resume", str(run), "--epochs", "2", "--no-progress"],
                f"{run} is in use", f"pid {holder.pid}")
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is taken over
    assert (run / LOCK_NAME).exists()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert not (run / LOCK_NAME).exists()


def test_new_run_racing_for_a_claimed_name_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "runs"
    (out / "x").mkdir(parents=True)  # another `spat train --name x` has just claimed it
    with FolderLock(out / "x", "the run"):
        refused(capsys, ["train", *TINY, "--out-dir", str(out), "--name", "x"],
                "in use", f"pid {os.getpid()}")
        assert [p.name for p in (out / "x").iterdir()] == [LOCK_NAME]


def test_second_eval_of_one_output_folder_is_refused(run: Path, capsys) -> None:
    with FolderClaim(run / "eval", "the evaluation output"):
        refused(capsys, ["eval", str(run), *FAST_EVAL], "in use", "evaluation output")
    assert not (run / "eval").exists()  # the claim created it, and removed it empty
    assert main(["eval", str(run), *FAST_EVAL]) == 0
    assert not (run / "eval" / LOCK_NAME).exists()


# ----------------------------------------------------------------------------- paths, devices
def test_existing_file_as_output_folder(run: Path, tmp_path: Path, capsys) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    refused(capsys, ["train", *TINY, "--out-dir", str(f)], "--out-dir", "existing file")
    refused(capsys, ["train", *TINY, "--out-dir", str(f / "sub")], "lies under")
    before = snapshot(run)
    refused(capsys, ["eval", str(run), *FAST_EVAL, "--out", str(f)], "--out")
    refused(capsys, ["analyze", str(run), *FAST_ANALYZE, "--out", str(f)], "--out")
    refused(capsys, ["compare", str(run), str(run), *FAST_ANALYZE, "--out", str(f)], "--out")
    assert snapshot(run) == before


@pytest.mark.parametrize("command", ["eval", "analyze", "compare"])
def test_unknown_device_is_one_line(run: Path, tmp_path: Path, capsys, command: str) -> None:
    argv = {"eval": ["eval", str(run), *FAST_EVAL],
            "analyze": ["analyze", str(run), *FAST_ANALYZE],
            "compare": ["compare", str(run), str(run), *FAST_ANALYZE, "--out",
                        str(tmp_path / "c")]}[command]
    before = snapshot(run)
    refused(capsys, [*argv, "--device", "foo"], "unknown device 'foo'", "cuda:N")
    assert snapshot(run) == before


def test_eval_eps_above_one_is_refused_before_writing(run: Path, capsys) -> None:
    refused(capsys, ["eval", str(run), *FAST_EVAL, "--eps", "1.5"], "eps must be in (0, 1]")
    assert not (run / "eval").exists()


def test_analyze_unknown_attack_writes_nothing(run: Path, capsys) -> None:
    before = snapshot(run)
    refused(capsys, ["analyze", str(run), *FAST_ANALYZE, "--attack", "foo"],
            "unknown attack 'foo'", "PGD-1")
    assert snapshot(run) == before


def test_compare_refusals_write_nothing_into_the_first_run(run: Path, tmp_path: Path,
                                                          capsys) -> None:
    other = tmp_path / "notarun"
    other.mkdir()
    before = snapshot(run)
    refused(capsys, ["compare", str(run), str(run), *FAST_ANALYZE, "--class", "foo",
                     "--out", str(tmp_path / "c")], "unknown class 'foo'")
    refused(capsys, ["compare", str(run), str(other), *FAST_ANALYZE, "--out",
                     str(tmp_path / "c")], "not a run directory")
    refused(capsys, ["compare", str(run), str(run), *FAST_ANALYZE, "--attack", "CW-9",
                     "--out", str(tmp_path / "c")], "unknown attack 'CW-9'")
    assert snapshot(run) == before
    assert not (tmp_path / "c").exists()


def test_compare_runs_whose_files_are_symlinks(run: Path, tmp_path: Path, capsys) -> None:
    linked = tmp_path / "runs" / "linked"  # every file a symlink into the run
    for src in run.rglob("*"):
        dst = linked / src.relative_to(run)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src.resolve())
    alias = tmp_path / "runs" / "alias"  # the run folder itself a symlink
    alias.symlink_to(run.resolve(), target_is_directory=True)
    code = main(["compare", str(linked), str(alias), *FAST_ANALYZE, "--out",
                 str(tmp_path / "cmp")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err
    assert (tmp_path / "cmp" / "comparison.json").is_file()


# ----------------------------------------------------------------------------- --download
def test_failed_download_removes_what_it_wrote_and_keeps_what_was_there(tmp_path: Path,
                                                                       monkeypatch) -> None:
    import torchvision.datasets as tvd

    from spat.data.mnist import download_mnist

    root = tmp_path / "data"
    (root / "MNIST" / "raw").mkdir(parents=True)
    mine = root / "MNIST" / "raw" / "my-notes.txt"
    mine.write_text("kept")

    class Offline:  # what torchvision leaves when the network drops mid-way
        def __init__(self, root: str, train: bool, download: bool) -> None:
            raw = Path(root) / "MNIST" / "raw"
            (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b partial")
            (raw / "train-images-idx3-ubyte").write_bytes(b"\x00" * 1000)  # extracted
            (Path(root) / "MNIST" / "processed").mkdir()
            raise RuntimeError("Error downloading train-labels-idx1-ubyte.gz")

    monkeypatch.setattr(tvd, "MNIST", Offline)
    with pytest.raises(SpatError, match="download of mnist .* failed"):
        download_mnist(root, "mnist")
    assert snapshot(root) == {"MNIST": "dir", "MNIST/raw": "dir",
                              "MNIST/raw/my-notes.txt": hashlib.md5(b"kept").hexdigest()}


def test_run_creation_race_keeps_the_two_runs_apart(tmp_path: Path, monkeypatch,
                                                   capsys) -> None:
    """The issue's race: both processes pass the existence check, then (git is slow) the other
    one creates the run and trains. The late one must refuse, not move the other run aside or
    write into it."""
    out = tmp_path / "runs"
    real_env = spat.train.folder.environment
    calls: dict[str, Any] = {"n": 0}

    def slow_git(device):
        calls["n"] += 1
        if calls["n"] == 1:  # meanwhile, "the other process" trains a run of the same name
            assert main(["train", *TINY, "--seed", "1", "--out-dir", str(out),
                         "--name", "x"]) == 0
            calls["other"] = snapshot(out / "x")
        return real_env(device)

    monkeypatch.setattr(spat.train.folder, "environment", slow_git)
    capsys.readouterr()
    refused(capsys, ["train", *TINY, "--out-dir", str(out), "--name", "x"], "already exists")
    assert calls["other"] and snapshot(out / "x") == calls["other"]  # the other run untouched
    assert json.loads((out / "x" / "config.json").read_text())["seed"] == 1
    assert [json.loads(x)["epoch"] for x in (out / "x" / "metrics.jsonl").read_text()
            .splitlines()] == [1]


def test_two_resumes_of_one_run_do_not_interleave(run: Path, capsys) -> None:
    """The issue's case: a second `spat train --resume` while the first still trains stops at
    once; the first finishes alone (metrics epochs [1, 2, 3], no duplicates)."""
    first = subprocess.Popen(
        [sys.executable, "-m", "spat", "train", "--resume", str(run), "--epochs", "3",
         "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = 120.0
        t0 = time.monotonic()
        def holder() -> object:  # the record is written once the lock is held
            try:
                return json.loads((run / LOCK_NAME).read_text()).get("pid")
            except (OSError, ValueError):
                return None

        while holder() != first.pid and first.poll() is None:
            assert time.monotonic() - t0 < deadline
            time.sleep(0.02)
        assert first.poll() is None, "the first resume ended before it was seen holding the lock"
        refused(capsys, ["train", "--resume", str(run), "--epochs", "3", "--no-progress"],
                "is in use", f"pid {first.pid}")
        out = first.communicate(timeout=deadline)[0]
        assert first.returncode == 0, out
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert not (run / LOCK_NAME).exists()

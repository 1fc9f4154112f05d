"""Bad input to ``spat train`` (and ``spat eval``): one line ``spat: error: ...`` on stderr, exit
code 2, no partial run directory, and nothing overwritten unless --resume/--overwrite says so."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from spat import checkpoint as ckpt
from spat.cli import main
from tests.conftest import SHARED_DATA, missing_data_reason, train_finished_run

TINY = ["--train-subset", "32", "--val-size", "16", "--epochs", "1", "--steps", "1",
        "--val-steps", "1", "--test-steps", "1", "--test-subset", "16", "--batch-size", "16",
        "--no-progress"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny finished run on digits (trained once per module, copied by the cases)."""
    return train_finished_run(tmp_path_factory, TINY)


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the md5 of each file ("dir" for folders)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else
                                        hashlib.md5(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def _mnist_copy(tmp: Path) -> Path:
    raw = SHARED_DATA / "MNIST" / "raw"
    if not raw.is_dir():
        pytest.skip(missing_data_reason("MNIST"))
    dst = tmp / "data" / "MNIST" / "raw"
    dst.mkdir(parents=True)
    for f in raw.glob("*.gz"):
        shutil.copy(f, dst / f.name)
    return tmp / "data"


def _corrupt_mnist(tmp: Path) -> Path:
    root = _mnist_copy(tmp)
    f = root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    data = bytearray(f.read_bytes())
    data[100] ^= 0xFF
    f.write_bytes(bytes(data))
    return root


def _copy_run(run: Path, tmp: Path) -> Path:
    dst = tmp / "runs" / run.name
    shutil.copytree(run, dst)
    return dst


def _edit_config(run: Path, **changes: object) -> None:
    cfg = json.loads((run / "config.json").read_text())
    cfg.update(changes)
    (run / "config.json").write_text(json.dumps(cfg))


def _crafted_state(run: Path, tmp: Path) -> None:
    import os

    class Touch:
        def __reduce__(self):
            return (os.system, (f"touch {tmp / 'pwned'}",))

    folder = ckpt.resolve(run, "last")
    torch.save({"epoch": 0, "x": Touch()}, folder / ckpt.STATE)


Setup = Callable[[Path, Path], list[str]]  # (tmp, finished run) -> argv after "spat"

# name -> (setup giving the argv, words the error line must contain)
CASES: dict[str, tuple[Setup, str]] = {
    "unknown dataset": (lambda t, r: ["train", "--dataset", "imagenet"], "unknown dataset"),
    "unknown model": (lambda t, r: ["train", "--model", "vgg16"], "unknown model"),
    "unknown method": (lambda t, r: ["train", "--method", "fast_at"], "unknown method"),
    "unknown norm": (lambda t, r: ["train", "--norm", "l3"], "unknown norm"),
    "eps < 0": (lambda t, r: ["train", "--eps=-0.1"], "eps must be in [0, 1]"),
    "eps > 1": (lambda t, r: ["train", "--eps", "1.5"], "eps must be in [0, 1]"),
    "steps < 1": (lambda t, r: ["train", "--steps", "0"], "steps must be >= 1"),
    "batch < 1": (lambda t, r: ["train", "--batch-size", "0"], "batch size must be >= 1"),
    "lr = 0": (lambda t, r: ["train", "--lr", "0"], "lr must be > 0"),
    "lr < 0": (lambda t, r: ["train", "--lr=-0.1"], "lr must be > 0"),
    "val split > train set": (lambda t, r: ["train", "--val-size", "5000"],
                              "larger than the training set"),
    "bad run name": (lambda t, r: ["train", "--name", "../escape"], "run name"),
    "missing data files": (lambda t, r: ["train", "--dataset", "mnist", "--data-dir",
                                         str(t / "empty")], "file not found"),
    "corrupted data file": (lambda t, r: ["train", "--dataset", "mnist", "--data-dir",
                                          str(_corrupt_mnist(t))],
                            "checksum mismatch for "),
    "existing run directory": (lambda t, r: ["train", "--name", r.name],
                               "already exists"),
    "resume: not a run": (lambda t, r: ["train", "--resume", str(t / "runs" / "nothing")],
                          "not a run directory"),
    "resume and overwrite": (lambda t, r: ["train", "--resume", str(r), "--overwrite"],
                             "exclude each other"),
    "resume: config edited to another model": (
        lambda t, r: (_edit_config(r, model="preact_resnet18"),
                      ["train", "--resume", str(r)])[1], "model 'small_cnn'"),
    "resume: config edited to another head": (
        lambda t, r: (_edit_config(r, head="cosine"), ["train", "--resume", str(r)])[1],
        "head 'linear'"),
    "resume: corrupted config": (
        lambda t, r: ((r / "config.json").write_text("{"), ["train", "--resume", str(r)])[1],
        "corrupted"),
    "resume: crafted state.pt": (
        lambda t, r: (_crafted_state(r, t), ["train", "--resume", str(r)])[1],
        "refusing to load"),
    "eval: data.json with another number of classes": (
        lambda t, r: ((r / "data.json").write_text(
            (r / "data.json").read_text().replace('"num_classes": 10', '"num_classes": 3')),
            ["eval", str(r), "--no-progress"])[1],
        "'class_names' has 10 names for 3 classes"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_exit_2_nothing_written(tmp_path: Path, finished_run: Path, capsys,
                                                   case: str) -> None:
    setup, words = CASES[case]
    run = _copy_run(finished_run, tmp_path)  # every case gets its own copy of a finished run
    argv = setup(tmp_path, run)
    if argv[0] == "train":
        argv += ["--out-dir", str(tmp_path / "runs"), "--no-progress"]
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spat: error:"), captured.err
    assert words in err[0], err[0]
    assert _snapshot(tmp_path) == before  # no new entries, nothing changed
    assert not (tmp_path / "pwned").exists()


def test_overwrite_replaces_only_when_asked(tmp_path: Path, finished_run: Path,
                                            capsys) -> None:
    run = _copy_run(finished_run, tmp_path)
    (run / "marker").write_text("old run")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *TINY, "--out-dir", str(run.parent), "--name", run.name,
                     "--overwrite"]) == 0
    finally:
        torch.set_num_threads(n)
    assert not (run / "marker").exists() and (run / "summary.json").exists()
    assert sorted(p.name for p in run.parent.iterdir()) == [run.name]  # no temporary leftovers

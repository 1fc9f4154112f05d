"""Checkpoints: atomic folders and pointers, stale leftovers, and refusal of crafted pickles.

A ``state.pt`` is read with ``torch.load(weights_only=True)``: a file whose unpickling would call
a function (``open``, ``os.system``) is refused with a one-line error *before* anything runs.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from spat import checkpoint as ckpt
from spat.build import load_run, model_for
from spat.cli import main
from spat.config import TrainConfig
from spat.data import load_dataset
from spat.errors import SpatError


def _weights() -> dict[str, torch.Tensor]:
    return {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2, 3])}


def _state() -> dict:
    return {"epoch": 0, "rng": torch.get_rng_state(), "config": {"x": 1}, "best": -float("inf"),
            "nested": [1, 2.5, "s", None, {"t": torch.ones(2)}]}


def test_roundtrip_and_pointers(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    folder = ckpt.save_checkpoint(root, "epoch_0001", _weights(), _state())
    ckpt.set_pointer(root, "last", "epoch_0001", epoch=1)
    assert folder == root / "epoch_0001"
    assert sorted(p.name for p in folder.iterdir()) == sorted([ckpt.STATE, ckpt.WEIGHTS])
    w = ckpt.load_weights(folder)
    assert torch.equal(w["a"], _weights()["a"]) and torch.equal(w["b"], _weights()["b"])
    s = ckpt.load_state(folder)
    assert s["epoch"] == 0 and torch.equal(s["nested"][4]["t"], torch.ones(2))
    assert ckpt.resolve(tmp_path, "last") == folder
    assert ckpt.resolve(tmp_path, "best") == folder  # falls back to last
    assert ckpt.resolve(tmp_path, "epoch_0001") == folder
    assert [p.name for p in root.iterdir() if p.name.endswith(".tmp")] == []


def test_failed_save_leaves_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """A crash while writing (here: torch.save raising) leaves no folder and the old pointer."""
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, "epoch_0001", _weights(), _state())
    ckpt.set_pointer(root, "last", "epoch_0001")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(root, "epoch_0002", _weights(), _state())
    assert sorted(p.name for p in root.iterdir()) == ["epoch_0001", "last.json"]
    assert ckpt.read_pointer(root, "last") == "epoch_0001"


def test_resave_replaces_folder_and_stale_leftovers_are_cleaned(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, "epoch_0001", _weights(), _state())
    ckpt.set_pointer(root, "last", "epoch_0001")
    # leftovers of a process killed mid-save: a temporary folder, a torn pointer temp file, and
    # a folder renamed into place whose pointer update never happened
    (root / ".epoch_0002.abcd1234.tmp").mkdir()
    (root / ".epoch_0002.abcd1234.tmp" / ckpt.WEIGHTS).write_bytes(b"partial")
    (root / ".last.json.xyz.tmp").write_text("{")
    orphan = ckpt.save_checkpoint(root, "epoch_0002", {"a": torch.zeros(1)}, {"epoch": 1})
    assert ckpt.resolve(root, "last") == root / "epoch_0001"  # never read through a pointer
    removed = ckpt.clean_stale(root)
    assert sorted(removed) == [".epoch_0002.abcd1234.tmp", ".last.json.xyz.tmp", "epoch_0002"]
    assert sorted(p.name for p in root.iterdir()) == ["epoch_0001", "last.json"]
    # a redone epoch may find its folder already there: it is replaced, atomically
    orphan = ckpt.save_checkpoint(root, "epoch_0002", {"a": torch.zeros(1)}, {"epoch": 1})
    again = ckpt.save_checkpoint(root, "epoch_0002", {"a": torch.ones(1)}, {"epoch": 1})
    assert again == orphan and torch.equal(ckpt.load_weights(again)["a"], torch.ones(1))
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("content, words", [
    ("{", "corrupted"),
    ('{"no_tag": 1}', "corrupted"),
    ('{"tag": "../../elsewhere"}', "is not epoch_NNNN"),
])
def test_corrupted_pointer_is_one_line_error(tmp_path: Path, content: str, words: str) -> None:
    (tmp_path / "last.json").write_text(content)
    with pytest.raises(SpatError, match=words) as e:
        ckpt.read_pointer(tmp_path, "last")
    assert "\n" not in str(e.value)


def test_garbled_files_are_one_line_errors(tmp_path: Path) -> None:
    folder = ckpt.save_checkpoint(tmp_path, "epoch_0001", _weights(), _state())
    (folder / ckpt.STATE).write_bytes(b"PK\x03\x04 not really a zip")
    (folder / ckpt.WEIGHTS).write_bytes(b"\x00" * 3)
    for fn in (ckpt.load_state, ckpt.load_weights):
        with pytest.raises(SpatError, match="unreadable or corrupted") as e:
            fn(folder)
        assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- crafted pickles


class _OpenFile:
    """Unpickling this calls ``open(path, "w")``: it would create the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _System:
    """Unpickling this calls ``os.system("touch path")``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _write_payload(path: Path, kind: str, target: Path) -> None:
    if kind == "torch.save+open":
        torch.save({"epoch": 0, "x": _OpenFile(str(target))}, path)
    elif kind == "torch.save+os.system":
        torch.save({"epoch": 0, "x": _System(str(target))}, path)
    else:  # a raw pickle stream, not torch's zip format
        path.write_bytes(pickle.dumps({"x": _System(str(target))}, protocol=2))


PAYLOADS = ["torch.save+open", "torch.save+os.system", "raw-pickle+os.system"]


@pytest.mark.parametrize("kind", PAYLOADS)
def test_crafted_state_is_refused_and_runs_nothing(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "pwned"
    folder = ckpt.save_checkpoint(tmp_path / "c", "epoch_0001", _weights(), _state())
    _write_payload(folder / ckpt.STATE, kind, target)
    with pytest.raises(SpatError, match="refusing to load") as e:
        ckpt.load_state(folder)
    msg = str(e.value)
    assert "\n" not in msg and str(folder / ckpt.STATE) in msg and "could run code" in msg
    assert not target.exists()


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint folder of an untrained small_cnn on digits, as training writes it."""
    cfg = TrainConfig(dataset="digits").resolved()
    info = load_dataset("digits").info
    model = model_for(cfg, info)
    folder = ckpt.save_checkpoint(tmp_path_factory.mktemp("run") / "checkpoints", "epoch_0001",
                                  model.state_dict(),
                                  {"epoch": 0, "config": cfg.to_dict(), "num_classes": 10})
    ckpt.set_pointer(folder.parent, "last", "epoch_0001")
    return folder


def test_load_run_of_a_good_checkpoint(digits_checkpoint: Path) -> None:
    run = load_run(digits_checkpoint)
    assert run.config.model == "small_cnn" and not run.model.training and run.epoch == 1


@pytest.mark.parametrize("via", ["load_run", "spat eval"])
def test_crafted_state_refused_by_load_run_and_eval(tmp_path: Path, digits_checkpoint: Path,
                                                    capsys, via: str) -> None:
    import shutil

    folder = tmp_path / "epoch_0001"
    shutil.copytree(digits_checkpoint, folder)
    target = tmp_path / "pwned"
    _write_payload(folder / ckpt.STATE, "torch.save+os.system", target)
    if via == "load_run":
        with pytest.raises(SpatError, match="refusing to load"):
            load_run(folder)
    else:
        assert main(["eval", str(folder), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("spat: error: refusing to load"), err
    assert not target.exists()
    assert not (folder / "eval").exists()


def test_load_run_refuses_mismatched_model(tmp_path: Path, digits_checkpoint: Path) -> None:
    """A checkpoint whose recorded architecture does not match its weights."""
    import shutil

    folder = tmp_path / "epoch_0001"
    shutil.copytree(digits_checkpoint, folder)
    state = ckpt.load_state(folder)
    state["config"]["model"] = "preact_resnet18"
    torch.save(state, folder / ckpt.STATE)
    with pytest.raises(SpatError, match="does not fit this model") as e:
        load_run(folder)
    assert "\n" not in str(e.value)
    # and a run whose data.json says another number of classes
    run = tmp_path / "run"
    shutil.copytree(digits_checkpoint.parent, run / "checkpoints")
    info = json.loads(json.dumps({"name": "digits", "num_classes": 3, "channels": 1,
                                  "height": 8, "width": 8, "class_names": ["0", "1", "2"],
                                  "mean": [0.3], "std": [0.4], "augment": "none",
                                  "family": "digits"}))
    (run / "data.json").write_text(json.dumps(info))
    with pytest.raises(SpatError, match="10 classes but the data has 3"):
        load_run(run)

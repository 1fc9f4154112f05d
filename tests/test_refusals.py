"""A record that never lies and a refusal that changes nothing (issue 25).

A ``--resume`` override of an optimizer setting takes effect in the optimizer (the checkpoint
gives the momentum buffers, the configuration the hyperparameters); a damaged optimizer group,
an evaluation that attacks nothing, a bad ``--reported``, a count or seed out of range and a
name the file system cannot hold are one line, exit 2, and leave nothing on disk; and three
messages say what is really wrong.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from spat import checkpoint as ckpt
from spat.cli import main
from spat.config import TrainConfig
from spat.errors import SpatError
from spat.train.loop import Trainer
from spat.train.optim import make_optimizer
from spat.train.resume import RESUME_OVERRIDES
from spat.train.training import train
from tests.conftest import train_finished_run
from tests.test_reliability import FAST_EVAL, TINY, refused, snapshot

# the base run trains at a constant lr, so a checkpoint's group lr is the configured lr
BASE = [*TINY, "--schedule", "constant"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One tiny finished digits run (1 epoch, trained once for this module; tests use copies)."""
    return train_finished_run(tmp_path_factory, BASE)


def _state(run: Path, tag: str) -> dict[str, Any]:
    return torch.load(run / "checkpoints" / tag / ckpt.STATE, weights_only=True)


# ----------------------------------------------------------------------------- 1. overrides
#: Every optimizer setting a resume may change, with a value other than the base run's.
OPTIMIZER_OVERRIDES = {"momentum": 0.0, "weight_decay": 0.1, "nesterov": True, "lr": 0.01}


def test_the_override_table_covers_every_optimizer_setting() -> None:
    """A new optimizer setting that a resume may change must join OPTIMIZER_OVERRIDES."""
    settings = set(inspect.signature(make_optimizer).parameters) - {"model", "device"}
    assert settings == set(OPTIMIZER_OVERRIDES) <= set(RESUME_OVERRIDES)


@pytest.mark.parametrize(("field", "value"), OPTIMIZER_OVERRIDES.items())
def test_resume_override_takes_effect_in_the_optimizer(run: Path, monkeypatch, field: str,
                                                       value: Any) -> None:
    """Through the library's resume: the optimizer that trains the resumed epoch has the new
    value (and still the checkpoint's momentum buffers), and the checkpoint it writes records
    the value it trained with, as config.json does."""
    seen: list[dict[str, Any]] = []
    fit = Trainer.fit

    def spy(self: Trainer) -> Any:
        seen.extend({k: v for k, v in g.items() if k != "params"}
                    for g in self.optimizer.param_groups)
        seen.append({"buffers": sum("momentum_buffer" in s
                                    for s in self.optimizer.state.values())})
        return fit(self)

    monkeypatch.setattr(Trainer, "fit", spy)
    saved = _state(run, "epoch_0001")["optimizer"]["param_groups"][0]
    assert saved[field] != value  # the base run trained with another value
    cfg = TrainConfig(epochs=2, device="cpu", **{field: value})
    train(cfg, resume=run, progress=False, explicit={"epochs", field})
    group, buffers = seen
    assert group[field] == value
    assert buffers["buffers"] > 0  # the momentum buffers came from the checkpoint
    assert {k: group[k] for k in ("lr", "momentum", "weight_decay", "nesterov")} == {
        "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False, field: value}
    assert group["dampening"] == 0
    recorded = _state(run, "epoch_0002")["optimizer"]["param_groups"][0]
    assert recorded[field] == value
    assert json.loads((run / "config.json").read_text())[field] == value


def test_resume_momentum_0_changes_the_training_and_the_record_matches(
        run: Path, tmp_path: Path, capsys) -> None:
    """On the command line: ``--resume --momentum 0`` trains other weights than a resume
    without it (before, the checkpoint's 0.9 was kept); config.json, resumes.jsonl and the new
    state.pt all say 0."""
    plain = tmp_path / "plain"
    shutil.copytree(run, plain)
    assert main(["train", "--resume", str(plain), "--epochs", "2", "--no-progress"]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--momentum", "0",
                 "--no-progress"]) == 0
    a = load_file(str(plain / "checkpoints" / "epoch_0002" / ckpt.WEIGHTS))
    b = load_file(str(run / "checkpoints" / "epoch_0002" / ckpt.WEIGHTS))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "config.json").read_text())["momentum"] == 0.0
    change = json.loads((run / "resumes.jsonl").read_text().splitlines()[-1])["changes"]
    assert change["momentum"] == {"from": 0.9, "to": 0.0}
    assert _state(run, "epoch_0002")["optimizer"]["param_groups"][0]["momentum"] == 0.0
    assert _state(plain, "epoch_0002")["optimizer"]["param_groups"][0]["momentum"] == 0.9


# ----------------------------------------------------------------------------- 2. damaged groups
@pytest.mark.parametrize(("key", "bad", "expected"), [
    ("momentum", "abc", "a number"),
    ("weight_decay", None, "a number"),
    ("dampening", [0], "a number"),
    ("lr", float("nan"), "a finite number"),
    ("nesterov", "yes", "true or false"),
    ("foreach", 1, "true or false"),
    ("momentum", "<deleted>", "missing field 'momentum'"),
])
def test_damaged_optimizer_group_is_refused_before_resume_writes(run: Path, capsys, key: str,
                                                                 bad: Any, expected: str) -> None:
    path = run / "checkpoints" / "epoch_0001" / ckpt.STATE
    state = torch.load(path, weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    if bad == "<deleted>":
        del group[key]
    else:
        group[key] = bad
    torch.save(state, path)
    before = snapshot(run)
    refused(capsys, ["train", "--resume", str(run), "--epochs", "3", "--no-progress"],
            str(path), "param_groups[0]", expected)
    assert snapshot(run) == before  # config.json, resumes.jsonl (none), state.pt unchanged
    assert not (run / "resumes.jsonl").exists()


# ----------------------------------------------------------------------------- 3. no attack
@pytest.mark.parametrize("attacks", ["", ",", " , ", "clean", "clean,"])
def test_eval_that_attacks_nothing_is_refused_and_writes_nothing(run: Path, capsys,
                                                                 attacks: str) -> None:
    assert main(["eval", str(run), *FAST_EVAL]) == 0  # an evaluation to keep
    capsys.readouterr()
    before = snapshot(run)
    argv = ["eval", str(run), *FAST_EVAL]
    argv[argv.index("--attacks") + 1] = attacks
    refused(capsys, argv, "--attacks names no attack", "fgsm")
    assert snapshot(run) == before


def test_evaluate_run_and_evaluate_model_refuse_no_attack(run: Path, tmp_path: Path) -> None:
    from spat.evaluation import evaluate_model, evaluate_run

    with pytest.raises(SpatError, match="names no attack"):
        evaluate_run(run, attacks=[], out=tmp_path / "a", device="cpu")
    with pytest.raises(SpatError, match="names no attack"):
        evaluate_model(run / "checkpoints" / "epoch_0001", attacks="clean", dataset="digits",
                       out=tmp_path / "b", device="cpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- 4. export
@pytest.mark.parametrize("reported", ["1.5", "nan", "inf", "-0.1"])
@pytest.mark.parametrize("fmt", ["robustbench", "portable"])
def test_export_checks_reported_before_writing(run: Path, tmp_path: Path, capsys, reported: str,
                                               fmt: str) -> None:
    before = snapshot(run)
    refused(capsys, ["export", str(run), "--format", fmt, f"--reported={reported}"],
            "--reported must be a fraction in [0, 1]")
    refused(capsys, ["export", str(run), "--format", fmt, "--out", str(tmp_path / "x"),
                     f"--reported={reported}"], "--reported")
    assert snapshot(run) == before and not (run / "export").exists()
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- 5. ranges
BIG = str(10**400)


@pytest.mark.parametrize(("args", "toml", "words"), [
    # past 64 bits the reading layer refuses first (spat.validation), below it validate()
    (["--epochs", BIG], None, ["'epochs' must be an integer that fits in 64 bits", "10**400"]),
    (["--epochs", str(2**40)], None, ["epochs must be <= 1000000000"]),
    (["--steps", "1000000001"], None, ["steps must be <= 1000000000"]),
    (["--train-subset", BIG], None, ["'train_subset' must be an integer that fits in 64 bits"]),
    (["--val-size", "1e12"], None, ["validation size must be in [0, 1000000000]"]),
    (["--seed", str(2**64)], None, ["'seed' must be an integer that fits in 64 bits"]),
    (["--seed", "-1"], None, ["seed must be in [0, 2**63 - 1], got -1"]),
    ([], f"epochs = {BIG}", ["'epochs' must be an integer that fits in 64 bits"]),
    ([], f"seed = {2**63}", ["'seed' must be an integer that fits in 64 bits"]),
])
def test_counts_and_seed_out_of_range_are_one_line_and_write_nothing(
        tmp_path: Path, capsys, args: list[str], toml: str | None, words: list[str]) -> None:
    out = tmp_path / "runs"
    place = ["--out-dir", str(out), "--name", "x"]
    if toml is None:
        argv = ["train", *TINY, *place, *args]
    else:  # the TOML file alone (TINY's flags would override it)
        (tmp_path / "c.toml").write_text(toml + "\n")
        argv = ["train", "--config", str(tmp_path / "c.toml"), *place]
    refused(capsys, argv, *words)
    assert not out.exists()
    if args[:1] == ["--epochs"]:  # nothing blocks the name: it trains afterwards
        assert main(["train", *TINY, *place]) == 0


def test_json_config_with_a_huge_epochs_writes_nothing(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"epochs": 10**400}))
    out = tmp_path / "runs"
    refused(capsys, ["train", "--config", str(cfg), "--out-dir", str(out)],
            "'epochs' must be an integer that fits in 64 bits")
    assert not out.exists()


def test_the_largest_seed_trains(tmp_path: Path) -> None:
    """The bound is what the seeding needs (torch, numpy, derive_seed, the final test's seed +
    12345), not less: 2**63 - 1 trains."""
    assert main(["train", *TINY, "--seed", str(2**63 - 1), "--out-dir", str(tmp_path)]) == 0


# ----------------------------------------------------------------------------- 6. names
@pytest.mark.parametrize("where", ["name", "out-dir"])
def test_a_name_too_long_leaves_no_folder(tmp_path: Path, capsys, where: str) -> None:
    long = "a" * 300
    root = tmp_path / "root"
    root.mkdir()
    if where == "name":
        argv = ["--out-dir", str(root / "new" / "deeper"), "--name", long]
        words = ["run name must be at most 200 bytes", "got 300"]
    else:  # the file system refuses the name when the folder is made: what was made goes
        argv = ["--out-dir", str(root / "new" / long / "x"), "--name", "r"]
        words = ["File name too long"]
    refused(capsys, ["train", *TINY, *argv], *words)
    assert list(root.iterdir()) == []


def test_eval_out_too_long_leaves_no_folder(run: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "root"
    root.mkdir()
    refused(capsys, ["eval", str(run), *FAST_EVAL, "--out", str(root / "new" / ("b" * 300))],
            "File name too long")
    assert list(root.iterdir()) == []


# ----------------------------------------------------------------------------- 7. messages
def test_a_text_file_as_npz_says_it_is_not_an_npz(tmp_path: Path, capsys) -> None:
    text = tmp_path / "file.txt"
    text.write_text("hello\n")
    npy = tmp_path / "one.npy"
    np.save(npy, np.zeros(3))
    out = tmp_path / "runs"
    for path, what in ((text, "not a zip archive"), (npy, "a single .npy array")):
        err = refused(capsys, ["train", "--dataset", "npz", "--data-dir", str(path),
                               "--out-dir", str(out), *TINY], f"{path} is not an .npz file",
                      what)
        assert "pickle" not in err and "trust" not in err
    assert not out.exists()


def test_a_missing_weights_file_is_named(run: Path, capsys) -> None:
    weights = run / "checkpoints" / "epoch_0001" / ckpt.WEIGHTS
    weights.unlink()
    err = refused(capsys, ["eval", str(run), *FAST_EVAL], f"{weights} is missing")
    assert "pruned" not in err


@pytest.mark.parametrize("legacy", [False, True])
def test_a_truncated_state_says_truncated(run: Path, capsys, legacy: bool) -> None:
    path = run / "checkpoints" / "epoch_0001" / ckpt.STATE
    if legacy:  # the pre-zip format is a bare pickle: a cut one ends in EOFError()
        state = torch.load(path, weights_only=True)
        torch.save(state, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    for size in (10, 1000, len(data) // 2):
        path.write_bytes(data[:size])
        err = refused(capsys, ["train", "--resume", str(run), "--epochs", "2", "--no-progress"],
                      str(path), "truncated or not a torch checkpoint (")
        assert "()" not in err and "internal miniz error" not in err


@pytest.mark.parametrize("attacks", ["[]", '["clean"]'])
def test_study_eval_that_attacks_nothing_is_refused(tmp_path: Path, attacks: str) -> None:
    from spat.study.spec import load_study

    p = tmp_path / "s.toml"
    p.write_text('[study]\nname = "x"\ndatasets = ["digits"]\nseeds = [0]\n[variants.a]\n'
                 f'method = "pgd_at"\n[eval]\nattacks = {attacks}\n')
    with pytest.raises(SpatError, match=r"eval\.attacks: the list names no attack"):
        load_study(p)

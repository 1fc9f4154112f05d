"""``spat export`` and file modes: RobustBench's model_info JSON (checked against a fixture
written in their format: same keys, same types, their units), its refusals (a subset, no or a
non-standard AutoAttack), the portable model file and ``spat.load_model`` without the run
directory (same logits), and every record a run, an evaluation and an analysis write following
the umask (644 under umask 022)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

import spat
from spat.build import load_run
from spat.cli import main
from spat.config import TrainConfig
from spat.errors import SpatError
from spat.export import format_eps, robustbench_architecture, robustbench_model_info
from spat.models.external import read_portable_metadata
from spat.train.training import train
from spat.utils.io import atomic_write_text

FIXTURE = Path(__file__).parent / "fixtures" / "robustbench_model_info.json"


@pytest.fixture(scope="module")
def umask_022_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch digits run, its evaluation (FGSM on the whole test split) and its analysis,
    all created under umask 022."""
    root = tmp_path_factory.mktemp("export")
    old = os.umask(0o022)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(out_dir=str(root), name="run", epochs=1, steps=2, step_size=0.04,
                          batch_size=64, val_steps=2, test_steps=2, device="cpu", seed=0)
        train(cfg, progress=False, log=lambda s: None, overwrite=True)
        run = root / "run"
        assert main(["eval", str(run), "--attacks", "fgsm", "--sanity-examples", "0",
                     "--no-progress"]) == 0
        assert main(["analyze", str(run)]) == 0
    finally:
        os.umask(old)
        torch.set_num_threads(threads)
    return run


# ------------------------------------------------------------------------------ file modes
def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_records_follow_umask_022(umask_022_run: Path):
    run = umask_022_run
    files = [run / "config.json", run / "summary.json", run / "eval" / "report.json",
             run / "eval" / "predictions.npz"]
    files += sorted((run / "checkpoints").glob("epoch_*/model.safetensors"))
    files += sorted(run.glob("analysis*/report.md")) + sorted(run.glob("**/analysis/report.md"))
    names = {p.name for p in files}
    assert {"config.json", "summary.json", "report.json", "predictions.npz",
            "model.safetensors", "report.md"} <= names, names
    for p in files:
        assert _mode(p) == 0o644, f"{p}: {oct(_mode(p))}"


@pytest.mark.parametrize("mask,want", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_write_mode_is_0666_minus_umask(tmp_path: Path, mask: int, want: int):
    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        atomic_write_text(tmp_path / "a.json", "{}")  # replacing keeps the rule
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.json") == want
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left


# ------------------------------------------------------------------------- RobustBench JSON
def _report(**changes: object) -> dict:
    """An evaluation report (spat.eval/1) with standard AutoAttack on a whole test split."""
    r = {
        "schema": "spat.eval/1", "dataset": "cifar10", "architecture": "wrn34_10",
        "eps": 8 / 255, "threat_model": "Linf", "n_examples": 10000,
        "clean_acc": 0.8492, "autoattack_acc": 0.5308, "robust_acc": 0.5301,
        "subset": {"n_examples": 10000, "of": 10000, "seed": 0, "indices": None},
        "attacks": [{"key": "pgd20", "name": "PGD-20", "kind": "pgd", "settings": {}},
                    {"key": "aa", "name": "AutoAttack", "kind": "autoattack",
                     "settings": {"version": "standard", "seed": 0, "batch_size": 500}}],
    }
    r.update(changes)
    return r


def test_model_info_matches_robustbench_fixture():
    fixture = json.loads(FIXTURE.read_text())
    got = robustbench_model_info(
        _report(), name=fixture["name"], authors=fixture["authors"], venue=fixture["venue"],
        link=fixture["link"], reported=0.5643, footnote=fixture["footnote"])
    assert list(got) == list(fixture)  # their key order
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in fixture.items()}
    assert got == fixture  # 0.8492 -> "84.92", 8/255 -> "8/255", 0.5308 -> "53.08"


def test_model_info_units():
    assert format_eps(8 / 255) == "8/255" and format_eps(0.031) == "0.031"
    assert format_eps(0.5) == "0.5" and format_eps(4 / 255) == "4/255"
    assert robustbench_architecture("wrn34_10") == "WideResNet-34-10"
    assert robustbench_architecture("resnet18") == "ResNet-18"
    info = robustbench_model_info(_report(clean_acc=1.0, autoattack_acc=0.0), name="x")
    assert info["clean_acc"] == "100.00" and info["autoattack_acc"] == "0.00"
    assert info["reported"] == info["autoattack_acc"]  # default: our own number
    assert "footnote" not in info


@pytest.mark.parametrize("change,message", [
    ({"subset": {"n_examples": 1000, "of": 10000, "seed": 0, "indices": list(range(1000))},
      "n_examples": 1000}, "evaluated 1000 of 10000"),
    ({"autoattack_acc": None, "attacks": [{"key": "aa-fast", "name": "AutoAttack-fast",
                                           "kind": "autoattack",
                                           "settings": {"version": "fast"}}]},
     "only AutoAttack-fast"),
    ({"autoattack_acc": None, "attacks": []}, "no AutoAttack"),
    ({"attacks": [{"key": "aa", "name": "AutoAttack", "kind": "autoattack",
                   "settings": {"version": "rand"}}]}, "version 'rand'"),
])
def test_model_info_refuses_subsets_and_nonstandard_autoattack(change: dict, message: str):
    with pytest.raises(SpatError, match=message):
        robustbench_model_info(_report(**change), name="x")


# ------------------------------------------------------------------- export end to end
def test_export_refuses_a_report_without_standard_autoattack(
        umask_022_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["export", str(umask_022_run), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spat: error: refusing to export") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def _fake_aa(report: dict) -> dict:
    """The report with its FGSM entry relabelled as a standard AutoAttack entry: these tests are
    about the export's plumbing, not AutoAttack (minutes on a CPU)."""
    fake = copy.deepcopy(report)
    entry = fake["attacks"][0]
    entry.update(key="aa", name="AutoAttack", kind="autoattack",
                 settings={"version": "standard", "seed": 0, "batch_size": 500})
    fake["autoattack_acc"] = entry["accuracy"]
    return fake


def _own_fake_report(run: Path) -> Path:
    """``run``'s report (of a copy of the fixture's run), made exportable and pointing at
    ``run`` itself."""
    path = run / "eval" / "report.json"
    fake = _fake_aa(json.loads(path.read_text()))
    fake["run_dir"] = str(run)
    fake["checkpoint"] = str(run / "checkpoints" / Path(fake["checkpoint"]).name)
    path.write_text(json.dumps(fake))
    return path


def test_export_refuses_another_runs_report(
        umask_022_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """``--report OTHER/eval/report.json`` once exported OTHER's model and numbers under RUN's
    name; it is refused, naming both runs, and nothing is written. The run's own report is
    accepted, given or by default."""
    run, other = tmp_path / "run", tmp_path / "other"
    shutil.copytree(umask_022_run, run)
    shutil.copytree(umask_022_run, other)  # the same training config: identity is the run
    _own_fake_report(run)
    other_report = _own_fake_report(other)
    out = tmp_path / "x"
    assert main(["export", str(run), "--report", str(other_report), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spat: error: refusing to export") and err.count("\n") == 1
    assert str(other) in err and str(run) in err
    assert not out.exists()
    assert main(["export", str(run), "--report", str(run / "eval" / "report.json"),
                 "--out", str(out)]) == 0
    assert json.loads((out / "model_info.json").read_text())["name"] == "run"
    assert main(["export", str(other), "--out", str(tmp_path / "y")]) == 0
    capsys.readouterr()


def test_export_refuses_the_report_of_a_model_that_is_not_a_run(
        umask_022_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run = tmp_path / "run"
    shutil.copytree(umask_022_run, run)
    fake = _fake_aa(json.loads((run / "eval" / "report.json").read_text()))
    fake.update(run_dir=None, checkpoint=None, model="official-trades")
    report = tmp_path / "external.json"
    report.write_text(json.dumps(fake))
    assert main(["export", str(run), "--report", str(report)]) == 2
    err = capsys.readouterr().err
    assert "official-trades, not of a spat run" in err and err.count("\n") == 1
    assert not (run / "export").exists()


def test_export_robustbench_and_load_model_without_the_run(
        umask_022_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run = tmp_path / "run"
    shutil.copytree(umask_022_run, run)
    report = json.loads((run / "eval" / "report.json").read_text())
    fake = _fake_aa(report)
    entry = fake["attacks"][0]
    fake["checkpoint"] = str(run / "checkpoints" / Path(report["checkpoint"]).name)
    (run / "eval" / "report.json").write_text(json.dumps(fake))
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--name", "tiny digits run",
                 "--authors", "A. Author", "--venue", "test", "--reported", "50/100",
                 "--footnote", "a test run"]) == 0
    assert "wrote" in capsys.readouterr().out
    info = json.loads((out / "model_info.json").read_text())
    fixture = json.loads(FIXTURE.read_text())
    assert set(info) == set(fixture)
    assert {k: type(v) for k, v in info.items()} == {k: type(v) for k, v in fixture.items()}
    assert info["dataset"] == "digits" and info["architecture"] == "SmallCNN"
    assert info["eps"] == "0.1" and info["reported"] == "50.00"
    assert info["clean_acc"] == f"{100 * report['clean_acc']:.2f}"
    assert info["autoattack_acc"] == f"{100 * entry['accuracy']:.2f}"

    meta = read_portable_metadata(out / "model.safetensors")
    assert meta is not None
    assert meta["architecture"] == "small_cnn" and meta["head"] == "linear"
    assert meta["input_shape"] == [1, 8, 8] and meta["num_classes"] == 10
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["spat_version"] == spat.__version__ and len(meta["mean"]) == 1
    want_model = load_run(run).model
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = want_model(x)
    moved = tmp_path / "elsewhere.safetensors"
    shutil.copy(out / "model.safetensors", moved)
    shutil.rmtree(run)  # no run directory any more
    model = spat.load_model(moved)
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(x), want)


def test_export_portable_cosine_head_round_trip(tmp_path: Path):
    from spat.models import build_model
    from spat.models.external import save_portable

    torch.manual_seed(0)
    model = build_model("wrn10_1", num_classes=3, in_channels=3, image_size=(16, 16),
                        mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), head="cosine",
                        cosine_scale=5.0).eval()
    path = save_portable(model, tmp_path / "m.safetensors", architecture="wrn10_1",
                         image_size=(16, 16), class_names=["a", "b", "c"])
    again = spat.load_model(path)
    assert again.head.scale == 5.0 and again.head.bias is not None
    assert torch.allclose(again.normalize.std.flatten(), torch.tensor([0.2, 0.25, 0.3]))
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    # the file says 3x16x16 inputs; the digits are 1x8x8
    assert main(["eval", "--model", str(path), "--dataset", "digits", "--out",
                 str(tmp_path / "e")]) == 2


def test_load_model_refuses_a_plain_safetensors_file(tmp_path: Path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(SpatError, match="not a spat model file"):
        spat.load_model(tmp_path / "plain.safetensors")

"""Plugins (issue 24): a third-party method with a hyperparameter of its own and a third-party
attack, each one file (tests/plugins/), reach the command line and a study through
``SPAT_PLUGINS`` or ``[study] plugins``: the new hyperparameter is one field of its method
class (flag, TOML key, check, config.json record, the method's argument, staleness), the new
attack an objective plus one registry entry (``--attacks``, ``[eval] attacks``, the report)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from spat.cli import main

PLUGINS = Path(__file__).resolve().parent / "plugins"
METHOD_FILE, ATTACK_FILE = PLUGINS / "gamma_trades.py", PLUGINS / "margin_pgd.py"
TINY = ["--train-subset", "48", "--val-size", "16", "--epochs", "1", "--steps", "1",
        "--val-steps", "1", "--test-steps", "1", "--test-subset", "16", "--batch-size", "16",
        "--device", "cpu", "--no-progress"]


@pytest.fixture
def unload() -> Iterator[None]:
    """Whatever a test's plugins registered is removed again (the registries are global)."""
    from spat.attacks.objectives import OBJECTIVES
    from spat.evaluation.attacks import ATTACKS
    from spat.methods import METHODS
    from spat.utils import plugins

    yield
    METHODS.pop("gamma_trades", None)
    ATTACKS.pop("mpgd5", None)
    OBJECTIVES.pop("mpgd5", None)
    for key in [k for k in plugins._LOADED if "plugins" in k]:
        module = plugins._LOADED.pop(key)
        sys.modules.pop(getattr(module, "__name__", ""), None)


def test_cli_train_and_eval_with_a_plugin_method_and_attack(
        tmp_path: Path, monkeypatch, capsys, unload) -> None:
    monkeypatch.setenv("SPAT_PLUGINS", f"{METHOD_FILE}, {ATTACK_FILE}")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_ = " ".join(capsys.readouterr().out.split())
    assert "--gamma GAMMA gamma_trades: weight γ of the adversarial CE (default 0)" in help_
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    help_ = " ".join(capsys.readouterr().out.split())
    assert "mpgd5" in help_ and "MPGD-5: 5 PGD steps on the probability margin" in help_

    out = tmp_path / "runs"
    # a bad value of the plugin's hyperparameter: one line naming its range, nothing written
    assert main(["train", "--method", "gamma_trades", "--gamma", "-1", *TINY,
                 "--out-dir", str(out), "--name", "bad"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("spat: error: gamma must be in [0, 10]")
    assert "reward being fooled" in err and not out.exists()

    assert main(["train", "--method", "gamma_trades", "--gamma", "0.5", *TINY,
                 "--out-dir", str(out), "--name", "g"]) == 0
    run = out / "g"
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["method"], cfg["gamma"], cfg["beta"]) == ("gamma_trades", 0.5, 6.0)
    # the value reached the method: the loss is the sum of its parts with γ = 0.5
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["train_loss_adv"] > 0.1
    assert rec["train_loss"] == pytest.approx(
        rec["train_loss_nat"] + 6.0 * rec["train_loss_rob"] + 0.5 * rec["train_loss_adv"],
        rel=1e-4)
    from spat.build import load_run, method_for

    loaded = load_run(run)
    assert loaded.config.gamma == 0.5 and method_for(loaded.config).gamma == 0.5

    from spat.utils.plugins import load_plugin

    calls = load_plugin(str(ATTACK_FILE)).CALLS  # loaded once: the module the CLI loaded
    assert main(["eval", str(run), "--attacks", "fgsm,mpgd5", "--n-examples", "16",
                 "--device", "cpu", "--no-progress"]) == 0
    assert len(calls) >= 5  # 5 steps of its objective (and the final check)
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["settings"]["attacks"] == ["fgsm", "mpgd5"]
    assert "MPGD-5" in json.dumps(report)


def test_a_plugin_that_fails_to_import_is_one_line(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setenv("SPAT_PLUGINS", "no_such_spat_plugin_module")
    assert main(["train", "--help"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("spat: error: plugin 'no_such_spat_plugin_module' failed to import: "
                   "ModuleNotFoundError: No module named 'no_such_spat_plugin_module'")
    monkeypatch.setenv("SPAT_PLUGINS", str(tmp_path / "missing.py"))
    assert main(["train", "--help"]) == 2
    assert capsys.readouterr().err.strip() == \
        f"spat: error: plugin {tmp_path / 'missing.py'}: no such file"


STUDY = """
[study]
name = "plug"
out_dir = "{out}"
datasets = ["digits"]
seeds = [0]
plugins = ["{method}", "{attack}"]
[train]
epochs = 1
train_subset = 48
val_size = 16
steps = 1
val_steps = 1
test_steps = 1
test_subset = 16
batch_size = 16
device = "cpu"
[variants.g]
method = "gamma_trades"
{gamma}
[eval]
attacks = ["fgsm", "mpgd5"]
n_examples = 16
analyze = false
"""


def _study(tmp_path: Path, gamma: str) -> Path:
    """The study file, its plugins named relative to it."""
    path = tmp_path / "study" / "plug.toml"
    path.parent.mkdir(exist_ok=True)
    rel = [os.path.relpath(f, path.parent) for f in (METHOD_FILE, ATTACK_FILE)]
    path.write_text(STUDY.format(out=(tmp_path / "out").as_posix(), method=rel[0],
                                 attack=rel[1], gamma=gamma))
    return path


def test_a_study_with_plugins_and_the_staleness_of_a_plugin_hyperparameter(
        tmp_path: Path, capsys, unload) -> None:
    from spat.errors import SpatError
    from spat.study.cell import cell_state, run_cell
    from spat.study.pool import dataclasses_asdict
    from spat.study.spec import load_study, plan_cells

    # a bad value is refused when the file is read, naming the file and the variant
    with pytest.raises(SpatError, match=r"variants\.g .*gamma must be in \[0, 10\]"):
        load_study(_study(tmp_path, "gamma = -0.5"))
    assert not (tmp_path / "out").exists()

    (cell,) = plan_cells(load_study(_study(tmp_path, "gamma = 0.5")))
    assert cell.config["gamma"] == 0.5 and len(cell.plugins) == 2
    record = run_cell(dataclasses_asdict(cell), threads=1)
    assert record["error"] is None, record
    assert record["stages"] == ["new", "eval"]
    run = Path(cell.run_dir)
    assert json.loads((run / "config.json").read_text())["gamma"] == 0.5
    assert main(["study", str(_study(tmp_path, "gamma = 0.5")), "--dry-run"]) == 0
    assert "every cell is done" in capsys.readouterr().out

    # the staleness rule sees the new hyperparameter: another γ is another cell ...
    (other,) = plan_cells(load_study(_study(tmp_path, "gamma = 0.7")))
    with pytest.raises(SpatError, match=r"other settings than the study file says \(gamma\)"):
        cell_state(dataclasses_asdict(other))
    # ... and a config.json without the key (written before the field existed) meant the
    # class default, 0: the same cell as gamma = 0, another one than gamma = 0.5
    saved = json.loads((run / "config.json").read_text())
    del saved["gamma"]
    (run / "config.json").write_text(json.dumps(saved))
    (default,) = plan_cells(load_study(_study(tmp_path, "")))
    assert cell_state(dataclasses_asdict(default)) == "done"
    with pytest.raises(SpatError, match=r"\(gamma\)"):
        cell_state(dataclasses_asdict(cell))

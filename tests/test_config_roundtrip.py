"""A run's recorded config.json is a valid ``--config`` that trains the same run again, and the
piecewise schedule never decays the first epoch (issue 12's config points)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from spat.cli import main
from spat.config import config_from_dict, load_config_file
from spat.train.optim import lr_factor

TINY = ["--train-subset", "96", "--epochs", "2", "--steps", "1", "--batch-size", "32",
        "--val-size", "32", "--test-subset", "40", "--test-steps", "1", "--val-steps", "1",
        "--deterministic", "--device", "cpu", "--no-progress", "--amp", "off"]


def _records(run: Path) -> list[dict]:
    drop = ("seconds", "images_per_s", "time")
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if not any(d in k for d in drop)})
    return out


def test_recorded_config_reproduces_the_run(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    assert main(["train", *TINY, "--method", "trades", "--out-dir", str(out), "--name", "a"]) == 0
    recorded = out / "a" / "config.json"
    assert main(["train", "--config", str(recorded), "--out-dir", str(out), "--name", "b",
                 "--no-progress"]) == 0
    a, b = (json.loads((out / n / "config.json").read_text()) for n in ("a", "b"))
    assert {k: v for k, v in a.items() if k != "name"} == {k: v for k, v in b.items()
                                                           if k != "name"}
    assert _records(out / "a") == _records(out / "b")
    wa, wb = (load_file(next((out / n / "checkpoints").glob("epoch_0002")) / "model.safetensors")
              for n in ("a", "b"))
    assert wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)


def test_json_null_is_the_default_and_bad_json_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"method": "spat", "epochs": None, "train_subset": None}))
    values = load_config_file(f)
    assert values == {"method": "spat"}
    assert config_from_dict(values).resolved().epochs == 30  # the digits' default
    f.write_text("[1, 2]")
    assert main(["train", "--config", str(f)]) == 2
    f.write_text("{not json")
    assert main(["train", "--config", str(f)]) == 2


@pytest.mark.parametrize("epochs,expected", [
    (1, [1.0]),
    (2, [1.0, 0.01]),
    (4, [1.0, 1.0, 0.1, 0.01]),
    (10, [1.0] * 7 + [0.1, 0.01, 0.01]),  # decay epochs round(7.5) = 8, round(9.0) = 9
])
def test_piecewise_never_decays_the_first_epoch(epochs: int, expected: list[float]) -> None:
    assert [lr_factor("piecewise", e, 0, 5, epochs) for e in range(epochs)] == expected


def test_piecewise_official_cifar_epochs_unchanged() -> None:
    # official adjust_learning_rate: lr × 0.1 from epoch 75, × 0.01 from epoch 90 (1-based), of 100
    f = [lr_factor("piecewise", e, 0, 1, 100) for e in range(100)]
    assert f[73] == 1.0 and f[74] == 0.1 and f[88] == 0.1 and f[89] == 0.01

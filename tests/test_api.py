"""The Python API (spat.api, re-exported by ``import spat``): train, load_run, evaluate,
hard_pairs, on a tiny digits run, a hand-made module and hand-built predictions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import spat
from spat.build import read_summary
from spat.errors import SpatError
from spat.evaluation.core import Predictions

TINY = {"dataset": "digits", "model": "small_cnn", "method": "pgd_at", "epochs": 1,
        "train_subset": 64, "batch_size": 32, "test_subset": 32, "val_steps": 1,
        "test_steps": 1, "device": "cpu", "name": "api"}


def test_train_from_a_dict_then_load_run(tmp_path: Path) -> None:
    import spat.config  # binds the subpackage spat.train: it must stay callable

    result = spat.train({**TINY, "out_dir": str(tmp_path)})
    assert isinstance(result, spat.TrainResult)
    assert result.run_dir == tmp_path / "api" and result.epochs == result.best_epoch == 1
    assert result.checkpoint == result.run_dir / "checkpoints" / "epoch_0001"
    assert result.test_attack == "PGD-1" and result.world_size == 1 and result.guard == ()
    # summary.json is the result, read back by the one typed reader
    assert read_summary(result.run_dir) == result
    run = spat.load_run(result.run_dir)
    assert isinstance(run, spat.Run)
    assert run.run_dir == tmp_path / "api" and run.checkpoint == run.run_dir / "checkpoints" / \
        "epoch_0001" and run.epoch == 1
    assert run.config.method == "pgd_at" and run.config.train_subset == 64
    assert run.info.num_classes == 10 and not run.model.training
    assert run.summary is not None
    assert run.summary == result and run.summary.test_examples == 32
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.best_epoch = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.epoch = 2  # type: ignore[misc]


def test_train_refuses_a_mistyped_dict_before_writing(tmp_path: Path) -> None:
    with pytest.raises(SpatError, match="steps"):
        spat.train({**TINY, "out_dir": str(tmp_path), "steps": 2.5})
    with pytest.raises(SpatError, match="TrainConfig or a mapping"):
        spat.train(["digits"])
    assert not (tmp_path / "api").exists()


class ConstantClass(nn.Module):
    """Logits that always say class ``k`` (its prediction no attack can change)."""

    def __init__(self, k: int, classes: int = 3) -> None:
        super().__init__()
        self.k, self.classes = k, classes
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.classes) + 0 * self.w * x.flatten(1).sum(1, True)
        out[:, self.k] = 1.0
        return out


def test_evaluate_any_module_on_plain_tensors_and_a_tuple() -> None:
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 0, 1, 2])
    model = ConstantClass(0)
    report = spat.evaluate(model, x, y, eps=0.1, attacks=["fgsm", "pgd20"])
    assert isinstance(report, spat.EvalReport)
    assert report.clean_accuracy == 0.5 and report.robust_accuracy == 0.5  # 2 of 4 are class 0
    assert report.accuracies == {"FGSM": 0.5, "PGD-20": 0.5} and report.n_examples == 4
    assert report.eps == pytest.approx(0.1)
    assert report.data["settings"]["device"] == "cpu"
    same = spat.evaluate(model, (x, y), eps=0.1, attacks="pgd20")
    assert torch.equal(same.predictions.predicted("pgd20"), report.predictions.predicted("pgd20"))
    with pytest.raises(SpatError, match="labels"):
        spat.evaluate(model, x, eps=0.1)


def test_evaluate_runs_on_the_models_device() -> None:
    from spat.api import model_device

    assert model_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert model_device(nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU


def _preds() -> Predictions:
    # true 0,0,1,1,2,2 -> under attack 1,1,0,1,2,0: flows 0→1 ×2, 1→0 ×1, 2→0 ×1
    return Predictions(labels=torch.tensor([0, 0, 1, 1, 2, 2]),
                       clean=torch.tensor([0, 0, 1, 1, 2, 2]),
                       adversarial={"PGD-20": torch.tensor([1, 1, 0, 1, 2, 0])})


def test_hard_pairs_by_hand() -> None:
    hp = spat.hard_pairs(_preds(), ["a", "b", "c"], attack="pgd20")  # key or name
    assert hp.attack == "PGD-20" and hp.class_names == ("a", "b", "c")
    assert hp.confusion.tolist() == [[0, 2, 0], [1, 1, 0], [1, 0, 1]]
    assert [(p.a, p.b, p.count, p.a_to_b, p.b_to_a) for p in hp.pairs] == [
        (0, 1, 3, 2, 1), (0, 2, 1, 0, 1)]
    assert hp.pairs[0].share_of_class == pytest.approx(3 / 4)
    assert hp.concentration.top_target.tolist() == [1, 0, 0]
    assert hp.weight_similarity is None and hp.correlation is None and hp.note is None
    assert "a↔b: 3 errors" in hp.text()


def test_hard_pairs_weight_similarity_of_any_module() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    hp = spat.hard_pairs(_preds(), "abc", model=net)
    w = net[3].weight.detach().double()
    w = w / w.norm(dim=1, keepdim=True)
    assert hp.weight_similarity is not None
    np.testing.assert_allclose(hp.weight_similarity, (w @ w.T).numpy(), atol=1e-12)
    assert hp.correlation is not None and hp.correlation.n_pairs == 3 and hp.note is None

    no_linear = spat.hard_pairs(_preds(), "abc", model=nn.Sequential(nn.Flatten()))
    assert no_linear.weight_similarity is None and "no nn.Linear" in (no_linear.note or "")
    wrong_rows = spat.hard_pairs(_preds(), "abc", model=nn.Linear(16, 5))
    assert wrong_rows.weight_similarity is None and "5 rows, not 3" in (wrong_rows.note or "")


def test_hard_pairs_of_a_spat_classifier_use_its_head() -> None:
    from spat.models import build_model

    model = build_model("small_cnn", num_classes=3, in_channels=1, image_size=(8, 8),
                        mean=(0.5,), std=(0.5,), head="cosine", cosine_scale=8.0)
    hp = spat.hard_pairs(_preds(), "abc", model=model)
    w = model.head.weight.detach().double()
    w = w / w.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(hp.weight_similarity, (w @ w.T).numpy(), atol=1e-12)


def test_hard_pairs_refusals() -> None:
    with pytest.raises(SpatError, match="not in the predictions"):
        spat.hard_pairs(_preds(), "abc", attack="cw20")
    with pytest.raises(SpatError, match="only 2 class names"):
        spat.hard_pairs(_preds(), "ab")
    with pytest.raises(SpatError, match="no attack"):
        spat.hard_pairs(Predictions(labels=torch.tensor([0]), clean=torch.tensor([0])), "ab")


def test_the_facade_is_small_and_lazy() -> None:
    assert set(spat.__all__) == {"EvalOptions", "EvalReport", "HardPairs", "Run", "TrainConfig",
                                 "TrainResult", "__version__", "evaluate", "hard_pairs",
                                 "load_model", "load_run", "train"}
    for name in spat.__all__:
        assert getattr(spat, name) is not None
    with pytest.raises(AttributeError):
        spat.nothing  # noqa: B018

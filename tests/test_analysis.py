"""Hard-class-pair analysis: statistics on hand-built confusion matrices with known answers,
similarities of tiny models with known answers, the over-training table from a hand-written
metrics.jsonl, and ``spat analyze`` / ``spat compare`` end to end on tiny digits runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spat.analysis import stats
from spat.analysis.analyze import collect
from spat.analysis.compare import compare_runs, parse_labels
from spat.analysis.over_epochs import TRAINING_COLUMNS, over_training, read_metrics
from spat.analysis.predictions import choose_attack
from spat.analysis.record import autoattack_accuracy
from spat.analysis.similarity import (
    class_mean_features,
    feature_similarity,
    head_similarity,
)
from spat.analysis.writers import slug
from spat.cli import main
from spat.data import Split
from spat.errors import SpatError
from spat.evaluation.core import Predictions
from spat.evaluation.report import SCHEMA
from spat.models import Classifier, CosineLinear, Normalize

# Rows = true class, columns = predicted class.
# class 0: 10 examples, 8 right, 2 → class 1         (e = 2)
# class 1: 10 examples, 6 right, 1 → 0, 3 → 2        (e = 4)
# class 2: 10 examples, all right                    (e = 0)
CONF = np.array([[8, 2, 0], [1, 6, 3], [0, 0, 10]])


# ------------------------------------------------------------------------- normalisations
def test_row_and_error_normalisation() -> None:
    r = stats.row_normalized(CONF)
    np.testing.assert_allclose(r, [[0.8, 0.2, 0.0], [0.1, 0.6, 0.3], [0.0, 0.0, 1.0]])
    e = stats.error_normalized(CONF)
    np.testing.assert_allclose(e[0], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(e[1], [0.25, 0.0, 0.75])
    assert np.all(np.isnan(e[2]))  # no misclassified example: undefined, not a crash
    np.testing.assert_allclose(stats.per_class_accuracy(CONF), [0.8, 0.6, 1.0])
    assert stats.accuracy(CONF) == pytest.approx(24 / 30)
    np.testing.assert_array_equal(stats.class_errors(CONF), [2, 4, 0])
    np.testing.assert_array_equal(stats.class_totals(CONF), [10, 10, 10])


def test_empty_class_and_torch_input() -> None:
    conf = torch.tensor([[0, 0], [1, 3]])
    r = stats.row_normalized(conf)
    assert np.all(np.isnan(r[0])) and r[1].tolist() == [0.25, 0.75]
    assert math.isnan(stats.per_class_accuracy(conf)[0])


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros((1, 1)), [[1, -1], [0, 1]],
                                 [[1, float("nan")], [0, 1]]])
def test_bad_matrices_rejected(bad: object) -> None:
    with pytest.raises(SpatError):
        stats.as_counts(bad)


# ------------------------------------------------------------------------- flows
def test_directed_flows_ranked_three_ways() -> None:
    by_class = stats.directed_flows(CONF)
    assert [(f.source, f.target) for f in by_class] == [(1, 2), (0, 1), (1, 0)]
    top = by_class[0]
    assert (top.count, top.share_of_class, top.share_of_errors) == (3, 0.3, 0.75)
    by_errors = stats.directed_flows(CONF, by="errors")
    assert [(f.source, f.target) for f in by_errors] == [(0, 1), (1, 2), (1, 0)]
    assert by_errors[0].share_of_errors == 1.0
    by_count = stats.directed_flows(CONF, by="count")
    assert [f.count for f in by_count] == [3, 2, 1]
    assert len(stats.directed_flows(CONF, include_zero=True)) == 6
    names = ["T-shirt/top", "Trouser", "Shirt"]
    assert top.label(names) == "Trouser→Shirt"
    assert top.to_dict(names)["pair"] == "Trouser→Shirt"
    with pytest.raises(SpatError):
        stats.directed_flows(CONF, by="nonsense")


def test_symmetric_flows() -> None:
    pairs = stats.symmetric_flows(CONF)
    # both pairs move 3 examples out of 20 (share of class tie, count tie): broken by share of
    # the two classes' errors, 3/4 for 1↔2 against 3/6 for 0↔1
    assert [(p.a, p.b) for p in pairs] == [(1, 2), (0, 1)]
    p12, p01 = pairs
    assert (p12.count, p12.a_to_b, p12.b_to_a) == (3, 3, 0)
    assert p12.share_of_class == pytest.approx(0.15)
    assert p12.share_of_errors == pytest.approx(0.75)
    assert p12.share_of_all_errors == pytest.approx(0.5)
    assert (p01.count, p01.a_to_b, p01.b_to_a) == (3, 2, 1)
    assert p01.share_of_errors == pytest.approx(0.5)
    assert p01.label(["a", "b", "c"]) == "a↔b"
    m = stats.symmetric_flow_matrix(CONF)
    assert m[0, 1] == m[1, 0] == pytest.approx(0.15) and math.isnan(m[0, 0])
    d = stats.directed_flow_matrix(CONF, "errors")
    assert d[0, 1] == 1.0 and math.isnan(d[2, 0]) and math.isnan(d[1, 1])


# ------------------------------------------------------------------------- concentration
def test_concentration_uniform_one_target_and_no_errors() -> None:
    conf = np.array([
        [4, 2, 2, 2],   # errors spread uniformly over the 3 wrong classes
        [0, 5, 0, 6],   # one target
        [0, 0, 9, 0],   # no errors
        [1, 0, 3, 6],   # 1/4 and 3/4
    ])
    c = stats.concentration(conf)
    assert c.top_share[0] == pytest.approx(1 / 3)
    assert c.normalized_entropy[0] == pytest.approx(1.0) == c.UNIFORM
    assert c.top_target[1] == 3 and c.top_share[1] == 1.0
    assert c.normalized_entropy[1] == pytest.approx(0.0)
    assert c.top_target[2] == -1 and math.isnan(c.top_share[2])
    assert math.isnan(c.normalized_entropy[2])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert c.top_target[3] == 2 and c.top_share[3] == 0.75
    assert c.entropy[3] == pytest.approx(h)
    assert c.normalized_entropy[3] == pytest.approx(h / math.log(3))
    assert c.mean_top_share == pytest.approx((1 / 3 + 1 + 0.75) / 3)
    assert c.mean_normalized_entropy == pytest.approx((1 + 0 + h / math.log(3)) / 3)
    assert c.uniform_top_share == pytest.approx(1 / 3)


def test_concentration_two_classes_and_no_errors_at_all() -> None:
    c = stats.concentration([[3, 1], [2, 2]])
    assert list(c.top_share) == [1.0, 1.0]
    assert np.all(np.isnan(c.normalized_entropy))  # log(K−1) = 0: undefined
    perfect = stats.concentration(np.eye(3) * 5)
    assert math.isnan(perfect.mean_top_share) and math.isnan(perfect.mean_normalized_entropy)
    s = stats.flow_summary(np.eye(3) * 5)
    assert s["top_pair"] is None and s["mean_top_share"] is None and s["accuracy"] == 1.0


def test_flow_summary() -> None:
    s = stats.flow_summary(CONF, ["a", "b", "c"])
    assert s["top_pair"]["pair"] == "b→c" and s["top_pair"]["share_of_errors"] == 0.75
    assert s["top_symmetric_pair"]["pair"] == "b↔c"
    assert s["errors"] == 6 and s["uniform_top_share"] == 0.5
    assert s["uniform_normalized_entropy"] == 1.0
    json.dumps(s)  # JSON-ready


# ------------------------------------------------------------------------- Spearman
def test_spearman_monotone_is_one() -> None:
    rng = np.random.default_rng(0)
    sim = rng.uniform(-1, 1, size=(5, 5))
    flow = np.exp(3 * sim) + 1  # strictly increasing in the similarity
    r = stats.offdiag_spearman(sim, flow)
    assert r.rho == pytest.approx(1.0) and r.n_pairs == 20 and r.p_value < 1e-6
    anti = stats.offdiag_spearman(sim, -flow)
    assert anti.rho == pytest.approx(-1.0)
    sym = (sim + sim.T) / 2
    rs = stats.offdiag_spearman(sym, np.exp(sym), symmetric=True)
    assert rs.rho == pytest.approx(1.0) and rs.n_pairs == 10
    # the diagonal is ignored and NaN pairs are dropped
    flow2 = flow.copy()
    np.fill_diagonal(flow2, -100.0)
    flow2[0, 1] = np.nan
    r2 = stats.offdiag_spearman(sim, flow2)
    assert r2.rho == pytest.approx(1.0) and r2.n_pairs == 19
    assert "ρ = 1.00" in r2.text()


def test_spearman_degenerate_is_nan() -> None:
    sim = np.arange(9.0).reshape(3, 3)
    r = stats.offdiag_spearman(sim, np.ones((3, 3)))
    assert math.isnan(r.rho) and r.n_pairs == 6 and "undefined" in r.text()
    with pytest.raises(SpatError):
        stats.offdiag_spearman(np.ones((3, 3)), np.ones((2, 2)))


# ------------------------------------------------------------------------- similarities
class _Flat(nn.Module):
    """A backbone that flattens the (normalised) image: features = pixels."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_head_similarity_known(head: str) -> None:
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-1.0, 0.0]])
    h = nn.Linear(2, 4) if head == "linear" else CosineLinear(2, 4)
    with torch.no_grad():
        h.weight.copy_(w)
    model = Classifier(Normalize(1), _Flat(2), h)
    s = head_similarity(model)
    r = 1 / math.sqrt(2)
    expected = np.array([[1, 0, r, -1], [0, 1, r, 0], [r, r, 1, -r], [-1, 0, -r, 1]])
    np.testing.assert_allclose(s, expected, atol=1e-7)


def test_class_mean_features_known() -> None:
    # 1x1x2 "images": class 0 → pixels (255, 0) and (255, 0); class 1 → (0, 255) and (0, 51);
    # class 2 → (255, 255); class 3 has no example
    images = torch.tensor([[255, 0], [255, 0], [0, 255], [0, 51], [255, 255]],
                          dtype=torch.uint8).view(5, 1, 1, 2)
    labels = torch.tensor([0, 0, 1, 1, 2])
    model = Classifier(Normalize(1), _Flat(2), nn.Linear(2, 4)).train()
    means = class_mean_features(model, Split(images, labels), 4, batch_size=2)
    np.testing.assert_allclose(means[:3], [[1, 0], [0, 0.6], [1, 1]], atol=1e-6)
    assert np.all(np.isnan(means[3]))
    assert model.training  # mode restored
    sim = feature_similarity(means[:3])
    # centred at (2/3, 8/15): directions (1/3, −8/15), (−2/3, 1/15), (1/3, 7/15)
    c = means[:3] - means[:3].mean(0)
    u = c / np.linalg.norm(c, axis=1, keepdims=True)
    np.testing.assert_allclose(sim, u @ u.T, atol=1e-7)
    assert sim[0, 0] == pytest.approx(1.0)


# ------------------------------------------------------------------------- over training
def test_over_training_from_metrics(tmp_path: Path) -> None:
    recs = [
        {"epoch": 1, "lr": 0.1, "train_loss": 2.0, "val_clean_acc": 0.5, "val_robust_acc": 0.2,
         "val_attack": "PGD-10", "val_adv_confusion": [[2, 2, 0], [3, 1, 0], [1, 1, 2]]},
        {"epoch": 2, "lr": 0.1, "train_loss": 1.5, "val_clean_acc": 0.6, "val_robust_acc": 0.3,
         "val_attack": "PGD-10", "val_adv_confusion": CONF.tolist()},
        {"epoch": 3, "lr": 0.01, "train_loss": 1.2},  # no validation split
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs)
                                            + "\n{\"epoch\": 4, torn")
    rows = over_training(read_metrics(tmp_path), ["a", "b", "c"])
    assert len(rows) == 3 and all(list(r) == list(TRAINING_COLUMNS) for r in rows)
    r1, r2, r3 = rows
    # epoch 1: 1→0 moves 3 of b's 4 examples (all its errors); a→b 2 of 4; c spreads 1/1
    assert r1["top_pair"] == "b→a" and r1["top_pair_share_of_errors"] == 1.0
    assert r1["top_pair_share_of_class"] == 0.75
    assert r1["top_symmetric_pair"] == "a↔b"
    assert r1["top_symmetric_share_of_all_errors"] == pytest.approx(5 / 7)
    assert r1["mean_top_share"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert r1["mean_normalized_entropy"] == pytest.approx((0 + 0 + 1) / 3)
    assert r1["val_errors"] == 7
    assert r2["top_pair"] == "b→c" and r2["top_pair_share_of_errors"] == 0.75
    assert r2["mean_top_share"] == pytest.approx((1 + 0.75) / 2)
    assert r3["train_loss"] == 1.2 and r3["top_pair"] is None and r3["mean_top_share"] is None


# ------------------------------------------------------------------------- helpers
def test_helpers() -> None:
    assert slug("PGD-20") == "pgd-20" and slug("AutoAttack (standard)") == "autoattack_standard"
    assert choose_attack(["FGSM", "PGD-20", "CW-20"], None) == "PGD-20"
    assert choose_attack(["FGSM", "PGD-50"], None) == "PGD-50"
    assert choose_attack(["FGSM"], None) == "FGSM"
    with pytest.raises(SpatError):
        choose_attack(["FGSM"], "PGD-20")
    assert parse_labels("PGD-AT, SPAT", 2) == ["PGD-AT", "SPAT"]
    with pytest.raises(SpatError):
        parse_labels("a,b,c", 2)
    assert autoattack_accuracy({"attacks": [{"name": "PGD-20", "accuracy": 0.5},
                                            {"name": "AutoAttack", "accuracy": 0.4}]}) == 0.4
    # only spat eval's own fields count: no search through other layouts
    assert autoattack_accuracy({"results": [{"name": "AutoAttack", "accuracy": 0.4}]}) is None
    assert autoattack_accuracy({"pgd": 0.5}) is None and autoattack_accuracy(None) is None
    # spat eval's report.json: the top-level autoattack_acc, never AutoAttack-fast's number
    rep = {"attacks": [{"name": "AutoAttack-fast", "accuracy": 0.45}], "autoattack_acc": 0.44}
    assert autoattack_accuracy(rep) == 0.44
    assert autoattack_accuracy({**rep, "autoattack_acc": None}) is None
    assert autoattack_accuracy({"attacks": [{"name": "AutoAttack-fast", "accuracy": 0.4}]}) is None
    zeros = torch.zeros(2, dtype=torch.long)
    fast = Predictions(labels=zeros, clean=zeros,
                       adversarial={"AutoAttack-fast": torch.tensor([0, 1])})
    assert autoattack_accuracy(None, fast) is None


# ------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny digits runs (PGD-AT and SPAT), a few seconds each."""
    from spat.config import TrainConfig
    from spat.train.training import train

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in ("pgd_at", "spat"):
        s = train(TrainConfig(out_dir=str(root), name=method, method=method, epochs=2,
                              train_subset=200, val_size=100, steps=2, val_steps=2,
                              test_steps=1, device="cpu"),
                  progress=False, log=lambda _s: None)
        out[method] = s.run_dir
    return out


def test_analyze_cli_end_to_end(tiny_runs: dict[str, Path], capsys: pytest.CaptureFixture
                                ) -> None:
    run = tiny_runs["pgd_at"]
    # PGD-2 instead of the default PGD-20: CPU time
    assert main(["analyze", str(run), "--max-examples", "120", "--steps", "2"]) == 0
    text = capsys.readouterr().out
    assert "computing clean and PGD-2 " in text and "hardest pair" in text
    out = run / "analysis"
    for name in ("report.md", "analysis.json", "per_class.csv", "hard_pairs.csv",
                 "hard_pairs_symmetric.csv", "confusion_clean.csv", "confusion_pgd-2.csv",
                 "over_training.csv", "similarity_head.csv", "similarity_features.csv",
                 "confusion_pgd-2.png", "hard_pairs.png", "per_class_accuracy.png",
                 "training.png", "similarity_flow.png", "predictions.npz"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 300_000
    a = json.loads((out / "analysis.json").read_text())
    s = a["summary"]
    assert s["examples"] == 120 and s["primary_attack"] == "PGD-2"
    assert a["class_names"] == [str(i) for i in range(10)]
    conf = np.array(a["attacks"]["PGD-2"]["confusion"])
    assert conf.sum() == 120
    assert s["accuracy"]["PGD-2"] == pytest.approx(np.trace(conf) / 120)
    assert len(a["over_training"]) == 2
    assert "![" in (out / "report.md").read_text()
    # a second analysis reuses the cached predictions (a different limit would not)
    logged: list[str] = []
    ra = collect(run, limit=120, steps=2, features=False, log=logged.append)
    assert any("using the cached predictions" in m for m in logged)
    assert ra.summary()["accuracy"] == s["accuracy"]


def test_analyze_uses_eval_predictions(tiny_runs: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    run = tiny_runs["spat"]
    labels = torch.arange(40) % 10
    preds = Predictions(labels=labels, clean=labels.clone(),
                        adversarial={"PGD-20": (labels + 1) % 10,
                                     "AutoAttack": torch.where(labels < 5, labels, 0)})
    (run / "eval").mkdir(exist_ok=True)
    preds.save(run / "eval" / "predictions.npz")
    (run / "eval" / "report.json").write_text(json.dumps({
        "schema": SCHEMA, "eps": 0.1, "clean_acc": 1.0, "attacks": [],
        "AutoAttack": {"accuracy": 0.45}, "checkpoint": "/elsewhere"}))
    logged: list[str] = []
    ra = collect(run, tmp_path / "an", features=False, log=logged.append)
    assert any("using the predictions of spat eval" in m for m in logged)
    assert any("warning: spat eval evaluated /elsewhere" in m for m in logged)
    s = ra.summary()
    assert set(ra.attacks) == {"PGD-20", "AutoAttack"} and ra.primary == "PGD-20"
    assert s["examples"] == 40 and s["prediction_source"].endswith("eval/predictions.npz")
    assert s["accuracy"]["clean"] == 1.0 and s["accuracy"]["PGD-20"] == 0.0
    assert s["autoattack_acc"] == 0.5  # from the predictions, before the report
    assert s["worst_case_acc"] == 0.0
    assert s["top_pair"]["share_of_errors"] == 1.0 and s["mean_top_share"] == 1.0
    assert s["mean_normalized_entropy"] == 0.0
    assert ra.per_class()[7]["top_target"] == "8"
    assert not (tmp_path / "an" / "predictions.npz").exists()
    assert main(["analyze", str(run), "--attack", "nope"]) == 2
    assert "unknown attack 'nope'" in capsys.readouterr().err


def test_compare_cli_end_to_end(tiny_runs: dict[str, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    a, b = tiny_runs["pgd_at"], tiny_runs["spat"]
    for r in (a, b):  # the eval predictions of the other test would be used: remove them
        for f in (r / "eval").glob("*") if (r / "eval").exists() else []:
            f.unlink()
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out), "--max-examples", "120",
                 "--steps", "2"]) == 0
    text = capsys.readouterr().out
    assert "PGD-AT" in text and "SPAT" in text and "top hard pair" in text
    assert text.rstrip().endswith(f"and 3 figures (PNG + PDF) to {out}")  # says where it wrote
    for name in ("comparison.md", "comparison.csv", "comparison.json",
                 "target_distribution.png", "confusion_pair.png", "per_class_robust.png"):
        assert (out / name).is_file(), name
    c = json.loads((out / "comparison.json").read_text())
    assert [r["label"] for r in c["runs"]] == ["PGD-AT", "SPAT"]
    assert c["attack"] == "PGD-2" and c["class"] in c["class_names"]
    assert "![target distribution](target_distribution.png)" in (out / "comparison.md").read_text()
    out2 = tmp_path / "cmp2"
    rows, files = compare_runs([a, b], labels=parse_labels("base,ours", 2), out_dir=out2,
                               limit=120, steps=2, class_name="3", plots_too=False,
                               log=lambda _s: None)
    c2 = json.loads((out2 / "comparison.json").read_text())
    assert [r["label"] for r in c2["runs"]] == ["base", "ours"] and c2["class"] == "3"
    assert rows[0]["focus_class"] == "3" and not any(f.endswith(".png") for f in files)
    assert (out2 / "comparison.csv").read_text().startswith("label,method,")
    assert main(["compare", str(a), str(b), "--labels", "x", "--out", str(out2)]) == 2
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err

"""One implementation per concept (issue 12): the JSON-lines reader, NaN → None, attack names."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from spat.errors import SpatError
from spat.evaluation.attacks import ATTACK_KEYS, attack_name, resolve_attack_name
from spat.evaluation.core import Predictions
from spat.utils.io import json_safe, nan_to_none, read_jsonl, read_jsonl_lines


# ----------------------------------------------------------------------------- JSON lines
def test_jsonl_missing_file_and_blank_lines(tmp_path: Path) -> None:
    assert read_jsonl(tmp_path / "absent.jsonl") == []
    p = tmp_path / "m.jsonl"
    p.write_text('{"a": 1}\n\n  \n[2]\n')
    assert read_jsonl(p) == [{"a": 1}, [2]]
    assert read_jsonl_lines(p) == [({"a": 1}, '{"a": 1}'), ([2], "[2]")]


def test_jsonl_torn_last_line_is_ignored_but_damage_elsewhere_is_an_error(tmp_path: Path
                                                                         ) -> None:
    p = tmp_path / "m.jsonl"
    good = json.dumps({"epoch": 1})
    p.write_bytes((good + "\n" + good[:5]).encode())  # killed mid-append
    assert read_jsonl(p) == [{"epoch": 1}]
    p.write_bytes((good + "\n").encode() + b'{"x": "\xc3')  # torn inside a UTF-8 character
    assert read_jsonl(p) == [{"epoch": 1}]
    p.write_text(good + "\n{oops\n" + good + "\n")
    with pytest.raises(SpatError, match=r"m\.jsonl line 2 is not valid JSON"):
        read_jsonl(p)


def test_jsonl_check_gets_each_record_and_where(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text('{"epoch": 1}\n{"epoch": 0}\n')
    seen: list[str] = []

    def check(rec: object, where: str) -> dict:
        seen.append(where)
        if rec["epoch"] < 1:  # type: ignore[index]
            raise SpatError(f"{where}: bad epoch")
        return rec  # type: ignore[return-value]

    with pytest.raises(SpatError, match=r"m\.jsonl record 2: bad epoch"):
        read_jsonl(p, check)
    assert seen == [f"{p} record 1", f"{p} record 2"]


# ----------------------------------------------------------------------------- NaN → None
def test_nan_to_none_and_json_safe() -> None:
    assert nan_to_none(None) is None and nan_to_none(math.nan) is None
    assert nan_to_none(np.float32("nan")) is None
    assert nan_to_none(np.int64(3)) == 3.0 and type(nan_to_none(np.int64(3))) is float
    assert nan_to_none(math.inf) == math.inf  # a scalar keeps its infinity
    doc = {1: np.float32(0.5), "a": (np.int64(3), np.bool_(True), np.array([1.5, np.inf])),
           "b": [math.nan, -math.inf, "x", None]}
    out = json_safe(doc)
    assert out == {"1": 0.5, "a": [3, True, [1.5, None]], "b": [None, None, "x", None]}
    assert type(out["a"][0]) is int and type(out["a"][1]) is bool
    json.dumps(out, allow_nan=False)  # strict JSON


# ----------------------------------------------------------------------------- attack names
def test_every_command_line_key_resolves_to_its_report_name() -> None:
    for key in ATTACK_KEYS:
        assert resolve_attack_name(key) == attack_name(key)
        assert resolve_attack_name(attack_name(key)) == attack_name(key)
    assert resolve_attack_name("pgd20x3") == attack_name("pgd20", restarts=3) == "PGD-20x3"
    assert resolve_attack_name("pgd10") == "PGD-10"  # training's validation attack
    assert resolve_attack_name("Pgd-20") == "PGD-20" and resolve_attack_name("autoattack") \
        == "AutoAttack"
    assert resolve_attack_name("my-attack") == "my-attack"


def test_predictions_accept_either_spelling() -> None:
    labels = torch.tensor([0, 1, 1, 0])
    preds = Predictions(labels=labels, clean=labels.clone(),
                        adversarial={"PGD-20": torch.tensor([1, 1, 0, 0]),
                                     "AutoAttack": torch.tensor([1, 0, 0, 0])})
    assert preds.accuracy("pgd20") == preds.accuracy("PGD-20") == 0.5
    assert torch.equal(preds.confusion("pgd20", 2), torch.tensor([[1, 1], [1, 1]]))
    assert torch.equal(preds.confusion("aa", 2), torch.tensor([[1, 1], [2, 0]]))
    with pytest.raises(KeyError, match="valid: PGD-20, AutoAttack"):
        preds.accuracy("cw20")
    with pytest.raises(KeyError):
        preds.accuracy("aa-fast")  # the reduced AutoAttack is another attack


def test_analysis_attack_choice_accepts_the_command_line_key() -> None:
    from spat.analysis.predictions import choose_attack

    assert choose_attack(["FGSM", "PGD-20"], "pgd20") == "PGD-20"
    with pytest.raises(SpatError, match="unknown attack 'pgd50'"):
        choose_attack(["FGSM", "PGD-20"], "pgd50")


# ----------------------------------------------------------------------------- the subset rule
def test_one_subset_rule_for_train_eval_and_analyze() -> None:
    from spat.data import Split
    from spat.data.subset import subset_indices, subset_split
    from spat.evaluation.inputs import select_subset

    # the rule, by hand: the first n of torch.randperm(N) with a CPU generator seeded 0
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(0))[:4]
    assert torch.equal(subset_indices(10, 4), expected)
    assert torch.equal(select_subset(10, 4, 0), expected)  # spat eval --n-examples 4
    assert not torch.equal(subset_indices(10, 4, seed=1), expected)
    assert torch.equal(subset_indices(10, None), torch.arange(10))
    assert torch.equal(subset_indices(10, 10), torch.arange(10))
    # a file sorted by class: the first 4 would all be class 0, the subset is not
    labels = torch.tensor([0] * 5 + [1] * 5)
    split = Split(images=torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), labels=labels)
    sub = subset_split(split, 4)
    assert torch.equal(sub.labels, labels[expected]) and len(set(sub.labels.tolist())) == 2
    assert torch.equal(sub.images.flatten().long(), expected)
    assert subset_split(split, 10) is split and subset_split(split, None) is split
    with pytest.raises(ValueError):
        subset_indices(10, 0)


def test_analyze_cache_of_the_old_head_rule_is_not_reused() -> None:
    from spat.analysis.predictions import _prediction_meta

    old = {"checkpoint": "c", "split": "test", "eps": 0.1, "norm": "linf", "attack": "PGD-20",
           "steps": 20, "limit": 5, "examples": 5}
    assert _prediction_meta("c", 0.1, "linf", 20, 5, 5) != old
    assert _prediction_meta("c", 0.1, "linf", 20, None, 9) == {**old, "limit": None,
                                                               "examples": 9}


# ----------------------------------------------------------------------------- the norm
@pytest.mark.parametrize("make", [
    lambda n: __import__("spat.attacks.geometry", fromlist=["Geometry"]).Geometry(n, 0.1),
    lambda n: __import__("spat.attacks.autoattack", fromlist=["aa_norm"]).aa_norm(n),
    lambda n: __import__("spat.attacks.geometry", fromlist=["check_norm"]).check_norm(n),
])
def test_one_norm_check_one_message(make) -> None:
    with pytest.raises(SpatError, match=r"^unknown norm 'l3' \(valid: linf, l2\)$"):
        make("l3")


def test_norm_check_in_config_and_methods() -> None:
    from spat.config import TrainConfig
    from spat.methods.base import ThreatModel

    with pytest.raises(SpatError, match=r"^unknown norm 'l1' \(valid: linf, l2\)$"):
        TrainConfig(norm="l1").resolved()
    with pytest.raises(SpatError, match=r"^unknown norm 'L2' \(valid: linf, l2\)$"):
        ThreatModel(eps=0.1, step_size=0.01, steps=2, norm="L2")


def test_a_runs_test_subset_is_evals_n_examples_subset(tmp_path: Path, monkeypatch) -> None:
    """Training's final test on ``test_subset = 40`` and ``evaluate(n_examples=40, seed=0)`` on
    the best checkpoint score the same examples, in the same order, with the same clean
    accuracy (a tiny 1-epoch digits run, CPU, a few seconds)."""
    import spat.train.final_test as final_test
    from spat.build import load_data, load_run
    from spat.config import config_from_dict
    from spat.data.subset import subset_indices
    from spat.evaluation import EvalOptions, evaluate
    from spat.train.training import train

    seen = []
    real = final_test.evaluate_split

    def spy(model, split, *args, **kwargs):
        seen.append(split)
        return real(model, split, *args, **kwargs)

    monkeypatch.setattr(final_test, "evaluate_split", spy)
    cfg = config_from_dict({"dataset": "digits", "model": "small_cnn", "method": "standard",
                            "epochs": 1, "train_subset": 64, "batch_size": 32,
                            "test_subset": 40, "val_steps": 1, "test_steps": 1,
                            "device": "cpu", "name": "sub", "out_dir": str(tmp_path)})
    result = train(cfg)
    run = load_run(result.run_dir)
    test = load_data(run.config).test
    idx = subset_indices(len(test), 40, 0)
    assert len(seen) == 1 and torch.equal(seen[0].images, test.images[idx])
    assert torch.equal(seen[0].labels, test.labels[idx])
    report = evaluate(run.model, test, EvalOptions(eps=0.1, attacks=[], n_examples=40, seed=0,
                                                   sanity_examples=0))
    assert report.data["subset"]["indices"] == idx.tolist()
    assert report.data["clean_acc"] == result.test_clean_acc
    assert result.test_examples == 40


# ----------------------------------------------------------------------------- typed outcomes
def test_attack_outcome_reads_a_saved_record() -> None:
    from spat.evaluation.attack_runs import AttackOutcome

    rec = {"predictions": [1, 0, 2], "key": "pgd20", "name": "PGD-20", "kind": "pgd",
           "settings": {"steps": 20}, "seconds": 2}
    o = AttackOutcome.from_record(rec, reused=True)
    assert (o.key, o.name, o.kind, o.predictions, o.reused) == ("pgd20", "PGD-20", "pgd",
                                                                 [1, 0, 2], True)
    assert o.seconds == 2.0 and type(o.seconds) is float
    assert o.details == {} and o.warnings == []  # absent in the record: empty
    with pytest.raises(KeyError):
        AttackOutcome.from_record({"key": "pgd20"}, reused=False)

"""``EvalOptions`` (the evaluation settings, validated in one place) and the attack-logits option
(``unit_cosine``: every attack sees a cosine head's s·z divided by s, as the official SPAT
evaluation; issue 11, point 5): validation, the attacked logits exactly ``model(x) / s``,
clean accuracy unchanged, the report, ``spat compare``'s warning and a study variant's
evaluation override."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

from spat.analysis.protocol_check import protocol_text, protocol_warnings
from spat.errors import SpatError
from spat.evaluation import EvalOptions, evaluate, print_report
from spat.evaluation.options import (
    CHECK_FIELDS,
    RESULT_FIELDS,
    UnitCosineLogits,
    attacked_model,
)
from spat.evaluation.report import attack_logits_of, report_options
from spat.models.heads import CosineLinear
from spat.study.cell import eval_matches
from spat.study.spec import parse_study, plan_cells

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _cosine_net(scale: float, seed: int = 0) -> nn.Module:
    """Flatten → a hidden layer → SPAT's cosine head with scale ``scale`` (8×8 inputs, 5
    classes); the same weights for the same seed whatever the scale."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(),
                         CosineLinear(16, 5, scale=scale)).eval()


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


# ----------------------------------------------------------------------------- EvalOptions
def test_defaults_and_normalisation() -> None:
    o = EvalOptions()
    assert (o.eps, o.norm, o.n_examples, o.seed, o.restarts, o.step_size, o.batch_size,
            o.sanity_examples, o.square_queries, o.attack_logits) == (
        None, None, None, 0, 1, None, 500, 100, 1000, "model")
    assert o.attacks == ("fgsm", "pgd20", "pgd100", "cw20", "aa")
    o = EvalOptions(eps=1, attacks="aa, PGD20,clean", norm="Linf", step_size=1)
    assert o.attacks == ("pgd20", "aa") and o.norm == "linf"
    assert isinstance(o.eps, float) and isinstance(o.step_size, float)
    with pytest.raises(dataclasses_frozen_error()):
        o.seed = 3  # type: ignore[misc]
    filled = EvalOptions(attacks=["fgsm"]).with_threat(0.1, None)
    assert (filled.eps, filled.norm) == (0.1, "linf")
    assert EvalOptions(eps=0.2, norm="l2").with_threat(0.1, "linf").eps == 0.2
    assert EvalOptions.of(EvalOptions(seed=4), batch_size=7) == EvalOptions(seed=4,
                                                                            batch_size=7)


def dataclasses_frozen_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("kw, match", [
    (dict(eps=0.0), "eps must be > 0"),
    (dict(eps=float("inf")), "eps must be > 0"),
    (dict(eps="8/255"), "eps must be a number"),
    (dict(eps=2.0, norm="linf"), r"eps must be in \(0, 1\] for linf"),
    (dict(norm="l1"), "unknown norm 'l1'"),
    (dict(attacks="pgd3"), "unknown attack 'pgd3'"),
    (dict(attacks=[1, 2]), "attacks must be attack names"),
    (dict(n_examples=0), "n-examples must be >= 1"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(restarts=0), "restarts must be >= 1"),
    (dict(restarts=True), "restarts must be an integer"),
    (dict(batch_size=0), "batch size must be >= 1"),
    (dict(sanity_examples=-1), "sanity examples must be >= 0"),
    (dict(square_queries=0), "square queries must be >= 1"),
    (dict(step_size=-0.1), "step size must be > 0"),
    (dict(attack_logits="cosine"), "attack logits must be one of model, unit_cosine"),
])
def test_bad_values_are_one_line_errors(kw: dict, match: str) -> None:
    with pytest.raises(SpatError, match=match) as e:
        EvalOptions(**kw)
    assert "\n" not in str(e.value)


def test_unknown_setting_and_missing_eps() -> None:
    with pytest.raises(SpatError, match="unknown evaluation setting 'epsilon'"):
        EvalOptions.of(epsilon=0.1)
    with pytest.raises(SpatError, match="give eps"):
        EvalOptions().with_threat(None, None)
    x, y = _data(8)
    with pytest.raises(SpatError, match="give eps"):
        evaluate(_cosine_net(4.0), (x, y), EvalOptions(attacks="fgsm"))


def test_options_and_the_facade_give_the_same_report() -> None:
    """``evaluate(model, data, EvalOptions(...))``, the same options built by ``EvalOptions.of``
    and the facade ``spat.evaluate`` (keywords over ``options``) are the same evaluation: same
    predictions, same recorded settings; ``evaluate`` takes settings in EvalOptions only."""
    import spat

    net, (x, y) = _cosine_net(8.0), _data()
    kw = dict(eps=0.1, attacks=["fgsm", "pgd20", "cw20"], n_examples=30, seed=2, restarts=2,
              batch_size=16, sanity_examples=10, square_queries=20)
    a = evaluate(net, (x, y), EvalOptions(**kw))
    b = evaluate(net, (x, y), EvalOptions.of(EvalOptions(eps=0.3, seed=9),
                                             **{**kw, "eps": 0.1, "seed": 2}))
    c = spat.evaluate(net, x, y, eps=0.1, seed=2, attacks=kw["attacks"], n_examples=30,
                      batch_size=16, options=EvalOptions(restarts=2, sanity_examples=10,
                                                         square_queries=20))
    with pytest.raises(TypeError):
        evaluate(net, (x, y), EvalOptions(**kw), eps=0.2)  # type: ignore[call-arg]
    for r in (b, c):
        assert r.accuracies == a.accuracies
        for name, p in a.predictions.adversarial.items():
            assert torch.equal(p, r.predictions.adversarial[name])
        assert r.data["settings"] == a.data["settings"]
    assert a.data["settings"]["attack_logits"] == "model"
    assert a.data["settings"]["logit_scale"] is None
    assert a.data["settings"]["restarts"] == 2 and a.data["seed"] == 2


# ----------------------------------------------------------------------------- unit cosine
def test_attacked_logits_are_exactly_model_over_s() -> None:
    net, (x, _) = _cosine_net(5.5), _data(12)
    attacked, s = attacked_model(net, "unit_cosine")
    assert s == 5.5 and isinstance(attacked, UnitCosineLogits)
    assert sum(p.numel() for p in attacked.parameters()) == sum(
        p.numel() for p in net.parameters())
    with torch.no_grad():
        out = attacked(x)
        assert torch.equal(out, net(x) / 5.5)
        # z itself: the head's temperature-1 cosine of the features, within rounding
        z = net[3].cosine(net[2](net[1](net[0](x))))
    assert torch.allclose(out, z, atol=1e-6)
    same, none = attacked_model(net, "model")
    assert same is net and none is None


def test_a_model_without_a_cosine_head_is_a_one_line_error() -> None:
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).eval()
    x, y = _data(8)
    with pytest.raises(SpatError, match="need a model with a cosine head") as e:
        evaluate(linear, (x, y), EvalOptions(eps=0.1, attacks="fgsm",
                                             attack_logits="unit_cosine", sanity_examples=0))
    assert "\n" not in str(e.value)


def test_unit_cosine_keeps_clean_accuracy_and_attacks_z() -> None:
    """With s = 4 (a power of two, so s·z / s = z and the gradients are exact in floating
    point), every attack on the unit-cosine logits of the s = 4 model gives the very
    predictions of the same attacks on a model whose head has s = 1 (logits z)."""
    x, y = _data()
    s4, s1 = _cosine_net(4.0), _cosine_net(1.0)
    opts = EvalOptions(eps=0.15, attacks=["fgsm", "pgd20", "cw20"], batch_size=16,
                       sanity_examples=8, square_queries=10)
    on_z = evaluate(s4, (x, y), EvalOptions.of(opts, attack_logits="unit_cosine"))
    ref = evaluate(s1, (x, y), opts)
    on_sz = evaluate(s4, (x, y), opts)
    assert on_z.clean_accuracy == on_sz.clean_accuracy == ref.clean_accuracy
    assert torch.equal(on_z.predictions.clean, on_sz.predictions.clean)
    for name, p in ref.predictions.adversarial.items():
        assert torch.equal(on_z.predictions.adversarial[name], p), name
    st = on_z.data["settings"]
    assert (st["attack_logits"], st["logit_scale"]) == ("unit_cosine", 4.0)
    assert attack_logits_of(on_z.data) == "unit_cosine"
    assert attack_logits_of(on_sz.data) == "model"
    assert attack_logits_of({"settings": {"attacks": []}}) == "model"  # an old report
    buf = io.StringIO()
    print_report(on_z, Console(file=buf, width=200))
    assert "attack on z = s·z/4" in buf.getvalue()
    assert "every attack saw the temperature-1 cosine logits" in buf.getvalue()
    buf = io.StringIO()
    print_report(on_sz, Console(file=buf, width=200))
    assert "unit_cosine" not in buf.getvalue()


def test_spat_evaluate_facade_takes_attack_logits() -> None:
    import spat

    x, y = _data(20)
    r = spat.evaluate(_cosine_net(4.0), x, y, eps=0.1, attacks="fgsm",
                      attack_logits="unit_cosine")
    assert r.data["settings"]["attack_logits"] == "unit_cosine"
    assert r.data["settings"]["sanity_examples"] == 100  # EvalOptions' default


_TINY = '''
import torch
from torch import nn
from spat.models.heads import CosineLinear

def cosine():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), CosineLinear(16, 10, 4.0))

def linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
'''


def test_cli_attack_logits_records_and_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from spat.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "tiny_eval_nets.py").write_text(_TINY)
    common = ["--dataset", "digits", "--attacks", "fgsm", "--n-examples", "20",
              "--sanity-examples", "0", "--no-progress"]
    assert main(["eval", "--model", "tiny_eval_nets:cosine", "--attack-logits", "unit_cosine",
                 "--out", str(tmp_path / "z"), *common]) == 0
    printed = capsys.readouterr().out
    assert "attack on z = s·z/4" in printed
    rep = json.loads((tmp_path / "z" / "report.json").read_text())
    assert rep["settings"]["attack_logits"] == "unit_cosine"
    assert main(["eval", "--model", "tiny_eval_nets:linear", "--attack-logits", "unit_cosine",
                 "--out", str(tmp_path / "lin"), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spat: error: ") and "cosine head" in err and "\n" not in err


# ----------------------------------------------------------------------------- compare
def test_compare_flags_different_attack_logits() -> None:
    base = {"examples": 50, "labels_digest": "d", "attacks": ["PGD-20"], "eps": 0.1,
            "norm": "linf", "indices": "all 50 in order", "source": "x"}
    a = {**base, "attack_logits": "model"}
    b = {**base, "attack_logits": "unit_cosine"}
    assert protocol_warnings(["a", "b"], [a, dict(a)]) == []
    (w,) = protocol_warnings(["a", "b"], [a, b])
    assert "different attack logits" in w and "a: model" in w and "b: unit_cosine" in w
    assert protocol_text(b).endswith("on unit_cosine logits")
    assert "logits" not in protocol_text(a)


# ----------------------------------------------------------------------------- study
_STUDY = {
    "study": {"name": "t", "datasets": ["digits"], "seeds": [0], "out_dir": "runs/x"},
    "train": {"epochs": 1, "train_subset": 100, "device": "cpu"},
    "eval": {"attacks": ["pgd20"], "n_examples": 50},
}


def test_study_variant_eval_override_reaches_its_cells() -> None:
    spec = parse_study({**_STUDY, "variants": {
        "spat_sz": {"method": "spat"},
        "spat_t1": {"method": "spat", "eval": {"attack_logits": "unit_cosine",
                                               "attacks": ["cw20", "pgd20"]}}}}, "s.toml")
    assert spec.variants["spat_t1"] == {"method": "spat"}  # training settings only
    cells = {c.variant: c for c in plan_cells(spec)}
    assert cells["spat_sz"].eval["attack_logits"] == "model"
    assert cells["spat_t1"].eval["attack_logits"] == "unit_cosine"
    assert cells["spat_t1"].eval["attacks"] == ["pgd20", "cw20"]
    assert cells["spat_t1"].eval["n_examples"] == 50  # the rest from [eval]
    same = {k: v for k, v in cells["spat_sz"].config.items() if k != "out_dir"}
    assert same == {k: v for k, v in cells["spat_t1"].config.items() if k != "out_dir"}
    # the cell's identity: a report on the model's logits is not this cell's evaluation
    report = {"settings": {"attacks": ["pgd20", "cw20"], "restarts": 1,
                           "attack_logits": "unit_cosine"}, "norm": "linf",
              "eps": 0.1, "seed": 0, "n_examples": 50, "subset": {"of": 500, "indices": [0]}}
    trained = {"eps": 0.1, "norm": "linf"}
    assert eval_matches(report, cells["spat_t1"].eval, trained)
    report["settings"]["attack_logits"] = "model"
    assert not eval_matches(report, cells["spat_t1"].eval, trained)
    del report["settings"]["attack_logits"]  # written before the option: the model's logits
    assert not eval_matches(report, cells["spat_t1"].eval, trained)
    report["settings"]["attacks"] = ["pgd20"]
    assert eval_matches(report, cells["spat_sz"].eval, trained)


def test_every_eval_option_is_declared_number_changing_or_not() -> None:
    names = [f.name for f in dataclasses.fields(EvalOptions)]
    assert sorted(RESULT_FIELDS + CHECK_FIELDS) == sorted(names)
    assert not set(RESULT_FIELDS) & set(CHECK_FIELDS)


def test_a_number_changing_eval_setting_makes_a_cell_stale_a_cosmetic_one_does_not() -> None:
    """A real report (``evaluate``'s own document) against a study cell's [eval]: equal
    settings match; a changed field of RESULT_FIELDS (restarts, seed, batch size, attacks, ε,
    n_examples, the checkpoint) makes the cell stale; the sanity settings and the plumbing
    (progress bars, saving, messages) do not; a report without the settings added later
    (restarts, attack logits) is read with their defaults; a broken one is stale."""
    from spat.evaluation import Plumbing

    x, y = _data(30)
    opts = EvalOptions(eps=0.1, attacks=["fgsm"], n_examples=20, seed=1, sanity_examples=4,
                       square_queries=5, batch_size=8)
    shown = Plumbing(progress=True, log=lambda s: None)
    report = evaluate(_cosine_net(4.0), (x, y), opts, metadata={"which": "best"},
                      plumbing=shown).data
    ev = {"attacks": ["fgsm"], "n_examples": 20, "which": "best", "seed": 1, "batch_size": 8,
          "restarts": 1, "sanity_examples": 4, "eps": None, "analyze": True,
          "attack_logits": "model"}
    trained = {"eps": 0.1, "norm": "linf"}
    assert eval_matches(report, ev, trained)
    for cosmetic in ({"sanity_examples": 0}, {"sanity_examples": 30}, {"analyze": False}):
        assert eval_matches(report, {**ev, **cosmetic}, trained), cosmetic
    for changed in ({"restarts": 2}, {"seed": 2}, {"batch_size": 500}, {"attacks": ["pgd20"]},
                    {"eps": 0.2}, {"n_examples": 10}, {"n_examples": None}, {"which": "last"},
                    {"attack_logits": "unit_cosine"}):
        assert not eval_matches(report, {**ev, **changed}, trained), changed
    assert not eval_matches(report, ev, {"eps": 0.2, "norm": "linf"})  # the run's ε changed
    assert not eval_matches(report, ev, {"eps": 0.1, "norm": "l2"})
    # n_examples at or above the split size selects the whole split, as None does
    whole = evaluate(_cosine_net(4.0), (x, y), EvalOptions.of(opts, n_examples=None)).data
    assert eval_matches(whole, {**ev, "n_examples": None}, trained)
    assert eval_matches(whole, {**ev, "n_examples": 30}, trained)
    assert eval_matches(whole, {**ev, "n_examples": 1000}, trained)
    assert not eval_matches(whole, ev, trained)
    # an older report: no restarts, no attack logits recorded -> their defaults (1, "model")
    old = json.loads(json.dumps(report))
    del old["settings"]["restarts"], old["settings"]["attack_logits"], old["which"]
    assert eval_matches(old, ev, trained)
    assert not eval_matches(old, {**ev, "restarts": 2}, trained)
    broken = json.loads(json.dumps(report))
    del broken["eps"]
    assert not eval_matches(broken, ev, trained) and not eval_matches(None, ev, trained)
    assert report_options(report) == EvalOptions.of(opts, norm="linf", square_queries=1000)


def test_study_variant_eval_override_from_toml_table(tmp_path: Path) -> None:
    from spat.study.spec import load_study

    head = ('[study]\nname = "t"\ndatasets = ["digits"]\nseeds = [0]\n'
            '[eval]\nattacks = ["pgd20"]\n[variants.a]\nmethod = "spat"\n')
    inline = tmp_path / "inline.toml"
    inline.write_text(head + 'eval = { attack_logits = "unit_cosine" }\n')
    table = tmp_path / "table.toml"
    table.write_text(head + '[variants.a.eval]\nattack_logits = "unit_cosine"\n')
    assert load_study(inline).variant_eval == load_study(table).variant_eval == {
        "a": {"attack_logits": "unit_cosine"}}


@pytest.mark.parametrize("variant, field", [
    ({"method": "spat", "eval": {"attack_logits": "t1"}}, "variants.v.eval.attack_logits"),
    ({"method": "spat", "eval": {"colour": 1}}, "variants.v.eval.colour"),
    ({"method": "spat", "eval": {"restarts": 0}}, "variants.v.eval.restarts"),
    ({"method": "spat", "eval": 3}, "variants.v.eval"),
    ({"method": "trades", "eval": {"attack_logits": "unit_cosine"}}, "variants.v"),
])
def test_study_variant_eval_errors_name_the_field(variant: dict, field: str) -> None:
    with pytest.raises(SpatError) as e:
        parse_study({**_STUDY, "variants": {"v": variant}}, "s.toml")
    msg = str(e.value)
    assert msg.startswith("s.toml") and field in msg and "\n" not in msg


def test_white_box_spec_refuses_a_kind_it_cannot_build() -> None:
    """AutoAttack is not a white-box preset: asking for its spec is an error naming the kinds,
    never a silent fallback to CW (each kind is built by its own maker)."""
    from spat.errors import SpatError
    from spat.evaluation.attacks import white_box_spec

    assert white_box_spec("pgd20", 0.1, "linf").name == "PGD-20"
    assert white_box_spec("cw20", 0.1, "linf").name == "CW-20"
    with pytest.raises(SpatError, match="not a white-box attack"):
        white_box_spec("aa", 0.1, "linf")

"""Each method's knowledge lives in its class (spat.methods.base.MethodDefaults): the resolved
configs of every method come out exactly as they did when TrainConfig hard-coded them, and the
config checks and CLI help read the classes."""

from __future__ import annotations

import pytest

from spat.cli import main
from spat.config import (
    METHOD_DATASET_DEFAULTS,
    TrainConfig,
    dataset_defaults,
    lr_remedy,
)
from spat.data import DATASETS, dataset_names
from spat.errors import SpatError
from spat.methods import METHODS, SPAT, ConsistencyAT, build_method, supporting

KEYS = ("model", "head", "init", "beta", "m", "n", "self_paced_ce", "hcp_ecp", "eps",
        "step_size", "steps", "epochs", "batch_size", "lr", "weight_decay")
_DIGITS = ("small_cnn", 0.1, 0.025, 10, 30, 64, 0.05, 5e-4)
_CIFAR = ("resnet18", 0.031, 0.007, 10, 100, 128, 0.1, 2e-4)
#: method → (head, init, beta, m, n, self_paced_ce, hcp_ecp), as resolved before the method
#: classes held them (computed at commit 73a85c2, where config.py hard-coded `method == "spat"`);
#: since issue 24 a resolved config holds only its method's own hyperparameters, so one that
#: the method lacks reads None (it recorded an unused 6.0/0.2/False before)
PINNED = {
    "standard": ("linear", "none", None, 0.2, None, False, None),
    "pgd_at": ("linear", "uniform", None, 0.2, None, False, None),
    "trades": ("linear", "normal", 6.0, 0.2, 0.2, False, False),
    "mart": ("linear", "normal", 6.0, 0.2, 0.2, False, False),
    "spat": ("cosine", "normal", 6.0, 0.2, 0.2, True, True),
}


#: The digits' lr per method since issue 23: the study's validation selection (docs/study
#: table 0); standard keeps the dataset's 0.05.
DIGITS_LR = {"standard": 0.05, "pgd_at": 0.05, "trades": 0.02, "mart": 0.02, "spat": 0.02}


@pytest.mark.parametrize("dataset", ["digits", "cifar10"])
@pytest.mark.parametrize("method", list(PINNED))
def test_resolved_configs_pinned(dataset: str, method: str) -> None:
    data = _DIGITS if dataset == "digits" else _CIFAR
    expected = dict(zip(KEYS, (data[0], *PINNED[method], *data[1:]), strict=True))
    if dataset == "digits":
        expected["lr"] = DIGITS_LR[method]
    r = TrainConfig(dataset=dataset, method=method).resolved()
    got = {k: getattr(r, k) for k in KEYS}
    assert got == expected
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in expected.items()}
    assert r.resolved() == r  # a resolved config stays as it is (config.json round trip)


def test_explicit_values_win_over_the_method_defaults() -> None:
    r = TrainConfig(method="spat", beta=1.5, m=0.0, n=0.5, hcp_ecp=False, init="uniform",
                    head="cosine").resolved()
    assert (r.beta, r.m, r.n, r.hcp_ecp, r.self_paced_ce, r.init) == (1.5, 0.0, 0.5, False,
                                                                        True, "uniform")


def test_classes_hold_the_defaults() -> None:
    assert SPAT.default_head == "cosine" and ConsistencyAT.default_head == "linear"
    assert {n: c.default_init for n, c in METHODS.items()} == {
        "standard": "none", "pgd_at": "uniform", "trades": "normal", "mart": "normal",
        "spat": "normal"}
    assert SPAT.hyperparameters() == {"beta": 6.0, "self_paced_ce": True, "m": 0.2,
                                      "hcp_ecp": True, "n": 0.2,
                                      "beta_ramp_epochs": 0, "self_paced_after": 0}
    assert SPAT.require_cosine and not ConsistencyAT.require_cosine  # a class fact, no knob
    assert supporting("hcp_ecp") == ("trades", "mart", "spat")
    assert supporting("self_paced_ce") == tuple(METHODS)
    # the instance build_method makes from a resolved config has the class's defaults
    s = build_method("spat")
    assert isinstance(s, SPAT) and (s.beta, s.m, s.n, s.self_paced_ce, s.hcp_ecp) == (
        6.0, 0.2, 0.2, True, True)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"method": "pgd_at", "hcp_ecp": True}, "valid: trades, mart, spat"),
    ({"method": "spat", "head": "linear", "self_paced_ce": False}, "SPAT is defined with"),
    ({"method": "spat", "head": "linear"}, "self-paced cross-entropy needs the cosine head"),
    ({"method": "nope"}, "unknown method"),
])
def test_constraints_come_from_the_class(kwargs: dict, words: str) -> None:
    with pytest.raises(SpatError, match=words):
        TrainConfig(**kwargs).resolved()


def test_cli_help_reads_the_class_defaults(capsys, monkeypatch) -> None:
    def help_text() -> str:
        with pytest.raises(SystemExit):
            main(["train", "--help"])
        return " ".join(capsys.readouterr().out.split())

    out = help_text()
    assert "MART's λ, the weight of its KL·(1 − p_y) term (default 6)" in out
    assert "margin m (default 0.2)" in out and "offset n (default 0.2)" in out
    assert "default cosine for spat, linear otherwise" in out
    assert "valid with: trades, mart, spat; on by default for: spat" in out
    # a changed class default shows in the help: the text is not a copy of the value
    monkeypatch.setattr(ConsistencyAT, "default_head", "cosine")
    assert "default cosine for trades, spat, linear otherwise" in help_text()


def test_build_method_refuses_unknown_hyperparameters_and_ignores_foreign_ones() -> None:
    with pytest.raises(TypeError, match="gamma"):
        build_method("trades", gamma=1.0)
    # a resolved config carries every method's knobs: pgd_at has no beta or n, and ignores them
    p = build_method("pgd_at", beta=3.0, n=0.7, m=0.1, hcp_ecp=False)
    assert p.m == 0.1 and not hasattr(p, "beta") and not hasattr(p, "n")
    with pytest.raises(SpatError, match="no consistency term"):
        build_method("standard", hcp_ecp=True)


# ------------------------------------------------------- per-(dataset, method) defaults (issue 23)
def test_every_study_selection_has_a_source_and_resolves() -> None:
    """One table holds them, each with the study table it comes from; every entry resolves to
    its values, and the command line still wins."""
    assert METHOD_DATASET_DEFAULTS, "the table is empty"
    for (dataset, method), sel in METHOD_DATASET_DEFAULTS.items():
        assert sel.source.startswith("docs/study table"), (dataset, method, sel.source)
        r = TrainConfig(dataset=dataset, method=method).resolved()
        assert r.lr == sel.lr
        if sel.beta is not None:
            assert r.beta == sel.beta
        if sel.beta_ramp_epochs is not None:
            assert r.beta_ramp_epochs == sel.beta_ramp_epochs
        o = TrainConfig(dataset=dataset, method=method, lr=0.003, beta=2.5,
                        beta_ramp_epochs=0).resolved()
        if METHODS[method].takes("beta"):
            assert (o.lr, o.beta, o.beta_ramp_epochs) == (0.003, 2.5, 0)
        else:  # a hyperparameter the method lacks is ignored, and not recorded
            assert (o.lr, o.beta, o.beta_ramp_epochs) == (0.003, None, None)
            assert "beta" not in o.to_dict()


def test_study_selections_match_the_study_files() -> None:
    """The digits values are those table 0 selected and table 1 (digits_main.toml) ran; the
    MNIST ones those of table 1c (mnist_main.toml, selected by table 0d)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "docs" / "study"
    for name, dataset in (("digits_main", "digits"), ("fashion_mnist_main", "fashion_mnist"),
                          ("mnist_main", "mnist")):
        variants = tomllib.loads((root / f"{name}.toml").read_text())["variants"]
        for method in ("pgd_at", "trades", "mart", "spat"):
            v = variants[method]
            r = TrainConfig(dataset=dataset, method=method).resolved()
            assert r.lr == v["lr"], (name, method)
            if METHODS[method].takes("beta"):
                assert r.beta == v.get("beta", 6.0), (name, method)
                assert r.beta_ramp_epochs == v.get("beta_ramp_epochs", 0), (name, method)


def test_a_default_ramp_shortens_for_a_short_run_but_an_explicit_one_is_checked() -> None:
    assert TrainConfig(dataset="mnist", method="mart", epochs=2).resolved().beta_ramp_epochs == 1
    assert TrainConfig(dataset="mnist", method="mart", epochs=1).resolved().beta_ramp_epochs == 0
    with pytest.raises(SpatError, match="must be < epochs"):
        TrainConfig(dataset="mnist", method="mart", epochs=2, beta_ramp_epochs=3).resolved()


def test_lr_remedy_is_a_rate_the_run_can_train_at() -> None:
    """Issue 25: not half of a lr that diverged by orders of magnitude."""
    huge = TrainConfig(lr=1e6).resolved()
    assert lr_remedy(huge)[0] == 0.05  # pgd_at on the digits: the study's selection
    mart = TrainConfig(method="mart", lr=0.05).resolved()
    lr, why = lr_remedy(mart)
    assert lr == 0.02 and "table 0" in why
    at_default = TrainConfig().resolved()  # diverged at the default itself: a tenth
    assert lr_remedy(at_default) == (0.005, "a tenth of the current lr")
    assert lr_remedy(TrainConfig(dataset="cifar10", lr=1.0).resolved())[0] == 0.1


@pytest.mark.parametrize("dataset", dataset_names())
def test_every_registered_dataset_has_its_own_defaults(dataset: str) -> None:
    """One record per dataset: each registered dataset has an entry (with its source), and a
    name without one is an error, never another dataset's values."""
    d = dataset_defaults(dataset)
    assert d is DATASETS[dataset].defaults and d.source
    others = [DATASETS[o].defaults for o in dataset_names() if o != dataset]
    assert all(o is not d for o in others)


def test_a_dataset_without_defaults_is_an_error() -> None:
    with pytest.raises(SpatError, match="unknown dataset .imagenet.*no defaults record"):
        dataset_defaults("imagenet")

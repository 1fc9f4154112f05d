"""``spat train``'s flags, derived from TrainConfig's fields (spat.utils.dataclass_flags):
every flag keeps its name, meaning and default; a new field is a flag with no edit of the CLI's
code."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import spat.train.command as train_command
from spat.cli import build_parser, main
from spat.config import FIELD_NAMES, TrainConfig, config_from_dict
from spat.methods import all_hyperparameters
from spat.utils.dataclass_flags import add_dataclass_options, flag_name, option

#: argv → the settings they give (the command's other options in "_args"). Recorded from the
#: hand-written parser that the derived one replaced: the same argv give the same settings.
CASES: list[tuple[list[str], dict[str, Any]]] = [
    ([], {}),
    (["--dataset", "fashion_mnist", "--data-dir", "/x/data", "--download", "--val-size", "500",
      "--train-subset", "1000"],
     {"data_dir": "/x/data", "dataset": "fashion_mnist", "download": True,
      "train_subset": 1000, "val_size": 500}),
    (["--val-size", "0.25"], {"val_size": 0.25}),
    (["--val-size", "0"], {"val_size": 0.0}),
    (["--val-size", "1"], {"val_size": 1}),  # a count: one example, not the whole set
    (["--model", "wrn34_10", "--head", "cosine", "--cosine-scale", "16"],
     {"cosine_scale": 16.0, "head": "cosine", "model": "wrn34_10"}),
    (["--method", "spat", "--eps", "8/255", "--step-size", "2/255", "--steps", "7", "--norm",
      "l2", "--init", "normal"],
     {"eps": 8 / 255, "init": "normal", "method": "spat", "norm": "l2", "step_size": 2 / 255,
      "steps": 7}),
    (["--eps", "0.031", "--step-size", "0.007"], {"eps": 0.031, "step_size": 0.007}),
    (["--beta", "3", "--m", "0.1", "--n", "0.5", "--self-paced-ce", "--hcp-ecp"],
     {"beta": 3.0, "hcp_ecp": True, "m": 0.1, "n": 0.5, "self_paced_ce": True}),
    (["--no-self-paced-ce", "--no-hcp-ecp"], {"hcp_ecp": False, "self_paced_ce": False}),
    (["--epochs", "3", "--batch-size", "32", "--lr", "0.01", "--momentum", "0.5",
      "--weight-decay", "1e-4", "--nesterov", "--schedule", "cosine"],
     {"batch_size": 32, "epochs": 3, "lr": 0.01, "momentum": 0.5, "nesterov": True,
      "schedule": "cosine", "weight_decay": 0.0001}),
    (["--no-nesterov", "--no-deterministic"], {"deterministic": False, "nesterov": False}),
    (["--val-steps", "3", "--test-steps", "5", "--test-subset", "100", "--eval-batch-size",
      "64"], {"eval_batch_size": 64, "test_steps": 5, "test_subset": 100, "val_steps": 3}),
    (["--seed", "7", "--device", "cpu", "--amp", "off", "--channels-last", "on", "--compile"],
     {"amp": "off", "channels_last": "on", "compile": "on", "device": "cpu", "seed": 7}),
    (["--compile", "off", "--amp", "auto", "--deterministic"],
     {"amp": "auto", "compile": "off", "deterministic": True}),
    (["--out-dir", "/tmp/runs", "--name", "r1", "--resume", "/tmp/runs/r0", "--overwrite",
      "--no-progress", "--tensorboard", "--threads", "2"],
     {"name": "r1", "out_dir": "/tmp/runs", "tensorboard": True,
      "_args": {"resume": "/tmp/runs/r0", "overwrite": True, "no_progress": True,
                "threads": 2}}),
    (["--config", "{toml}"],
     {"beta": 3.0, "epochs": 4, "eps": 8 / 255, "method": "trades", "tensorboard": True}),
    (["--config", "{toml}", "--beta", "5", "--epochs", "2", "--no-tensorboard"],
     {"beta": 5.0, "epochs": 2, "eps": 8 / 255, "method": "trades", "tensorboard": False}),
    (["--config", "{json}", "--m", "0.4", "--no-nesterov"],
     {"dataset": "digits", "lr": 0.02, "m": 0.4, "method": "spat", "nesterov": False}),
]
OTHER_OPTIONS = ("resume", "overwrite", "no_progress", "threads")


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


@pytest.mark.parametrize(("argv", "expected"), CASES,
                         ids=[" ".join(argv)[:40] or "none" for argv, _ in CASES])
def test_flags_keep_their_names_meanings_and_defaults(tmp_path: Path, argv, expected) -> None:
    toml = tmp_path / "cfg.toml"
    toml.write_text('[train]\nmethod = "trades"\nbeta = 3.0\neps = "8/255"\nepochs = 4\n'
                    "tensorboard = true\n")
    js = tmp_path / "config.json"  # a run's recorded config: nulls mean "the default"
    js.write_text(json.dumps({"dataset": "digits", "method": "spat", "m": 0.3, "head": None,
                              "lr": 0.02, "nesterov": True}))
    argv = [a.format(toml=toml, json=js) for a in argv]
    expected = dict(expected)
    others = expected.pop("_args", {})
    args = build_parser().parse_args(["train", *argv])
    values = train_command.config_values(args)
    assert set(values) == set(expected)  # what a run records as given explicitly
    cfg = config_from_dict(values, source="test").to_dict()
    given = {k: cfg[k] for k in values}
    assert given == expected
    # the types too: a count stays an int, a float flag gives a float
    assert {k: type(v) for k, v in given.items()} == {k: type(v) for k, v in expected.items()}
    assert {k: getattr(args, k) for k in OTHER_OPTIONS if hasattr(args, k)} == others
    # every setting not given keeps TrainConfig's default
    assert cfg == {**TrainConfig().to_dict(), **expected}


def test_every_config_field_is_a_flag_in_its_group() -> None:
    parser = _train_parser()
    flags = {s: a for a in parser._actions for s in a.option_strings}
    names = [*FIELD_NAMES, *all_hyperparameters()]  # the method hyperparameters too
    assert train_command.NO_FLAG == ()  # the documented exclusions: none
    assert "--hyperparameters" not in flags  # the field holding them is not a flag itself
    for name in names:
        assert flag_name(name) in flags, name
        assert flags[flag_name(name)].dest == name
    titles = [g.title for g in parser._action_groups]
    assert [t for t in titles if t in train_command.GROUPS.values()] == \
        list(train_command.GROUPS.values())
    group_of = {a.dest: g.title for g in parser._action_groups for a in g._group_actions}
    assert group_of["val_size"] == "data" and group_of["head"] == "model"
    assert group_of["eps"] == group_of["beta"] == "method and training attack"
    assert group_of["schedule"] == "optimisation" and group_of["test_subset"] == \
        "validation and test"
    assert group_of["tensorboard"] == group_of["resume"] == "runtime and output"


def test_method_hyperparameters_state_the_method_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for key in all_hyperparameters():  # also any added later: the note is derived, not written
        help_ = _train_parser()._option_string_actions[flag_name(key)].help
        assert "default" in help_ or "valid with" in help_, (key, help_)
    # the help texts of the classes' fields, each method's distinct text once
    assert ("TRADES/SPAT β, the weight of the consistency term; MART's λ, the weight of its "
            "KL·(1 − p_y) term (default 6)") in out
    assert "self-paced cross-entropy (needs --head cosine) (valid with:" in out
    assert "SPAT's self-paced margin m (default 0.2)" in out


@dataclasses.dataclass(frozen=True, kw_only=True)
class _WithNewFields(TrainConfig):
    warmup_epochs: int = option(0, "epochs of warm-up", group="optimisation")
    label_smoothing: float | None = None  # no metadata: joins the previous field's group
    mixup: bool = option(False, "mix the inputs")
    tag: str = option("x", "a free tag; {methods}", group="runtime")


def test_a_new_config_field_is_a_flag_with_no_edit_of_the_cli(monkeypatch) -> None:
    monkeypatch.setattr(train_command, "TrainConfig", _WithNewFields)
    parser = _train_parser()
    args = parser.parse_args(["--warmup-epochs", "3", "--label-smoothing", "0.1", "--mixup",
                              "--tag", "abc", "--epochs", "2"])
    assert train_command.config_values(args) == {"warmup_epochs": 3, "label_smoothing": 0.1,
                                                 "mixup": True, "tag": "abc", "epochs": 2}
    assert not hasattr(parser.parse_args([]), "warmup_epochs")  # defaults stay the config's
    acts = parser._option_string_actions
    assert acts["--warmup-epochs"].help == "epochs of warm-up (default 0)"
    assert acts["--label-smoothing"].help == "label smoothing"
    assert "--no-mixup" in acts and "pgd_at" in acts["--tag"].help
    group_of = {a.dest: g.title for g in parser._action_groups for a in g._group_actions}
    assert group_of["warmup_epochs"] == group_of["label_smoothing"] == group_of["mixup"] == \
        "optimisation"
    assert group_of["tag"] == "runtime and output"
    with pytest.raises(SystemExit):
        parser.parse_args(["--warmup-epochs", "2.5"])  # the annotation's int


def test_option_groups_must_be_known() -> None:
    @dataclasses.dataclass
    class Bad:
        a: int = option(1, "a", group="nowhere")

    with pytest.raises(ValueError, match="unknown option group 'nowhere'"):
        add_dataclass_options(argparse.ArgumentParser(), Bad, groups={"x": "x"})


@pytest.mark.parametrize(("argv", "words"), [
    (["--val-size", "abc"], "argument --val-size: expected a count or a fraction, got 'abc'"),
    (["--amp", "maybe"], "argument --amp: invalid value 'maybe' (valid: auto, on, off)"),
    (["--eps", "x/255"], "argument --eps: not a number or fraction"),
    (["--steps", "2.5"], "argument --steps: invalid int value: '2.5'"),
])
def test_bad_flag_values_are_one_line_exit_2(capsys, argv, words) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spat: error: ") and words in err[0], err

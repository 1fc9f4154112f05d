"""Every subcommand's ``--help``: each option's default is stated at most once (``spat export
--help`` once printed ``(default: RUN/export) (default: None)``), and an uninformative default
(``None``, ``""``, a flag's ``False``, a counter's 0) is not printed."""

from __future__ import annotations

import argparse
import re

import pytest

from spat.cli import build_parser

PARSER = build_parser()
SUBCOMMANDS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction))


def _option_helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's help as ``--help`` prints it (defaults expanded), by its first flag."""
    formatter = parser._get_formatter()
    return {(a.option_strings or [a.dest])[0]: " ".join(formatter._expand_help(a).split())
            for a in parser._actions if a.help and a.help is not argparse.SUPPRESS}


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS.choices))
def test_no_option_states_its_default_twice(command: str):
    helps = _option_helps(SUBCOMMANDS.choices[command])
    assert helps
    for flag, text in helps.items():
        assert len(re.findall(r"\(default[: ]", text)) <= 1, (command, flag, text)
        assert not re.search(r"\(default:? (None|False|)\)", text), (command, flag, text)


def test_export_help_states_each_default_once():
    helps = _option_helps(SUBCOMMANDS.choices["export"])
    assert helps["--out"] == "output folder (default: RUN/export)"
    assert helps["--format"].endswith("(default: robustbench)")
    assert helps["--footnote"] == "RobustBench's optional footnote"
    assert helps["-v"] == "also debug detail"

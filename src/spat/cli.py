"""``spat`` command line: thin argparse front-ends, each subcommand one library call.

``main(argv) -> int``; user errors print one line ``spat: error: ...`` and return 2; an
unexpected exception prints one line ``spat: error: internal error: ...`` and returns 1
(``--debug`` shows its traceback instead).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from spat.errors import SpatError
from spat.utils.log import configure as configure_logging
from spat.validation import one_line

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2, and no abbreviated long
    options (``--epoch 3`` is an error, not ``--epochs 3``: a prefix that one option matches
    today would silently mean another once a longer name is added). Every subcommand's parser
    is a ``_Parser`` too (``add_subparsers(parser_class=_Parser)``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"spat: error: {one_line(message, None)}{self._did_you_mean(message)}\n")
        raise SystemExit(EXIT_USAGE)

    def _did_you_mean(self, message: str) -> str:
        """``(did you mean --epochs?)`` for an unknown long option close to a real one."""
        import difflib

        if not message.startswith("unrecognized arguments:"):
            return ""
        parsers, known = [self], []
        while parsers:  # this parser's options and its subcommands' (the top level reports
            p = parsers.pop()  # what a subcommand left over)
            for a in p._actions:
                known += [o for o in a.option_strings if o.startswith("--")]
                if isinstance(a, argparse._SubParsersAction):
                    parsers += list(dict.fromkeys(a.choices.values()))
        known = list(dict.fromkeys(known))
        for word in message.split(":", 1)[1].split():
            if word.startswith("--"):
                close = difflib.get_close_matches(word.split("=")[0], known, n=1, cutoff=0.8)
                if close:
                    return f" (did you mean {close[0]}?)"
        return ""


def _names() -> dict[str, list[str]]:
    from spat.data import dataset_names
    from spat.methods import method_names
    from spat.models import HEADS, model_names

    return {"dataset": dataset_names(), "model": model_names(), "method": method_names(),
            "head": list(HEADS)}


def build_parser() -> argparse.ArgumentParser:
    names = _names()
    parser = _Parser(
        prog="spat",
        description="Adversarial training with SPAT (arXiv 2210.15068) and baselines, "
        "evaluation and hard-class-pair analysis.",
        epilog="registered names — datasets: " + ", ".join(names["dataset"]) + "; models: "
        + ", ".join(names["model"]) + ", wrn<depth>_<width>; methods: "
        + ", ".join(names["method"]) + "; heads: " + ", ".join(names["head"]),
    )
    from spat._version import __version__

    parser.add_argument("--version", action="version", version=f"spat {__version__}")
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show the traceback of an "
                        "unexpected error (accepted anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parsers(sub)
    _add_verbosity(parser, "")
    for command in sub.choices.values():  # accepted after the subcommand too
        _add_verbosity(command, "_sub")
    return parser


def _add_verbosity(p: argparse.ArgumentParser, suffix: str) -> None:
    # separate dests before and after the subcommand: argparse would otherwise let the
    # subcommand's default overwrite a -q given before it
    p.add_argument("-q", "--quiet", dest=f"quiet{suffix}", action="count", default=0,
                   help="only warnings and errors (no progress, no status lines)")
    p.add_argument("-v", "--verbose", dest=f"verbose{suffix}", action="count", default=0,
                   help="also debug detail")


def _verbosity(args: argparse.Namespace) -> int:
    """-v count minus -q count, before and after the subcommand together."""
    return (getattr(args, "verbose", 0) + getattr(args, "verbose_sub", 0)
            - getattr(args, "quiet", 0) - getattr(args, "quiet_sub", 0))


#: Modules that add their own subcommands: each has ``add_parsers(subparsers)``, and every parser
#: it adds sets ``func=<callable(args) -> int>``.
COMMAND_MODULES = ("spat.train.command", "spat.evaluation.command", "spat.analysis.command",
                   "spat.export.command", "spat.study.command")


#: Exit code of an unexpected exception (a bug in spat): 1, distinct from a user error's 2.
EXIT_INTERNAL = 1
DEBUG_FLAG = "--debug"


def _take_debug(argv: list[str]) -> tuple[bool, list[str]]:
    """``--debug`` anywhere before a ``--`` (before or after the subcommand), removed; or the
    environment variable ``SPAT_DEBUG=1``."""
    end = argv.index("--") if "--" in argv else len(argv)
    debug = DEBUG_FLAG in argv[:end]
    rest = [a for a in argv[:end] if a != DEBUG_FLAG] + argv[end:]
    return debug or os.environ.get("SPAT_DEBUG", "") not in ("", "0"), rest


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``spat`` with ``argv``; returns the exit code.

    Plugins (:mod:`spat.utils.plugins`: ``SPAT_PLUGINS``, the ``spat.plugins`` entry points)
    are loaded first. 0: success. 2: a user error (a plugin that fails to import, bad option or
    value, a missing, corrupted or refused file, an
    output path that cannot be written), printed as one line ``spat: error: ...``. 1: an
    unexpected exception (a bug), printed as one line ``spat: error: internal error: <type>:
    <message> (run with --debug for the traceback)``; ``--debug`` (anywhere on the command line)
    or ``SPAT_DEBUG=1`` lets it propagate with its traceback instead. 130: interrupted.
    """
    debug, args_list = _take_debug(list(sys.argv[1:] if argv is None else argv))
    from spat.utils.plugins import load_installed_plugins

    try:  # before the parser: a plugin's methods and attacks add flags and choices
        load_installed_plugins()
    except SpatError as e:
        sys.stderr.write(f"spat: error: {one_line(e, None)}\n")
        return EXIT_USAGE
    parser = build_parser()
    args = parser.parse_args(args_list)
    configure_logging(_verbosity(args))
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except SpatError as e:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"spat: error: {one_line(e, None)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("spat: interrupted\n")
        return 130
    except OSError as e:  # the environment: a full disk, a permission, a path that is a file
        if debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        sys.stderr.write(f"spat: error: {e.strerror or one_line(e, None)}{where}\n")
        return EXIT_USAGE
    except Exception as e:
        if debug:
            raise
        sys.stderr.write(f"spat: error: internal error: {type(e).__name__}: "
                         f"{one_line(e, None)[:300]} (run with {DEBUG_FLAG} for the traceback)\n")
        return EXIT_INTERNAL


"""Command-line options derived from a dataclass's fields: one home for each setting.

A config dataclass declares each setting once — name, type, default — and, through
:func:`option`, its help text, its option group and, where the field's type alone does not say
how to read the text, a parser (``8/255`` for ε). :func:`add_dataclass_options` turns the fields
into ``argparse`` options, so a field added to the dataclass is an option with no edit of the
command line's code:

* the flag is ``--`` + the field name with ``_`` → ``-`` (``step_size`` → ``--step-size``);
* the value is read by the metadata's ``parse``, else from the annotation: ``int``, ``float``
  (``X | None`` as ``X``), ``str`` as is, ``bool`` as a ``--flag``/``--no-flag`` pair;
* the help text is the metadata's ``help`` (``{placeholders}`` filled from ``context``), then the
  field's default when the text does not mention one; a field without metadata gets its name;
* the group is the metadata's ``group``; a field without one joins its predecessor's group.

Options are added with ``argparse.SUPPRESS`` as their default, so the parsed namespace holds only
the flags actually given, and a config file's values can sit beneath them. Nothing here parses
``sys.argv``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

#: The key of a field's ``metadata`` that :func:`option` fills.
KEY = "option"


def option(default: Any = None, help: str = "", *, group: str | None = None,  # noqa: A002
           parse: Callable[[str], Any] | None = None, hidden: bool = False,
           **argparse_kwargs: Any) -> Any:
    """A dataclass field with command-line metadata (use as ``x: float = option(0.9, "...")``).

    Args:
        default: the field's default.
        help: help text; may hold ``{placeholders}`` filled when the parser is built.
        group: the option group's key (e.g. ``"data"``); ``None``: the previous field's group.
        parse: converts the command-line text (raise ``argparse.ArgumentTypeError`` on bad
            text); ``None``: the field's annotated type.
        hidden: an option that ``--help`` does not list.
        argparse_kwargs: passed to ``add_argument`` as they are (``metavar``, ``nargs``,
            ``const``, ``choices``).
    """
    meta = {"help": help, "group": group, "parse": parse, "hidden": hidden,
            "argparse": argparse_kwargs}
    return dataclasses.field(default=default, metadata={KEY: meta})


def flag_name(field_name: str) -> str:
    """``"step_size"`` → ``"--step-size"``."""
    return "--" + field_name.replace("_", "-")


def _base_type(annotation: Any) -> Any:
    """``X | None`` → ``X``; any other annotation as it is."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return annotation


class _Context(dict):
    """``str.format_map`` mapping that leaves an unknown ``{name}`` as it is."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _show_default(value: Any) -> str | None:
    if value is None or isinstance(value, bool) or value is dataclasses.MISSING:
        return None
    return f"{value:g}" if isinstance(value, float) else str(value)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` with each option's default, once: ``(default: X)`` is added unless the help
    text already mentions a default, or the default says nothing (``None``, ``""``, a flag's
    ``False`` or a counter's 0). The commands whose options are not dataclass fields use it
    (:func:`help_text` is the same rule for fields)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (action.nargs == 0 or action.default is argparse.SUPPRESS or action.default == ""
                or _show_default(action.default) is None or "default" in text):
            return text
        return f"{text} (default: %(default)s)"


def help_text(f: dataclasses.Field, context: Mapping[str, str] | None = None,
              note: str | None = None, text: str | None = None) -> str:
    """The help text of field ``f``: ``text`` or its metadata's text with ``context`` filled
    in, then ``note`` (in parentheses), then ``(default …)`` unless the text already states a
    default or the default is ``None`` (which a text should explain) or a boolean (the flag
    says it)."""
    meta = f.metadata.get(KEY, {})
    text = (text or meta.get("help") or f.name.replace("_", " ")).format_map(
        _Context(context or {}))
    if note:
        text = f"{text} ({note})"
    shown = _show_default(f.default)
    if shown is not None and "default" not in text:
        text = f"{text} (default {shown})"
    return text.replace("%", "%%")


def add_dataclass_options(
    parser: argparse.ArgumentParser, cls: type, *, groups: Mapping[str, str],
    exclude: Iterable[str] = (), context: Mapping[str, str] | None = None,
    note: Callable[[str], str | None] | None = None,
) -> dict[str, argparse._ArgumentGroup]:
    """Add one option per field of the dataclass ``cls`` to ``parser`` (see the module's
    docstring for the rules); returns the option groups by key, for options of one's own.

    Args:
        groups: group key → title, in the order ``--help`` shows them (every key a field's
            metadata names must be here; fields before any group go in the first).
        exclude: field names that get no option.
        context: values of the help texts' ``{placeholders}``.
        note: field name → an extra remark for its help text (or ``None``), e.g. defaults
            read from elsewhere.
    """
    made = {key: parser.add_argument_group(title) for key, title in groups.items()}
    hints = typing.get_type_hints(cls)
    skip = set(exclude)
    current = next(iter(groups))
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(KEY, {})
        current = meta.get("group") or current
        if f.name in skip:
            continue
        if current not in made:
            raise ValueError(f"field {f.name!r} of {cls.__name__}: unknown option group "
                             f"{current!r} (known: {', '.join(groups)})")
        add_field_option(made[current], f, hints[f.name],
                         help_text(f, context, note(f.name) if note else None))
    return made


def add_field_option(group: argparse._ArgumentGroup | argparse.ArgumentParser,
                     f: dataclasses.Field, annotation: Any, help: str) -> None:  # noqa: A002
    """Add field ``f`` (annotated ``annotation``) as one option to ``group``, by the rules of
    the module's docstring, with the help text ``help`` (see :func:`help_text`)."""
    meta = f.metadata.get(KEY, {})
    kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                              **meta.get("argparse", {})}
    kind = _base_type(annotation)
    if meta.get("parse") is not None:
        kwargs["type"] = meta["parse"]
    elif kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif kind in (int, float):
        kwargs["type"] = kind
    kwargs["help"] = argparse.SUPPRESS if meta.get("hidden") else help
    group.add_argument(flag_name(f.name), **kwargs)

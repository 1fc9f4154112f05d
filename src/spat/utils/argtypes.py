"""The ``type=`` converters of spat's command-line options, shared by every subcommand.

A bad value is an ``argparse.ArgumentTypeError``, which argparse prints as one line
(``spat <command>: error: argument --eps: ...``) with exit code 2.
"""

from __future__ import annotations

import argparse

from spat.validation import parse_fraction_or_none


def fraction(text: str) -> float:
    """``"8/255"`` → 0.0313…, ``"0.031"`` → 0.031 (ε, step sizes, accuracies)."""
    v = parse_fraction_or_none(str(text))
    if v is None:
        raise argparse.ArgumentTypeError(
            f"not a number or fraction: {text!r} (examples: 0.031, 8/255)")
    return v


def positive_int(text: str) -> int:
    """An integer ≥ 1 (counts, steps, batch sizes, workers)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def count_or_fraction(text: str) -> float:
    """A count (an integer ≥ 1: ``"500"`` → 500) or a fraction (``"0.1"``, ``"0"``) — e.g. the
    validation split carved from the training set."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a count or a fraction, got {text!r}") from None
    return int(v) if v.is_integer() and v >= 1 else v


def switch(text: str) -> str:
    """``auto``/``on``/``off`` (the fast-path options --amp, --channels-last, --compile)."""
    if text not in ("auto", "on", "off"):
        raise argparse.ArgumentTypeError(f"invalid value {text!r} (valid: auto, on, off)")
    return text

"""spat's progress bars: one helper (:class:`Progress`) and one terminal test (:func:`is_terminal`).

Every command shows its progress the same way: rich bars with the standard columns (description,
bar, done/total, elapsed, remaining, then any extra columns), on a terminal only. In a log file or
a pipe nothing is drawn; the caller's own status lines say enough there (``Progress.shown`` tells
a caller that prints plain lines instead, as training and a study do). rich is imported only when
a bar is actually shown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

#: ``update(**fields)`` of one bar: ``advance=k``, ``completed=k``, ``total=t``, extra fields.
Update = Callable[..., None]


def is_terminal(console: Any = None, *, stderr: bool = False) -> bool:
    """Whether ``console`` (a ``rich.console.Console``; default: standard output, or standard
    error with ``stderr``) is an interactive terminal, as rich decides it (a tty, or
    ``FORCE_COLOR``/``TTY_COMPATIBLE`` set; not a file, a pipe or a captured stream). The one
    test of whether a progress bar is drawn."""
    from rich.console import Console

    return bool((console or Console(stderr=stderr)).is_terminal)


class Progress:
    """Zero or more progress bars sharing one display, shown only when ``enabled`` and the
    output is a terminal (:func:`is_terminal`, or ``terminal`` when given).

    Use as a context manager (or :meth:`start`/:meth:`stop`); :meth:`task` adds a bar and
    returns its ``update``, :meth:`counter` one that is advanced by a count. When nothing is
    shown both return functions that do nothing, so a caller never tests for it.

    Args:
        enabled: whether bars are wanted at all (``--no-progress``, rank 0 only, ...).
        description: the first column's text (a rich format string of the task).
        extra: further columns after the standard ones (strings become text columns, e.g.
            ``"{task.fields[live]}"``; a task then needs those fields).
        console: where the bars go (a ``rich.console.Console``); default standard output, or
            standard error with ``stderr``.
        transient: erase the bars when done.
        terminal: override the terminal test (a study's ``--no-progress`` forces plain lines).
    """

    def __init__(self, enabled: bool = True, *, description: str = "{task.description}",
                 extra: Sequence[Any] = (), console: Any = None, stderr: bool = False,
                 transient: bool = False, terminal: bool | None = None) -> None:
        self.enabled = enabled
        self.shown = enabled and (is_terminal(console, stderr=stderr) if terminal is None
                                  else terminal)
        self._bar: Any = None
        if self.shown:
            self._bar = _rich_progress(description, extra, console, stderr, transient)

    def start(self) -> None:
        """Start drawing (nothing when not shown)."""
        if self._bar is not None:
            self._bar.start()

    def stop(self) -> None:
        """Stop drawing; the finished bars stay unless ``transient``."""
        if self._bar is not None:
            self._bar.stop()

    def __enter__(self) -> Progress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def task(self, description: str, total: int, **fields: Any) -> Update:
        """A new bar of ``total`` steps (``fields``: the extra columns' values); returns its
        ``update(advance=k | completed=k, total=t, **fields)``."""
        if self._bar is None:
            return _nothing
        bar = self._bar
        tid = bar.add_task(description, total=total, **fields)
        return lambda **kw: bar.update(tid, **kw)

    def counter(self, description: str, total: int) -> Callable[[int], None]:
        """A new bar of ``total`` items; returns ``advance(k)`` (k more items done)."""
        update = self.task(description, total)
        return lambda k: update(advance=k)


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _rich_progress(description: str, extra: Sequence[Any], console: Any, stderr: bool,
                   transient: bool) -> Any:
    """A ``rich.progress.Progress`` with the standard columns, then ``extra``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress

    columns = [TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), *(TextColumn(c) if isinstance(c, str) else c for c in extra)]
    return RichProgress(*columns, console=console or Console(stderr=stderr),
                        transient=transient)

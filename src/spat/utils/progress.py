"""The one look of spat's progress bars (rich): description, bar, done/total, elapsed, remaining."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def progress_bar(description: str = "{task.description}", *extra: Any,
                 console: Any = None, transient: bool = False) -> Any:
    """A ``rich.progress.Progress`` with the standard columns, then ``extra`` columns (strings
    become text columns); ``transient``: erased when done. rich is imported here, only when a
    bar is actually shown."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), *(TextColumn(c) if isinstance(c, str) else c for c in extra)]
    return Progress(*columns, console=console, transient=transient)


@contextmanager
def counting_bar(description: str, total: int, enabled: bool = True, *, stderr: bool = False,
                 transient: bool = False) -> Iterator[Callable[[int], None]]:
    """One bar of ``total`` items, yielding ``advance(k)``; shown only when ``enabled`` and
    its stream (standard output, or standard error with ``stderr``) is a terminal (in a log
    file the caller's status lines say enough); ``transient``: erased when done."""
    if not enabled:
        yield lambda k: None
        return
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        yield lambda k: None
        return
    with progress_bar(console=console, transient=transient) as bar:
        task = bar.add_task(description, total=total)
        yield lambda k: bar.update(task, advance=k)

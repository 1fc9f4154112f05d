"""The one look of spat's progress bars (rich): description, bar, done/total, elapsed, remaining."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def progress_bar(description: str = "{task.description}", *extra: Any,
                 console: Any = None) -> Any:
    """A ``rich.progress.Progress`` with the standard columns, then ``extra`` columns (strings
    become text columns). rich is imported here, only when a bar is actually shown."""
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
    return Progress(*columns, console=console, transient=False)


@contextmanager
def counting_bar(description: str, total: int, enabled: bool = True
                 ) -> Iterator[Callable[[int], None]]:
    """One bar of ``total`` items, yielding ``advance(k)``; shown only when ``enabled`` and
    standard output is a terminal (in a log file the caller's status lines say enough)."""
    if not enabled:
        yield lambda k: None
        return
    from rich.console import Console

    if not Console().is_terminal:
        yield lambda k: None
        return
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        yield lambda k: bar.update(task, advance=k)

"""The one look of spat's progress bars (rich): description, bar, done/total, elapsed, remaining."""

from __future__ import annotations

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

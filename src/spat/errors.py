"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class SpatError(ValueError):
    """Bad user input: an unknown name, an out-of-range value, a missing or corrupted file.

    The message is one line, names what was wrong and, where there is a closed set, the valid
    choices. The CLI prints it as ``spat: error: <message>`` and exits with code 2.
    """


class FolderBusy(SpatError):
    """A folder another live process holds (its ``.lock``): nothing is wrong with the input,
    the work is being done elsewhere. ``spat study`` leaves such a cell to its holder, not
    failed, and waits for it at the end. ``lock``: the lock file's path; ``holder``: its
    record (pid, host, time, argv), as far as known."""

    lock: "str | None" = None
    holder: "dict[str, object] | None" = None


def unknown_name(kind: str, name: str, valid: "list[str] | tuple[str, ...]") -> SpatError:
    """An error for a registry lookup: ``unknown model 'x' (valid: a, b, c)``."""
    return SpatError(f"unknown {kind} {name!r} (valid: {', '.join(sorted(valid))})")

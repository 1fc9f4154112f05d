"""spat's status messages: one ``logging`` logger, ``spat``, and the command line's ``-q/-v``.

Library code reports what it is doing (resuming, reusing a saved attack, one line per epoch in
a log file) through :data:`logger` — ``logger.info`` for status, ``logger.debug`` for detail,
``logger.warning`` for notes the user should read — and never configures logging itself, so an
application that imports spat keeps control of its own handlers. The ``spat`` command calls
:func:`configure` once per invocation: plain messages (no level or time prefix, as the earlier
``print`` calls looked) on standard output, where scripts already read them. Final result tables
and summaries are printed, not logged, so ``-q`` never hides a result.

Verbosity: ``-q`` shows warnings and errors only (no progress, no status), the default shows
status (INFO), ``-v`` adds debug detail (DEBUG).
"""

from __future__ import annotations

import logging
import sys

#: The package's logger; child loggers (``spat.train`` ...) are not needed: one stream.
logger = logging.getLogger("spat")

#: ``-q`` count minus ``-v`` count -> level: quiet, normal, verbose.
_LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes to whatever ``sys.stdout`` is at the time of each message
    (pytest's capture and ``contextlib.redirect_stdout`` replace it after configuration)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        # Not setStream(): it flushes the previous stream, which its owner may have closed
        # (a finished pytest capture, an exited redirect_stdout).
        self.stream = sys.stdout
        super().emit(record)


_handler: logging.Handler | None = None


def configure(verbosity: int = 0) -> None:
    """Set up :data:`logger` for the command line: ``verbosity`` < 0 quiet (warnings only), 0
    normal (status), > 0 verbose (debug). Idempotent: calling it again (``spat.cli.main`` run
    twice in one process) replaces the handler it added before."""
    global _handler
    level = _LEVELS[max(-1, min(1, verbosity))]
    if _handler is not None:
        logger.removeHandler(_handler)
    _handler = _StdoutHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(level)
    logger.propagate = False  # the CLI owns the output; no second copy through the root logger


def info(message: str) -> None:
    """``logger.info(message)``: the default ``log`` callback of library functions."""
    logger.info(message)


def quiet() -> bool:
    """Whether status messages are off (``-q``): progress bars and plain progress lines are
    then not shown either."""
    return not logger.isEnabledFor(logging.INFO)

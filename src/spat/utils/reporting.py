"""How reports write numbers and tables: the one missing-value glyph, units, percentages, and
the one Markdown and CSV table writers (``spat analyze``, ``spat compare``, ``spat study``,
``spat eval``'s terminal table and the RobustBench export all use these).

A value is *missing* when it is ``None`` or a float NaN; it prints as :data:`MISSING`, in every
report. A :class:`Unit` says how a stored value is shown: accuracies and shares are stored as
fractions and shown in percent (×100), a difference of two fractions in points (×100), a
ratio as itself.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: What every report prints for a missing value (None or NaN): an en dash.
MISSING = "–"


def is_missing(v: Any) -> bool:
    """``None`` or a float NaN."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def number(x: float | None, digits: int = 1, *, sign: bool = False) -> str:
    """``x`` with ``digits`` decimals (``sign``: always with its sign, ``+1.2``);
    :data:`MISSING` for None/NaN."""
    if is_missing(x):
        return MISSING
    return f"{x:{'+' if sign else ''}.{digits}f}"


def percent(v: float | None, digits: int = 1, *, sign: bool = False, symbol: bool = True
            ) -> str:
    """A fraction as a percentage: ``0.4123`` → ``"41.2%"`` (``symbol=False``: ``"41.2"``;
    ``sign``: ``"+41.2%"``); :data:`MISSING` for None/NaN."""
    if is_missing(v):
        return MISSING
    assert v is not None
    return number(100 * v, digits, sign=sign) + ("%" if symbol else "")


@dataclass(frozen=True)
class Unit:
    """How a stored value is shown: ``scale`` × value with ``digits`` decimals. ``difference``
    names the unit of a difference of two values (``"points"`` for percentages), ``column``
    is appended to a table's column name where the table's own text does not say the unit
    (empty for percent and points, which the study's tables explain)."""

    name: str
    scale: float
    digits: int
    difference: str
    column: str = ""

    def shown(self, v: float) -> float:
        """The number shown for stored value ``v`` (a difference in :attr:`difference`)."""
        return self.scale * v

    def format(self, v: float | None, *, sign: bool = False, digits: int | None = None
               ) -> str:
        """Stored value ``v`` as the table shows it (no unit symbol: the table says it)."""
        if is_missing(v):
            return MISSING
        assert v is not None
        return number(self.shown(v), self.digits if digits is None else digits, sign=sign)


#: Fractions shown ×100 (accuracies, shares); their differences are in points.
PERCENT = Unit("percent", 100.0, 1, "points")
#: A difference of fractions, shown ×100 (``excess top share``).
POINTS = Unit("points", 100.0, 1, "points")
#: A plain ratio (an entropy, a ratio of two quantities), shown as it is.
RATIO = Unit("ratio", 1.0, 3, "ratio units", column=" (ratio)")
UNITS: dict[str, Unit] = {u.name: u for u in (PERCENT, POINTS, RATIO)}


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|")


def md_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table: one line per row, ``|`` inside a cell (or a column name) escaped as
    ``\\|``."""
    out = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def csv_value(v: Any) -> Any:
    """A CSV cell: None and NaN empty, floats with 6 significant digits, others as they are."""
    if is_missing(v):
        return ""
    return f"{v:.6g}" if isinstance(v, float) else v


def csv_text(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A CSV document (``\\n`` line ends) of ``header`` and ``rows``, cells by
    :func:`csv_value`."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([csv_value(h) for h in header])
    for r in rows:
        w.writerow([csv_value(v) for v in r])
    return buf.getvalue()

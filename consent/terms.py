"""Opt-in terms: calendar-month arithmetic, the ledger day, and the term matrix.

PRODUCT.md, "Domain": a term of N months from date d covers every date D with
``D < add_months(d, N)`` (calendar months; a day that does not exist clamps to the
month's last day: 2024-01-31 + 1 month = 2024-02-29). The matrix gives the months per
(category, channel); the dealer edits it, and every cell remembers the tenant event that
last set it, so an eligibility decision can cite it as evidence.

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import calendar
import datetime as dt
import zoneinfo
from collections.abc import Iterable
from typing import Final

import msgspec

from schemas.events import TermCell, TermMatrixEdited
from schemas.vocabulary import CATEGORIES, CHANNELS, DIGITAL_CHANNELS, Category, Channel

__all__ = [
    "ALL_CELLS",
    "DEFAULT_TERMS",
    "TermMatrix",
    "add_months",
    "EARLIEST_FACT_DATE",
    "apply_term_edit",
    "cell_key",
    "default_term_months",
    "fact_date_problem",
    "ledger_day",
    "split_cell_key",
    "term_end",
    "terms_from_cells",
]

# ---------------------------------------------------------------------------------------
# Dates
# ---------------------------------------------------------------------------------------


def add_months(d: dt.date, n: int) -> dt.date:
    """``d`` plus ``n`` calendar months, the day clamped to the month's last day.

    >>> add_months(dt.date(2024, 1, 31), 1)
    datetime.date(2024, 2, 29)
    >>> add_months(dt.date(2024, 2, 29), 12)
    datetime.date(2025, 2, 28)
    """
    month0 = d.month - 1 + n
    year = d.year + month0 // 12
    month = month0 % 12 + 1
    last = calendar.monthrange(year, month)[1]
    return dt.date(year, month, d.day if d.day <= last else last)


def term_end(start: dt.date, months: int) -> dt.date:
    """The first date a term of ``months`` months from ``start`` no longer covers.

    The term covers D iff ``start <= D < term_end(start, months)`` (PRODUCT.md); a term
    of 0 months covers nothing.
    """
    return add_months(start, months)


_UTC: Final = dt.timezone.utc
# The tz database (from the `tzdata` package where the host has none) rather than a
# hand-written summer-time rule: Dutch law may move the clock again.
AMSTERDAM: Final = zoneinfo.ZoneInfo("Europe/Amsterdam")


def ledger_day(moment: dt.datetime) -> dt.date:
    """The Dutch calendar date (Europe/Amsterdam) of a recorded_at timestamp.

    Preferences and objections take effect on the day they were recorded, and the
    dealers, their customers and the campaign senders count days in Dutch local time, so
    "the day" of a ledger timestamp is its Amsterdam date. A naive datetime is taken to
    be UTC.
    """
    utc = moment.replace(tzinfo=_UTC) if moment.tzinfo is None else moment
    return utc.astimezone(AMSTERDAM).date()


EARLIEST_FACT_DATE: Final = dt.date(1950, 1, 1)
"""No dealer's invoice, prospect acquisition or marketing activity is older than this."""


def fact_date_problem(day: dt.date, today: dt.date) -> str | None:
    """Why ``day`` cannot be the date of an invoice, an acquisition or a marketing activity
    recorded on ``today`` (a Dutch calendar day), or None. A date in the future would start
    a term that has not begun (and, far enough out, run the month arithmetic off the
    calendar); one before 1950 is a typo. The HTTP API and the DMS import both ask this."""
    if day > today:
        return f"{day.isoformat()} is in the future"
    if day < EARLIEST_FACT_DATE:
        return f"{day.isoformat()} is before {EARLIEST_FACT_DATE.isoformat()}"
    return None


# ---------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------

_KEYS: Final[dict[tuple[str, str], str]] = {(c, h): f"{c}:{h}" for c in CATEGORIES for h in CHANNELS}

ALL_CELLS: Final[tuple[tuple[Category, Channel], ...]] = tuple((c, h) for c in CATEGORIES for h in CHANNELS)
"""All 25 (category, channel) cells, categories then channels in vocabulary order."""


def cell_key(category: str, channel: str) -> str:
    """The string key of a cell, ``"category:channel"`` (JSON-friendly dict key)."""
    key = _KEYS.get((category, channel))
    return key if key is not None else f"{category}:{channel}"


def split_cell_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`cell_key`."""
    category, _, channel = key.partition(":")
    return category, channel


# ---------------------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------------------


class TermMatrix(msgspec.Struct, frozen=True, kw_only=True):
    """Months per (category, channel), and the tenant event that last set each cell.

    ``months`` and ``set_by`` are keyed by :func:`cell_key`. A cell missing from
    ``months`` counts as 0 months (fail closed: no term without a recorded choice).
    ``set_by`` has no entry for a cell that no event set (e.g. :data:`DEFAULT_TERMS`).
    Treat both dicts as read-only; every change makes a new matrix.
    """

    months: dict[str, int] = {}
    set_by: dict[str, str] = {}

    def get(self, category: str, channel: str) -> int:
        """Months of the cell (0 if the cell was never set)."""
        return self.months.get(cell_key(category, channel), 0)

    def evidence(self, category: str, channel: str) -> str | None:
        """event_id of the tenant event that last set the cell, if any."""
        return self.set_by.get(cell_key(category, channel))

    def cells(self) -> list[TermCell]:
        """All 25 cells as :class:`TermCell` (missing cells as 0 months)."""
        return [TermCell(category=c, channel=h, months=self.get(c, h)) for c, h in ALL_CELLS]


def default_term_months(category: str, channel: str) -> int:
    """The seed default of a cell (PRODUCT.md table; seed sections 6.1 to 6.3)."""
    if category == "aftersales_service":
        return 48
    if category == "prospect":
        return 3
    return 18 if channel in DIGITAL_CHANNELS else 48


DEFAULT_TERMS: Final[TermMatrix] = TermMatrix(
    months={cell_key(c, h): default_term_months(c, h) for c, h in ALL_CELLS},
)
"""The seed's default matrix, not tied to any event (``set_by`` is empty)."""


def terms_from_cells(cells: Iterable[TermCell], event_id: str | None) -> TermMatrix:
    """A matrix with exactly ``cells`` (e.g. from ``TenantCreated.terms``), set by ``event_id``.

    Cells not listed count as 0 months (see :class:`TermMatrix`).
    """
    months: dict[str, int] = {}
    for cell in cells:
        months[cell_key(cell.category, cell.channel)] = cell.months
    set_by = dict.fromkeys(months, event_id) if event_id is not None else {}
    return TermMatrix(months=months, set_by=set_by)


def apply_term_edit(matrix: TermMatrix, edit: TermMatrixEdited, event_id: str) -> TermMatrix:
    """The matrix after a :class:`TermMatrixEdited`: listed cells get the new months and
    cite ``event_id``; other cells keep their value and evidence."""
    months = dict(matrix.months)
    set_by = dict(matrix.set_by)
    for cell in edit.cells:
        key = cell_key(cell.category, cell.channel)
        months[key] = cell.months
        set_by[key] = event_id
    return TermMatrix(months=months, set_by=set_by)

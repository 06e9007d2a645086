"""Reading the two times of an as-of question: the knowledge time K and the date D.

K is a moment (ISO 8601 with an offset, or a date meaning the end of that Dutch day);
D is a calendar date and defaults to K's Dutch day (:func:`consent.terms.ledger_day`).
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from consent.terms import AMSTERDAM, ledger_day
from services.audit.errors import AuditError

UTC: Final = dt.timezone.utc


def end_of_dutch_day(day: dt.date) -> dt.datetime:
    """The last microsecond of ``day`` in Europe/Amsterdam, as a UTC datetime.

    The offset comes from the tz database, not from an assumed CET/CEST: Amsterdam was
    +00:19:32 until 1937 and +00:20 until the occupation (1940-05-16), and a date that
    old is a fair question for an audit. The next day's midnight always exists in
    Amsterdam (no transition there at midnight in the tz data); ``fold=0`` picks the
    earlier reading if one ever did."""
    next_midnight = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=AMSTERDAM)
    return next_midnight.astimezone(UTC) - dt.timedelta(microseconds=1)


def parse_known_at(text: str | None, now: dt.datetime, field: str = "known_at") -> dt.datetime:
    """K from a query value; None/empty means now. Refuses a K after ``now``."""
    if not text:
        return now
    value = text.strip()
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            if day > ledger_day(now):
                raise AuditError(422, "known_at_in_future",
                                 f"{field} {value} is in the future: the ledger cannot know it yet", field)
            return min(end_of_dutch_day(day), now)
        moment = dt.datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise AuditError(422, "validation_error",
                         f"{field} must be an ISO 8601 date-time with an offset (2025-03-01T12:00:00+01:00 or"
                         f" ...Z) or a date (2025-03-01 = the end of that day), not {value!r}", field) from None
    if moment.tzinfo is None:
        raise AuditError(422, "validation_error",
                         f"{field} needs a UTC offset (e.g. 'Z' or '+01:00'): {value!r} is ambiguous", field)
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00
        raise AuditError(422, "validation_error", f"{field} {value!r} is out of range", field) from None
    if utc > now:
        raise AuditError(422, "known_at_in_future",
                         f"{field} {value} is in the future: the ledger cannot know it yet", field)
    return utc


EARLIEST_ON: Final = dt.date(1900, 1, 1)
LATEST_ON: Final = dt.date(2999, 12, 31)
"""The dates a consent question can be about. The bound matters: the rules add up to 120
months to an invoice or acquisition date on or before D; the API and the import refuse fact
dates in the future now, but the ledger may hold older ones (year 9999 included), so an
unbounded D could run past the calendar's end."""


def parse_on(text: str | None, known_at: dt.datetime, field: str = "on") -> dt.date:
    """D from a query value; None/empty means the Dutch day of K."""
    if not text:
        return ledger_day(known_at)
    try:
        on = dt.date.fromisoformat(text.strip())
    except ValueError:
        # the same words as a bad date in a JSON body (services/ledger/api/jsonapi.py NOT_A_DATE)
        raise AuditError(422, "validation_error", f"{text[:40]!r} is not a calendar date (YYYY-MM-DD)",
                         field) from None
    if not EARLIEST_ON <= on <= LATEST_ON:
        raise AuditError(422, "validation_error", f"{field} must be a date from {EARLIEST_ON.isoformat()} to"
                         f" {LATEST_ON.isoformat()}, not {on.isoformat()}", field)
    return on

"""The projector's notion of time, injectable so tests can move a day forward.

Eligibility depends on the date (a term lapses on a day, with no new event), and "the
day" is the Dutch calendar day (:func:`consent.terms.ledger_day`), the same day the ledger
gives preferences and objections.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from consent.terms import ledger_day


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current moment (timezone-aware)."""
        ...

    def today(self) -> dt.date:
        """The current Dutch calendar day."""
        ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)

    def today(self) -> dt.date:
        return ledger_day(self.now())


class FixedClock:
    """A clock that stands still until moved (tests, benchmarks, replaying a day)."""

    def __init__(self, moment: dt.datetime) -> None:
        if moment.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware moment")
        self._now = moment

    def now(self) -> dt.datetime:
        return self._now

    def today(self) -> dt.date:
        return ledger_day(self._now)

    def set(self, moment: dt.datetime) -> None:
        if moment.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware moment")
        self._now = moment

    def advance(self, delta: dt.timedelta) -> None:
        self._now += delta

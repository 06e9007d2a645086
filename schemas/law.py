"""The dated legal rule as a message type: what an answer's ``law_in_force`` /
``law_upcoming`` lists hold (schemas/eligibility.py ``TermWarnings``, the as-of audit answer).

Only the shape lives here, at the bottom with the other message types; the rule table itself
(:data:`consent.law.RULES`) and the lookups over it are the pure rules in ``consent/law.py``.
"""

from __future__ import annotations

import datetime as dt
from typing import Final, Literal

import msgspec

from schemas.vocabulary import Channel

__all__ = ["AUDIENCES", "Audience", "Effect", "Kind", "LegalRule"]

Audience = Literal["customer", "non_customer"]
Effect = Literal["consent_required", "objection_offer", "postfilter_check", "term_warning"]
Kind = Literal["statute", "code"]
AUDIENCES: Final[tuple[Audience, ...]] = ("customer", "non_customer")


class LegalRule(msgspec.Struct, frozen=True, kw_only=True):
    """One dated legal rule.

    ``first_send``: the first send date it applies to (None: long-standing, in force before
    every date this table dates). ``last_send``: the last send date it applies to (None:
    still in force). ``confirmed``: False where a fact behind a date is not confirmed by a
    stored source (docs/law.md says which): the date is data that can move.
    """

    id: str
    channels: tuple[Channel, ...]
    audiences: tuple[Audience, ...]
    first_send: dt.date | None
    last_send: dt.date | None = None
    effects: tuple[Effect, ...]
    kind: Kind
    source: str
    summary_nl: str
    summary_en: str
    max_months: int | None = None
    confirmed: bool = True

    def applies_on(self, on: dt.date) -> bool:
        return (self.first_send is None or self.first_send <= on) and (self.last_send is None or on <= self.last_send)


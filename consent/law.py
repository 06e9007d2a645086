"""The law by send date: Dutch direct-marketing rules as dated, cited data (PRODUCT.md,
"The law by date"; docs/law.md).

The dealer's term matrix is the dealer's choice; the law in force on the send date D limits
it. Each :class:`~schemas.law.LegalRule` (the type, in schemas/law.py) says which channels
and audience (customer / non-customer) it covers, the first (and, where it ended, the last)
send date it applies to, its effects, and whether it is a statute or a code of conduct, with
its source as text.

Effects:

* ``consent_required`` (statute only): without the subject's explicit opt-in the answer is
  "no", reason ``consent_required``, naming the rule (``law``). Applied after erasure,
  objection and the subject's own choice, before the term (consent/eligibility.py).
* ``objection_offer``: a "yes" on soft opt-in or legitimate interest carries
  ``requires_objection_offer``: the message must offer the right to object.
* ``postfilter_check``: a prospect-post "yes" carries ``requires_postfilter_check``
  (screen against the Postfilter and the deceased register).
* ``term_warning``: a code of conduct's maximum term (``max_months``); a warning on the
  matrix (consent/warnings.py), never an answer.

A code of conduct never decides an answer: :data:`RULES` is checked at import so that no
``code`` has a ``consent_required`` effect.

The table's content hash is :data:`RULES_VERSION`; every answer names it, so a changed table
(a date that moved, a new rule) is a new version, and read models evaluated with another
version are re-evaluated (services/projector).

Lookups are cheap: per (channel, audience) the switch dates are sorted once and the rules in
force between two switch dates are precomputed, so a lookup is one bisection; per (audience,
date) the five channels' answers are cached.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Final

import msgspec

from schemas.law import AUDIENCES, Audience, LegalRule
from schemas.vocabulary import CHANNELS

__all__ = [
    "LAW_CACHE",
    "OLDEST_DATED_RULE",
    "RULES",
    "RULES_VERSION",
    "SWITCH_DATES",
    "LawInForce",
    "law_by_channel",
    "law_on",
    "rule",
    "rules_in_force",
    "rules_starting_after",
    "rules_version_of",
    "switch_dates_after",
]

_ONE_DAY: Final = dt.timedelta(days=1)


RULES: Final[tuple[LegalRule, ...]] = (
    LegalRule(
        id="nl-telecom-11.7-digital-optin",
        channels=("email", "sms", "app"),
        audiences=("non_customer",),
        first_send=None,
        effects=("consent_required",),
        kind="statute",
        source="Telecommunicatiewet art. 11.7 lid 1 (app: behandeld als e-mail en SMS)",
        summary_nl="Niet-klanten via e-mail, SMS of app alleen met hun voorafgaande toestemming (opt-in).",
        summary_en="Non-customers by e-mail, SMS or app only with their prior consent (opt-in).",
    ),
    LegalRule(
        id="nl-telecom-11.7-soft-opt-in",
        channels=("email", "sms", "app"),
        audiences=("customer",),
        first_send=None,
        effects=("objection_offer",),
        kind="statute",
        source="Telecommunicatiewet art. 11.7 lid 3 (app: behandeld als e-mail en SMS)",
        summary_nl=(
            "Klanten via e-mail, SMS of app zonder opt-in (soft opt-in) alleen voor uw eigen, vergelijkbare "
            "producten of diensten; bezwaar aanbieden bij het verzamelen en in elk bericht."
        ),
        summary_en=(
            "Customers by e-mail, SMS or app without opt-in (soft opt-in) only for your own similar products "
            "or services; offer the right to object when collecting the address and in every message."
        ),
    ),
    LegalRule(
        id="avg-21-objection",
        channels=CHANNELS,
        audiences=AUDIENCES,
        first_send=None,
        effects=("objection_offer",),
        kind="statute",
        source="AVG (GDPR) art. 21 lid 2 en 4",
        summary_nl=(
            "Direct marketing op grond van gerechtvaardigd belang: wijs de ontvanger op het recht van bezwaar "
            "(de ledger vraagt dat in elk bericht)."
        ),
        summary_en=(
            "Direct marketing on legitimate interest: tell the recipient about the right to object "
            "(the ledger asks for it in every message)."
        ),
    ),
    LegalRule(
        id="nl-gedragscode-telemarketing-2020",
        channels=("phone",),
        audiences=("customer",),
        first_send=dt.date(2020, 6, 1),
        last_send=dt.date(2026, 6, 30),
        effects=("term_warning", "objection_offer"),
        kind="code",
        source="Gedragscode Telemarketing 2020 (zelfregulering)",
        summary_nl=(
            "(Oud-)klanten bellen zonder toestemming alleen tot 3 jaar (36 maanden) na de laatste aankoop; "
            "in elk gesprek de mogelijkheid van bezwaar bieden."
        ),
        summary_en=(
            "Calling (former) customers without consent only up to 3 years (36 months) after the last "
            "purchase; offer the right to object in every call."
        ),
        max_months=36,
    ),
    LegalRule(
        id="nl-code-postfilter-2021",
        channels=("post",),
        audiences=("non_customer",),
        first_send=dt.date(2021, 4, 1),
        effects=("postfilter_check",),
        kind="code",
        source="Code Postfilter 2021 (Stichting Reclame Code)",
        summary_nl=(
            "Geadresseerde post aan niet-klanten: eerst controleren tegen het Postfilter en het "
            "overledenenregister, en vermelden hoe de ontvanger zich kan afmelden."
        ),
        summary_en=(
            "Addressed post to non-customers: screen against the Postfilter and the deceased register first, "
            "and say how the recipient can unsubscribe."
        ),
    ),
    LegalRule(
        id="nl-telecom-11.7-phone-optin-2021",
        channels=("phone",),
        audiences=("non_customer",),
        first_send=dt.date(2021, 7, 1),
        effects=("consent_required",),
        kind="statute",
        source="Telecommunicatiewet art. 11.7; Kamerstuk 35 421 (Bel-me-niet Register afgeschaft)",
        summary_nl="Niet-klanten bellen alleen met hun voorafgaande toestemming (opt-in).",
        summary_en="Calling non-customers only with their prior consent (opt-in).",
    ),
    LegalRule(
        id="nl-telecom-11.7-phone-optin-2026",
        channels=("phone",),
        audiences=AUDIENCES,
        first_send=dt.date(2026, 7, 1),
        effects=("consent_required",),
        kind="statute",
        source=(
            "Energiewet, amendementen Flach c.s., Kamerstuk 36 378 nrs. 85 en 86 (aangenomen 4 juni 2024); "
            "ingangsdatum vastgesteld door de minister van Economische Zaken, bevestigd door de ACM"
        ),
        summary_nl=(
            "Ook bestaande klanten bellen alleen met hun voorafgaande, uitdrukkelijke toestemming (opt-in); "
            "de uitzondering voor klanten is vervallen (autobedrijven zijn niet uitgezonderd)."
        ),
        summary_en=(
            "Existing customers too may only be called with their prior explicit consent (opt-in); the customer "
            "exception is gone (car dealers are not exempt)."
        ),
        confirmed=False,  # the Staatsblad decree is not in the stored sources (no postponement found either)
    ),
)


def _check(rules: tuple[LegalRule, ...]) -> None:
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise ValueError("legal rule ids must be unique")
    for r in rules:
        if r.kind == "code" and "consent_required" in r.effects:
            raise ValueError(f"{r.id}: a code of conduct warns, it never decides an answer")
        if r.first_send is not None and r.last_send is not None and r.last_send < r.first_send:
            raise ValueError(f"{r.id}: last_send before first_send")
        if ("term_warning" in r.effects) != (r.max_months is not None):
            raise ValueError(f"{r.id}: a term warning needs max_months, and only a term warning has one")


_check(RULES)


def rules_version_of(rules: tuple[LegalRule, ...]) -> str:
    """The version id of a rule table: a hash of its content, so any change is a new id."""
    return "nl-law-" + hashlib.blake2b(msgspec.json.encode(rules), digest_size=6).hexdigest()


RULES_VERSION: Final = rules_version_of(RULES)
"""The version of :data:`RULES`: named by every answer (``rules_version``)."""

OLDEST_DATED_RULE: Final[dt.date] = min(r.first_send for r in RULES if r.first_send is not None)
"""Before this date the table dates nothing: an as-of date earlier than it is answered with
the oldest rules (the long-standing ones) and says so (``before_oldest_rule``)."""

_BY_ID: Final = {r.id: r for r in RULES}


def rule(rule_id: str) -> LegalRule:
    return _BY_ID[rule_id]


def rules_in_force(on: dt.date) -> list[LegalRule]:
    """The rules that apply to a send on ``on``, in table order."""
    return [r for r in RULES if r.applies_on(on)]


def rules_starting_after(on: dt.date) -> list[LegalRule]:
    """The rules that start applying after ``on``, by start date."""
    later = [r for r in RULES if r.first_send is not None and r.first_send > on]
    return sorted(later, key=lambda r: r.first_send or on)


class LawInForce(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What the law says about one (channel, audience) on a send date.

    ``consent_rule``: the statute that requires explicit consent (None: the matrix's soft
    opt-in / legitimate interest may apply). ``consent_from``: when none is in force, the
    first later send date from which one is (a "yes" then lapses on that date).
    """

    consent_rule: str | None = None
    consent_from: dt.date | None = None
    objection_offer: bool = False
    postfilter_check: bool = False


def _switch_dates(rules: tuple[LegalRule, ...], channel: str, audience: str) -> list[dt.date]:
    dates: set[dt.date] = set()
    for r in rules:
        if channel in r.channels and audience in r.audiences:
            if r.first_send is not None:
                dates.add(r.first_send)
            if r.last_send is not None:
                dates.add(r.last_send + _ONE_DAY)
    return sorted(dates)


def _state_on(rules: tuple[LegalRule, ...], channel: str, audience: str, on: dt.date,
              later: list[dt.date]) -> LawInForce:
    covering = [r for r in rules if channel in r.channels and audience in r.audiences]
    here = [r for r in covering if r.applies_on(on)]
    consent = [r for r in here if "consent_required" in r.effects]
    # several statutes requiring consent: name the one that has applied longest, so a new
    # statute that only repeats an existing duty (phone to non-customers from 2026) does not
    # change (and republish) answers that were already "consent required"
    consent_rule = min(consent, key=lambda r: r.first_send or dt.date.min).id if consent else None
    consent_from = None
    if consent_rule is None:
        for day in later:
            if any("consent_required" in r.effects and r.applies_on(day) for r in covering):
                consent_from = day
                break
    return LawInForce(
        consent_rule=consent_rule,
        consent_from=consent_from,
        objection_offer=any("objection_offer" in r.effects for r in here),
        postfilter_check=any("postfilter_check" in r.effects for r in here),
    )


def _table(rules: tuple[LegalRule, ...]) -> dict[tuple[str, str], tuple[list[dt.date], tuple[LawInForce, ...]]]:
    """Per (channel, audience): the sorted switch dates, and what is in force before the
    first one, between each two, and after the last."""
    out: dict[tuple[str, str], tuple[list[dt.date], tuple[LawInForce, ...]]] = {}
    for channel in CHANNELS:
        for audience in AUDIENCES:
            dates = _switch_dates(rules, channel, audience)
            starts = [dt.date.min, *dates]
            states = tuple(_state_on(rules, channel, audience, start, dates[i:]) for i, start in enumerate(starts))
            out[(channel, audience)] = (dates, states)
    return out


_TABLE: Final = _table(RULES)

SWITCH_DATES: Final[tuple[dt.date, ...]] = tuple(sorted({d for dates, _ in _TABLE.values() for d in dates}))
"""Every date on which some (channel, audience) answer of the law changes."""


def law_on(channel: str, audience: Audience, on: dt.date) -> LawInForce:
    dates, states = _TABLE[(channel, audience)]
    return states[bisect.bisect_right(dates, on)]


LAW_CACHE: Final[dict[str, dict[dt.date, Mapping[str, LawInForce]]]] = {a: {} for a in AUDIENCES}
"""Per audience, per date: the five channels' :class:`LawInForce`. Read directly by the hot
path (consent/eligibility.py: one dict lookup per matrix), filled by :func:`law_by_channel`."""


def law_by_channel(audience: Audience, on: dt.date) -> Mapping[str, LawInForce]:
    """:func:`law_on` for the five channels; cached per (audience, date): a matrix asks it
    once, and most matrices are evaluated on the same day."""
    cache = LAW_CACHE[audience]
    cached = cache.get(on)
    if cached is None:
        if len(cache) > 8192:  # audits over many dates: keep it bounded
            cache.clear()
        cached = cache[on] = {h: law_on(h, audience, on) for h in CHANNELS}
    return cached


def switch_dates_after(on: dt.date) -> tuple[dt.date, ...]:
    """The switch dates later than ``on`` (next_change candidates)."""
    return SWITCH_DATES[bisect.bisect_right(SWITCH_DATES, on):]

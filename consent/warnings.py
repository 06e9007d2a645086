"""Compliance warnings on a dealer's term matrix (PRODUCT.md, "Eligibility", compliance notes).

Shown next to the matrix; they never change the dealer's choice. Each warning has a stable
``code``, the row (category) and/or column (channel) it is about, a severity, and a Dutch and
an English message:

Everything about the law comes from the dated rule table (consent/law.py) for the day asked:

* ``phone_term_above_telemarketing_code`` (per customer category with a phone term above
  the Gedragscode Telemarketing's 36 months), only while that code applies and no statute
  requires consent for calling customers (2020-06-01 to 2026-06-30);
* ``customer_phone_term_unused`` (warning, when customers have a phone term > 0 and a
  statute requires opt-in for calling customers: from 2026-07-01): the terms are not used;
* ``customer_phone_opt_in_from`` (info, before such a statute starts): from which date;
* ``soft_opt_in_own_similar_products`` (per newsletter/campaign category with a digital
  term > 0): soft opt-in for e-mail/SMS only covers the dealer's own similar products
  (Telecommunicatiewet 11.7(3)) and every message must offer the right to object;
* ``prospect_digital_term_unused`` / ``prospect_phone_term_unused`` (info, when set > 0):
  prospects need explicit consent on digital channels and (since the Bel-me-niet register
  was abolished on 2021-07-01, while that statute applies) by phone, so those terms are
  never used.

The warning's type, ``ComplianceWarning``, is a message type (schemas/warnings.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from consent.law import law_on, rule, rules_in_force, rules_starting_after
from consent.terms import TermMatrix
from schemas.vocabulary import CATEGORIES, Category, Channel
from schemas.warnings import ComplianceWarning

__all__ = ["compliance_warnings", "date_en", "date_nl"]

_MONTHS_NL: Final = ("januari", "februari", "maart", "april", "mei", "juni", "juli", "augustus", "september",
                     "oktober", "november", "december")
_MONTHS_EN: Final = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
                     "October", "November", "December")


def date_nl(day: dt.date | None) -> str:
    """``1 juli 2026``; None (a long-standing rule): ``al lang``."""
    return f"{day.day} {_MONTHS_NL[day.month - 1]} {day.year}" if day is not None else "al lang"


def date_en(day: dt.date | None) -> str:
    return f"{day.day} {_MONTHS_EN[day.month - 1]} {day.year}" if day is not None else "long-standing"


_CATEGORY_NL: Final[dict[str, str]] = {
    "aftersales_service": "Aftersales service",
    "newsletter": "Nieuwsbrief",
    "sales_campaign": "Sales acties",
    "aftersales_campaign": "Aftersales acties",
    "prospect": "Prospects",
}
_CATEGORY_EN: Final[dict[str, str]] = {
    "aftersales_service": "Aftersales service",
    "newsletter": "Newsletter",
    "sales_campaign": "Sales campaigns",
    "aftersales_campaign": "Aftersales campaigns",
    "prospect": "Prospects",
}
_CHANNEL_NL: Final[dict[str, str]] = {
    "email": "e-mail",
    "sms": "SMS",
    "app": "app",
    "post": "post",
    "phone": "telefoon",
}
_CHANNEL_EN: Final[dict[str, str]] = {"email": "e-mail", "sms": "SMS", "app": "app", "post": "post", "phone": "phone"}
_DIGITAL: Final[tuple[Channel, ...]] = ("email", "sms", "app")
_SOFT_OPT_IN_CATEGORIES: Final[tuple[Category, ...]] = ("newsletter", "sales_campaign", "aftersales_campaign")


def _cells(terms: TermMatrix, category: str, channels: tuple[str, ...], lang: dict[str, str]) -> str:
    return ", ".join(f"{lang[h]} {terms.get(category, h)}" for h in channels)


def compliance_warnings(terms: TermMatrix, on: dt.date) -> list[ComplianceWarning]:
    """The compliance notes that apply to ``terms`` for sends on ``on`` (the law of that
    day and the changes announced in the rule table, consent/law.py), in a stable order."""
    out: list[ComplianceWarning] = []

    customer_categories = [c for c in CATEGORIES if c != "prospect"]
    calling = [c for c in customer_categories if terms.get(c, "phone") > 0]
    phone_law = law_on("phone", "customer", on)
    if phone_law.consent_rule is None:
        # a code of conduct's maximum term, while it applies and no statute overrides it
        for code_rule in (r for r in rules_in_force(on) if r.max_months is not None
                          and "phone" in r.channels and "customer" in r.audiences):
            for category in customer_categories:
                months = terms.get(category, "phone")
                if months > code_rule.max_months:  # type: ignore[operator]
                    out.append(
                        ComplianceWarning(
                            code="phone_term_above_telemarketing_code",
                            category=category,
                            channel="phone",
                            severity="warning",
                            message_nl=(
                                f"De termijn voor {_CATEGORY_NL[category]} per telefoon is {months} maanden. De "
                                f"{code_rule.source} staat bellen naar (oud-)klanten toe tot maximaal "
                                f"{code_rule.max_months} maanden na de laatste aankoop."
                            ),
                            message_en=(
                                f"The phone term for {_CATEGORY_EN[category]} is {months} months. The "
                                f"{code_rule.source} allows calling (former) customers up to "
                                f"{code_rule.max_months} months after their last purchase."
                            ),
                        )
                    )
    if calling and phone_law.consent_rule is not None:
        statute = rule(phone_law.consent_rule)
        cells_nl = ", ".join(f"{_CATEGORY_NL[c]} {terms.get(c, 'phone')}" for c in calling)
        cells_en = ", ".join(f"{_CATEGORY_EN[c]} {terms.get(c, 'phone')}" for c in calling)
        out.append(
            ComplianceWarning(
                code="customer_phone_term_unused",
                category=None,
                channel="phone",
                severity="warning",
                message_nl=(
                    f"Sinds {date_nl(statute.first_send)} mag u ook bestaande klanten alleen bellen met hun "
                    f"voorafgaande, uitdrukkelijke toestemming (opt-in) ({statute.source}). Uw telefoontermijnen "
                    f"voor klanten ({cells_nl} maanden) worden daarom niet gebruikt: zonder opt-in is het "
                    "antwoord 'nee, toestemming vereist'."
                ),
                message_en=(
                    f"Since {date_en(statute.first_send)} existing customers too may only be called with their "
                    f"prior explicit consent (opt-in) ({statute.source}). Your phone terms for customers "
                    f"({cells_en} months) are therefore not used: without opt-in the answer is "
                    "'no, consent required'."
                ),
            )
        )
    if calling and phone_law.consent_from is not None:
        upcoming = next(r for r in rules_starting_after(on) if r.first_send == phone_law.consent_from
                        and "consent_required" in r.effects and "phone" in r.channels and "customer" in r.audiences)
        out.append(
            ComplianceWarning(
                code="customer_phone_opt_in_from",
                category=None,
                channel="phone",
                severity="info",
                message_nl=(
                    f"Vanaf {date_nl(upcoming.first_send)} mag u ook bestaande klanten alleen bellen met hun "
                    f"voorafgaande, uitdrukkelijke toestemming (opt-in) ({upcoming.source}). Tot die datum "
                    "gelden uw telefoontermijnen; vanaf die datum is het antwoord zonder opt-in 'nee'."
                ),
                message_en=(
                    f"From {date_en(upcoming.first_send)} existing customers too may only be called with their "
                    f"prior explicit consent (opt-in) ({upcoming.source}). Until then your phone terms apply; "
                    "from that date the answer without opt-in is 'no'."
                ),
            )
        )

    for row in _SOFT_OPT_IN_CATEGORIES:
        channels = tuple(h for h in _DIGITAL if terms.get(row, h) > 0)
        if channels:
            out.append(
                ComplianceWarning(
                    code="soft_opt_in_own_similar_products",
                    category=row,
                    channel=None,
                    severity="warning",
                    message_nl=(
                        f"{_CATEGORY_NL[row]} ({_cells(terms, row, channels, _CHANNEL_NL)} maanden): "
                        "soft opt-in via e-mail en SMS geldt alleen voor uw eigen, vergelijkbare producten of "
                        "diensten (Telecommunicatiewet artikel 11.7 lid 3), en elk bericht moet de ontvanger "
                        "de mogelijkheid bieden om bezwaar te maken."
                    ),
                    message_en=(
                        f"{_CATEGORY_EN[row]} ({_cells(terms, row, channels, _CHANNEL_EN)} months): "
                        "soft opt-in for e-mail and SMS only covers your own similar products or services "
                        "(Dutch Telecommunications Act, article 11.7(3)), and every message must offer the "
                        "right to object."
                    ),
                )
            )

    prospect_calls = law_on("phone", "non_customer", on).consent_rule
    if terms.get("prospect", "phone") > 0 and prospect_calls is not None:
        statute = rule(prospect_calls)
        out.append(
            ComplianceWarning(
                code="prospect_phone_term_unused",
                category="prospect",
                channel="phone",
                severity="info",
                message_nl=(
                    f"Sinds {date_nl(statute.first_send)} mag u niet-klanten alleen bellen met hun voorafgaande "
                    f"toestemming (opt-in) ({statute.source}). De telefoontermijn voor prospects wordt daarom "
                    "niet gebruikt."
                ),
                message_en=(
                    f"Since {date_en(statute.first_send)} non-customers may only be called with their prior "
                    f"consent (opt-in) ({statute.source}). The phone term for prospects is therefore not used."
                ),
            )
        )

    channels = tuple(h for h in _DIGITAL if terms.get("prospect", h) > 0)
    if channels:
        out.append(
            ComplianceWarning(
                code="prospect_digital_term_unused",
                category="prospect",
                channel=None,
                severity="info",
                message_nl=(
                    f"Prospects ({_cells(terms, 'prospect', channels, _CHANNEL_NL)} maanden): niet-klanten "
                    "mag u via e-mail, SMS of app alleen benaderen met een expliciete opt-in. Deze termijnen "
                    "worden daarom niet gebruikt."
                ),
                message_en=(
                    f"Prospects ({_cells(terms, 'prospect', channels, _CHANNEL_EN)} months): non-customers "
                    "may only be contacted by e-mail, SMS or app with explicit opt-in. These terms are "
                    "therefore not used."
                ),
            )
        )
    return out

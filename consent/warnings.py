"""Compliance warnings on a dealer's term matrix (PRODUCT.md, "Eligibility", compliance notes).

Shown next to the matrix; they never change the dealer's choice. Each warning has a stable
``code``, the row (category) and/or column (channel) it is about, a severity, and a Dutch and
an English message:

* ``phone_term_above_telemarketing_code`` (per customer category with phone > 36 months):
  the Dutch telemarketing code caps calls to former customers at 3 years after the last
  purchase;
* ``customer_calls_opt_in_announced`` (info, when customers may be called at all): the
  minister announced that calling existing customers without opt-in ends on 2026-07-01;
  announced, verify before enforcing;
* ``soft_opt_in_own_similar_products`` (per newsletter/campaign category with a digital
  term > 0): soft opt-in for e-mail/SMS only covers the dealer's own similar products
  (Telecommunicatiewet 11.7(3)) and every message must offer the right to object;
* ``prospect_digital_term_unused`` / ``prospect_phone_term_unused`` (info, when set > 0):
  prospects need explicit consent on digital channels and (since the Bel-me-niet register
  was abolished on 2021-07-01) by phone, so those terms are never used.

Note: the class is named ``ComplianceWarning`` (``Warning`` is an alias) so that it does not
hide Python's built-in ``Warning`` where it is imported; it is a data record, not a Python
warning.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from consent.terms import TermMatrix
from consent.vocabulary import CATEGORIES, Category, Channel

__all__ = ["ComplianceWarning", "Warning", "compliance_warnings"]

TELEMARKETING_CODE_MAX_MONTHS: Final = 36

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


class ComplianceWarning(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    category: Category | None
    channel: Channel | None
    severity: Literal["warning", "info"]
    message_nl: str
    message_en: str


Warning = ComplianceWarning  # noqa: A001 - the name the brief uses; see the module docstring


def _cells(terms: TermMatrix, category: str, channels: tuple[str, ...], lang: dict[str, str]) -> str:
    return ", ".join(f"{lang[h]} {terms.get(category, h)}" for h in channels)


def compliance_warnings(terms: TermMatrix) -> list[ComplianceWarning]:
    """The compliance notes that apply to ``terms``, in a stable order."""
    out: list[ComplianceWarning] = []

    customer_categories = [c for c in CATEGORIES if c != "prospect"]
    for category in customer_categories:
        months = terms.get(category, "phone")
        if months > TELEMARKETING_CODE_MAX_MONTHS:
            out.append(
                ComplianceWarning(
                    code="phone_term_above_telemarketing_code",
                    category=category,
                    channel="phone",
                    severity="warning",
                    message_nl=(
                        f"De termijn voor {_CATEGORY_NL[category]} per telefoon is {months} maanden. De "
                        "Gedragscode Telemarketing staat bellen naar (oud-)klanten toe tot maximaal 3 jaar "
                        "(36 maanden) na de laatste aankoop."
                    ),
                    message_en=(
                        f"The phone term for {_CATEGORY_EN[category]} is {months} months. The Dutch "
                        "telemarketing code allows calling (former) customers up to 3 years (36 months) "
                        "after their last purchase."
                    ),
                )
            )

    if any(terms.get(c, "phone") > 0 for c in customer_categories):
        out.append(
            ComplianceWarning(
                code="customer_calls_opt_in_announced",
                category=None,
                channel="phone",
                severity="info",
                message_nl=(
                    "Aangekondigd: de minister heeft aangekondigd dat bellen naar bestaande klanten zonder "
                    "opt-in per 1 juli 2026 stopt. Dit is een aankondiging; controleer de actuele regels "
                    "voordat u hierop handelt."
                ),
                message_en=(
                    "Announced: the minister announced that calling existing customers without opt-in ends "
                    "on 1 July 2026. This is an announcement; verify the current rules before enforcing it."
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

    if terms.get("prospect", "phone") > 0:
        out.append(
            ComplianceWarning(
                code="prospect_phone_term_unused",
                category="prospect",
                channel="phone",
                severity="info",
                message_nl=(
                    "Het Bel-me-niet Register is op 1 juli 2021 afgeschaft: sindsdien mag u niet-klanten "
                    "alleen bellen met hun voorafgaande toestemming (opt-in). De telefoontermijn voor "
                    "prospects wordt daarom niet gebruikt."
                ),
                message_en=(
                    "The Dutch do-not-call register (Bel-me-niet) was abolished on 1 July 2021: since then "
                    "non-customers may only be called with their prior consent (opt-in). The phone term for "
                    "prospects is therefore not used."
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

"""The fixed words of the domain: marketing categories, channels, preference values, the
eligibility bases and reasons, the identifier patterns and the stream ids built from them.

The bottom of the layering (services -> consent -> schemas): the message types in ``schemas/``
and the pure rules in ``consent/`` both use these words, so they live here and import nothing
of either (pyproject.toml, ``[tool.importlinter]``).

The ids are part of the public contract (PRODUCT.md, "Domain"); never rename one.
"""

from __future__ import annotations

import re
from typing import Final, Literal, get_args

Category = Literal[
    "aftersales_service",
    "newsletter",
    "sales_campaign",
    "aftersales_campaign",
    "prospect",
]
Channel = Literal["email", "post", "phone", "sms", "app"]
PreferenceValue = Literal["default", "opt_out", "opt_in"]

# An eligibility answer's legal ground when eligible, and the rule that decided
# (PRODUCT.md, "Eligibility"; consent/eligibility.py applies them).
Basis = Literal["consent", "soft_opt_in", "legitimate_interest"]
Reason = Literal[
    "erased",
    "objected",
    "opted_out",
    "explicit_consent",
    "soft_opt_in",
    "term_expired",
    "not_a_prospect",
    "not_a_customer",
    "consent_required",
    "prospect_term",
    "opt_in_pending",  # double opt-in: an e-mail opt-in waiting for its confirmation
]

CATEGORIES: Final[tuple[Category, ...]] = get_args(Category)
CHANNELS: Final[tuple[Channel, ...]] = get_args(Channel)
PREFERENCE_VALUES: Final[tuple[PreferenceValue, ...]] = get_args(PreferenceValue)
DIGITAL_CHANNELS: Final[frozenset[Channel]] = frozenset({"email", "sms", "app"})

# Data sources every tenant starts with (seed, section 7).
DEFAULT_DATA_SOURCES: Final[dict[str, str]] = {
    "dealer": "Dealer",
    "unknown": "Onbekende bron",
}

# The longest opt-in term a dealer may set in a cell (PRODUCT.md, "Eligibility"): the
# events' ``Months`` bound and the portal's form check.
MAX_TERM_MONTHS: Final = 120

# Identifiers that end up in stream ids and Kafka keys ("{tenant}/{source}/{ref}"):
# no "/" and nothing that needs quoting.
# Patterns are exported to JSON Schema (OpenAPI) and checked by msgspec with Python's re,
# whose "$" also matches before a final newline: "(?!\n)$" ends the text in both dialects,
# so "C1\n" is not a customer ref (stream ids are newline-joined in the store's SQL).
END_OF_TEXT: Final = r"(?!\n)$"
SLUG_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,39}" + END_OF_TEXT
CUSTOMER_REF_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}" + END_OF_TEXT
_SLUG = re.compile(SLUG_PATTERN)
_CUSTOMER_REF = re.compile(CUSTOMER_REF_PATTERN)


def is_slug(value: str) -> bool:
    return bool(_SLUG.match(value))


def is_customer_ref(value: str) -> bool:
    return bool(_CUSTOMER_REF.match(value))


def subject_key(tenant: str, source: str, customer_ref: str) -> str:
    """The subject's key on the eligibility topic and in read models."""
    return f"{tenant}/{source}/{customer_ref}"


def subject_stream(tenant: str, source: str, customer_ref: str) -> str:
    return f"subject/{tenant}/{source}/{customer_ref}"


def tenant_stream(tenant: str) -> str:
    return f"tenant/{tenant}"


def parse_subject_stream(stream_id: str) -> tuple[str, str, str] | None:
    """(tenant, source, customer_ref) for a subject stream id, else None."""
    parts = stream_id.split("/")
    if len(parts) == 4 and parts[0] == "subject":
        return parts[1], parts[2], parts[3]
    return None

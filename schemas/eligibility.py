"""Eligibility messages and answers, version 1.

Topic ``consent.eligibility.v1`` (compacted): key ``{tenant}/{source}/{customer_ref}``,
value :class:`EligibilityMatrix` as JSON, or null (a tombstone) once the subject is erased.
The same :class:`EligibilityMatrix` is the HTTP answer for one subject
(``GET /v1/tenants/{tenant}/subjects/{source}/{ref}/eligibility``), so a sender reads one
format everywhere. Versioning rules as for the events (schemas/events.py): a field never
changes meaning, a new field gets a default, an incompatible change is a new topic
(``consent.eligibility.v2``) and a new ``schema_version``.

A matrix evaluated on ``evaluated_on`` holds, with no new event, for every date D with
``evaluated_on <= D < valid_until`` (``valid_until`` null: until an event changes it); the
projector publishes a new matrix on ``valid_until`` at the latest (a term that lapses).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Final, Literal

import msgspec

from consent.vocabulary import (
    CUSTOMER_REF_PATTERN,
    SLUG_PATTERN,
    Basis,
    Category,
    Channel,
    Reason,
)
from consent.warnings import ComplianceWarning

__all__ = [
    "SCHEMA_VERSION",
    "TOPIC",
    "Basis",
    "CampaignCheck",
    "CampaignCheckResult",
    "Cell",
    "CheckSubject",
    "Disclosure",
    "EligibilityMatrix",
    "Reason",
    "SubjectCheck",
    "TermWarnings",
    "Unsubscribe",
    "UnsubscribeLinks",
    "decode_matrix",
    "encode_matrix",
    "topic_key",
]

TOPIC: Final = "consent.eligibility.v1"
SCHEMA_VERSION: Final = 1


class Cell(msgspec.Struct, frozen=True, kw_only=True):
    """The decision for one (category, channel) on the matrix's date (PRODUCT.md, "Eligibility").

    ``basis``: the legal ground when eligible, else null. ``until``: the first date the
    current basis no longer covers (exclusive; null for explicit consent and for a "no").
    ``requires_disclosure``: the first letter to a prospect must say why the person is
    contacted, with whom data is shared and that they may object (GDPR art. 14, 21(4)).
    ``evidence``: the ledger event ids the decision rests on.
    """

    eligible: bool
    basis: Basis | None = None
    reason: Reason
    until: dt.date | None = None
    evidence: list[str] = []
    requires_disclosure: bool = False


class Disclosure(msgspec.Struct, frozen=True, kw_only=True):
    """The text a first letter to a prospect must carry (GDPR art. 14, 21(4)), as the dealer
    set it on the AVG pages, and its version id (``dv-...``)."""

    text: str
    version: str


class Unsubscribe(msgspec.Struct, frozen=True, kw_only=True):
    """What a sender puts in an e-mail so the customer can unsubscribe with one click
    (RFC 8058; required by large mailbox providers for bulk mail, and soft opt-in needs an
    objection offer in every message). ``url``: the link for the message body (a GET shows a
    confirmation page); ``list_unsubscribe`` and ``list_unsubscribe_post``: the values of the
    ``List-Unsubscribe`` and ``List-Unsubscribe-Post`` headers. The URL is signed, opaque,
    survives portal-link rotation and stops working when the subject is erased."""

    url: str
    list_unsubscribe: str
    list_unsubscribe_post: str = "List-Unsubscribe=One-Click"


class UnsubscribeLinks(msgspec.Struct, frozen=True, kw_only=True):
    """``email``: per category whose e-mail cell is eligible, the link that opts out of that
    category by e-mail; ``all``: the link that objects to all direct marketing."""

    all: Unsubscribe
    email: dict[Category, Unsubscribe] = {}


class EligibilityMatrix(msgspec.Struct, frozen=True, kw_only=True):
    """One subject's full category x channel matrix, as of ``evaluated_on``.

    ``position`` is the ledger position of the newest event (subject or tenant stream)
    this matrix reflects; ``subject_version`` is the subject stream's version, and
    ``terms_version`` the tenant stream version of the last term matrix edit it was
    evaluated with.
    """

    schema_version: int = SCHEMA_VERSION
    tenant_id: str
    source: str
    customer_ref: str
    erased: bool = False
    evaluated_on: dt.date
    valid_until: dt.date | None = None
    position: int
    subject_version: int
    terms_version: int
    cells: dict[Category, dict[Channel, Cell]]
    # One-click unsubscribe links for the e-mail cells that are eligible (null when none is,
    # or when the projector has no master key to sign them).
    unsubscribe: UnsubscribeLinks | None = None
    # Some cell requires_disclosure: the dealer's art. 14 / 21(4) text for the first letter.
    disclosure: Disclosure | None = None

    @property
    def key(self) -> str:
        return topic_key(self.tenant_id, self.source, self.customer_ref)

    def cell(self, category: str, channel: str) -> Cell:
        return self.cells[category][channel]  # type: ignore[index]


def topic_key(tenant_id: str, source: str, customer_ref: str) -> str:
    """The eligibility topic's key (and the read model's subject key)."""
    return f"{tenant_id}/{source}/{customer_ref}"


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(EligibilityMatrix)


def encode_matrix(matrix: EligibilityMatrix) -> bytes:
    return _encoder.encode(matrix)


def decode_matrix(data: bytes | str) -> EligibilityMatrix:
    """A topic value (not a tombstone: check for null first)."""
    return _decoder.decode(data)


# ---------------------------------------------------------------------------------------
# HTTP: the bulk check for a campaign and the compliance warnings
# ---------------------------------------------------------------------------------------

Slug = Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN, description="lower-case letters, digits, _ and -")]
CustomerRef = Annotated[str, msgspec.Meta(pattern=CUSTOMER_REF_PATTERN)]
MAX_CHECK_SUBJECTS: Final = 10_000


class CheckSubject(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    source: Slug
    customer_ref: CustomerRef


class CampaignCheck(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """May each of these subjects get a ``category`` message on ``channel`` on ``send_date``?"""

    category: Category
    channel: Channel
    send_date: dt.date
    subjects: Annotated[list[CheckSubject], msgspec.Meta(min_length=1, max_length=MAX_CHECK_SUBJECTS)]


class SubjectCheck(msgspec.Struct, frozen=True, kw_only=True):
    """One subject's answer. An unknown subject (no events in this tenant) is not an error:
    ``known: false``, not eligible, reason ``unknown_subject``."""

    source: str
    customer_ref: str
    known: bool
    eligible: bool
    basis: Basis | None = None
    reason: Reason | Literal["unknown_subject"]
    until: dt.date | None = None
    requires_disclosure: bool = False
    evidence: list[str] = []
    # channel e-mail and eligible: the one-click unsubscribe link and header values
    unsubscribe: Unsubscribe | None = None
    # requires_disclosure: the dealer's art. 14 / 21(4) text for the first letter, and its version
    disclosure: Disclosure | None = None


class CampaignCheckResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answers, in the order of the request's ``subjects``."""

    category: Category
    channel: Channel
    send_date: dt.date
    checked: int
    eligible: int
    unknown: int
    results: list[SubjectCheck]


class TermWarnings(msgspec.Struct, frozen=True, kw_only=True):
    """Compliance notes on the tenant's current term matrix (they never change it);
    ``tenant_version`` is the tenant stream version they were computed from."""

    tenant_id: str
    tenant_version: int
    warnings: list[ComplianceWarning]

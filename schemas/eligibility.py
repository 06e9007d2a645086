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

from schemas.law import LegalRule
from schemas.vocabulary import (
    CUSTOMER_REF_PATTERN,
    SLUG_PATTERN,
    Basis,
    Category,
    Channel,
    Reason,
)
from schemas.warnings import ComplianceWarning

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
    "EpochMarker",
    "MARKER_KEY_PREFIX",
    "decode_marker",
    "Unsubscribe",
    "UnsubscribeLinks",
    "decode_matrix",
    "encode_marker",
    "is_marker_key",
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
    ``law``: on a ``consent_required`` answer, the id of the statute in force on the date
    that requires explicit consent for this channel and audience (``consent.law``; e.g.
    ``nl-telecom-11.7-phone-optin-2026`` for phone to a customer from 2026-07-01).
    ``requires_postfilter_check``: a "yes" for addressed post to a non-customer: screen the
    address against the Postfilter and the deceased register first (Code Postfilter 2021).
    ``requires_objection_offer``: a "yes" on soft opt-in or legitimate interest: the message
    must offer the right to object (Telecommunicatiewet 11.7(3), AVG art. 21).
    """

    eligible: bool
    basis: Basis | None = None
    reason: Reason
    until: dt.date | None = None
    evidence: list[str] = []
    requires_disclosure: bool = False
    law: str | None = None
    requires_postfilter_check: bool = False
    requires_objection_offer: bool = False


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
    evaluated with, ``rules_version`` the version of the legal rule table
    (``consent.law.RULES_VERSION``) it was evaluated with ("" in messages from before the
    table existed).
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
    rules_version: str = ""
    cells: dict[Category, dict[Channel, Cell]]
    evaluated_at: Annotated[dt.datetime | None, msgspec.Meta(description=(
        "When the projector evaluated this matrix (UTC). Null in messages written before the field existed."
    ))] = None
    epoch: Annotated[int, msgspec.Meta(ge=0, description=(
        "The topic's generation. It goes up each time the projector publishes every subject again because"
        " the topic no longer held what it had published (broker data lost, topic deleted or recreated,"
        " `consent-ledger projector republish`). A consumer that sees a higher epoch than the one its copy"
        " was built from resets and rebuilds its copy from the compacted topic; it has caught up once it"
        " has read an EpochMarker (key `~epoch/{partition}`) of that epoch with `complete: true` on every"
        " partition. 0: never republished (no markers). The HTTP answer carries the topic's current epoch."
    ))] = 0
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
# Epoch markers: the topic's own records, one key per partition
# ---------------------------------------------------------------------------------------

MARKER_KEY_PREFIX: Final = "~epoch/"
"""Keys ``~epoch/{partition}`` (never a subject key: a tenant id starts with a letter or digit)
hold :class:`EpochMarker` records, written to that partition only. Skip them as subjects."""


class EpochMarker(msgspec.Struct, frozen=True, kw_only=True):
    """Written to every partition when a republish of ``epoch`` starts (``complete: false``)
    and when every subject's matrix (or tombstone) of that epoch is on the topic before it
    in the same partition (``complete: true``). Compaction keeps the latest per partition."""

    marker: Literal["epoch"] = "epoch"
    epoch: int
    complete: bool
    partition: int
    subjects: int = 0  # how many subjects the republish published (0 while it runs)
    at: dt.datetime


_marker_decoder: Final = msgspec.json.Decoder(EpochMarker)


def is_marker_key(key: str | bytes) -> bool:
    prefix = MARKER_KEY_PREFIX
    return key.startswith(prefix.encode()) if isinstance(key, bytes) else key.startswith(prefix)


def encode_marker(marker: EpochMarker) -> bytes:
    return _encoder.encode(marker)


def decode_marker(data: bytes | str) -> EpochMarker:
    return _marker_decoder.decode(data)


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
    """May each of these subjects get a ``category`` message on ``channel`` on ``send_date``?

    ``known_at``: answer as the ledger knew it at that moment (what a send on that day
    could rely on, for an audit of a past campaign); omitted: as known now."""

    category: Category
    channel: Channel
    send_date: dt.date
    subjects: Annotated[list[CheckSubject], msgspec.Meta(min_length=1, max_length=MAX_CHECK_SUBJECTS)]
    known_at: Annotated[dt.datetime, msgspec.Meta(
        description="ISO 8601 with an offset, not in the future; the answer as the ledger knew it then")] | None = None


class SubjectCheck(msgspec.Struct, frozen=True, kw_only=True):
    """One subject's answer. An unknown subject (no events in this tenant) is not an error:
    ``known: false``, not eligible, reason ``unknown_subject``, ``cell`` null.

    ``cell`` is the decision in the one shape every answer uses (the matrix's cells on the
    topic and from GET .../eligibility, and each cell of the audit view): read that. The
    flat fields beside it repeat it for clients written before it existed."""

    source: str
    customer_ref: str
    known: bool
    eligible: bool
    basis: Basis | None = None
    reason: Reason | Literal["unknown_subject"]
    until: dt.date | None = None
    requires_disclosure: bool = False
    evidence: list[str] = []
    law: str | None = None
    requires_postfilter_check: bool = False
    requires_objection_offer: bool = False
    cell: Cell | None = None
    position: Annotated[int, msgspec.Meta(description=(
        "The ledger position of the newest event (the subject's or its tenant's) this answer reflects"
        " (0: unknown subject)."
    ))] = 0
    # channel e-mail and eligible: the one-click unsubscribe link and header values
    unsubscribe: Unsubscribe | None = None
    # requires_disclosure: the dealer's art. 14 / 21(4) text for the first letter, and its version
    disclosure: Disclosure | None = None


class CampaignCheckResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answers, in the order of the request's ``subjects``; ``rules_version``: the
    legal rule table they were evaluated with (``consent.law``)."""

    category: Category
    channel: Channel
    send_date: dt.date
    rules_version: str = ""
    checked: int
    eligible: int
    unknown: int
    results: list[SubjectCheck]
    known_at: dt.datetime | None = None
    position: Annotated[int, msgspec.Meta(description=(
        "The newest ledger position any answer reflects (the tenant's or a subject's event). With"
        " `min_position` in the request, every answer reflects every event of its subject and of the tenant"
        " at or below that position."
    ))] = 0


class TermWarnings(msgspec.Struct, frozen=True, kw_only=True):
    """Compliance notes on the tenant's current term matrix (they never change it);
    ``tenant_version`` is the tenant stream version they were computed from. ``on``: the
    (Dutch) day the notes and the law are for; ``law_in_force``: the legal rules that apply
    to sends on that day, ``law_upcoming``: those that start later, by date (consent.law);
    ``rules_version``: that rule table's version."""

    tenant_id: str
    tenant_version: int
    warnings: list[ComplianceWarning]
    on: dt.date | None = None
    rules_version: str = ""
    law_in_force: list[LegalRule] = []
    law_upcoming: list[LegalRule] = []

"""Request and response bodies of the HTTP API, version 1 (``/v1``).

The OpenAPI document is generated from these types (services/ledger/api/openapi.py);
every request body forbids unknown fields, so a typo is a 422, not a silent no-op.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec

from schemas.events import ControllerContact, EvidenceRef, Identifier, Method, PreferenceSetting, ShortText, TermCell
from schemas.vocabulary import CUSTOMER_REF_PATTERN, END_OF_TEXT, SLUG_PATTERN, Category, Channel

PLATE_PATTERN = r"^[A-Za-z0-9](?:[- ]?[A-Za-z0-9]){1,11}" + END_OF_TEXT
Slug = Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN, description="lower-case letters, digits, _ and -")]
CustomerRef = Annotated[str, msgspec.Meta(pattern=CUSTOMER_REF_PATTERN)]
Body = Annotated[str, msgspec.Meta(max_length=100_000)]
Note = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
Role = Literal["admin", "staff", "auditor", "sender", "importer", "marketing"]
ExpectedVersion = Annotated[int, msgspec.Meta(ge=0, description="optimistic concurrency: the stream version you last saw (0 = new stream)")]


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Contact(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Personal data; stored only encrypted with the subject's key."""

    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    email: Annotated[str, msgspec.Meta(max_length=254, pattern=r"^[^@\s]+@[^@\s]+" + END_OF_TEXT)] | None = None
    phone: Annotated[str, msgspec.Meta(max_length=40, pattern=r"^[0-9+() -]{3,40}" + END_OF_TEXT)] | None = None
    street: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    postcode: Annotated[str, msgspec.Meta(max_length=20)] | None = None
    city: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    country: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    # kenteken: 2-12 letters and digits, single '-' or ' ' between them ("AB-123-C", "12 ABC 3")
    licence_plate: Annotated[str, msgspec.Meta(max_length=20, pattern=PLATE_PATTERN)] | None = None
    vehicle_make: Annotated[str, msgspec.Meta(max_length=60)] | None = None  # merk
    vehicle_model: Annotated[str, msgspec.Meta(max_length=60)] | None = None  # model


# -- tenants ---------------------------------------------------------------------------


class CreateTenant(Request, frozen=True):
    tenant_id: Slug
    name: ShortText


class IssueApiKey(Request, frozen=True):
    role: Role
    label: Annotated[str, msgspec.Meta(max_length=100)] = ""


class ApiKeyIssued(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    key: str
    role: str
    tenant_id: str | None
    label: str = ""


class TenantCreatedResponse(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    admin_key: ApiKeyIssued
    position: int
    # The tenant's log partition: its positions are those of this partition (they order the
    # tenant's events; positions of other tenants may be in another partition).
    partition: int = 0


class SetProcessorAgreement(Request, frozen=True):
    signed: bool
    signed_on: dt.date | None = None
    expected_version: ExpectedVersion | None = None


class SetModuleActivation(Request, frozen=True):
    active: bool
    expected_version: ExpectedVersion | None = None


class AddChapter(Request, frozen=True):
    title: ShortText
    body: Body
    active: bool = True
    expected_version: ExpectedVersion | None = None


class EditChapter(Request, frozen=True):
    title: ShortText
    body: Body
    active: bool
    expected_version: ExpectedVersion | None = None


class MoveChapter(Request, frozen=True):
    """Either ``direction`` (one step up/down, as the seed's buttons) or ``to_index``."""

    direction: Literal["up", "down"] | None = None
    to_index: Annotated[int, msgspec.Meta(ge=0)] | None = None
    expected_version: ExpectedVersion | None = None


class SetChapterActive(Request, frozen=True):
    active: bool
    expected_version: ExpectedVersion | None = None


class EditTerms(Request, frozen=True):
    cells: Annotated[list[TermCell], msgspec.Meta(min_length=1, max_length=25)]
    expected_version: ExpectedVersion | None = None


class AddDataSource(Request, frozen=True):
    source_id: Slug
    label: ShortText


class SetControllerContact(Request, frozen=True):
    """The dealer's contact details as data controller, shown on every consent receipt."""

    details: ControllerContact
    expected_version: ExpectedVersion | None = None


class SetRetention(Request, frozen=True):
    customer_years: Annotated[int, msgspec.Meta(ge=1, le=20)] = 7
    prospect_months: Annotated[int, msgspec.Meta(ge=1, le=60)] = 3


# -- subjects --------------------------------------------------------------------------


class RecordInvoice(Request, frozen=True):
    invoice_id: Identifier
    invoice_date: dt.date
    contact: Contact | None = None
    expected_version: ExpectedVersion | None = None


class RegisterProspect(Request, frozen=True):
    acquired_on: dt.date
    how: ShortText
    contact: Contact | None = None
    expected_version: ExpectedVersion | None = None


PolicyVersion = Annotated[str, msgspec.Meta(
    max_length=64, description="the version id of the policy text shown to the customer (GET"
    " /v1/tenants/{tenant}/audit/policy lists them); omitted: the version in force on the day given is recorded")]
GivenOn = Annotated[dt.date, msgspec.Meta(
    description="the day the customer gave this (a signed paper form, a DMS delivery), if earlier than today;"
    " not in the future. An opt-out or objection counts from this day; an opt-in or withdrawal only from the"
    " day recorded (consent is never back-dated). Requires evidence_ref")]
EvidenceRefField = Annotated[EvidenceRef, msgspec.Meta(
    description="where the dated statement is kept: a form id, a DMS file and line (no personal data);"
    " required with given_on")]
NoteField = Annotated[Note, msgspec.Meta(
    description="free text such as 'telefonisch verzoek'; personal data, stored encrypted")]
MethodField = Annotated[Method, msgspec.Meta(description="through what the customer made the change")]


class ChangePreferences(Request, frozen=True):
    """Set the subject's own choice for some cells: ``opt_in`` (explicit consent, until
    withdrawn), ``opt_out``, or ``default`` (follow the dealer's term matrix)."""

    changes: Annotated[list[PreferenceSetting], msgspec.Meta(
        min_length=1, max_length=25, description="one entry per (category, channel), each at most once")]
    method: MethodField = "api"
    policy_version: PolicyVersion | None = None
    note: NoteField | None = None
    given_on: GivenOn | None = None
    evidence_ref: EvidenceRefField | None = None
    expected_version: ExpectedVersion | None = None


class RecordObjection(Request, frozen=True):
    """An objection to (or its withdrawal from) all direct marketing, GDPR art. 21."""

    method: MethodField = "api"
    policy_version: PolicyVersion | None = None
    note: NoteField | None = None
    given_on: GivenOn | None = None
    evidence_ref: EvidenceRefField | None = None
    expected_version: ExpectedVersion | None = None


class RecordMarketingActivity(Request, frozen=True):
    activity_on: dt.date
    category: Category
    channel: Channel
    campaign_id: Identifier | None = None


# -- answers ---------------------------------------------------------------------------


class StreamVersions(msgspec.Struct, frozen=True):
    stream_id: str
    from_version: int
    to_version: int


class AppendResponse(msgspec.Struct, frozen=True, kw_only=True):
    """Positions are in the tenant's log partition (``partition``): they order the tenant's
    events, and are what a read model's progress for this tenant is compared with."""

    streams: list[StreamVersions]
    first_position: int
    last_position: int
    event_ids: list[str]
    recorded_at: dt.datetime
    replayed: bool = False
    partition: int = 0


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Every 4xx/5xx answer. ``field`` is a JSON path into the request where relevant."""

    error: str
    message: str
    field: str | None = None
    current_version: int | None = None
    position: int | None = None  # eligibility checks with min_position: the ledger position reached


class StreamEvent(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    event_id: str
    stream_id: str
    version: int
    event_type: str
    schema_version: int
    recorded_at: dt.datetime
    occurred_on: dt.date | None
    data: dict[str, Any]
    metadata: dict[str, Any]
    hash: str
    partition: int = 0  # the tenant's log partition: (partition, position) names the event


class StreamPage(msgspec.Struct, frozen=True, kw_only=True):
    stream_id: str
    version: int
    events: list[StreamEvent]
    next_version: int | None = None



# -- bulk ------------------------------------------------------------------------------


class BulkItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="kind"):
    source: Slug
    customer_ref: CustomerRef


class BulkInvoice(BulkItem, frozen=True, tag="invoice"):
    invoice_id: Identifier
    invoice_date: dt.date
    contact: Contact | None = None


class BulkProspect(BulkItem, frozen=True, tag="prospect"):
    acquired_on: dt.date
    how: ShortText
    contact: Contact | None = None


class BulkPreferences(BulkItem, frozen=True, tag="preferences"):
    """Preferences as a DMS delivers them; the policy version recorded is the one in force
    on the day given."""

    changes: Annotated[list[PreferenceSetting], msgspec.Meta(min_length=1, max_length=25)]
    method: MethodField = "import"
    given_on: GivenOn | None = None
    evidence_ref: EvidenceRefField | None = None


class BulkAppend(Request, frozen=True):
    """Many subject events in one atomic append (all or nothing), at most 5,000."""

    items: Annotated[list[BulkInvoice | BulkProspect | BulkPreferences], msgspec.Meta(min_length=1, max_length=5000)]


# -- portal links ----------------------------------------------------------------------


class IssuePortalLink(Request, frozen=True):
    """Issue the subject's personal portal link. A subject has at most one live link, and
    its URL is shown only when issued (only hashes are stored): to get a URL for a subject
    that has one, rotate (the old link stops working)."""

    rotate: bool = False


class PortalLinkIssued(msgspec.Struct, frozen=True, kw_only=True):
    url: str  # shown this once; put it in the customer's e-mail
    rotated: bool  # a live link existed and was revoked


class PortalLinkInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A link as staff and auditors see it: never its token."""

    issued_at: dt.datetime
    issued_by: str
    revoked_at: dt.datetime | None = None
    revoked_by: str | None = None


class PortalLinkStatus(msgspec.Struct, frozen=True, kw_only=True):
    live: PortalLinkInfo | None
    history: list[PortalLinkInfo]  # newest first, at most 20


# -- e-mail (services/mail/) -------------------------------------------------------------


class MailPortalLink(Request, frozen=True):
    """Mail the subject a new portal link (the live one, if any, is revoked)."""


class MailQueued(msgspec.Struct, frozen=True, kw_only=True):
    mail_id: str
    status: Literal["queued"] = "queued"


class MailSubject(Request, frozen=True):
    source: Slug
    customer_ref: CustomerRef


class MailPortalLinks(Request, frozen=True):
    """A mailing: a new portal link for each subject, each in its own mail."""

    subjects: Annotated[list[MailSubject], msgspec.Meta(min_length=1, max_length=10_000)]


class QueuedSubjectMail(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    customer_ref: str
    mail_id: str


class SkippedSubjectMail(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    customer_ref: str
    error: str  # unknown_subject | subject_erased | no_email_address | invalid_email_address


class MailingQueued(msgspec.Struct, frozen=True, kw_only=True):
    queued: int
    mails: list[QueuedSubjectMail]
    skipped: list[SkippedSubjectMail]


class MailStatus(msgspec.Struct, frozen=True, kw_only=True):
    mail_id: str
    kind: str
    status: Literal["pending", "sent", "failed", "dropped"]
    attempts: int
    next_attempt_at: dt.datetime | None = None
    sent_at: dt.datetime | None = None
    message_id: str | None = None
    last_error: str | None = None

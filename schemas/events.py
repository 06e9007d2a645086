"""Ledger event types, version 1.

Every event is a frozen msgspec Struct under :class:`Event`, tagged by its class name
(the ``type`` field on the wire and the ``event_type`` column in the store). Rules:

* an event type is never renamed and a field never changes meaning;
* a new field gets a default, so older rows still decode;
* an incompatible change is a new type (``FooV2``) with a higher ``SCHEMA_VERSION``.

Personal data (names, contact details, licence plates, free text) never appears in
clear in an event: it travels as :class:`Sealed`, encrypted with the subject's own key,
so deleting that key erases it (crypto-shredding, PRODUCT.md "Retention ...").
The consent rules never need personal data.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, ClassVar, Final, Literal

import msgspec

from schemas.vocabulary import END_OF_TEXT, MAX_TERM_MONTHS, Category, Channel, PreferenceValue

Months = Annotated[int, msgspec.Meta(ge=0, le=MAX_TERM_MONTHS)]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*" + END_OF_TEXT)]
EvidenceRef = Annotated[str, msgspec.Meta(
    min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._:/#+-]*" + END_OF_TEXT,
    description="where the dated statement can be found: a form id, a DMS file name and line (no personal data)")]
PolicyVersionBasis = Literal["shown", "in_force"]


class Sealed(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Personal data encrypted with the subject's key (AES-256-GCM).

    ``key_id`` names the subject key; ``nonce`` and ``ciphertext`` are base64.
    Once the key is shredded, this can never be read again.
    """

    key_id: str
    nonce: str
    ciphertext: str


class Chapter(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    chapter_id: str
    title: str
    body: str
    active: bool = True


class TermCell(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    category: Category
    channel: Channel
    months: Months


class PreferenceSetting(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    category: Category
    channel: Channel
    value: PreferenceValue


ActorKind = Literal["subject", "staff", "importer", "system", "operator", "api"]
Method = Literal["portal", "staff_portal", "phone", "email", "in_person", "import", "api", "retention", "system",
                 "one_click"]


class Actor(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Who caused an event. ``id`` is a user id, API key id or "subject"; never a secret."""

    kind: ActorKind
    id: str


class Event(msgspec.Struct, frozen=True, tag_field="type", tag=True, kw_only=True, forbid_unknown_fields=True):
    SCHEMA_VERSION: ClassVar[int] = 1

    def occurred_on(self) -> dt.date | None:
        """The domain date of the event (e.g. the invoice date), if it has one."""
        return None


# ---------------------------------------------------------------------------------------
# Tenant stream: "tenant/{tenant}"
# ---------------------------------------------------------------------------------------


class TenantCreated(Event, frozen=True):
    """A dealer company starts, with the seed's policy chapters and term matrix."""

    tenant_id: str
    name: ShortText
    data_sources: dict[str, str]
    chapters: list[Chapter]
    terms: list[TermCell]


class DataSourceAdded(Event, frozen=True):
    source_id: str
    label: ShortText


class ProcessorAgreementSet(Event, frozen=True):
    """Verwerkersovereenkomst signed yes/no, with the signing date."""

    signed: bool
    signed_on: dt.date | None = None


class ModuleActivationSet(Event, frozen=True):
    active: bool
    module: Literal["mijngegevensbescherming"] = "mijngegevensbescherming"


class PolicyChapterAdded(Event, frozen=True):
    """A new chapter, appended at the end of the policy."""

    chapter: Chapter


class PolicyChapterEdited(Event, frozen=True):
    chapter_id: str
    title: str
    body: str
    active: bool


class PolicyChapterActiveSet(Event, frozen=True):
    chapter_id: str
    active: bool


class PolicyChapterMoved(Event, frozen=True):
    """Moves a chapter to ``to_index`` (0-based) in the full ordered list."""

    chapter_id: str
    to_index: Annotated[int, msgspec.Meta(ge=0)]


class PolicyChapterDeleted(Event, frozen=True):
    chapter_id: str


class TermMatrixEdited(Event, frozen=True):
    """The dealer changed some cells of the opt-in term matrix."""

    cells: list[TermCell]


class ControllerContact(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a customer reaches the dealer as data controller (GDPR art. 13(1)(a)): shown on
    every consent receipt (Kantara CR v1.1 ``piiControllers``). The dealer's business
    contact point, not a person's private data."""

    contact: Annotated[ShortText, msgspec.Meta(description="the contact point, e.g. 'Privacy desk'")]
    street: ShortText
    postcode: Annotated[str, msgspec.Meta(min_length=1, max_length=20)]
    city: ShortText
    country: Annotated[str, msgspec.Meta(min_length=2, max_length=2, pattern="^[A-Z]{2}$",
                                         description="ISO 3166-1 alpha-2")] = "NL"
    email: Annotated[str, msgspec.Meta(max_length=254, pattern=r"^[^@\s]+@[^@\s]+" + END_OF_TEXT)]
    phone: Annotated[str, msgspec.Meta(max_length=40, pattern=r"^[0-9+() -]{3,40}" + END_OF_TEXT)]
    url: Annotated[str, msgspec.Meta(max_length=300, pattern=r"^https?://[^\s]+" + END_OF_TEXT)] | None = None


class ControllerContactSet(Event, frozen=True):
    """The dealer set its contact details as data controller."""

    details: ControllerContact


class DealerContactSet(Event, frozen=True):
    """The dealer's contact details as customers see them (portal header, every e-mail).

    Business data of the dealer, not personal data: stored in clear."""

    street: ShortText
    postcode: Annotated[str, msgspec.Meta(min_length=1, max_length=20)]
    city: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    phone: Annotated[str, msgspec.Meta(min_length=3, max_length=40)]
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=254)]
    website: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class ProspectDisclosureSet(Event, frozen=True):
    """The text a first letter to a prospect must carry (GDPR art. 14, 21(4)): why the person
    is contacted, where the data came from, with whom it is shared, and the right to object.
    Versioned like the policy (``disclosure_version`` of the tenant state)."""

    body: Annotated[str, msgspec.Meta(min_length=1, max_length=20_000)]


class RetentionPolicySet(Event, frozen=True):
    customer_years: Annotated[int, msgspec.Meta(ge=1, le=20)] = 7
    prospect_months: Annotated[int, msgspec.Meta(ge=1, le=60)] = 3


# ---------------------------------------------------------------------------------------
# Subject stream: "subject/{tenant}/{source}/{customer_ref}"
# ---------------------------------------------------------------------------------------


class InvoiceRecorded(Event, frozen=True):
    """An invoice: makes the subject a customer and restarts the soft opt-in terms."""

    invoice_id: Identifier
    invoice_date: dt.date
    personal: Sealed | None = None

    def occurred_on(self) -> dt.date | None:
        return self.invoice_date


class InvoiceCorrected(Event, frozen=True):
    """A re-delivered invoice with changed data (DMS import), replacing the earlier one."""

    invoice_id: Identifier
    invoice_date: dt.date
    personal: Sealed | None = None

    def occurred_on(self) -> dt.date | None:
        return self.invoice_date


class ProspectRegistered(Event, frozen=True):
    """Data of a non-customer was acquired (bought list, web request, ...)."""

    acquired_on: dt.date
    how: ShortText
    personal: Sealed | None = None

    def occurred_on(self) -> dt.date | None:
        return self.acquired_on


class PreferencesChanged(Event, frozen=True):
    """One save of preferences: by the customer (portal), staff on their behalf, or the DMS.

    ``policy_version`` is the version id of the policy text: the one shown when the change
    was made (``policy_version_basis`` "shown", the portal), or, when nothing was shown to
    the ledger's knowledge, the version in force on the day the preference was given
    ("in_force"). ``note`` (free text such as "telefonisch verzoek") is personal data,
    hence sealed.

    ``given_on``: the day the customer gave it, when that is earlier than the day it was
    recorded (a signed paper form, a DMS delivery), with ``evidence_ref`` naming where that
    statement is kept. None: given on the (Dutch) day it was recorded. An opt-out counts
    from ``given_on``; an opt-in never counts before it was recorded (docs/rules.md,
    "Dated preferences").
    """

    changes: Annotated[list[PreferenceSetting], msgspec.Meta(min_length=1)]
    changed_by: Actor
    method: Method
    policy_version: str | None = None
    note: Sealed | None = None
    given_on: dt.date | None = None
    evidence_ref: EvidenceRef | None = None
    policy_version_basis: PolicyVersionBasis = "shown"
    # Double opt-in: the e-mail opt-ins of this change count only from an OptInConfirmed that
    # names this event (set by the command for opt-ins given through the portal or the API).
    confirmation_required: bool = False


class OptInConfirmed(Event, frozen=True):
    """The customer confirmed an e-mail opt-in from the mail sent for it (double opt-in).

    ``preference_event_id``: the PreferencesChanged confirmed; ``mail_id``: the mail whose
    link was used; ``policy_version``: the policy text the confirmation page showed."""

    preference_event_id: str
    mail_id: str
    policy_version: str | None = None
    confirmed_by: Actor = Actor(kind="subject", id="subject")
    method: Method = "email"


class ObjectionRecorded(Event, frozen=True):
    """Objection to all direct marketing (GDPR art. 21): absolute.

    ``given_on``, ``evidence_ref`` and ``policy_version_basis`` as for PreferencesChanged:
    an objection counts from ``given_on``."""

    changed_by: Actor
    method: Method
    policy_version: str | None = None
    note: Sealed | None = None
    given_on: dt.date | None = None
    evidence_ref: EvidenceRef | None = None
    policy_version_basis: PolicyVersionBasis = "shown"


class ObjectionWithdrawn(Event, frozen=True):
    """The objection is withdrawn. ``given_on`` etc. as for PreferencesChanged: like an
    opt-in, a withdrawal never counts before the day it was recorded."""

    changed_by: Actor
    method: Method
    policy_version: str | None = None
    note: Sealed | None = None
    given_on: dt.date | None = None
    evidence_ref: EvidenceRef | None = None
    policy_version_basis: PolicyVersionBasis = "shown"


class MarketingActivityRecorded(Event, frozen=True):
    """A campaign was sent to the subject (restarts the prospect retention clock)."""

    activity_on: dt.date
    category: Category
    channel: Channel
    campaign_id: Identifier | None = None

    def occurred_on(self) -> dt.date | None:
        return self.activity_on


class MailSent(Event, frozen=True):
    """A mail went to the subject (services/mail/): which mail, what kind, the SMTP
    Message-ID. The recipient address and subject line are personal data, hence sealed."""

    mail_id: str
    kind: Literal["portal_link", "opt_in_confirmation"]
    recipient: Sealed
    message_id: str


class SubjectErased(Event, frozen=True):
    """The subject's key was shredded (art. 17 request or retention).

    ``suppressed`` says whether a suppression record was kept because the subject had
    objected to direct marketing (see docs/erasure.md).
    """

    reason: Literal["request", "retention"]
    suppressed: bool = False


# ---------------------------------------------------------------------------------------
# Exports stream: "exports/{tenant}" (who took personal data out of the system, and what)
# ---------------------------------------------------------------------------------------


class DataExported(Event, frozen=True):
    """A privileged export of personal data (a lapse list or mailing list with contact
    details) was made. Who and when are the envelope's actor and recorded_at; this says
    what: the kind, the selection (category, channel, days or send date, data source) and
    how many subjects it held. Never the data itself."""

    export: Literal["lapse_list", "mailing_list"]
    rows: Annotated[int, msgspec.Meta(ge=0)]
    category: Category | None = None
    channel: Channel | None = None
    days: Annotated[int, msgspec.Meta(ge=1, le=366)] | None = None
    send_date: dt.date | None = None
    source: str | None = None
    file_format: Literal["csv", "json"] = "csv"


class StaffAccountChanged(Event, frozen=True):
    """An AVG Beheer account was created, had its password reset, was disabled or enabled,
    or had its login back-off lifted (unlocked) (stream ``users/{tenant}``). The actor is the admin who did it; the account is
    named by its id only (its e-mail address is personal data and stays in portal.users)."""

    user_id: Identifier
    change: Literal["created", "password_reset", "disabled", "enabled", "unlocked"]
    role: Literal["admin", "staff", "marketing"] | None = None



AnyEvent = (
    TenantCreated
    | DataSourceAdded
    | ProcessorAgreementSet
    | ModuleActivationSet
    | PolicyChapterAdded
    | PolicyChapterEdited
    | PolicyChapterActiveSet
    | PolicyChapterMoved
    | PolicyChapterDeleted
    | TermMatrixEdited
    | RetentionPolicySet
    | ControllerContactSet
    | InvoiceRecorded
    | InvoiceCorrected
    | ProspectRegistered
    | PreferencesChanged
    | ObjectionRecorded
    | ObjectionWithdrawn
    | MarketingActivityRecorded
    | SubjectErased
    | DealerContactSet
    | ProspectDisclosureSet
    | MailSent
    | OptInConfirmed
    | DataExported
    | StaffAccountChanged
)

_decoder: Final = msgspec.json.Decoder(AnyEvent)
_encoder: Final = msgspec.json.Encoder()


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> AnyEvent:
    return _decoder.decode(data)


# ---------------------------------------------------------------------------------------
# The envelope: an event as recorded in the ledger (and as published on
# ``consent.ledger.events.v1``).
# ---------------------------------------------------------------------------------------


class Metadata(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Why and through what an event was appended. Never holds a secret."""

    actor: Actor
    method: Method = "api"
    request_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None


class RecordedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One committed ledger row.

    ``partition`` is the log partition of the event's tenant and ``position`` its place in
    that partition: gap-free, in commit order; ``(partition, position)`` names the event,
    and positions of different partitions are not comparable (a tenant's events are all in
    one partition, so its positions order them). ``version`` is the 1-based order in its
    stream; ``recorded_at`` the transaction time (non-decreasing with position within a
    partition); ``occurred_on`` the domain date where the event has one.
    """

    position: int
    event_id: str
    stream_id: str
    version: int
    tenant_id: str
    event_type: str
    schema_version: int
    recorded_at: dt.datetime
    occurred_on: dt.date | None
    event: AnyEvent
    metadata: Metadata
    hash: str
    # Envelopes published before the log was partitioned have none: 0 (their positions
    # are those of the single log of that time, below every partition's new positions).
    partition: int = 0


_envelope_decoder: Final = msgspec.json.Decoder(RecordedEvent)


def encode_recorded(recorded: RecordedEvent) -> bytes:
    return _encoder.encode(recorded)


def decode_recorded(data: bytes | str) -> RecordedEvent:
    return _envelope_decoder.decode(data)

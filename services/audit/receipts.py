"""Consent receipts: one JSON receipt per preference or objection change.

The receipt is a Kantara Initiative Consent Receipt v1.1 (``"version": "KI-CR-v1.1.0"``),
in the specification's field names, types and shape: ``consentTimestamp`` in integer
seconds, ``piiControllers`` with the dealer's contact point, address, e-mail and phone,
the purposes inside ``services[]``, each with ``consentType``, ``purposeCategory``,
``piiCategory``, ``termination`` and ``thirdPartyDisclosure``, and ``policyUrl`` (the
public page of the exact policy version the receipt names), ``sensitive`` and ``spiCat``.
tests/test_receipts_kantara.py validates receipts against the published JSON Schema
(tests/data/kantara-consent-receipt-v1_1-schema.json).

What proof of consent under GDPR art. 7(1) needs on top travels as extra properties, which
the schema allows: the legal basis of each purpose, the policy version and whether it was
the one shown or the one in force when the preference was given (``policyVersionBasis``),
who made the change, the day given and its evidence, the ledger event, and how to
withdraw (art. 7(3)).

:func:`build_receipt` is pure (the portal calls it for a download); the loaders read the
subject's stream and the tenant's history.
"""

from __future__ import annotations

import datetime as dt
from typing import Final, Literal
from urllib.parse import quote

import msgspec

from consent.law import RULES_VERSION, rules_in_force
from consent.tenant import TenantState
from consent.terms import ledger_day
from schemas.events import (
    Actor,
    ObjectionRecorded,
    ObjectionWithdrawn,
    OptInConfirmed,
    PreferencesChanged,
    RecordedEvent,
)
from schemas.vocabulary import parse_subject_stream
from services.audit.errors import AuditError
from services.audit.loading import TenantRecord, load_subject_events, load_tenant
from services.ledger.store import EventStore

RECEIPT_VERSION: Final = "KI-CR-v1.1.0"
RECEIPT_PREFIX: Final = "cr-"
DEFAULT_PUBLIC_BASE: Final = "http://127.0.0.1:8081"  # the portal of `make run` (LEDGER_PORTAL_BASE_URL)

PURPOSES: Final[dict[str, str]] = {
    "aftersales_service": "Service reminders (APK, maintenance, tyre change) and satisfaction surveys",
    "newsletter": "Newsletter",
    "sales_campaign": "Sales campaigns",
    "aftersales_campaign": "Workshop (aftersales) campaigns",
    "prospect": "Direct marketing to a non-customer",
}
CHANNELS: Final[dict[str, str]] = {"email": "e-mail", "post": "post", "phone": "telephone", "sms": "SMS", "app": "app"}
# What the dealer processes for direct marketing (seed policy, "Welke gegevens"): never special categories.
PII_CATEGORIES: Final = ["contact details (name, address, e-mail, phone)", "vehicle (licence plate)",
                         "purchase and workshop history (invoice dates)"]
_BASIS: Final[dict[str, str]] = {
    "opt_in": "consent (GDPR art. 6(1)(a); Telecommunicatiewet art. 11.7(1))",
    "opt_out": "consent withdrawn / objection (GDPR art. 7(3) and 21(2))",
    "default": "no own choice: the dealer's opt-in term matrix applies (soft opt-in or legitimate interest)",
}
_CONSENT_TYPE: Final[dict[str, str]] = {"opt_in": "explicit", "opt_out": "withdrawn", "default": "none"}
_TERMINATION: Final[dict[str, str]] = {
    "opt_in": "until withdrawn by the customer (at any time, as easily as given)",
    "opt_out": "until the customer changes it again",
    "default": "the term matrix decides: the soft opt-in or legitimate interest lapses at the end of its term",
    "objection": "until the customer withdraws the objection",
    "objection_withdrawn": "the customer's own choices and the term matrix apply again",
}


class Camel(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    pass


class ReceiptAddress(Camel, frozen=True, kw_only=True):
    """schema.org PostalAddress field names: the spec requires an object and names none."""

    street_address: str = ""
    postal_code: str = ""
    address_locality: str = ""
    address_country: str = ""


class ReceiptController(Camel, frozen=True, kw_only=True, omit_defaults=True):
    """One entry of ``piiControllers``: the dealer (``controllerId``: its tenant id, ours)."""

    pii_controller: str
    on_behalf: bool = msgspec.field(default=False, name="onBehalf")  # omitted: the dealer acts for itself
    contact: str
    address: ReceiptAddress
    email: str
    phone: str
    pii_controller_url: str | None = msgspec.field(default=None, name="piiControllerUrl")
    controller_id: str


class ReceiptPurpose(Camel, frozen=True, kw_only=True):
    purpose: str
    consent_type: str
    purpose_category: list[str]
    pii_category: list[str]
    primary_purpose: bool = True
    termination: str
    third_party_disclosure: bool = False
    # the ledger's own
    category: str
    channel: str
    preference: Literal["opt_in", "opt_out", "default", "objection", "objection_withdrawn"]
    basis: str


class ReceiptService(Camel, frozen=True, kw_only=True):
    service: str
    purposes: list[ReceiptPurpose]


class DoubleOptIn(Camel, frozen=True, kw_only=True):
    """An e-mail opt-in given through the portal or the API counts only once confirmed from
    a mail: ``pending`` until then; the confirmation's evidence (when, which mail, which
    policy version the confirmation page showed)."""

    status: Literal["pending", "confirmed"]
    preference_event_id: str
    confirmation_event_id: str | None = None
    confirmed_at: dt.datetime | None = None
    mail_id: str | None = None
    policy_version_confirmed: str | None = None


class ConsentReceipt(Camel, frozen=True, kw_only=True):
    """A Kantara CR v1.1 receipt, plus the ledger's proof-of-consent fields (see module)."""

    version: str
    jurisdiction: str
    consent_timestamp: int
    collection_method: str
    consent_receipt_id: str = msgspec.field(name="consentReceiptID")
    language: str
    pii_principal_id: str
    pii_controllers: list[ReceiptController]
    policy_url: str
    services: list[ReceiptService]
    sensitive: bool = False
    spi_cat: list[str] = []
    # the ledger's own
    consent_time: dt.datetime
    changed_by: Actor
    policy_version: str | None
    policy_version_basis: Literal["shown", "in_force"] | None
    policy_version_label: str
    policy_version_in_force: str
    given_on: dt.date | None = None
    evidence_ref: str | None = None
    event_id: str
    event_type: str
    ledger_position: int
    how_to_withdraw: str
    rules_version: str = ""
    law_in_force: list[str] = []
    double_opt_in: DoubleOptIn | None = None

    @property
    def receipt_id(self) -> str:
        return self.consent_receipt_id


def policy_url(public_base: str, tenant_id: str, version_id: str) -> str:
    """The public page of one policy version in the privacy portal (no login, no link)."""
    return f"{public_base.rstrip('/')}/policy/{quote(tenant_id, safe='')}/{quote(version_id, safe='')}"


def _controller(state: TenantState) -> ReceiptController:
    c = state.controller
    if c is None:  # set with PUT /v1/tenants/{tenant}/controller-contact; empty until then
        return ReceiptController(pii_controller=state.name, contact="", address=ReceiptAddress(), email="", phone="",
                                 controller_id=state.tenant_id)
    return ReceiptController(
        pii_controller=state.name, contact=c.contact,
        address=ReceiptAddress(street_address=c.street, postal_code=c.postcode, address_locality=c.city,
                               address_country=c.country),
        email=c.email, phone=c.phone, pii_controller_url=c.url, controller_id=state.tenant_id,
    )


def receipt_id_for(event_id: str) -> str:
    """Stable: the same event always gets the same receipt id."""
    return RECEIPT_PREFIX + event_id


def is_receipt_event(recorded: RecordedEvent) -> bool:
    return isinstance(recorded.event, (PreferencesChanged, ObjectionRecorded, ObjectionWithdrawn, OptInConfirmed))


def double_opt_in_of(recorded: RecordedEvent, subject_events: list[RecordedEvent]
                     ) -> tuple[RecordedEvent | None, RecordedEvent | None]:
    """(the PreferencesChanged, its OptInConfirmed) for a receipt event that is part of a
    double opt-in, from the subject's events; (None, None) otherwise."""
    event = recorded.event
    if isinstance(event, OptInConfirmed):
        confirms = next((e for e in subject_events if e.event_id == event.preference_event_id), None)
        return confirms, recorded
    if isinstance(event, PreferencesChanged) and event.confirmation_required:
        confirmation = next((e for e in subject_events if isinstance(e.event, OptInConfirmed)
                             and e.event.preference_event_id == recorded.event_id), None)
        return recorded, confirmation
    return None, None


def build_receipt(recorded: RecordedEvent, controller: TenantState, *, portal_url: str | None = None,
                  public_base: str = DEFAULT_PUBLIC_BASE,
                  subject_events: list[RecordedEvent] | None = None) -> ConsentReceipt:
    """The receipt of one preference or objection change.

    ``controller``: the tenant (dealer) as it stood when the change was recorded
    (``TenantHistory.state_at(recorded.recorded_at)``). ``portal_url``: the subject's
    portal link, if the caller has it, for the withdrawal text. ``public_base``: the
    portal's public address (``LEDGER_PORTAL_BASE_URL``), for ``policyUrl``.
    Raises ``ValueError`` for any other kind of event.
    """
    event = recorded.event
    parsed = parse_subject_stream(recorded.stream_id)
    if parsed is None or not isinstance(event, (PreferencesChanged, ObjectionRecorded, ObjectionWithdrawn,
                                                OptInConfirmed)):
        raise ValueError(f"{recorded.event_type} of {recorded.stream_id} is not a consent change")
    tenant_id, source, ref = parsed
    preference, confirmation = double_opt_in_of(recorded, subject_events or [])
    double: DoubleOptIn | None = None
    if preference is not None or isinstance(event, OptInConfirmed):
        confirmed = confirmation.event if confirmation is not None else None
        assert confirmed is None or isinstance(confirmed, OptInConfirmed)
        double = DoubleOptIn(
            status="confirmed" if confirmed is not None else "pending",
            preference_event_id=preference.event_id if preference is not None else event.preference_event_id,  # type: ignore[union-attr]
            confirmation_event_id=confirmation.event_id if confirmation is not None else None,
            confirmed_at=confirmation.recorded_at if confirmation is not None else None,
            mail_id=confirmed.mail_id if confirmed is not None else None,
            policy_version_confirmed=confirmed.policy_version if confirmed is not None else None)
    purposes: list[ReceiptPurpose]
    if isinstance(event, OptInConfirmed):
        changes = preference.event.changes if preference is not None and isinstance(
            preference.event, PreferencesChanged) else []
        purposes = [
            ReceiptPurpose(
                purpose=f"{PURPOSES[c.category]} by {CHANNELS[c.channel]}", consent_type=_CONSENT_TYPE["opt_in"],
                purpose_category=[c.category], pii_category=PII_CATEGORIES, termination=_TERMINATION["opt_in"],
                category=c.category, channel=c.channel, preference="opt_in",
                basis=_BASIS["opt_in"] + " (double opt-in: confirmed from the mail sent for it)",
            )
            for c in changes if c.channel == "email" and c.value == "opt_in"
        ]
    elif isinstance(event, PreferencesChanged):
        purposes = [
            ReceiptPurpose(
                purpose=f"{PURPOSES[c.category]} by {CHANNELS[c.channel]}", consent_type=_CONSENT_TYPE[c.value],
                purpose_category=[c.category], pii_category=PII_CATEGORIES, termination=_TERMINATION[c.value],
                category=c.category, channel=c.channel, preference=c.value, basis=_BASIS[c.value],
            )
            for c in event.changes
        ]
    else:
        objected = isinstance(event, ObjectionRecorded)
        preference: Literal["objection", "objection_withdrawn"] = "objection" if objected else "objection_withdrawn"
        purposes = [ReceiptPurpose(
            purpose="All direct marketing", consent_type="withdrawn" if objected else "none",
            purpose_category=list(PURPOSES), pii_category=PII_CATEGORIES, termination=_TERMINATION[preference],
            category="*", channel="*", preference=preference,
            basis=("objection to direct marketing (GDPR art. 21(2)-(3)): absolute" if objected
                   else "objection withdrawn: the own choices and the term matrix apply again"),
        )]
    where = f"in the privacy portal ({portal_url})" if portal_url else "in the privacy portal (the personal link in our messages)"
    withdraw = (f"Change or withdraw this choice at any time {where}, or ask {controller.name} directly"
                " (by phone, e-mail or at the desk); withdrawing is as easy as giving consent (GDPR art. 7(3))"
                " and does not affect what was lawful before it.")
    # The version the receipt names: the text shown, else (records made before every
    # record named one) the version in force when it was recorded.
    named = event.policy_version or controller.policy_version
    basis: Literal["shown", "in_force"] = "in_force"
    if event.policy_version is not None:  # a confirmation names the text its page showed
        basis = "shown" if isinstance(event, OptInConfirmed) else event.policy_version_basis
    dated = not isinstance(event, OptInConfirmed)  # a confirmation counts from when it is made
    return ConsentReceipt(
        version=RECEIPT_VERSION, jurisdiction="NL", language="nl",
        consent_timestamp=int(recorded.recorded_at.timestamp()), consent_time=recorded.recorded_at,
        collection_method=event.method, consent_receipt_id=receipt_id_for(recorded.event_id),
        changed_by=event.confirmed_by if isinstance(event, OptInConfirmed) else event.changed_by,
        pii_principal_id=f"{tenant_id}/{source}/{ref}",
        pii_controllers=[_controller(controller)],
        policy_url=policy_url(public_base, tenant_id, named),
        services=[ReceiptService(service=f"Direct marketing by {controller.name}", purposes=purposes)],
        policy_version=named, policy_version_basis=basis,
        policy_version_label="policy shown" if basis == "shown" else "policy in force",
        policy_version_in_force=controller.policy_version,
        given_on=event.given_on if dated else None,  # type: ignore[union-attr]
        evidence_ref=event.evidence_ref if dated else None,  # type: ignore[union-attr]
        event_id=recorded.event_id, event_type=recorded.event_type, ledger_position=recorded.position,
        how_to_withdraw=withdraw, double_opt_in=double,
        rules_version=RULES_VERSION,
        law_in_force=[r.id for r in rules_in_force(ledger_day(recorded.recorded_at))],
    )


def receipts_from(subject_events: list[RecordedEvent], tenant: TenantRecord, *, portal_url: str | None = None,
                  public_base: str = DEFAULT_PUBLIC_BASE) -> list[ConsentReceipt]:
    return [build_receipt(e, tenant.state_at(e.recorded_at), portal_url=portal_url, public_base=public_base,
                          subject_events=subject_events)
            for e in subject_events if is_receipt_event(e)]


async def load_receipts(store: EventStore, tenant_id: str, source: str, customer_ref: str,
                        *, portal_url: str | None = None, public_base: str = DEFAULT_PUBLIC_BASE) -> list[ConsentReceipt]:
    """Every receipt of a subject, oldest first."""
    events = await load_subject_events(store, tenant_id, source, customer_ref)
    tenant = await load_tenant(store, tenant_id)
    return receipts_from(events, tenant, portal_url=portal_url, public_base=public_base)


async def load_receipt(store: EventStore, tenant_id: str, source: str, customer_ref: str, receipt_id: str,
                       *, portal_url: str | None = None, public_base: str = DEFAULT_PUBLIC_BASE) -> ConsentReceipt:
    """One receipt by id; 404 if the subject has no such receipt."""
    for receipt in await load_receipts(store, tenant_id, source, customer_ref, portal_url=portal_url,
                                       public_base=public_base):
        if receipt.receipt_id == receipt_id:
            return receipt
    raise AuditError(404, "unknown_receipt", f"no receipt {receipt_id!r} for this subject", "receipt_id")

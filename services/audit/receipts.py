"""Consent receipts: one JSON receipt per preference or objection change.

Fields follow the Kantara Initiative Consent Receipt Specification v1.1 (receipt id,
timestamp, controller, PII principal, purposes, collection method, policy) in snake_case,
with what proof of consent under GDPR art. 7(1) needs on top: the legal basis of each
purpose, the policy version shown, who made the change, and how to withdraw (art. 7(3)).

:func:`build_receipt` is pure (the portal calls it for a download); the loaders read the
subject's stream and the tenant's history.
"""

from __future__ import annotations

import datetime as dt
from typing import Final, Literal

import msgspec

from consent.tenant import TenantState
from consent.vocabulary import parse_subject_stream
from schemas.events import (
    Actor,
    ObjectionRecorded,
    ObjectionWithdrawn,
    OptInConfirmed,
    PreferencesChanged,
    RecordedEvent,
)
from services.audit.errors import AuditError
from services.audit.loading import TenantRecord, load_subject_events, load_tenant
from services.ledger.store import EventStore

RECEIPT_VERSION: Final = "KI-CR-v1.1.0"
RECEIPT_PREFIX: Final = "cr-"

PURPOSES: Final[dict[str, str]] = {
    "aftersales_service": "Service reminders (APK, maintenance, tyre change) and satisfaction surveys",
    "newsletter": "Newsletter",
    "sales_campaign": "Sales campaigns",
    "aftersales_campaign": "Workshop (aftersales) campaigns",
    "prospect": "Direct marketing to a non-customer",
}
CHANNELS: Final[dict[str, str]] = {"email": "e-mail", "post": "post", "phone": "telephone", "sms": "SMS", "app": "app"}
_BASIS: Final[dict[str, str]] = {
    "opt_in": "consent (GDPR art. 6(1)(a); Telecommunicatiewet art. 11.7(1))",
    "opt_out": "consent withdrawn / objection (GDPR art. 7(3) and 21(2))",
    "default": "no own choice: the dealer's opt-in term matrix applies (soft opt-in or legitimate interest)",
}
_CONSENT_TYPE: Final[dict[str, str]] = {"opt_in": "explicit", "opt_out": "withdrawn", "default": "none"}


class ReceiptController(msgspec.Struct, frozen=True, kw_only=True):
    controller_id: str
    name: str


class ReceiptPurpose(msgspec.Struct, frozen=True, kw_only=True):
    category: str
    channel: str
    purpose: str
    preference: Literal["opt_in", "opt_out", "default", "objection", "objection_withdrawn"]
    consent_type: str
    basis: str


class DoubleOptIn(msgspec.Struct, frozen=True, kw_only=True):
    """An e-mail opt-in given through the portal or the API counts only once confirmed from
    a mail: ``pending`` until then; the confirmation's evidence (when, which mail, which
    policy version the confirmation page showed)."""

    status: Literal["pending", "confirmed"]
    preference_event_id: str
    confirmation_event_id: str | None = None
    confirmed_at: dt.datetime | None = None
    mail_id: str | None = None
    policy_version_confirmed: str | None = None


class ConsentReceipt(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    jurisdiction: str
    language: str
    receipt_id: str
    consent_timestamp: dt.datetime
    collection_method: str
    changed_by: Actor
    pii_principal_id: str
    pii_controller: ReceiptController
    purposes: list[ReceiptPurpose]
    policy_version: str | None
    policy_version_in_force: str
    event_id: str
    event_type: str
    ledger_position: int
    how_to_withdraw: str
    double_opt_in: DoubleOptIn | None = None


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
                  subject_events: list[RecordedEvent] | None = None) -> ConsentReceipt:
    """The receipt of one preference or objection change.

    ``controller``: the tenant (dealer) as it stood when the change was recorded
    (``TenantHistory.state_at(recorded.recorded_at)``). ``portal_url``: the subject's
    portal link, if the caller has it, for the withdrawal text.
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
                category=c.category, channel=c.channel,
                purpose=f"{PURPOSES[c.category]} by {CHANNELS[c.channel]}",
                preference="opt_in", consent_type="explicit (double opt-in confirmed)", basis=_BASIS["opt_in"],
            )
            for c in changes if c.channel == "email" and c.value == "opt_in"
        ]
    elif isinstance(event, PreferencesChanged):
        purposes = [
            ReceiptPurpose(
                category=c.category, channel=c.channel,
                purpose=f"{PURPOSES[c.category]} by {CHANNELS[c.channel]}",
                preference=c.value, consent_type=_CONSENT_TYPE[c.value], basis=_BASIS[c.value],
            )
            for c in event.changes
        ]
    else:
        objected = isinstance(event, ObjectionRecorded)
        purposes = [ReceiptPurpose(
            category="*", channel="*", purpose="All direct marketing",
            preference="objection" if objected else "objection_withdrawn",
            consent_type="withdrawn" if objected else "none",
            basis=("objection to direct marketing (GDPR art. 21(2)-(3)): absolute" if objected
                   else "objection withdrawn: the own choices and the term matrix apply again"),
        )]
    where = f"in the privacy portal ({portal_url})" if portal_url else "in the privacy portal (the personal link in our messages)"
    withdraw = (f"Change or withdraw this choice at any time {where}, or ask {controller.name} directly"
                " (by phone, e-mail or at the desk); withdrawing is as easy as giving consent (GDPR art. 7(3))"
                " and does not affect what was lawful before it.")
    return ConsentReceipt(
        version=RECEIPT_VERSION, jurisdiction="NL", language="nl",
        receipt_id=receipt_id_for(recorded.event_id), consent_timestamp=recorded.recorded_at,
        collection_method=event.method,
        changed_by=event.confirmed_by if isinstance(event, OptInConfirmed) else event.changed_by,
        pii_principal_id=f"{tenant_id}/{source}/{ref}",
        pii_controller=ReceiptController(controller_id=controller.tenant_id, name=controller.name),
        purposes=purposes, policy_version=event.policy_version,
        policy_version_in_force=controller.policy_version,
        event_id=recorded.event_id, event_type=recorded.event_type, ledger_position=recorded.position,
        how_to_withdraw=withdraw, double_opt_in=double,
    )


def receipts_from(subject_events: list[RecordedEvent], tenant: TenantRecord,
                  *, portal_url: str | None = None) -> list[ConsentReceipt]:
    return [build_receipt(e, tenant.state_at(e.recorded_at), portal_url=portal_url, subject_events=subject_events)
            for e in subject_events if is_receipt_event(e)]


async def load_receipts(store: EventStore, tenant_id: str, source: str, customer_ref: str,
                        *, portal_url: str | None = None) -> list[ConsentReceipt]:
    """Every receipt of a subject, oldest first."""
    events = await load_subject_events(store, tenant_id, source, customer_ref)
    tenant = await load_tenant(store, tenant_id)
    return receipts_from(events, tenant, portal_url=portal_url)


async def load_receipt(store: EventStore, tenant_id: str, source: str, customer_ref: str, receipt_id: str,
                       *, portal_url: str | None = None) -> ConsentReceipt:
    """One receipt by id; 404 if the subject has no such receipt."""
    for receipt in await load_receipts(store, tenant_id, source, customer_ref, portal_url=portal_url):
        if receipt.receipt_id == receipt_id:
            return receipt
    raise AuditError(404, "unknown_receipt", f"no receipt {receipt_id!r} for this subject", "receipt_id")

"""Access export (GDPR art. 15): everything the ledger holds about one subject.

The subject's events with their personal data opened (or "[erased]"), the state derived
from them, the eligibility matrix today with its evidence, and the consent receipts; as
JSON, and as CSV (the same content as one flat table: a row per event with the personal
data in columns, then the state, the matrix and the receipts) for people who open it in
a spreadsheet.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from consent.subject import fold_subject
from consent.terms import ledger_day
from schemas.events import Actor, RecordedEvent, Sealed
from services.audit.asof import AsOfView, explain_as_of
from services.audit.loading import REDACTED, Reveal, TenantRecord
from services.audit.receipts import DEFAULT_PUBLIC_BASE, ConsentReceipt, receipts_from

CONTACT_FIELDS: Final = ("name", "email", "phone", "street", "postcode", "city", "country", "licence_plate",
                                 "vehicle_make", "vehicle_model")


class ExportedEvent(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    event_id: str
    version: int
    event_type: str
    recorded_at: dt.datetime
    occurred_on: dt.date | None
    actor: Actor
    method: str
    data: dict[str, Any]
    hash: str


class AccessExport(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    tenant_id: str
    source: str
    customer_ref: str
    controller: str
    exported_at: dt.datetime
    erased: bool
    personal_data: dict[str, Any] | str | None
    state: dict[str, Any]
    eligibility_today: AsOfView | None
    receipts: list[ConsentReceipt]
    events: list[ExportedEvent]


def _opened(recorded: RecordedEvent, reveal: Reveal) -> dict[str, Any]:
    data = msgspec.to_builtins(recorded.event)
    for field in ("personal", "note"):
        value = getattr(recorded.event, field, None)
        if isinstance(value, Sealed):
            data[field] = reveal(value)
    return data


def build_export(subject_events: Sequence[RecordedEvent], tenant: TenantRecord, reveal: Reveal,
                 now: dt.datetime, public_base: str = DEFAULT_PUBLIC_BASE) -> AccessExport:
    state = fold_subject(subject_events)
    assert state is not None, "an export needs at least one event"
    events: list[ExportedEvent] = []
    personal: dict[str, Any] | str | None = None
    for e in subject_events:
        data = _opened(e, reveal)
        opened = data.get("personal")
        if isinstance(opened, dict):
            personal = {**personal, **opened} if isinstance(personal, dict) else dict(opened)
        elif opened == REDACTED:
            personal = REDACTED
        events.append(ExportedEvent(
            position=e.position, event_id=e.event_id, version=e.version, event_type=e.event_type,
            recorded_at=e.recorded_at, occurred_on=e.occurred_on, actor=e.metadata.actor, method=e.metadata.method,
            data=data, hash=e.hash,
        ))
    return AccessExport(
        subject=state.key, tenant_id=state.tenant_id, source=state.source, customer_ref=state.customer_ref,
        controller=tenant.state_at(now).name, exported_at=now, erased=state.erased is not None,
        personal_data=personal, state=msgspec.to_builtins(state),
        eligibility_today=explain_as_of(subject_events, tenant, now, ledger_day(now), reveal),
        receipts=receipts_from(list(subject_events), tenant, public_base=public_base), events=events,
    )


CSV_COLUMNS: Final = ("record", "position", "recorded_at", "event_type", "occurred_on", "actor", "method",
                      "policy_version", *CONTACT_FIELDS, "note", "category", "channel", "eligible", "reason", "until",
                      "receipt_id", "details")
"""``record`` says what a row is: ``event`` (one per event, oldest first), ``state`` (one: the
derived state with the personal data as held now), ``eligibility`` (one per category x
channel, today), ``receipt`` (one per purpose of each consent receipt)."""


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def export_csv(export: AccessExport) -> str:
    """Everything the JSON export holds, as one flat table for a spreadsheet: the events
    (personal data in its own columns, everything else in ``details``), then the derived
    state, today's eligibility matrix and the consent receipts (see :data:`CSV_COLUMNS`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    blank_cell = ["", "", "", "", "", ""]  # category .. receipt_id

    def contact_of(personal: Any) -> list[str]:
        return [personal.get(f, "") if isinstance(personal, dict) else (personal or "") for f in CONTACT_FIELDS]

    for e in export.events:
        data = dict(e.data)
        data.pop("type", None)
        personal = data.pop("personal", None)
        note = data.pop("note", None)
        note_text = note.get("note", "") if isinstance(note, dict) else (note or "")
        policy = data.pop("policy_version", None) or ""
        writer.writerow([
            "event", e.position, e.recorded_at.isoformat(), e.event_type,
            e.occurred_on.isoformat() if e.occurred_on else "", f"{e.actor.kind}:{e.actor.id}", e.method, policy,
            *contact_of(personal), note_text, *blank_cell, _json(data),
        ])

    today = export.eligibility_today
    state = dict(export.state)
    writer.writerow([
        "state", state.get("last_position", ""), export.exported_at.isoformat(), "",
        today.on.isoformat() if today else "", "", "", today.policy_version if today else "",
        *contact_of(export.personal_data), "", *blank_cell,
        _json({"status": today.status if today else ("erased" if export.erased else ""), **state}),
    ])
    if today is not None:
        for c in today.cells:
            writer.writerow([
                "eligibility", "", today.known_at.isoformat(), "", today.on.isoformat(), "", "",
                today.policy_version, *([""] * len(CONTACT_FIELDS)), "", c.category, c.channel,
                "yes" if c.eligible else "no", c.reason, c.until.isoformat() if c.until else "", "",
                _json({"basis": c.basis, "term_months": c.term_months, "requires_disclosure": c.requires_disclosure,
                       "law": c.law, "requires_postfilter_check": c.requires_postfilter_check,
                       "requires_objection_offer": c.requires_objection_offer, "rules_version": today.rules_version,
                       "evidence": [{"position": x.position, "event_type": x.event_type} for x in c.evidence]}),
            ])
    for r in export.receipts:
        for purpose in (p for service in r.services for p in service.purposes):
            writer.writerow([
                "receipt", r.ledger_position, r.consent_time.isoformat(), r.event_type, "",
                f"{r.changed_by.kind}:{r.changed_by.id}", r.collection_method, r.policy_version or "",
                *([""] * len(CONTACT_FIELDS)), "", purpose.category, purpose.channel, "", purpose.preference, "",
                r.receipt_id,
                _json({"purpose": purpose.purpose, "consent_type": purpose.consent_type, "basis": purpose.basis,
                       "controller": r.pii_controllers[0].pii_controller, "policy_version_basis":
                       r.policy_version_basis, "how_to_withdraw": r.how_to_withdraw}),
            ])
    return out.getvalue()

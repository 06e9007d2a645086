"""The as-of view: a subject's eligibility matrix as the ledger knew it at K, for date D,
with the evidence each cell's decision rests on.

Bitemporal: K (knowledge time) limits which events count (recorded_at <= K) and which
term matrix and policy were in force; D is the date the question is about. The rules are
:func:`consent.subject.fold_subject` and :func:`consent.eligibility.eligibility_matrix`;
this module only resolves their evidence ids into readable facts (event type, recorded_at,
actor, method, policy version shown) and compares two knowledge times ("what we knew at
K" against "what we know now" about D, so a late-recorded invoice shows as a change).

The law is that of the send date D (consent/law.py): the view names the rules version, the
legal rules in force on D (with their sources) and, per cell, the statute that decided a
``consent_required`` answer. A D before the table's oldest dated rule (e.g. 1990) is
answered with the long-standing rules and says so (``before_oldest_rule``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from consent.eligibility import Decision, as_cell, eligibility_matrix
from consent.law import OLDEST_DATED_RULE, RULES_VERSION, rules_in_force
from consent.subject import SubjectState, fold_subject, invoice_in_effect, objection_in_effect
from consent.terms import ALL_CELLS, cell_key
from schemas.eligibility import Cell
from schemas.events import (
    Actor,
    InvoiceCorrected,
    InvoiceRecorded,
    MailSent,
    MarketingActivityRecorded,
    ObjectionRecorded,
    ObjectionWithdrawn,
    OptInConfirmed,
    PreferencesChanged,
    ProspectRegistered,
    RecordedEvent,
    SubjectErased,
    TenantCreated,
    TermMatrixEdited,
)
from schemas.law import LegalRule
from services.audit.errors import AuditError
from services.audit.loading import Reveal, TenantRecord

if TYPE_CHECKING:
    from services.audit.cache import SubjectHistory

Status = Literal["customer", "prospect", "erased"]


class Evidence(msgspec.Struct, frozen=True, kw_only=True):
    """One event a decision rests on, as an auditor reads it."""

    event_id: str
    event_type: str
    stream_id: str
    version: int
    position: int
    recorded_at: dt.datetime
    actor: Actor
    method: str
    policy_version: str | None = None
    occurred_on: dt.date | None = None
    facts: dict[str, Any] = {}
    note: str | None = None
    policy_version_basis: Literal["shown", "in_force"] | None = None
    given_on: dt.date | None = None
    evidence_ref: str | None = None


class CellExplanation(msgspec.Struct, frozen=True, kw_only=True):
    """One cell of the as-of view: the decision (``cell``, in the same shape as the
    matrix's cells on the topic and in the eligibility checks; the flat fields repeat it)
    and the evidence events resolved into readable facts."""

    category: str
    channel: str
    eligible: bool
    basis: str | None
    reason: str
    until: dt.date | None
    requires_disclosure: bool
    term_months: int
    evidence: list[Evidence]
    law: str | None = None
    requires_postfilter_check: bool = False
    requires_objection_offer: bool = False
    cell: Cell


class AsOfView(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    tenant_id: str
    source: str
    customer_ref: str
    known_at: dt.datetime
    on: dt.date
    status: Status
    stream_version: int
    ledger_position: int
    last_invoice_on: dt.date | None
    objected: bool
    erased: bool
    erased_at: dt.datetime | None
    policy_version: str
    tenant_version: int
    cells: list[CellExplanation]
    rules_version: str = RULES_VERSION
    law_in_force: list[LegalRule] = []
    before_oldest_rule: bool = False


class CellChange(msgspec.Struct, frozen=True, kw_only=True):
    category: str
    channel: str
    then_eligible: bool | None
    then_reason: str | None
    now_eligible: bool
    now_reason: str


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    """What the ledger knew at K about D, against what it knows now about D."""

    subject: str
    on: dt.date
    then_known_at: dt.datetime
    now_known_at: dt.datetime
    then: AsOfView | None
    now: AsOfView
    changed_cells: list[CellChange]
    recorded_after: list[Evidence]


# ---------------------------------------------------------------------------------------
# Evidence
# ---------------------------------------------------------------------------------------


def _facts(recorded: RecordedEvent, cell: str | None) -> dict[str, Any]:
    event = recorded.event
    if isinstance(event, (InvoiceRecorded, InvoiceCorrected)):
        return {"invoice_id": event.invoice_id, "invoice_date": event.invoice_date}
    if isinstance(event, ProspectRegistered):
        return {"acquired_on": event.acquired_on, "how": event.how}
    if isinstance(event, PreferencesChanged):
        changes = [c for c in event.changes if cell is None or cell_key(c.category, c.channel) == cell]
        facts: dict[str, Any] = {"changes": [{"category": c.category, "channel": c.channel, "value": c.value}
                                             for c in changes]}
        if event.confirmation_required:  # double opt-in: e-mail opt-ins count from their confirmation
            facts["double_opt_in"] = "confirmation_required"
        return facts
    if isinstance(event, ObjectionRecorded):
        return {"objection": "recorded"}
    if isinstance(event, ObjectionWithdrawn):
        return {"objection": "withdrawn"}
    if isinstance(event, MarketingActivityRecorded):
        return {"activity_on": event.activity_on, "category": event.category, "channel": event.channel,
                "campaign_id": event.campaign_id}
    if isinstance(event, SubjectErased):
        return {"reason": event.reason, "suppressed": event.suppressed}
    if isinstance(event, OptInConfirmed):
        return {"confirms": event.preference_event_id, "mail_id": event.mail_id,
                "policy_version_confirmed": event.policy_version}
    if isinstance(event, MailSent):
        return {"mail_id": event.mail_id, "kind": event.kind, "message_id": event.message_id}
    if isinstance(event, (TermMatrixEdited, TenantCreated)):
        cells = event.cells if isinstance(event, TermMatrixEdited) else event.terms
        chosen = [c for c in cells if cell is None or cell_key(c.category, c.channel) == cell]
        return {"term_cells": [{"category": c.category, "channel": c.channel, "months": c.months} for c in chosen]}
    return {}


def evidence_of(recorded: RecordedEvent, reveal: Reveal | None = None, cell: str | None = None) -> Evidence:
    """The auditor's reading of one event; ``cell`` narrows multi-cell facts to one cell.

    For a preference or objection change the actor and method are the ones the event
    names (who changed it, through what), ``policy_version`` the policy text shown (or,
    ``policy_version_basis`` "in_force", the version in force when it was given), and
    ``given_on`` / ``evidence_ref`` the earlier day it was given and where that is proven.
    ``reveal`` opens the sealed free-text note (shown as "[erased]" after erasure).
    """
    event = recorded.event
    actor, method, policy = recorded.metadata.actor, recorded.metadata.method, None
    note: str | None = None
    basis: Literal["shown", "in_force"] | None = None
    given_on: dt.date | None = None
    evidence_ref: str | None = None
    if isinstance(event, OptInConfirmed):
        actor, method, policy = event.confirmed_by, event.method, event.policy_version
    if isinstance(event, (PreferencesChanged, ObjectionRecorded, ObjectionWithdrawn)):
        actor, method, policy = event.changed_by, event.method, event.policy_version
        basis = event.policy_version_basis if policy is not None else None
        given_on, evidence_ref = event.given_on, event.evidence_ref
        if event.note is not None and reveal is not None:
            opened = reveal(event.note)
            note = opened.get("note") if isinstance(opened, dict) else str(opened)
    return Evidence(
        event_id=recorded.event_id, event_type=recorded.event_type, stream_id=recorded.stream_id,
        version=recorded.version, position=recorded.position, recorded_at=recorded.recorded_at,
        actor=actor, method=method, policy_version=policy, occurred_on=recorded.occurred_on,
        facts=_facts(recorded, cell), note=note, policy_version_basis=basis, given_on=given_on,
        evidence_ref=evidence_ref,
    )


# ---------------------------------------------------------------------------------------
# The view
# ---------------------------------------------------------------------------------------


def _status(state: SubjectState, on: dt.date) -> Status:
    if state.erased is not None:
        return "erased"
    return "customer" if invoice_in_effect(state, on) is not None else "prospect"


def explain_as_of(
    subject_events: Sequence[RecordedEvent],
    tenant: TenantRecord,
    known_at: dt.datetime,
    on: dt.date,
    reveal: Reveal | None = None,
    *,
    state: SubjectState | None = None,
) -> AsOfView | None:
    """The subject's matrix as known at ``known_at`` for date ``on``, with evidence; None
    if the ledger knew nothing of the subject at ``known_at``.

    ``state``: the subject already folded as of ``known_at`` (services/audit/cache.py),
    saving the fold; it must be the fold of exactly the events recorded up to ``known_at``.
    """
    if state is None:
        known = [e for e in subject_events if e.recorded_at <= known_at]
        state = fold_subject(known)
        if state is None:
            return None
    else:
        known = list(subject_events[: state.version])
    tenant_state = tenant.state_at(known_at)
    terms = tenant_state.terms
    matrix: dict[str, Decision] = eligibility_matrix(state, terms, on)

    needed = {event_id for decision in matrix.values() for event_id in decision.evidence}
    by_id = {e.event_id: e for e in known if e.event_id in needed}
    erased_event = by_id.get(state.erased) if state.erased else None
    if state.erased and erased_event is None:
        erased_event = next((e for e in known if e.event_id == state.erased), None)

    cells: list[CellExplanation] = []
    cache: dict[tuple[str, str], Evidence] = {}
    for category, channel in ALL_CELLS:
        key = cell_key(category, channel)
        decision = matrix[key]
        evidence: list[Evidence] = []
        for event_id in decision.evidence:
            recorded = by_id.get(event_id) or tenant.get(event_id)
            if recorded is None:  # a rule cited an event this view cannot see: say so, don't hide it
                raise AssertionError(f"evidence {event_id} not found")
            narrow = key if isinstance(recorded.event, (PreferencesChanged, TermMatrixEdited, TenantCreated)) else None
            cached = cache.get((event_id, narrow or ""))
            if cached is None:
                cached = cache[(event_id, narrow or "")] = evidence_of(recorded, reveal, narrow)
            evidence.append(cached)
        cells.append(CellExplanation(
            category=category, channel=channel, eligible=decision.eligible, basis=decision.basis,
            reason=decision.reason, until=decision.until, requires_disclosure=decision.requires_disclosure,
            term_months=terms.get(category, channel), evidence=evidence, law=decision.law,
            requires_postfilter_check=decision.requires_postfilter_check,
            requires_objection_offer=decision.requires_objection_offer, cell=as_cell(decision),
        ))
    invoice = invoice_in_effect(state, on)
    return AsOfView(
        subject=state.key, tenant_id=state.tenant_id, source=state.source, customer_ref=state.customer_ref,
        known_at=known_at, on=on, status=_status(state, on), stream_version=state.version,
        ledger_position=state.last_position,
        last_invoice_on=invoice.invoice_date if invoice is not None else None,
        objected=objection_in_effect(state, on) is not None,
        erased=state.erased is not None,
        erased_at=erased_event.recorded_at if erased_event is not None else None,
        policy_version=tenant_state.policy_version, tenant_version=tenant_state.version, cells=cells,
        rules_version=RULES_VERSION, law_in_force=rules_in_force(on), before_oldest_rule=on < OLDEST_DATED_RULE,
    )


def compare_with_now(
    subject_events: Sequence[RecordedEvent],
    tenant: TenantRecord,
    known_at: dt.datetime,
    now: dt.datetime,
    on: dt.date,
    reveal: Reveal | None = None,
    *,
    history: SubjectHistory | None = None,
) -> Comparison:
    """What was known at ``known_at`` about ``on`` against what is known at ``now``.

    ``recorded_after`` lists the subject's events and the tenant's term edits recorded
    after ``known_at``: the facts that explain every changed cell (e.g. an invoice dated
    before D but recorded after K).
    """
    if history is not None:
        then_state, now_state = history.state_at(known_at), history.state_at(now)
        then = explain_as_of(subject_events, tenant, known_at, on, reveal, state=then_state) if then_state else None
        current = explain_as_of(subject_events, tenant, now, on, reveal, state=now_state) if now_state else None
    else:
        then = explain_as_of(subject_events, tenant, known_at, on, reveal)
        current = explain_as_of(subject_events, tenant, now, on, reveal)
    if current is None:  # pragma: no cover - callers only compare subjects that exist
        raise AuditError(404, "unknown_subject", "the ledger holds nothing about this subject", "ref")
    changed: list[CellChange] = []
    then_cells = {(c.category, c.channel): c for c in then.cells} if then is not None else {}
    for cell in current.cells:
        before = then_cells.get((cell.category, cell.channel))
        if before is None or (before.eligible, before.reason, before.until) != (cell.eligible, cell.reason, cell.until):
            changed.append(CellChange(
                category=cell.category, channel=cell.channel,
                then_eligible=before.eligible if before is not None else None,
                then_reason=before.reason if before is not None else None,
                now_eligible=cell.eligible, now_reason=cell.reason,
            ))
    later: Iterable[RecordedEvent] = [e for e in subject_events if known_at < e.recorded_at <= now] + [
        e for e in tenant.events if known_at < e.recorded_at <= now and isinstance(e.event, TermMatrixEdited)
    ]
    return Comparison(
        subject=current.subject, on=on, then_known_at=known_at, now_known_at=now, then=then, now=current,
        changed_cells=changed,
        recorded_after=[evidence_of(e, reveal) for e in sorted(later, key=lambda e: e.position)],
    )

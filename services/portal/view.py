"""What the privacy portal shows for one subject, computed from the ledger with the pure
rules in ``consent/`` (never from a projector's read model, never re-implemented here).

The subject's stream is read with :meth:`EventStore.read_stream`, folded with
:func:`consent.subject.fold_subject` and judged with :func:`consent.eligibility.eligibility_matrix`
against the tenant's current term matrix (:class:`consent.tenant.TenantState`), for today's
Dutch calendar day. This module only puts words to the decisions.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

import msgspec
from markupsafe import Markup

from consent.eligibility import Decision, eligibility_matrix
from consent.policy import active_chapters, policy_version
from consent.subject import (
    SubjectState,
    acquisition_in_effect,
    fold_subject,
    invoice_in_effect,
    objection_in_effect,
    preference_in_effect,
)
from consent.tenant import TenantState
from consent.terms import cell_key, ledger_day
from consent.vocabulary import CATEGORIES, CHANNELS, PREFERENCE_VALUES, subject_stream
from schemas.events import PreferenceSetting, RecordedEvent
from services.ledger.commands import Ledger
from services.portal.messages import Messages
from services.portal.security import sanitise_html

CUSTOMER_CATEGORIES: Final = tuple(c for c in CATEGORIES if c != "prospect")
PROSPECT_CATEGORIES: Final = ("prospect",) + CUSTOMER_CATEGORIES


class ChapterView(msgspec.Struct, frozen=True):
    chapter_id: str
    title: str
    body: Markup  # sanitised again at render time


class CellView(msgspec.Struct, frozen=True):
    category: str
    channel: str
    field: str  # form field name
    label: str  # "Nieuwsbrief per e-mail"
    value: str  # the subject's own choice: default | opt_in | opt_out
    eligible: bool
    why: str


class CategoryView(msgspec.Struct, frozen=True):
    category: str
    label: str
    cells: list[CellView]


class PortalView(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    tenant_name: str
    source: str
    source_label: str
    customer_ref: str
    chapters: list[ChapterView]
    policy_version: str
    categories: list[CategoryView]
    is_customer: bool
    objected: bool
    objected_since: dt.date | None
    erased: bool
    subject_version: int


def field_name(category: str, channel: str) -> str:
    return f"pref.{category}.{channel}"


def today() -> dt.date:
    return ledger_day(dt.datetime.now(dt.timezone.utc))


def chapters_view(state: TenantState) -> list[ChapterView]:
    return [ChapterView(c.chapter_id, c.title, Markup(sanitise_html(c.body))) for c in active_chapters(state.chapters)]


def explain(decision: Decision, subject: SubjectState, category: str, channel: str, on: dt.date, t: Messages) -> str:
    """The decision in the customer's words, with the dates it rests on."""
    reason = decision.reason
    if reason == "objected":
        fact = objection_in_effect(subject, on)
        return t("why_objected", since=t.date(fact.effective_on if fact else None))
    if reason in ("opted_out", "explicit_consent"):
        pref = preference_in_effect(subject, category, channel, on)
        return t(f"why_{reason}", since=t.date(pref.effective_on if pref else None))
    if reason == "soft_opt_in":
        invoice = invoice_in_effect(subject, on)
        return t("why_soft_opt_in", until=t.date(decision.until), start=t.date(invoice.invoice_date if invoice else None))
    if reason == "prospect_term":
        acquisition = acquisition_in_effect(subject, on)
        return t("why_prospect_term", until=t.date(decision.until),
                 start=t.date(acquisition.acquired_on if acquisition else None))
    if reason == "term_expired" and category == "prospect":
        return t("why_term_expired_prospect")
    return t(f"why_{reason}")


def build_view(tenant: TenantState, events: list[RecordedEvent], source: str, ref: str, t: Messages,
               on: dt.date | None = None) -> PortalView | None:
    """The portal page's content, or None if the subject has no events."""
    subject = fold_subject(events)
    if subject is None:
        return None
    on = on or today()
    decisions = eligibility_matrix(subject, tenant.terms, on)
    categories = CUSTOMER_CATEGORIES if subject.is_customer else PROSPECT_CATEGORIES
    groups: list[CategoryView] = []
    for category in categories:
        cells = []
        for channel in CHANNELS:
            decision = decisions[cell_key(category, channel)]
            cells.append(CellView(
                category=category, channel=channel, field=field_name(category, channel), label=t.cell(category, channel),
                value=subject.preference(category, channel), eligible=decision.eligible,
                why=explain(decision, subject, category, channel, on, t),
            ))
        groups.append(CategoryView(category, t.category(category), cells))
    objection = objection_in_effect(subject, on)
    return PortalView(
        tenant_id=tenant.tenant_id, tenant_name=tenant.name, source=source,
        source_label=tenant.data_sources.get(source, source), customer_ref=ref,
        chapters=chapters_view(tenant), policy_version=policy_version(tenant.chapters), categories=groups,
        is_customer=subject.is_customer, objected=objection is not None,
        objected_since=objection.effective_on if objection else None, erased=subject.erased is not None,
        subject_version=subject.version,
    )


async def load_view(ledger: Ledger, tenant_id: str, source: str, ref: str, t: Messages
                    ) -> tuple[PortalView, list[RecordedEvent]] | None:
    """Read the tenant (only events newer than the cached state) and the subject's stream."""
    found = await ledger.tenant(tenant_id, fresh=True)
    if found is None:
        return None
    events = await ledger.store.read_stream(subject_stream(tenant_id, source, ref))
    view = build_view(found[1], events, source, ref, t)
    return None if view is None else (view, events)


class FormProblem(ValueError):
    """A posted preference form that no page of ours could have sent."""


def preference_changes(view: PortalView, form: dict[str, str]) -> list[PreferenceSetting]:
    """The cells whose posted value differs from the subject's current choice. Only the
    cells the page showed are considered; a value outside default/opt_in/opt_out is refused."""
    changes: list[PreferenceSetting] = []
    for group in view.categories:
        for cell in group.cells:
            posted = form.get(cell.field)
            if posted is None:
                continue
            if posted not in PREFERENCE_VALUES:
                raise FormProblem(cell.field)
            if posted != cell.value:
                changes.append(PreferenceSetting(category=cell.category, channel=cell.channel, value=posted))  # type: ignore[arg-type]
    return changes

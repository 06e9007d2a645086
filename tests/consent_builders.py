"""Builders of RecordedEvent envelopes for tests (reusable by every test suite).

    subject = (
        SubjectHistoryBuilder("acme", "dealer", "C1")
        .invoice("2024-01-31")
        .opt_out("newsletter", "email", at="2024-03-01")
    )
    subject.events          # list[RecordedEvent], versions 1.., positions increasing
    subject.last_event_id   # evidence id of the last event
    subject.state()         # fold_subject(subject.events)

    tenant = TenantHistoryBuilder("acme").edit_term("newsletter", "email", 6, at="2024-06-01")
    tenant.history().state_at(moment("2024-07-01"))

Times: ``at`` (recorded_at) accepts a date "2024-03-01" (= 12:00 UTC that day, the same
Dutch calendar day), an ISO datetime "2024-03-01T23:30:00+00:00" (naive = UTC) or a
date/datetime. Without ``at`` an event is recorded one minute after the builder's previous
event, except that dated events (invoice, prospect, activity) are recorded no earlier than
noon of their date: ``.invoice("2024-01-31").opt_out(...)`` records the opt-out right after
the invoice. Pass ``at`` explicitly to record an invoice late. ``at`` never goes backwards.

Event ids default to ``"{stream_id}#{version}"``; pass ``event_id=`` to choose one.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator, Mapping
from typing import Self

import msgspec

from consent.seed import new_tenant
from consent.subject import SubjectState, fold_subject
from consent.tenant import TenantHistory, TenantState, fold_tenant
from consent.terms import TermMatrix, split_cell_key
from schemas.events import (
    Actor,
    ActorKind,
    AnyEvent,
    Chapter,
    DataSourceAdded,
    InvoiceCorrected,
    InvoiceRecorded,
    MarketingActivityRecorded,
    Metadata,
    Method,
    ModuleActivationSet,
    ObjectionRecorded,
    ObjectionWithdrawn,
    PolicyChapterActiveSet,
    PolicyChapterAdded,
    PolicyChapterDeleted,
    PolicyChapterEdited,
    PolicyChapterMoved,
    PreferencesChanged,
    PreferenceSetting,
    ProcessorAgreementSet,
    ProspectRegistered,
    RecordedEvent,
    RetentionPolicySet,
    SubjectErased,
    TermCell,
    TermMatrixEdited,
)
from schemas.vocabulary import PreferenceValue, subject_stream, tenant_stream

__all__ = [
    "SubjectHistoryBuilder",
    "TenantHistoryBuilder",
    "day",
    "moment",
    "recorded",
]

UTC = dt.timezone.utc
_positions = itertools.count(1)  # one global order across all builders of a test run

When = str | dt.date | dt.datetime


def day(value: str | dt.date) -> dt.date:
    """``"2024-01-31"`` -> date(2024, 1, 31)."""
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)


def moment(value: When) -> dt.datetime:
    """A tz-aware recorded_at: a date means 12:00 UTC that day; naive datetimes are UTC."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value) if "T" in value or " " in value else dt.date.fromisoformat(value)
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return dt.datetime(value.year, value.month, value.day, 12, tzinfo=UTC)


def recorded(
    event: AnyEvent,
    *,
    stream_id: str,
    version: int,
    recorded_at: When,
    tenant_id: str = "acme",
    event_id: str | None = None,
    position: int | None = None,
    actor: Actor | None = None,
) -> RecordedEvent:
    """One RecordedEvent envelope around ``event`` (for hand-made streams)."""
    return RecordedEvent(
        position=next(_positions) if position is None else position,
        event_id=event_id or f"{stream_id}#{version}",
        stream_id=stream_id,
        version=version,
        tenant_id=tenant_id,
        event_type=type(event).__name__,
        schema_version=event.SCHEMA_VERSION,
        recorded_at=moment(recorded_at),
        occurred_on=event.occurred_on(),
        event=event,
        metadata=Metadata(actor=actor or Actor(kind="staff", id="u-test")),
        hash="0" * 64,
    )


class _StreamBuilder:
    def __init__(self, tenant_id: str, stream_id: str, start: When) -> None:
        self.tenant_id = tenant_id
        self.stream_id = stream_id
        self.events: list[RecordedEvent] = []
        self._clock = moment(start) - dt.timedelta(minutes=1)

    def _when(self, at: When | None, not_before: dt.date | None = None) -> dt.datetime:
        if at is not None:
            when = moment(at)
            if when < self._clock:
                raise ValueError(
                    f"recorded_at {when.isoformat()} is before the previous event ({self._clock.isoformat()})"
                )
            return when
        when = self._clock + dt.timedelta(minutes=1)
        if not_before is not None:
            when = max(when, moment(not_before))
        return when

    def _append(
        self,
        event: AnyEvent,
        *,
        at: When | None = None,
        not_before: dt.date | None = None,
        event_id: str | None = None,
        actor: Actor | None = None,
    ) -> Self:
        when = self._when(at, not_before)
        self.events.append(
            recorded(
                event,
                stream_id=self.stream_id,
                version=len(self.events) + 1,
                recorded_at=when,
                tenant_id=self.tenant_id,
                event_id=event_id,
                actor=actor,
            )
        )
        self._clock = when
        return self

    @property
    def last_event_id(self) -> str:
        return self.events[-1].event_id

    @property
    def event_ids(self) -> list[str]:
        return [e.event_id for e in self.events]

    @property
    def last_recorded_at(self) -> dt.datetime:
        return self.events[-1].recorded_at

    def __iter__(self) -> Iterator[RecordedEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)


class SubjectHistoryBuilder(_StreamBuilder):
    """The stream ``subject/{tenant}/{source}/{customer_ref}``, one fluent call per event."""

    def __init__(
        self, tenant_id: str = "acme", source: str = "dealer", customer_ref: str = "C1", *, start: When = "2000-01-01"
    ) -> None:
        super().__init__(tenant_id, subject_stream(tenant_id, source, customer_ref), start)
        self.source = source
        self.customer_ref = customer_ref
        self._invoices = 0

    @property
    def key(self) -> str:
        return f"{self.tenant_id}/{self.source}/{self.customer_ref}"

    def state(self, known_at: When | None = None) -> SubjectState:
        """fold_subject of the events so far (as known at ``known_at``, if given)."""
        state = fold_subject(self.events, known_at=None if known_at is None else moment(known_at))
        if state is None:
            raise LookupError(f"{self.key}: no events known at {known_at}")
        return state

    # --- invoices and prospects -------------------------------------------------------

    def invoice(
        self,
        invoice_date: str | dt.date,
        *,
        invoice_id: str | None = None,
        at: When | None = None,
        event_id: str | None = None,
    ) -> Self:
        if invoice_id is None:
            self._invoices += 1
            invoice_id = f"INV{self._invoices}"
        d = day(invoice_date)
        return self._append(
            InvoiceRecorded(invoice_id=invoice_id, invoice_date=d), at=at, not_before=d, event_id=event_id
        )

    def correct_invoice(
        self, invoice_id: str, invoice_date: str | dt.date, *, at: When | None = None, event_id: str | None = None
    ) -> Self:
        return self._append(
            InvoiceCorrected(invoice_id=invoice_id, invoice_date=day(invoice_date)), at=at, event_id=event_id
        )

    def prospect(
        self,
        acquired_on: str | dt.date,
        *,
        how: str = "aangekochte lijst",
        at: When | None = None,
        event_id: str | None = None,
    ) -> Self:
        d = day(acquired_on)
        return self._append(ProspectRegistered(acquired_on=d, how=how), at=at, not_before=d, event_id=event_id)

    def activity(
        self,
        activity_on: str | dt.date,
        category: str = "newsletter",
        channel: str = "email",
        *,
        at: When | None = None,
        event_id: str | None = None,
    ) -> Self:
        d = day(activity_on)
        event = MarketingActivityRecorded(activity_on=d, category=category, channel=channel)  # type: ignore[arg-type]
        return self._append(event, at=at, not_before=d, event_id=event_id)

    # --- preferences, objection, erasure ----------------------------------------------

    def preferences(
        self,
        changes: Mapping[str, PreferenceValue],
        *,
        at: When | None = None,
        by: ActorKind = "subject",
        method: Method = "portal",
        policy_version: str | None = None,
        event_id: str | None = None,
        given_on: str | dt.date | None = None,
    ) -> Self:
        """One save of several cells: ``{"newsletter:email": "opt_out", ...}``; ``given_on``
        the earlier day the customer gave it (a paper form)."""
        settings = []
        for key, value in changes.items():
            category, channel = split_cell_key(key)
            settings.append(PreferenceSetting(category=category, channel=channel, value=value))  # type: ignore[arg-type]
        actor = Actor(kind=by, id="subject" if by == "subject" else "u-test")
        event = PreferencesChanged(changes=settings, changed_by=actor, method=method, policy_version=policy_version,
                                   given_on=None if given_on is None else day(given_on),
                                   evidence_ref=None if given_on is None else "form-1")
        return self._append(event, at=at, event_id=event_id, actor=actor)

    def opt_in(self, category: str, channel: str, **kwargs) -> Self:
        return self.preferences({f"{category}:{channel}": "opt_in"}, **kwargs)

    def opt_out(self, category: str, channel: str, **kwargs) -> Self:
        return self.preferences({f"{category}:{channel}": "opt_out"}, **kwargs)

    def reset(self, category: str, channel: str, **kwargs) -> Self:
        """Back to ``default`` (follow the term matrix)."""
        return self.preferences({f"{category}:{channel}": "default"}, **kwargs)

    def object(self, *, at: When | None = None, method: Method = "portal", event_id: str | None = None,
               given_on: str | dt.date | None = None) -> Self:
        actor = Actor(kind="subject", id="subject")
        event = ObjectionRecorded(changed_by=actor, method=method, given_on=None if given_on is None else day(given_on))
        return self._append(event, at=at, event_id=event_id, actor=actor)

    def withdraw_objection(
        self, *, at: When | None = None, method: Method = "portal", event_id: str | None = None,
        given_on: str | dt.date | None = None,
    ) -> Self:
        actor = Actor(kind="subject", id="subject")
        event = ObjectionWithdrawn(changed_by=actor, method=method, given_on=None if given_on is None else day(given_on))
        return self._append(event, at=at, event_id=event_id, actor=actor)

    def erase(
        self, *, reason: str = "request", suppressed: bool = False, at: When | None = None, event_id: str | None = None
    ) -> Self:
        return self._append(SubjectErased(reason=reason, suppressed=suppressed), at=at, event_id=event_id)  # type: ignore[arg-type]


class TenantHistoryBuilder(_StreamBuilder):
    """The stream ``tenant/{tenant}``: starts with the seed's TenantCreated at ``created_at``.

    ``terms`` overrides seed cells at creation: ``{"newsletter:email": 12}``.
    """

    def __init__(
        self,
        tenant_id: str = "acme",
        name: str = "Autobedrijf Acme",
        *,
        created_at: When = "2000-01-01",
        terms: Mapping[str, int] | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(tenant_id, tenant_stream(tenant_id), created_at)
        created = new_tenant(tenant_id, name)
        if terms:
            cells = [
                TermCell(
                    category=c.category, channel=c.channel, months=terms.get(f"{c.category}:{c.channel}", c.months)
                )
                for c in created.terms
            ]
            created = msgspec.structs.replace(created, terms=cells)
        self._append(created, at=created_at, event_id=event_id)

    def state(self, known_at: When | None = None) -> TenantState:
        if known_at is None:
            return fold_tenant(self.events)
        return self.history().state_at(moment(known_at))

    def history(self) -> TenantHistory:
        return TenantHistory(self.events)

    @property
    def terms(self) -> TermMatrix:
        return self.state().terms

    def chapter(self, chapter_id: str) -> Chapter:
        for c in self.state().chapters:
            if c.chapter_id == chapter_id:
                return c
        raise KeyError(chapter_id)

    # --- terms --------------------------------------------------------------------------

    def edit_terms(self, cells: Mapping[str, int], *, at: When | None = None, event_id: str | None = None) -> Self:
        """``{"newsletter:email": 12, ...}`` in one TermMatrixEdited."""
        term_cells = []
        for key, months in cells.items():
            category, channel = split_cell_key(key)
            term_cells.append(TermCell(category=category, channel=channel, months=months))  # type: ignore[arg-type]
        return self._append(TermMatrixEdited(cells=term_cells), at=at, event_id=event_id)

    def edit_term(
        self, category: str, channel: str, months: int, *, at: When | None = None, event_id: str | None = None
    ) -> Self:
        return self.edit_terms({f"{category}:{channel}": months}, at=at, event_id=event_id)

    # --- policy -------------------------------------------------------------------------

    def add_chapter(
        self,
        chapter_id: str,
        title: str,
        body: str = "<p>Tekst</p>",
        *,
        active: bool = True,
        at: When | None = None,
        event_id: str | None = None,
    ) -> Self:
        chapter = Chapter(chapter_id=chapter_id, title=title, body=body, active=active)
        return self._append(PolicyChapterAdded(chapter=chapter), at=at, event_id=event_id)

    def edit_chapter(
        self,
        chapter_id: str,
        *,
        title: str | None = None,
        body: str | None = None,
        active: bool | None = None,
        at: When | None = None,
        event_id: str | None = None,
    ) -> Self:
        """Unspecified fields keep their current value."""
        current = self.chapter(chapter_id)
        event = PolicyChapterEdited(
            chapter_id=chapter_id,
            title=current.title if title is None else title,
            body=current.body if body is None else body,
            active=current.active if active is None else active,
        )
        return self._append(event, at=at, event_id=event_id)

    def set_chapter_active(
        self, chapter_id: str, active: bool, *, at: When | None = None, event_id: str | None = None
    ) -> Self:
        return self._append(PolicyChapterActiveSet(chapter_id=chapter_id, active=active), at=at, event_id=event_id)

    def move_chapter(
        self, chapter_id: str, to_index: int, *, at: When | None = None, event_id: str | None = None
    ) -> Self:
        return self._append(PolicyChapterMoved(chapter_id=chapter_id, to_index=to_index), at=at, event_id=event_id)

    def delete_chapter(self, chapter_id: str, *, at: When | None = None, event_id: str | None = None) -> Self:
        return self._append(PolicyChapterDeleted(chapter_id=chapter_id), at=at, event_id=event_id)

    # --- other settings -----------------------------------------------------------------

    def add_data_source(self, source_id: str, label: str, *, at: When | None = None) -> Self:
        return self._append(DataSourceAdded(source_id=source_id, label=label), at=at)

    def processor_agreement(
        self, signed: bool, signed_on: str | dt.date | None = None, *, at: When | None = None
    ) -> Self:
        event = ProcessorAgreementSet(signed=signed, signed_on=None if signed_on is None else day(signed_on))
        return self._append(event, at=at)

    def module(self, active: bool, *, at: When | None = None) -> Self:
        return self._append(ModuleActivationSet(active=active), at=at)

    def retention(self, customer_years: int = 7, prospect_months: int = 3, *, at: When | None = None) -> Self:
        return self._append(RetentionPolicySet(customer_years=customer_years, prospect_months=prospect_months), at=at)

"""A subject's consent facts, folded from its stream ``subject/{tenant}/{source}/{ref}``.

PRODUCT.md, "Domain": a subject is (tenant, data source, customer_ref); with at least one
invoice it is a customer, without one a prospect. The state keeps only what the eligibility
rule and the read models need, each fact with the event_id it rests on (evidence):

* invoices by invoice_id (an :class:`~schemas.events.InvoiceCorrected` replaces the date);
  ``last_invoice_on`` is the max invoice date, so an invoice recorded late with an earlier
  date never moves it backwards;
* prospect acquisitions (ProspectRegistered);
* per (category, channel) the preference changes, and the objection changes. These are
  short histories, not just the latest value, because a decision "on date D" must use the
  preference in force on D: an opt-in followed by a later opt-out still covers the days in
  between. Within one ledger day only the last change is kept (decisions are per day);
* the erasure event, the last marketing activity date, and stream bookkeeping.

Preferences and objections are bitemporal. ``effective_on`` is the Dutch calendar day a
change was recorded (:func:`consent.terms.ledger_day`); ``given_on`` the earlier day the
customer gave it, when the event says so (a signed paper form, a DMS delivery), else None.
Histories are ordered by the day given (``given_on`` or, without one, ``effective_on``).
A date D is read two ways: what the customer wanted on D as far as the ledger knows now
(the latest change given on or before D: the "actual" reading) and what the ledger had been
told by D (the latest change, in given order, recorded on or before D: the "known"
reading). The stricter of the two decides (opt_out < default < opt_in; objected beats not
objected), so an opt-out or objection given earlier makes earlier dates "no", and an
opt-in, a return to default or a withdrawn objection never counts before the day it was
recorded: consent cannot be back-dated to make a past send lawful (docs/rules.md, "Dated
preferences").

The state is a frozen msgspec Struct with str-keyed dicts ("newsletter:email") and tuples,
so it serialises to JSON as is.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TypeVar

import msgspec

from consent.errors import OutOfOrderEvent
from consent.terms import cell_key, ledger_day
from schemas.events import (
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
)
from schemas.vocabulary import PreferenceValue, parse_subject_stream, subject_stream

__all__ = [
    "AcquisitionFact",
    "InvoiceFact",
    "ObjectionFact",
    "OutOfOrderEvent",
    "PreferenceFact",
    "SubjectState",
    "acquisition_in_effect",
    "apply_subject",
    "current_preferences",
    "decisive_preference",
    "fold_subject",
    "invoice_in_effect",
    "objection_in_effect",
    "pending_opt_ins",
    "preference_in_effect",
]


class InvoiceFact(msgspec.Struct, frozen=True, gc=False):
    invoice_date: dt.date
    event_id: str
    recorded_at: dt.datetime


class AcquisitionFact(msgspec.Struct, frozen=True, gc=False):
    acquired_on: dt.date
    event_id: str
    recorded_at: dt.datetime


class PreferenceFact(msgspec.Struct, frozen=True, gc=False):
    """``effective_on``: the day recorded; ``given_on``: the earlier day given, or None."""

    value: PreferenceValue
    event_id: str
    recorded_at: dt.datetime
    effective_on: dt.date
    policy_version: str | None = None
    given_on: dt.date | None = None
    # Double opt-in: an e-mail opt-in given through the portal or the API is pending (it
    # allows nothing) until confirmed; the confirmation is pushed as a new fact from its day,
    # with ``confirmed_by`` the OptInConfirmed event.
    pending: bool = False
    confirmed_by: str | None = None

    @property
    def since(self) -> dt.date:
        """The first day this change decides on its own: an opt-out from the day it was
        given, anything more permissive from the day it was recorded."""
        return self.given_on if self.given_on is not None and self.value == "opt_out" else self.effective_on


class ObjectionFact(msgspec.Struct, frozen=True, gc=False):
    """``objected`` True for ObjectionRecorded, False for ObjectionWithdrawn."""

    objected: bool
    event_id: str
    recorded_at: dt.datetime
    effective_on: dt.date
    given_on: dt.date | None = None

    @property
    def since(self) -> dt.date:
        """An objection counts from the day it was given, a withdrawal from the day recorded."""
        return self.given_on if self.given_on is not None and self.objected else self.effective_on


class SubjectState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The consent facts of one subject (one data source of one customer)."""

    tenant_id: str
    source: str
    customer_ref: str
    invoices: dict[str, InvoiceFact] = {}
    last_invoice_on: dt.date | None = None
    acquisitions: tuple[AcquisitionFact, ...] = ()
    preferences: dict[str, tuple[PreferenceFact, ...]] = {}
    objections: tuple[ObjectionFact, ...] = ()
    erased: str | None = None
    last_activity_on: dt.date | None = None
    version: int = 0
    last_position: int = 0
    last_recorded_at: dt.datetime | None = None

    @property
    def key(self) -> str:
        """``{tenant}/{source}/{customer_ref}``: the eligibility topic key."""
        return f"{self.tenant_id}/{self.source}/{self.customer_ref}"

    @property
    def is_customer(self) -> bool:
        """Has any invoice (whatever its date); see :func:`invoice_in_effect` for "on D"."""
        return bool(self.invoices)

    @property
    def objected(self) -> bool:
        """The latest objection change is an objection."""
        return bool(self.objections) and self.objections[-1].objected

    @property
    def objection(self) -> ObjectionFact | None:
        """The current objection (latest change, if it is an objection), else None."""
        return self.objections[-1] if self.objected else None

    @property
    def acquisition(self) -> AcquisitionFact | None:
        """The latest prospect acquisition (by acquired_on), if any."""
        return acquisition_in_effect(self, dt.date.max)

    def preference(self, category: str, channel: str) -> PreferenceValue:
        """The latest preference value of the cell (``"default"`` if never set)."""
        history = self.preferences.get(cell_key(category, channel))
        return history[-1].value if history else "default"


# ---------------------------------------------------------------------------------------
# Folding
# ---------------------------------------------------------------------------------------


_Fact = TypeVar("_Fact", PreferenceFact, ObjectionFact)


def _given(fact: PreferenceFact | ObjectionFact) -> dt.date:
    """The order key of a change: the day it was given."""
    return fact.given_on if fact.given_on is not None else fact.effective_on


def _push(history: tuple[_Fact, ...], fact: _Fact) -> tuple[_Fact, ...]:
    """Add a change in given order. A change that can never decide again in either reading
    (same day given and a later one recorded no later) is dropped: decisions are per day."""
    if fact.given_on is None:
        # Given the day it is recorded: no change in the history is given or recorded
        # later, so it goes last and supersedes the tail given on that same day. A pending
        # opt-in (double opt-in) decides nothing on its own: what it would replace must
        # stay, so it keeps the earlier changes of its day.
        pending = getattr(fact, "pending", False)
        n = len(history)
        while n and (_given(history[n - 1]) > fact.effective_on
                     or (not pending and _given(history[n - 1]) == fact.effective_on)):
            n -= 1
        return history[:n] + (fact,)
    key = fact.given_on
    n = len(history)
    while n and _given(history[n - 1]) > key:  # later-given changes stay after it
        n -= 1
    head = tuple(f for f in history[:n] if not (_given(f) == key and f.effective_on >= fact.effective_on))
    return head + (fact,) + history[n:]


def _given_on(given_on: dt.date | None, day: dt.date) -> dt.date | None:
    """The event's ``given_on`` as a fact keeps it: None when it is not before the day recorded."""
    return given_on if given_on is not None and given_on < day else None


def _readings(history: tuple[_Fact, ...], on: dt.date) -> tuple[_Fact | None, _Fact | None]:
    """(actual, known) on ``on``: the latest change given by then, and the latest (in given
    order) recorded by then. Without back-dated changes both are the same fact."""
    actual: _Fact | None = None
    known: _Fact | None = None
    for fact in reversed(history):
        if actual is None and _given(fact) <= on:
            actual = fact
        if fact.effective_on <= on:
            known = fact
            break  # anything earlier in the list is given earlier: actual is set by now
    return actual, known


def apply_subject(state: SubjectState | None, recorded: RecordedEvent) -> SubjectState:
    """The subject after one more event of its stream (cheap: copies only what changes).

    Re-delivery of an applied event (``version <= state.version``) returns ``state``
    unchanged; a version gap raises :class:`OutOfOrderEvent`; a non-subject event, or an
    event of another stream, raises ``ValueError``.
    """
    if state is None:
        parsed = parse_subject_stream(recorded.stream_id)
        if parsed is None:
            raise ValueError(f"{recorded.stream_id!r} is not a subject stream")
        if recorded.version != 1:
            raise OutOfOrderEvent(f"{recorded.stream_id}: first event has version {recorded.version}")
        state = SubjectState(tenant_id=parsed[0], source=parsed[1], customer_ref=parsed[2])
    else:
        if recorded.stream_id != subject_stream(state.tenant_id, state.source, state.customer_ref):
            raise ValueError(f"an event of {recorded.stream_id!r} applied to subject {state.key!r}")
        if recorded.version <= state.version:
            return state
        if recorded.version != state.version + 1:
            raise OutOfOrderEvent(f"{recorded.stream_id}: version {recorded.version} after {state.version}")

    event = recorded.event
    event_id = recorded.event_id
    at = recorded.recorded_at
    replace = msgspec.structs.replace
    book = {"version": recorded.version, "last_position": recorded.position, "last_recorded_at": at}

    if isinstance(event, (InvoiceRecorded, InvoiceCorrected)):
        invoices = dict(state.invoices)
        invoices[event.invoice_id] = InvoiceFact(event.invoice_date, event_id, at)
        last = state.last_invoice_on
        if event.invoice_id in state.invoices:  # correction (or re-delivery) may lower the max
            last = max(f.invoice_date for f in invoices.values())
        elif last is None or event.invoice_date > last:
            last = event.invoice_date
        return replace(state, invoices=invoices, last_invoice_on=last, **book)
    if isinstance(event, PreferencesChanged):
        day = ledger_day(at)
        given = _given_on(event.given_on, day)
        preferences = dict(state.preferences)
        confirm = event.confirmation_required
        for change in event.changes:
            key = cell_key(change.category, change.channel)
            pending = confirm and change.value == "opt_in" and change.channel == "email"
            fact = PreferenceFact(change.value, event_id, at, day, event.policy_version, given, pending=pending)
            preferences[key] = _push(preferences.get(key, ()), fact)
        return replace(state, preferences=preferences, **book)
    if isinstance(event, OptInConfirmed):
        # Confirms the cells whose latest change is still that pending opt-in: a later change
        # of the cell (the customer opted out meanwhile) is never overridden by an old mail.
        day = ledger_day(at)
        preferences = dict(state.preferences)
        for key, history in state.preferences.items():
            latest = history[-1] if history else None
            if latest is not None and latest.pending and latest.event_id == event.preference_event_id:
                fact = PreferenceFact("opt_in", latest.event_id, at, day, event.policy_version or latest.policy_version,
                                      confirmed_by=event_id)
                preferences[key] = _push(history, fact)
        return replace(state, preferences=preferences, **book)
    if isinstance(event, MailSent):
        return replace(state, **book)
    if isinstance(event, (ObjectionRecorded, ObjectionWithdrawn)):
        day = ledger_day(at)
        objection = ObjectionFact(isinstance(event, ObjectionRecorded), event_id, at, day,
                                  _given_on(event.given_on, day))
        return replace(state, objections=_push(state.objections, objection), **book)
    if isinstance(event, ProspectRegistered):
        acquisition = AcquisitionFact(event.acquired_on, event_id, at)
        return replace(state, acquisitions=state.acquisitions + (acquisition,), **book)
    if isinstance(event, MarketingActivityRecorded):
        last = state.last_activity_on
        if last is None or event.activity_on > last:
            last = event.activity_on
        return replace(state, last_activity_on=last, **book)
    if isinstance(event, SubjectErased):
        return replace(state, erased=state.erased or event_id, **book)
    raise ValueError(f"{type(event).__name__} is not a subject event")


def fold_subject(events: Iterable[RecordedEvent], *, known_at: dt.datetime | None = None) -> SubjectState | None:
    """The subject after its events (its stream, in order), or None if there are none.

    ``known_at`` (knowledge time K) ignores events recorded after K: the state as the
    ledger knew it at K. None means "everything recorded".
    """
    state: SubjectState | None = None
    for recorded in events:
        if known_at is not None and recorded.recorded_at > known_at:
            continue
        state = apply_subject(state, recorded)
    return state


# ---------------------------------------------------------------------------------------
# Facts in effect on a date (the bitemporal reading used by the eligibility rule)
# ---------------------------------------------------------------------------------------


def invoice_in_effect(state: SubjectState, on: dt.date) -> InvoiceFact | None:
    """The last invoice on ``on``: the latest invoice dated <= ``on`` (ties: the one
    recorded first, so later duplicates do not change the evidence). None = not a customer
    on that date."""
    best: InvoiceFact | None = None
    last = state.last_invoice_on
    if last is None:
        return None
    if last <= on:  # fast path: the overall last invoice is in effect
        for fact in state.invoices.values():
            if fact.invoice_date == last and (best is None or fact.recorded_at < best.recorded_at):
                best = fact
        return best
    for fact in state.invoices.values():
        d = fact.invoice_date
        if d <= on and (
            best is None or d > best.invoice_date or (d == best.invoice_date and fact.recorded_at < best.recorded_at)
        ):
            best = fact
    return best


def acquisition_in_effect(state: SubjectState, on: dt.date) -> AcquisitionFact | None:
    """The latest prospect acquisition dated <= ``on`` (ties: the one recorded first)."""
    best: AcquisitionFact | None = None
    for fact in state.acquisitions:
        if fact.acquired_on <= on and (best is None or fact.acquired_on > best.acquired_on):
            best = fact
    return best


def objection_in_effect(state: SubjectState, on: dt.date) -> ObjectionFact | None:
    """The objection in force on ``on``, or None: objected in either reading (the
    module docstring), so an objection given earlier counts from the day given, and a
    withdrawal only from the day it was recorded."""
    if not state.objections:
        return None
    actual, known = _readings(state.objections, on)
    if actual is not None and actual.objected:
        return actual
    if known is not None and known.objected:
        return known
    return None


def decisive_preference(history: tuple[PreferenceFact, ...], on: dt.date) -> PreferenceFact | None:
    """The change that decides a cell on ``on``: the stricter of the two readings
    (opt_out < default < opt_in). None: no own choice counts (never set, or an opt-in not
    yet recorded by then): follow the term matrix."""
    actual, known = _readings(history, on)
    if actual is None:  # nothing given by then (known is None too: given <= recorded)
        return None
    if actual is known or actual.value == "opt_out":
        return actual
    if known is not None and known.value == "opt_out":
        return known
    if actual.value == "opt_in" and known is not None and known.value == "opt_in":
        return actual
    if actual.value == "default":
        return actual
    return known if known is not None and known.value == "default" else None


def preference_in_effect(state: SubjectState, category: str, channel: str, on: dt.date) -> PreferenceFact | None:
    """The preference change of the cell in force on ``on`` (None: none counts by then)."""
    history = state.preferences.get(cell_key(category, channel))
    return decisive_preference(history, on) if history else None


def pending_opt_ins(state: SubjectState) -> dict[str, PreferenceFact]:
    """Cells whose latest change is an e-mail opt-in still waiting for its confirmation."""
    return {key: history[-1] for key, history in state.preferences.items() if history and history[-1].pending}


def current_preferences(state: SubjectState) -> dict[str, PreferenceValue]:
    """Latest value per cell key, for the cells ever set (the portal's view)."""
    return {key: history[-1].value for key, history in state.preferences.items() if history}

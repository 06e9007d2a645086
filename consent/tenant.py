"""A dealer's (tenant's) state, folded from its stream ``tenant/{tenant}``.

PRODUCT.md, "Domain": processor agreement status, module activation, data sources, privacy
policy (ordered chapters with a version id) and the opt-in term matrix. "An edit applies to
evaluations from the moment it was recorded, and an as-of query uses the matrix that was in
force at that moment": :class:`TenantHistory` answers ``state_at(K)`` by bisecting on
``recorded_at``.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
from collections.abc import Iterable
from typing import Final

import msgspec

from consent.errors import OutOfOrderEvent
from consent.policy import Policy, apply_policy, policy_version
from consent.seed import DEFAULT_PROSPECT_DISCLOSURE
from consent.terms import TermMatrix, apply_term_edit, terms_from_cells
from schemas.events import (
    ControllerContact,
    ControllerContactSet,
    DataSourceAdded,
    DealerContactSet,
    ProspectDisclosureSet,
    ModuleActivationSet,
    PolicyChapterActiveSet,
    PolicyChapterAdded,
    PolicyChapterDeleted,
    PolicyChapterEdited,
    PolicyChapterMoved,
    ProcessorAgreementSet,
    RecordedEvent,
    RetentionPolicySet,
    TenantCreated,
    TermMatrixEdited,
)
from schemas.vocabulary import tenant_stream

__all__ = ["DealerContact", "OutOfOrderEvent", "TenantHistory", "TenantState", "apply_tenant",
           "disclosure_version", "fold_tenant"]


class DealerContact(msgspec.Struct, frozen=True, kw_only=True):
    """The dealer's address, phone and e-mail as customers see them."""

    street: str
    postcode: str
    city: str
    phone: str
    email: str
    website: str | None = None


def disclosure_version(body: str) -> str:
    """Version id of a prospect disclosure text: ``"dv-"`` + 16 hex of its sha256 (like the
    policy's ``"pv-"`` ids: it changes iff the text changes)."""
    return "dv-" + hashlib.sha256(body.encode()).hexdigest()[:16]


DEFAULT_DISCLOSURE_VERSION: Final = disclosure_version(DEFAULT_PROSPECT_DISCLOSURE)


class TenantState(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant as of its last applied event. ``policy_version`` is that of ``chapters``."""

    tenant_id: str
    name: str
    data_sources: dict[str, str]
    chapters: Policy
    policy_version: str
    terms: TermMatrix
    processor_agreement_signed: bool = False
    processor_agreement_signed_on: dt.date | None = None
    module_active: bool = False
    retention_customer_years: int = 7
    retention_prospect_months: int = 3
    controller: ControllerContact | None = None
    contact: DealerContact | None = None
    # The art. 14 / 21(4) text for first letters to prospects (``{dealer}``: the dealer's
    # name), Dutch default until the dealer edits it; versioned like the policy.
    disclosure: str = DEFAULT_PROSPECT_DISCLOSURE
    disclosure_version: str = DEFAULT_DISCLOSURE_VERSION
    version: int = 0
    last_position: int = 0
    last_event_id: str = ""
    last_recorded_at: dt.datetime | None = None


_POLICY_EDITS: Final = (
    PolicyChapterAdded,
    PolicyChapterEdited,
    PolicyChapterActiveSet,
    PolicyChapterMoved,
    PolicyChapterDeleted,
)


def apply_tenant(state: TenantState | None, recorded: RecordedEvent) -> TenantState:
    """The tenant after one more event of its stream.

    The stream starts with :class:`TenantCreated`. Re-delivery of an event already applied
    (``version <= state.version``) returns ``state`` unchanged; a gap in versions raises
    :class:`OutOfOrderEvent`; an event that is not a tenant event, or of another stream,
    raises ``ValueError``.
    """
    event = recorded.event
    if state is None:
        if not isinstance(event, TenantCreated):
            raise ValueError(f"a tenant stream starts with TenantCreated, not {type(event).__name__}")
        if recorded.version != 1:
            raise OutOfOrderEvent(f"{recorded.stream_id}: first event has version {recorded.version}")
        if recorded.stream_id != tenant_stream(event.tenant_id):
            raise ValueError(f"TenantCreated for {event.tenant_id!r} in stream {recorded.stream_id!r}")
        chapters = tuple(event.chapters)
        return TenantState(
            tenant_id=event.tenant_id,
            name=event.name,
            data_sources=dict(event.data_sources),
            chapters=chapters,
            policy_version=policy_version(chapters),
            terms=terms_from_cells(event.terms, recorded.event_id),
            version=recorded.version,
            last_position=recorded.position,
            last_event_id=recorded.event_id,
            last_recorded_at=recorded.recorded_at,
        )
    if recorded.stream_id != tenant_stream(state.tenant_id):
        raise ValueError(f"an event of {recorded.stream_id!r} applied to tenant {state.tenant_id!r}")
    if recorded.version <= state.version:
        return state
    if recorded.version != state.version + 1:
        raise OutOfOrderEvent(f"{recorded.stream_id}: version {recorded.version} after {state.version}")

    bookkeeping = {
        "version": recorded.version,
        "last_position": recorded.position,
        "last_event_id": recorded.event_id,
        "last_recorded_at": recorded.recorded_at,
    }
    replace = msgspec.structs.replace
    if isinstance(event, TermMatrixEdited):
        return replace(state, terms=apply_term_edit(state.terms, event, recorded.event_id), **bookkeeping)
    if isinstance(event, _POLICY_EDITS):
        chapters = apply_policy(state.chapters, event)
        return replace(state, chapters=chapters, policy_version=policy_version(chapters), **bookkeeping)
    if isinstance(event, DataSourceAdded):
        return replace(state, data_sources={**state.data_sources, event.source_id: event.label}, **bookkeeping)
    if isinstance(event, ProcessorAgreementSet):
        return replace(
            state,
            processor_agreement_signed=event.signed,
            processor_agreement_signed_on=event.signed_on if event.signed else None,
            **bookkeeping,
        )
    if isinstance(event, ModuleActivationSet):
        return replace(state, module_active=event.active, **bookkeeping)
    if isinstance(event, RetentionPolicySet):
        return replace(
            state,
            retention_customer_years=event.customer_years,
            retention_prospect_months=event.prospect_months,
            **bookkeeping,
        )
    if isinstance(event, ControllerContactSet):
        return replace(state, controller=event.details, **bookkeeping)
    if isinstance(event, DealerContactSet):
        contact = DealerContact(street=event.street, postcode=event.postcode, city=event.city, phone=event.phone,
                                email=event.email, website=event.website)
        return replace(state, contact=contact, **bookkeeping)
    if isinstance(event, ProspectDisclosureSet):
        return replace(state, disclosure=event.body, disclosure_version=disclosure_version(event.body), **bookkeeping)
    if isinstance(event, TenantCreated):
        raise ValueError(f"{recorded.stream_id}: TenantCreated at version {recorded.version}")
    raise ValueError(f"{type(event).__name__} is not a tenant event")


def fold_tenant(events: Iterable[RecordedEvent]) -> TenantState:
    """The tenant after all ``events`` (its stream, in order). Raises ``ValueError`` if empty."""
    state: TenantState | None = None
    for recorded in events:
        state = apply_tenant(state, recorded)
    if state is None:
        raise ValueError("no tenant events")
    return state


class TenantHistory:
    """Every state a tenant has had, for as-of questions.

    Built from the tenant's RecordedEvents (its stream, in order); keeps one state per
    event (states share unchanged parts, so this stays small). ``state_at(K)`` is the state
    after every event recorded at or before K; ``state_by_policy_version(v)`` the first
    state that published policy version ``v``. Both are O(log n) / O(1).
    """

    __slots__ = ("_states", "_times", "_first_by_version")

    def __init__(self, events: Iterable[RecordedEvent] = ()) -> None:
        self._states: list[TenantState] = []
        self._times: list[dt.datetime] = []
        self._first_by_version: dict[str, int] = {}
        for recorded in events:
            self.append(recorded)

    def append(self, recorded: RecordedEvent) -> TenantState:
        """Apply one more event (recorded_at must not go backwards); returns the new state."""
        previous = self._states[-1] if self._states else None
        state = apply_tenant(previous, recorded)
        if state is previous:
            return state
        if self._times and recorded.recorded_at < self._times[-1]:
            raise OutOfOrderEvent(f"{recorded.stream_id}: recorded_at goes backwards at version {recorded.version}")
        self._states.append(state)
        self._times.append(recorded.recorded_at)
        self._first_by_version.setdefault(state.policy_version, len(self._states) - 1)
        return state

    def __len__(self) -> int:
        return len(self._states)

    @property
    def current(self) -> TenantState:
        """The latest state. Raises ``LookupError`` if there are no events."""
        if not self._states:
            raise LookupError("tenant has no events")
        return self._states[-1]

    def state_at(self, knowledge_time: dt.datetime) -> TenantState:
        """The tenant as known at ``knowledge_time`` (events with recorded_at <= it).

        Raises ``LookupError`` if the tenant did not exist yet.
        """
        i = bisect.bisect_right(self._times, knowledge_time)
        if i == 0:
            raise LookupError(f"tenant did not exist at {knowledge_time.isoformat()}")
        return self._states[i - 1]

    def terms_at(self, knowledge_time: dt.datetime) -> TermMatrix:
        """The term matrix in force at ``knowledge_time``."""
        return self.state_at(knowledge_time).terms

    def state_by_policy_version(self, version_id: str) -> TenantState | None:
        """The first state whose active chapters hash to ``version_id`` (its ``chapters``
        are the text the customer saw), or None if the tenant never published it."""
        i = self._first_by_version.get(version_id)
        return None if i is None else self._states[i]

    def policy_versions(self) -> list[tuple[str, dt.datetime, str]]:
        """(version id, first recorded_at, event_id that published it), oldest first."""
        return [
            (v, self._times[i], self._states[i].last_event_id)
            for v, i in sorted(self._first_by_version.items(), key=lambda item: item[1])
        ]

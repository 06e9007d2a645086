"""Loading what an audit answer is computed from: a subject's stream, the tenant's
history, and a way to open the subject's sealed personal data.

Everything else in this package is pure over these inputs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec

from consent.tenant import TenantHistory, TenantState
from schemas.events import RecordedEvent, Sealed
from schemas.vocabulary import is_customer_ref, is_slug, subject_stream, tenant_stream
from services.audit.errors import AuditError
from services.ledger.store import EventStore
from services.ledger.subject_keys import SubjectKeys

REDACTED: Final = "[erased]"
"""Shown in place of personal data whose subject key was shredded."""

Reveal = Callable[[Sealed], Any]
"""Opens one Sealed field: its JSON value, or :data:`REDACTED` once the key is shredded."""

_json: Final = msgspec.json.Decoder()


class TenantRecord:
    """A tenant's events with their history, and an index for resolving evidence ids."""

    __slots__ = ("events", "history", "_by_id")

    def __init__(self, events: Sequence[RecordedEvent]) -> None:
        self.events = list(events)
        self.history = TenantHistory(self.events)
        self._by_id = {e.event_id: e for e in self.events}

    def extend(self, newer: Sequence[RecordedEvent]) -> None:
        """Add events recorded since (ignores versions already held)."""
        for recorded in newer:
            if recorded.version == len(self.events) + 1:
                self.events.append(recorded)
                self.history.append(recorded)
                self._by_id[recorded.event_id] = recorded

    def get(self, event_id: str) -> RecordedEvent | None:
        return self._by_id.get(event_id)

    def state_at(self, known_at: dt.datetime, field: str = "known_at") -> TenantState:
        try:
            return self.history.state_at(known_at)
        except LookupError:
            raise AuditError(422, "tenant_not_yet_created",
                             f"the tenant did not exist at {known_at.isoformat()}", field) from None


def check_subject_ids(tenant_id: str, source: str, customer_ref: str) -> None:
    if not is_slug(tenant_id):
        raise AuditError(422, "validation_error", "a tenant id is lower-case letters, digits, _ and -", "tenant")
    if not is_slug(source):
        raise AuditError(422, "validation_error", "a data source id is lower-case letters, digits, _ and -", "source")
    if not is_customer_ref(customer_ref):
        raise AuditError(422, "validation_error", "a customer ref is letters, digits, '.', '_' and '-'", "ref")


async def load_tenant(store: EventStore, tenant_id: str) -> TenantRecord:
    events = await store.read_stream(tenant_stream(tenant_id))
    if not events:
        raise AuditError(404, "unknown_tenant", f"tenant {tenant_id!r} does not exist", "tenant")
    return TenantRecord(events)


async def load_subject_events(store: EventStore, tenant_id: str, source: str, customer_ref: str) -> list[RecordedEvent]:
    check_subject_ids(tenant_id, source, customer_ref)
    events = await store.read_stream(subject_stream(tenant_id, source, customer_ref))
    if not events:
        raise AuditError(404, "unknown_subject",
                         f"the ledger holds nothing about {tenant_id}/{source}/{customer_ref}", "ref")
    return events


async def revealer(keys: SubjectKeys, tenant_id: str, source: str, customer_ref: str) -> Reveal:
    """A :data:`Reveal` for one subject, with a single key lookup."""
    opener = await keys.opener(subject_stream(tenant_id, source, customer_ref))

    def reveal(sealed: Sealed) -> Any:
        plain = opener.open(sealed)
        return REDACTED if plain is None else _json.decode(plain)

    return reveal

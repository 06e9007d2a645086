"""A cache of decoded streams for the as-of views: events never change once written, so
a stream's decoded prefix stays valid forever and only newer versions are read.

Per subject it also keeps the folded state every :data:`CHECKPOINT` events, so the state
as of any K is a checkpoint plus fewer than that many events (the way
:class:`consent.tenant.TenantHistory` keeps every tenant state). Bounded by the number
of cached events (least recently used streams go first). One per app or CLI run.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections import OrderedDict
from typing import Final

from consent.subject import SubjectState, apply_subject
from schemas.events import RecordedEvent
from schemas.vocabulary import subject_stream, tenant_stream
from services.audit.errors import AuditError
from services.audit.loading import TenantRecord, check_subject_ids
from services.ledger.store import EventStore

CHECKPOINT: Final = 64


class SubjectHistory:
    """A subject's events (in version order) with fold checkpoints."""

    __slots__ = ("events", "_times", "_checkpoints")

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []
        self._times: list[dt.datetime] = []
        self._checkpoints: list[SubjectState] = []  # state after events[:CHECKPOINT * (i + 1)]

    def extend(self, newer: list[RecordedEvent]) -> None:
        for recorded in newer:
            if recorded.version != len(self.events) + 1:
                continue  # already there (two requests fetched the same versions)
            self.events.append(recorded)
            self._times.append(recorded.recorded_at)
            if len(self.events) % CHECKPOINT == 0:
                self._checkpoints.append(self._fold(len(self.events)))

    def _fold(self, count: int) -> SubjectState:
        """The state after the first ``count`` events, from the nearest checkpoint."""
        done = min(count // CHECKPOINT, len(self._checkpoints))
        state: SubjectState | None = self._checkpoints[done - 1] if done else None
        for recorded in self.events[done * CHECKPOINT:count]:
            state = apply_subject(state, recorded)
        assert state is not None
        return state

    def state_at(self, known_at: dt.datetime) -> SubjectState | None:
        """The state as known at ``known_at`` (events recorded up to it); None if none."""
        count = bisect.bisect_right(self._times, known_at)
        return self._fold(count) if count else None


class StreamCache:
    def __init__(self, store: EventStore, *, max_events: int = 200_000) -> None:
        self.store = store
        self.max_events = max_events
        self._subjects: OrderedDict[str, SubjectHistory] = OrderedDict()
        self._tenants: dict[str, TenantRecord] = {}
        self._size = 0

    async def subject(self, tenant_id: str, source: str, customer_ref: str) -> SubjectHistory:
        """The subject's history, brought up to date; 404 if the ledger holds nothing."""
        check_subject_ids(tenant_id, source, customer_ref)
        stream = subject_stream(tenant_id, source, customer_ref)
        history = self._subjects.pop(stream, None) or SubjectHistory()
        before = len(history.events)
        history.extend(await self.store.read_stream(stream, from_version=before + 1))
        if not history.events:
            raise AuditError(404, "unknown_subject",
                             f"the ledger holds nothing about {tenant_id}/{source}/{customer_ref}", "ref")
        self._subjects[stream] = history
        self._size += len(history.events) - before
        while self._size > self.max_events and len(self._subjects) > 1:
            _, dropped = self._subjects.popitem(last=False)
            self._size -= len(dropped.events)
        return history

    async def tenant(self, tenant_id: str) -> TenantRecord:
        """The tenant's record, brought up to date; 404 for an unknown tenant."""
        record = self._tenants.get(tenant_id)
        newer = await self.store.read_stream(tenant_stream(tenant_id),
                                             from_version=len(record.events) + 1 if record else 1)
        if record is None:
            if not newer:
                raise AuditError(404, "unknown_tenant", f"tenant {tenant_id!r} does not exist", "tenant")
            record = self._tenants[tenant_id] = TenantRecord(newer)
        else:
            record.extend(newer)
        return record

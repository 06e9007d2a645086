"""The event store on PostgreSQL: few verbs, after Message DB (docs/event-store.md).

* :meth:`EventStore.append` writes events to one or more streams of one tenant,
  atomically, with an expected version per stream and an optional idempotency key
  (through the group-commit writer, writer.py); :meth:`EventStore.append_bulk` one big
  request by binary COPY (bulk.py);
* :meth:`EventStore.read_stream` reads one stream in version order;
* :meth:`EventStore.read_all` reads one tenant's events after a position;
  :meth:`EventStore.read_partition` / :meth:`EventStore.read_partitions` /
  :meth:`EventStore.follow_partition` read the log partition by partition, never skipping
  a row that commits later (a follower keeps one checkpoint per partition).

The log is split into log partitions (partitions.py); a tenant's streams are all in its
partition. The SQL is in sql.py; nothing outside services/ledger/ reads ``ledger.events``
but through these verbs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Final

import asyncpg

from schemas.events import RecordedEvent
from services.ledger import sql
from services.ledger.errors import StoreUnavailable
from services.ledger.model import (
    ANY_VERSION,
    CLOSING_EVENTS,
    NO_STREAM,
    AppendObserver,
    AppendRequest,
    AppendResult,
    StreamResult,
    StreamWrite,
    TransactionHook,
    is_id,
    new_event_ids,
    request_fingerprint,
    row_to_recorded,
    translate_errors,
)
from services.ledger.partitions import partition_of, stream_tenant
from services.ledger.writer import GroupCommitWriter

_FAR_FUTURE: Final = dt.datetime(9999, 1, 1, tzinfo=dt.timezone.utc)


async def partition_count(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """How many log partitions this ledger has (fixed at install)."""
    with translate_errors():
        return int(await conn.fetchval(sql.PARTITION_COUNT))


def check_request(request: AppendRequest) -> None:
    """What every append (grouped or bulk) requires of a request, before it is queued."""
    if not request.writes or not any(w.events for w in request.writes):
        raise ValueError("append needs at least one event")
    if not is_id(request.tenant_id) or not all(is_id(w.stream_id) for w in request.writes):
        raise ValueError("tenant and stream ids are non-empty printable text (no newline: see sql.py)")
    for w in request.writes:
        # A stream lives in its tenant's partition, found from the stream id alone when it
        # is read: so the id must name the request's tenant (tenant/{t}, subject/{t}/...).
        if stream_tenant(w.stream_id) != request.tenant_id:
            raise ValueError(f"stream {w.stream_id!r} does not name tenant {request.tenant_id!r} as its second"
                             " segment (streams are kind/{tenant}/...)")


async def tenant_subject_events(conn: asyncpg.Connection, tenant_id: str, known_at: dt.datetime | None = None, *,
                                prefetch: int = 2000) -> AsyncIterator[RecordedEvent]:
    """A tenant's subject events by (stream, version), recorded by ``known_at`` (None:
    all), through a server-side cursor on ``conn``, which must be in a transaction (the
    caller's snapshot): the audit's bounded-memory scans."""
    partition = partition_of(tenant_id, await partition_count(conn))
    cursor = conn.cursor(sql.TENANT_SUBJECT_EVENTS, partition, tenant_id, known_at or _FAR_FUTURE, prefetch=prefetch)
    async for row in cursor:
        yield row_to_recorded(row)


async def tenant_ids(conn: asyncpg.Connection | asyncpg.Pool) -> list[str]:
    """Every tenant that has a stream of its own (reads every partition: not a hot path)."""
    with translate_errors():
        rows = await conn.fetch(sql.TENANT_IDS)
    return [r["tenant_id"] for r in rows]


async def read_partitions(conn: asyncpg.Connection | asyncpg.Pool, after: Mapping[int, int], partitions: int,
                          limit: int = 1000) -> list[RecordedEvent]:
    """For a follower of every partition, in one round trip: up to ``limit`` events of
    each partition after its checkpoint in ``after`` (a partition not named: from the
    start), ordered by partition, then position. Safe to follow per partition."""
    parts = list(range(partitions))
    with translate_errors():
        rows = await conn.fetch(sql.READ_PARTITIONS, parts, [after.get(p, 0) for p in parts], limit)
    return [row_to_recorded(r) for r in rows]


async def partition_heads(conn: asyncpg.Connection | asyncpg.Pool) -> dict[int, int]:
    """The last position of every partition."""
    with translate_errors():
        rows = await conn.fetch(sql.HEADS)
    return {r[0]: r[1] for r in rows}


async def streams_with_event_type(conn: asyncpg.Connection | asyncpg.Pool, event_type: str) -> list[str]:
    """Every stream that holds an event of ``event_type``, in stream id order (reads every
    partition: not a hot path; e.g. the erased subjects after a master key rotation)."""
    with translate_errors():
        rows = await conn.fetch(sql.STREAMS_WITH_EVENT_TYPE, event_type)
    return [r[0] for r in rows]


async def log_origin_position(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """The last position written before the log was partitioned (every partition's chain
    starts there); on ``conn`` so that a caller in a snapshot reads it in that snapshot."""
    with translate_errors():
        row = await conn.fetchrow(sql.ORIGIN)
    assert row is not None  # one row since the first migration
    return int(row["position"])


def scan_log(conn: asyncpg.Connection, stream_pattern: str = "%", *, shares: int = 1, share: int = 0,
             ) -> Any:
    """A server-side cursor (``conn`` in a transaction: the caller's snapshot) over every
    event whose stream id is LIKE ``stream_pattern``, in share ``share`` of ``shares`` of
    the streams (by hash), partition after partition in position order: every stream in
    version order. Rows are in ``sql.EVENT_COLUMNS`` order (the rebuild decodes them by
    index: :data:`SCAN_COLUMNS`)."""
    return conn.cursor(sql.SCAN_LOG, stream_pattern, shares, share)


SCAN_COLUMNS: Final = tuple(c.strip().split(" AS ")[-1] for c in sql.EVENT_COLUMNS.split(","))


class EventStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch_events: int = 5000,
        on_commit: AppendObserver | None = None,
        closing_events: frozenset[str] = CLOSING_EVENTS,
        on_conflict: Callable[[int], None] | None = None,
    ) -> None:
        """``on_commit(events, seconds)`` after each committed batch; ``on_conflict(n)`` when
        n partitions of a batch are planned again (another writer appended to them)."""
        self._pool = pool
        self._on_commit = on_commit
        self._closing_events = closing_events
        self._partitions: int | None = None
        self._writer = GroupCommitWriter(pool, max_batch_events=max_batch_events, on_commit=on_commit,
                                         closing_events=closing_events, on_conflict=on_conflict)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        await self.partitions()
        self._writer.start()

    async def stop(self) -> None:
        await self._writer.stop()

    # -- partitions ----------------------------------------------------------------

    async def partitions(self) -> int:
        """The number of log partitions (read once: it never changes after install)."""
        if self._partitions is None:
            self._partitions = await partition_count(self._pool)
        return self._partitions

    async def partition_of(self, tenant_id: str) -> int:
        """The log partition of ``tenant_id`` (all its streams are there)."""
        return partition_of(tenant_id, await self.partitions())

    async def _stream_partition(self, stream_id: str) -> int:
        return partition_of(stream_tenant(stream_id) or "", await self.partitions())

    # -- writing -------------------------------------------------------------------

    async def append(self, request: AppendRequest) -> AppendResult:
        """Append atomically; returns after commit. Raises WrongExpectedVersion,
        StreamClosed, IdempotencyKeyReused, StoreUnavailable."""
        check_request(request)
        if not self._writer.running:
            raise StoreUnavailable("event store writer is not running")
        return await self._writer.submit(request, await self.partition_of(request.tenant_id))

    async def append_bulk(self, request: AppendRequest) -> AppendResult:
        """One big request (the DMS import) in a transaction of its own, the events written
        with binary COPY; same guarantees as :meth:`append`, no idempotency key
        (services/ledger/bulk.py). Bypasses the group-commit writer."""
        from services.ledger.bulk import bulk_append  # bulk.py imports store's neighbours

        return await bulk_append(self._pool, request, await self.partition_of(request.tenant_id),
                                 closing_events=self._closing_events, on_commit=self._on_commit)

    # -- reading -------------------------------------------------------------------

    async def read_stream(self, stream_id: str, from_version: int = 1, limit: int | None = None) -> list[RecordedEvent]:
        partition = await self._stream_partition(stream_id)
        with translate_errors():
            rows = await self._pool.fetch(sql.READ_STREAM, partition, stream_id, from_version, limit)
        return [row_to_recorded(r) for r in rows]

    async def read_streams(self, stream_ids: Sequence[str], event_types: Sequence[str]) -> list[RecordedEvent]:
        """The events of the given types of many streams, in one query (by stream, then
        version): e.g. the contact details of every subject of a mailing."""
        if not stream_ids:
            return []
        partitions = sorted({await self._stream_partition(s) for s in stream_ids})
        with translate_errors():
            rows = await self._pool.fetch(sql.READ_STREAMS, partitions, "\n".join(stream_ids), list(event_types))
        return [row_to_recorded(r) for r in rows]

    async def read_event_data(self, stream_ids: Sequence[str], event_type: str) -> list[tuple[str, str]]:
        """(stream id, the event's JSON) of every event of ``event_type`` of many streams,
        by stream, then version, in one query, for a caller that decodes that one type
        itself and needs nothing else of the event (the import's preference planner)."""
        if not stream_ids:
            return []
        count = await self.partitions()  # by tenant, not by stream: a batch's streams share one
        partitions = sorted({partition_of(t or "", count) for t in {stream_tenant(s) for s in stream_ids}})
        with translate_errors():
            rows = await self._pool.fetch(sql.READ_EVENT_DATA, partitions, "\n".join(stream_ids), event_type)
        return [(r[0], r[1]) for r in rows]

    async def stream_version(self, stream_id: str) -> int:
        partition = await self._stream_partition(stream_id)
        with translate_errors():
            v = await self._pool.fetchval(sql.STREAM_VERSION, partition, stream_id)
        return v or 0

    async def stream_heads(self, stream_ids: Sequence[str]) -> dict[str, tuple[int, str | None]]:
        """(last version, last event type) of each stream (0, None for a new one), one
        index probe each, in one round trip."""
        count = await self.partitions()
        parts = [partition_of(stream_tenant(s) or "", count) for s in stream_ids]
        with translate_errors():
            row = await self._pool.fetchrow(sql.STREAM_HEADS, "\n".join(stream_ids), "\n".join(map(str, parts)))
        assert row is not None
        return {s: (v, t) for s, v, t in zip(stream_ids, row["versions"] or (), row["last_types"] or ())}

    async def stream_versions_at(self, tenant_id: str, stream_ids: Sequence[str], position: int) -> dict[str, int]:
        """Each stream's version as of ``position`` of the tenant's log partition (its events
        at or below it); streams without such events are left out. Read your own writes: a
        read model reflects ``position`` for these streams once it holds these versions."""
        if not stream_ids:
            return {}
        partition = await self.partition_of(tenant_id)
        with translate_errors():
            rows = await self._pool.fetch(sql.STREAM_VERSIONS_AT, partition, "\n".join(stream_ids), position)
        return {r[0]: r[1] for r in rows}

    async def tenant_head(self, tenant_id: str) -> int:
        """The last position of the tenant's log partition (0: nothing written there yet)."""
        partition = await self.partition_of(tenant_id)
        with translate_errors():
            return int(await self._pool.fetchval(sql.PARTITION_HEAD, partition) or 0)

    async def read_all(
        self, after: int = 0, limit: int = 1000, *, tenant_id: str | None = None
    ) -> list[RecordedEvent]:
        """One tenant's events with position > ``after``, in ledger order (a tenant is in
        one partition, so its positions order its events). Without a tenant: every
        partition's events with position > ``after``, partition after partition (for
        tools and tests; a follower uses :meth:`read_partitions`)."""
        if tenant_id is not None:
            partition = await self.partition_of(tenant_id)
            with translate_errors():
                rows = await self._pool.fetch(sql.READ_TENANT, partition, tenant_id, after, limit)
            return [row_to_recorded(r) for r in rows]
        out: list[RecordedEvent] = []
        for partition in range(await self.partitions()):
            if len(out) >= limit:
                break
            out += await self.read_partition(partition, after, limit - len(out))
        return out

    async def read_partition(self, partition: int, after: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        """Events of one partition with position > ``after`` in position order. Safe to
        follow: a row that is not visible yet can only get a position above every visible
        one of its partition (the partition's head lock, docs/event-store.md)."""
        with translate_errors():
            rows = await self._pool.fetch(sql.READ_PARTITION, partition, after, limit)
        return [row_to_recorded(r) for r in rows]

    async def read_partitions(self, after: Mapping[int, int] | None = None, limit: int = 1000) -> list[RecordedEvent]:
        """Every partition at once, each after its own checkpoint (:func:`read_partitions`)."""
        return await read_partitions(self._pool, after or {}, await self.partitions(), limit)

    async def follow_partition(
        self, partition: int, after: int = 0, *, batch: int = 1000, idle_sleep: float = 0.05,
        stop: Callable[[], bool] | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Follow one partition forever (or until ``stop()``), polling when idle."""
        position = after
        while stop is None or not stop():
            events = await self.read_partition(partition, position, batch)
            for e in events:
                yield e
                position = e.position
            if len(events) < batch:
                await asyncio.sleep(idle_sleep)

    async def heads(self) -> dict[int, int]:
        """The last position of every partition."""
        return await partition_heads(self._pool)

    async def tenant_ids(self) -> list[str]:
        """Every tenant that has a stream of its own."""
        return await tenant_ids(self._pool)

    @staticmethod
    def stream_subquery(tenant_expr: str, stream_expr: str, partitions_param: str, condition: str = "true") -> str:
        """SQL of one stream's events (version order, only if ``condition``) for a caller
        that joins them laterally to its own rows in one round trip; pass
        :meth:`partitions` as ``partitions_param``. Rows decode with :func:`row_to_recorded`."""
        return sql.stream_subquery(partitions_param, tenant_expr, stream_expr, condition)


__all__ = [
    "ANY_VERSION", "CLOSING_EVENTS", "NO_STREAM", "AppendObserver", "AppendRequest", "AppendResult", "EventStore",
    "StreamResult", "StreamWrite", "TransactionHook", "check_request", "new_event_ids", "partition_count",
    "SCAN_COLUMNS", "partition_heads", "read_partitions", "scan_log", "request_fingerprint", "row_to_recorded", "tenant_ids", "tenant_subject_events", "translate_errors",
]

"""Every preference change, objection and erasure of a tenant since a cursor: what the
dealer's DMS must take back in the nightly exchange (write-back).

The cursor is a position in the tenant's log partition (services/ledger/partitions.py:
every stream of a tenant is in one partition, whose positions order the tenant's events).
The answer holds the tenant's subject events of those kinds with a position above it, in
ledger order, at most ``limit`` events, and the cursor to ask with next. Within a partition
positions are given in commit order (a row not yet visible can only get a position above
every visible one, :meth:`EventStore.read_partition`), so following the cursor misses
nothing and asking again with the same cursor gives the same answer (idempotent,
resumable). A cursor given before the log was partitioned is still good: the events
written before then keep their positions, below every later position of every partition.
"""

from __future__ import annotations

import datetime as dt
from typing import Final, Literal

import asyncpg
import msgspec

from schemas.vocabulary import parse_subject_stream
from schemas.events import ObjectionRecorded, ObjectionWithdrawn, PreferencesChanged, SubjectErased
from services.errors import LedgerError
from services.ledger import sql
from services.ledger.partitions import partition_of
from services.ledger.store import partition_count, row_to_recorded, translate_errors

CHANGE_EVENTS: Final = ["PreferencesChanged", "ObjectionRecorded", "ObjectionWithdrawn", "SubjectErased"]
MAX_LIMIT: Final = 10_000
ChangeKind = Literal["preference", "objection", "objection_withdrawn", "erasure"]


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the write-back: a preference cell (``category``, ``channel``, ``value``),
    or a subject-wide objection, its withdrawal, or an erasure (no cell)."""

    position: int
    event_id: str
    recorded_at: dt.datetime
    source: str
    customer_ref: str
    change: ChangeKind
    category: str | None = None
    channel: str | None = None
    value: str | None = None
    given_on: dt.date | None = None  # the day the customer gave it, if recorded as earlier (issue 16)
    method: str
    actor_kind: str


class ChangesPage(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    after: int
    next_cursor: int
    has_more: bool
    changes: list[Change]


class UnknownCursor(LedgerError, ValueError):
    """The cursor is above the head of the tenant's log partition: it was not given by this
    ledger for this tenant."""

    status = 422
    error = "unknown_cursor"
    field = "after"

    def __init__(self, cursor: str) -> None:
        super().__init__(cursor)
        self.message = "this cursor was not given by this ledger (it is past its end)"


# The tenant's events of the kinds $4 in subject streams starting with $5, after position $3
# of its partition $1: the (log_partition, tenant_id, position) index, one partition.
_READ_CHANGES: Final = (
    f"SELECT {sql.EVENT_COLUMNS} FROM ledger.events WHERE log_partition = $1 AND tenant_id = $2 AND position > $3"
    " AND event_type = ANY($4::text[]) AND starts_with(stream_id, $5) ORDER BY position LIMIT $6"
)


async def tenant_partition(pool: asyncpg.Pool, tenant_id: str) -> tuple[int, int]:
    """(the tenant's log partition, that partition's head position)."""
    partition = partition_of(tenant_id, await partition_count(pool))
    with translate_errors():
        head = await pool.fetchval(sql.PARTITION_HEAD, partition)
    return partition, int(head or 0)


async def changes_since(pool: asyncpg.Pool, tenant_id: str, after: int, limit: int = 1000, *,
                        source: str | None = None) -> ChangesPage:
    """``source``: only subjects of that data source (an import file is per source)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_LIMIT}")
    partition, head = await tenant_partition(pool, tenant_id)
    if after < 0 or after > head:
        raise UnknownCursor(str(after))

    with translate_errors():
        rows = await pool.fetch(_READ_CHANGES, partition, tenant_id, after, CHANGE_EVENTS,
                                f"subject/{tenant_id}/" + (f"{source}/" if source is not None else ""), limit + 1)
    has_more = len(rows) > limit
    out: list[Change] = []
    last = after
    for r in rows[:limit]:
        recorded = row_to_recorded(r)
        last = recorded.position
        parsed = parse_subject_stream(recorded.stream_id)
        if parsed is None:
            continue
        base = {"position": recorded.position, "event_id": recorded.event_id, "recorded_at": recorded.recorded_at,
                "source": parsed[1], "customer_ref": parsed[2], "method": recorded.metadata.method,
                "actor_kind": recorded.metadata.actor.kind,
                "given_on": getattr(recorded.event, "given_on", None)}
        event = recorded.event
        if isinstance(event, PreferencesChanged):
            out.extend(Change(change="preference", category=c.category, channel=c.channel, value=c.value, **base)
                       for c in event.changes)
        elif isinstance(event, ObjectionRecorded):
            out.append(Change(change="objection", **base))
        elif isinstance(event, ObjectionWithdrawn):
            out.append(Change(change="objection_withdrawn", **base))
        elif isinstance(event, SubjectErased):
            out.append(Change(change="erasure", **base))
    return ChangesPage(tenant_id=tenant_id, after=after, next_cursor=last, has_more=has_more, changes=out)

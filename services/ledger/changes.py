"""Every preference change, objection and erasure of a tenant since a cursor: what the
dealer's DMS must take back in the nightly exchange (write-back).

The cursor is a ledger position: the answer holds the tenant's subject events of those
kinds with a position above it, in ledger order, at most ``limit`` events, and the cursor
to ask with next. Positions are given in commit order (a row not yet visible can only get
a position above every visible one, :meth:`EventStore.read_all`), so following the cursor
misses nothing and asking again with the same cursor gives the same answer (idempotent,
resumable).
"""

from __future__ import annotations

import datetime as dt
from typing import Final, Literal

import asyncpg
import msgspec

from consent.vocabulary import parse_subject_stream
from schemas.events import ObjectionRecorded, ObjectionWithdrawn, PreferencesChanged, SubjectErased
from services.ledger.store import _COLUMNS, row_to_recorded, translate_errors

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
    method: str
    actor_kind: str


class ChangesPage(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    after: int
    next_cursor: int
    has_more: bool
    changes: list[Change]


class UnknownCursor(ValueError):
    """The cursor is above the ledger's head: it was not given by this ledger."""


async def head_position(pool: asyncpg.Pool) -> int:
    with translate_errors():
        return int(await pool.fetchval("SELECT position FROM ledger.head") or 0)


async def changes_since(pool: asyncpg.Pool, tenant_id: str, after: int, limit: int = 1000, *,
                        source: str | None = None) -> ChangesPage:
    """``source``: only subjects of that data source (an import file is per source)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_LIMIT}")
    if after < 0 or after > await head_position(pool):
        raise UnknownCursor(str(after))

    with translate_errors():
        rows = await pool.fetch(
            f"SELECT {_COLUMNS} FROM ledger.events WHERE tenant_id = $1 AND position > $2"
            " AND event_type = ANY($3::text[]) AND starts_with(stream_id, $5) ORDER BY position LIMIT $4",
            tenant_id, after, CHANGE_EVENTS, limit + 1,
            f"subject/{tenant_id}/" + (f"{source}/" if source is not None else ""))
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
                "actor_kind": recorded.metadata.actor.kind}
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

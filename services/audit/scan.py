"""Every subject of a tenant, folded one stream at a time, with bounded memory.

One server-side cursor over the tenant's subject events ordered by (stream, version), in
a read-only REPEATABLE READ snapshot: rows arrive stream after stream, so only the subject
being folded is in memory (plus the cursor's prefetch). Used by the tenant snapshot and
the retention job.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Final

import asyncpg

from consent.subject import SubjectState, apply_subject
from services.ledger.store import _COLUMNS as EVENT_COLUMNS  # the columns row_to_recorded reads
from services.ledger.store import row_to_recorded, translate_errors

_SUBJECT_EVENTS: Final = (
    f"SELECT {EVENT_COLUMNS} FROM ledger.events"
    " WHERE tenant_id = $1 AND stream_id LIKE 'subject/%' AND recorded_at <= $2"
    " ORDER BY stream_id, version"
)
_FAR_FUTURE: Final = dt.datetime(9999, 1, 1, tzinfo=dt.timezone.utc)


async def scan_subjects(conn: asyncpg.Connection, tenant_id: str, known_at: dt.datetime | None = None,
                        *, prefetch: int = 2000) -> AsyncIterator[SubjectState]:
    """Yield each subject of ``tenant_id`` as known at ``known_at`` (None: everything),
    in stream id order. ``conn`` is held for the whole scan."""
    with translate_errors():
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            state: SubjectState | None = None
            cursor = conn.cursor(_SUBJECT_EVENTS, tenant_id, known_at or _FAR_FUTURE, prefetch=prefetch)
            async for row in cursor:
                recorded = row_to_recorded(row)
                if state is not None and recorded.version == 1:
                    yield state
                    state = None
                state = apply_subject(state, recorded)
            if state is not None:
                yield state


async def tenant_ids(conn: asyncpg.Connection | asyncpg.Pool) -> list[str]:
    """Every tenant that has a stream of its own."""
    with translate_errors():
        rows = await conn.fetch(
            "SELECT substr(stream_id, 8) AS tenant_id FROM ledger.events"
            " WHERE stream_id LIKE 'tenant/%' AND version = 1 ORDER BY 1"
        )
    return [r["tenant_id"] for r in rows]

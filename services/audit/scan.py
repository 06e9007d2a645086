"""Every subject of a tenant, folded one stream at a time, with bounded memory.

One server-side cursor over the tenant's subject events ordered by (stream, version), in
a read-only REPEATABLE READ snapshot: rows arrive stream after stream, so only the subject
being folded is in memory (plus the cursor's prefetch). Used by the tenant snapshot and
the retention job.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import asyncpg

from consent.subject import SubjectState, apply_subject
from services.ledger import store
from services.ledger.store import translate_errors


async def scan_subjects(conn: asyncpg.Connection, tenant_id: str, known_at: dt.datetime | None = None,
                        *, prefetch: int = 2000) -> AsyncIterator[SubjectState]:
    """Yield each subject of ``tenant_id`` as known at ``known_at`` (None: everything),
    in stream id order. ``conn`` is held for the whole scan."""
    with translate_errors():
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            state: SubjectState | None = None
            # The store reads the tenant's partition only (a cursor on this snapshot).
            async for recorded in store.tenant_subject_events(conn, tenant_id, known_at, prefetch=prefetch):
                if state is not None and recorded.version == 1:
                    yield state
                    state = None
                state = apply_subject(state, recorded)
            if state is not None:
                yield state


async def tenant_ids(conn: asyncpg.Connection | asyncpg.Pool) -> list[str]:
    """Every tenant that has a stream of its own."""
    return await store.tenant_ids(conn)

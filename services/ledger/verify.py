"""`consent-ledger verify`: walk the whole log and check the hash chain."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import asyncpg

from services.ledger.hashchain import Anchor, ChainBroken, verify_rows


async def verify_ledger(
    conn: asyncpg.Connection, batch: int = 5000, anchors: Iterable[Anchor] = ()
) -> tuple[int, ChainBroken | None]:
    """(events checked, first break or None). Reads with a server-side cursor in one
    REPEATABLE READ snapshot, so a concurrent append cannot look like a break.
    ``anchors`` are hashes kept outside the database (see docs/event-store.md)."""

    async def rows() -> AsyncIterator[dict]:
        async for r in conn.cursor(
            "SELECT position, event_id::text AS event_id, stream_id, version, tenant_id, event_type, schema_version,"
            " recorded_at, occurred_on, data, metadata, prev_hash, hash FROM ledger.events ORDER BY position",
            prefetch=batch,
        ):
            yield r  # type: ignore[misc]

    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head = await conn.fetchrow("SELECT position, hash FROM ledger.head")
        return await verify_rows(rows(), dict(head) if head else None, anchors)

"""`consent-ledger verify`: walk the whole log and check every hash chain.

The log has one chain per log partition, each starting where the log before partitioning
ended (``ledger.log_origin``), plus that older log itself: one chain over the events
written before partitioning, whatever partition the migration put them in
(docs/event-store.md, "Partitions"). Everything is read in ONE REPEATABLE READ snapshot,
exported to the other connections when partitions are verified in parallel, so a
concurrent append cannot look like a break and every chain is checked at the same instant.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import asyncpg

from services.ledger import sql
from services.ledger.hashchain import GENESIS, Anchor, ChainBroken, verify_rows
from services.ledger.partitions import partition_of

Connect = Callable[[], Awaitable[asyncpg.Connection]]


class _Misplaced(Exception):
    """Internal signalling inside the chain walk (a row out of its place), turned into the
    report's broken link; not in the error family (services/errors.py)."""

    def __init__(self, row: asyncpg.Record) -> None:
        self.row = row


async def _chain(conn: asyncpg.Connection, query: str, args: tuple[object, ...], batch: int, head: dict,
                 anchors: list[Anchor], *, start_position: int, start_hash: bytes, partition: int | None,
                 partitions: int) -> tuple[int, ChainBroken | None]:
    tenants: dict[str, int] = {}

    async def rows() -> AsyncIterator[dict]:
        async for r in conn.cursor(query, *args, prefetch=batch):
            tenant = r["tenant_id"]
            home = tenants.get(tenant)
            if home is None:
                home = tenants[tenant] = partition_of(tenant, partitions)
            if r["log_partition"] != home:
                raise _Misplaced(r)
            yield r  # type: ignore[misc]

    try:
        return await verify_rows(rows(), head, anchors, start_position=start_position, start_hash=start_hash,
                                 partition=partition)
    except _Misplaced as exc:
        return 0, ChainBroken(
            position=exc.row["position"], partition=exc.row["log_partition"],
            problem=f"event of tenant {exc.row['tenant_id']!r} in partition {exc.row['log_partition']}, but the"
            f" tenant's partition is {partition_of(exc.row['tenant_id'], partitions)} (moved or written behind"
            " the store's back)")


async def verify_ledger(
    conn: asyncpg.Connection, batch: int = 5000, anchors: Iterable[Anchor] = (), *,
    connect: Connect | None = None, parallel: int = 4,
) -> tuple[int, ChainBroken | None]:
    """(events checked, first break or None): the break before partitioning first, then
    the one of the lowest partition. ``anchors`` are hashes kept outside the database (see
    docs/event-store.md). With ``connect``, up to ``parallel`` more connections verify
    partitions at the same time in the same snapshot."""
    anchors = list(anchors)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
        origin = await conn.fetchrow(sql.ORIGIN)
        assert origin is not None
        origin_position, origin_hash = origin["position"], bytes(origin["hash"])
        heads = {r["log_partition"]: dict(r) for r in await conn.fetch(sql.PARTITION_HEADS)}
        count = len(heads)
        unknown = [a for a in anchors if a.partition is not None and a.partition not in heads]
        if unknown:
            raise ValueError(f"anchor names partition {unknown[0].partition}, the ledger has {count} (0..{count - 1})")
        total, broken = await _chain(conn, sql.VERIFY_BEFORE_ORIGIN, (origin_position,), batch, dict(origin),
                                     [a for a in anchors if a.partition is None],
                                     start_position=1, start_hash=GENESIS, partition=None, partitions=count)
        if broken is not None:
            return total, broken

        results: dict[int, tuple[int, ChainBroken | None]] = {}

        async def check(c: asyncpg.Connection, p: int) -> None:
            results[p] = await _chain(
                c, sql.VERIFY_PARTITION, (p, origin_position), batch, heads[p],
                [a for a in anchors if a.partition == p],
                start_position=origin_position + 1, start_hash=origin_hash, partition=p, partitions=count)

        queue = list(sorted(heads))
        if connect is None or parallel <= 1:
            for p in queue:
                await check(conn, p)
        else:
            async def worker() -> None:
                c = await connect()
                try:
                    async with c.transaction(isolation="repeatable_read", readonly=True):
                        await c.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                        while queue:
                            await check(c, queue.pop(0))
                finally:
                    await c.close()

            await asyncio.gather(*(worker() for _ in range(min(parallel, len(queue)))))
    for p in sorted(results):
        n, part_broken = results[p]
        total += n
        if part_broken is not None and broken is None:
            broken = part_broken
    return total, broken


__all__ = ["verify_ledger"]

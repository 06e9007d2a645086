"""The event store's in-transaction hook, which the DMS import relies on to write its
invoice index in the same transaction as the events (docs/import.md)."""

from __future__ import annotations

import asyncio

import asyncpg

from schemas.events import Actor, MarketingActivityRecorded, Metadata
from services.ledger.errors import LedgerError
from services.ledger.store import AppendRequest, AppendResult, EventStore, StreamWrite

META = Metadata(actor=Actor(kind="importer", id="test"), method="import")


def _event(day: int) -> MarketingActivityRecorded:
    import datetime as dt

    return MarketingActivityRecorded(activity_on=dt.date(2025, 1, day), category="newsletter", channel="email")


class HookFailed(LedgerError):
    pass


async def test_a_hook_writes_in_the_same_transaction_as_the_events(store: EventStore, pool: asyncpg.Pool) -> None:
    await pool.execute("CREATE TABLE public.side (position bigint)")
    seen: list[AppendResult] = []

    async def hook(conn: asyncpg.Connection, result: AppendResult) -> None:
        seen.append(result)
        await conn.execute("INSERT INTO public.side VALUES ($1)", result.last_position)

    result = await store.append(AppendRequest(tenant_id="t", writes=[StreamWrite("subject/t/dealer/1", [_event(1)])],
                                              metadata=META, in_transaction=hook))
    assert seen == [result]
    assert await pool.fetchval("SELECT position FROM public.side") == result.last_position


async def test_a_failing_hook_rolls_back_its_events_and_fails_only_its_own_request(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    async def failing(conn: asyncpg.Connection, result: AppendResult) -> None:
        await conn.execute("SELECT 1")
        raise HookFailed("index conflict")

    # Queued together: the writer would group them into one transaction without the hook.
    ok1 = store.append(AppendRequest(tenant_id="t", writes=[StreamWrite("subject/t/dealer/a", [_event(1)])],
                                     metadata=META))
    bad = store.append(AppendRequest(tenant_id="t", writes=[StreamWrite("subject/t/dealer/b", [_event(2)])],
                                     metadata=META, in_transaction=failing))
    ok2 = store.append(AppendRequest(tenant_id="t", writes=[StreamWrite("subject/t/dealer/c", [_event(3)])],
                                     metadata=META))
    r1, r_bad, r2 = await asyncio.gather(ok1, bad, ok2, return_exceptions=True)
    assert isinstance(r_bad, HookFailed)
    assert isinstance(r1, AppendResult) and isinstance(r2, AppendResult)
    streams = [r["stream_id"] for r in await pool.fetch("SELECT stream_id FROM ledger.events ORDER BY position")]
    assert streams == ["subject/t/dealer/a", "subject/t/dealer/c"]
    # The chain continues without a gap after the rolled-back request.
    assert [r1.last_position, r2.last_position] == [1, 2]

"""Reading without skipping: many writers, each with its own pool (as separate processes
would be), that dawdle INSIDE their transactions, and followers that poll the global order.

The dawdling is done by the test database itself (triggers that ``pg_sleep``), so the
production code has no test hooks: a writer holds its transaction open for a random time
after it has taken positions and before it commits. If positions could be handed out
before the previous writer committed (a sequence, say), a follower reading
``position > p`` would sometimes move past a row that becomes visible only later and
never see it. These tests prove the follower sees every committed event exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import random
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from schemas.events import Actor, InvoiceRecorded, Metadata, RecordedEvent
from services.ledger.errors import WrongExpectedVersion
from services.ledger.store import AppendRequest, AppendResult, EventStore, StreamWrite

META = Metadata(actor=Actor(kind="api", id="concurrency-test"), method="api")
WRITERS = 8
ROUNDS = 12
TENANTS = ("garage-a", "garage-b")


def invoice(n: int) -> InvoiceRecorded:
    return InvoiceRecorded(invoice_id=f"F{n}", invoice_date=dt.date(2024, 1, 1) + dt.timedelta(days=n % 300))


async def slow_down_the_writers(db_url: str, max_seconds: float) -> None:
    """Test-database-only triggers: sleep after positions are taken (insert into events)
    and again after the head moved, both inside the writer's transaction."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "CREATE FUNCTION public.dawdle() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN PERFORM pg_sleep(random() * {max_seconds}); RETURN NULL; END $$"
        )
        await conn.execute(
            "CREATE TRIGGER dawdle_on_insert BEFORE INSERT ON ledger.events"
            " FOR EACH STATEMENT EXECUTE FUNCTION public.dawdle()"
        )
        await conn.execute(
            "CREATE TRIGGER dawdle_after_head AFTER UPDATE ON ledger.head"
            " FOR EACH STATEMENT EXECUTE FUNCTION public.dawdle()"
        )
    finally:
        await conn.close()


@pytest.fixture
async def stores(db_url: str) -> AsyncIterator[list[EventStore]]:
    """WRITERS independent stores, each with its own pool and its own group-commit writer."""
    await slow_down_the_writers(db_url, 0.02)
    pools = [await asyncpg.create_pool(db_url, min_size=1, max_size=2) for _ in range(WRITERS)]
    out = [EventStore(p) for p in pools]
    for s in out:
        await s.start()
    yield out
    for s in out:
        await s.stop()
    for p in pools:
        await p.close()


@pytest.fixture
async def reader_pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    yield p
    await p.close()


async def write_a_lot(store: EventStore, writer: int, committed: list[AppendResult]) -> int:
    """Appends of several shapes: own streams, shared streams (any version), multi-stream
    appends, and racing expected versions of which most lose. Returns the refused count."""
    rng = random.Random(writer)
    refused = 0

    async def one(n: int) -> None:
        nonlocal refused
        tenant = TENANTS[writer % 2]
        kind = rng.random()
        if kind < 0.4:
            writes = [StreamWrite(f"subject/{tenant}/dealer/w{writer}-{n % 3}", [invoice(n)])]
        elif kind < 0.7:
            writes = [StreamWrite(f"subject/{tenant}/dealer/shared-{n % 4}", [invoice(n), invoice(n + 1)])]
        elif kind < 0.85:
            writes = [
                StreamWrite(f"subject/{tenant}/dealer/w{writer}-multi", [invoice(n)]),
                StreamWrite(f"subject/{tenant}/dealer/shared-{n % 4}", [invoice(n)]),
            ]
        else:
            # Everybody races for the next version of one stream: at most one wins per version.
            current = await store.stream_version(f"subject/{tenant}/dealer/race")
            writes = [StreamWrite(f"subject/{tenant}/dealer/race", [invoice(n)], expected_version=current)]
        try:
            committed.append(await store.append(AppendRequest(tenant_id=tenant, writes=writes, metadata=META)))
        except WrongExpectedVersion:
            refused += 1

    for round_ in range(ROUNDS):
        # Several appends at once from one store: they share a group-commit batch.
        await asyncio.gather(*(one(round_ * 10 + k) for k in range(rng.randint(1, 4))))
        await asyncio.sleep(rng.random() * 0.01)
    return refused


async def test_a_follower_sees_every_committed_event_once_in_position_order(
    stores: list[EventStore], reader_pool: asyncpg.Pool
) -> None:
    follower_store = EventStore(reader_pool)  # reads only: its writer is never started
    committed: list[AppendResult] = []
    writers_done = asyncio.Event()
    final_head: list[int] = []
    seen: list[RecordedEvent] = []
    seen_per_tenant: dict[str, list[RecordedEvent]] = {t: [] for t in TENANTS}

    def caught_up(last: int) -> bool:
        return writers_done.is_set() and bool(final_head) and last >= final_head[0]

    async def follow_all() -> None:
        # A small batch makes the follower page through the log while it is being written.
        async for event in follower_store.follow(
            0, batch=7, idle_sleep=0.002, stop=lambda: caught_up(seen[-1].position if seen else 0)
        ):
            seen.append(event)

    async def follow_tenant(tenant: str) -> None:
        after = 0
        while True:
            events = await follower_store.read_all(after, 5, tenant_id=tenant)
            seen_per_tenant[tenant] += events
            if events:
                after = events[-1].position
            elif writers_done.is_set() and final_head:
                # Nothing more for this tenant: confirm once more past the final head.
                if not await follower_store.read_all(after, 5, tenant_id=tenant):
                    return
            else:
                await asyncio.sleep(0.002)

    followers = [asyncio.create_task(follow_all())] + [asyncio.create_task(follow_tenant(t)) for t in TENANTS]
    started = time.perf_counter()
    refused = await asyncio.gather(*(write_a_lot(s, i, committed) for i, s in enumerate(stores)))
    write_seconds = time.perf_counter() - started
    final_head.append(await follower_store.head_position())
    writers_done.set()
    await asyncio.wait_for(asyncio.gather(*followers), timeout=60)

    committed_ids = [eid for r in committed for eid in r.event_ids]
    assert len(committed_ids) == final_head[0] > 100, "the writers should have appended a fair amount"
    assert sum(refused) > 0, "some racing expected versions should have lost (the race was real)"

    # Every committed event exactly once, in strictly increasing positions without gaps.
    assert [e.position for e in seen] == list(range(1, final_head[0] + 1))
    assert sorted(e.event_id for e in seen) == sorted(committed_ids)
    assert len({e.event_id for e in seen}) == len(seen)

    # What each writer was told matches what the follower saw at those positions.
    by_position = {e.position: e for e in seen}
    for result in committed:
        got = [by_position[p].event_id for p in range(result.first_position, result.last_position + 1)]
        assert got == result.event_ids
        assert all(by_position[p].recorded_at == result.recorded_at
                   for p in range(result.first_position, result.last_position + 1))

    # Per stream: versions 1, 2, 3, ... in position order.
    versions: dict[str, list[int]] = collections.defaultdict(list)
    for e in seen:
        versions[e.stream_id].append(e.version)
    for stream, vs in versions.items():
        assert vs == list(range(1, len(vs) + 1)), stream

    # recorded_at never goes backwards along the log.
    assert all(a.recorded_at <= b.recorded_at for a, b in zip(seen, seen[1:]))

    # Tenant followers: exactly that tenant's events, once each, in position order.
    for tenant in TENANTS:
        expected = [e.event_id for e in seen if e.tenant_id == tenant]
        assert [e.event_id for e in seen_per_tenant[tenant]] == expected
        assert expected, tenant
    print(f"{len(committed_ids)} events in {len(committed)} appends by {WRITERS} writers in {write_seconds:.2f}s")


async def test_a_writer_that_commits_later_gets_the_later_position(db_url: str, reader_pool: asyncpg.Pool) -> None:
    """The mechanism itself: a slow transaction holds the head; a writer that starts
    after it waits, and nothing of either is visible until the first one commits."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "CREATE FUNCTION public.slow_stream() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN PERFORM pg_sleep(0.6); RETURN NEW; END $$"
        )
        await conn.execute(
            "CREATE TRIGGER slow_stream BEFORE INSERT ON ledger.events FOR EACH ROW"
            " WHEN (NEW.stream_id = 'subject/garage-a/dealer/slow') EXECUTE FUNCTION public.slow_stream()"
        )
    finally:
        await conn.close()
    pools = [await asyncpg.create_pool(db_url, min_size=1, max_size=2) for _ in range(2)]
    slow, fast = EventStore(pools[0]), EventStore(pools[1])
    reader = EventStore(reader_pool)
    try:
        await slow.start()
        await fast.start()

        def request(stream: str) -> AppendRequest:
            return AppendRequest(tenant_id="garage-a", writes=[StreamWrite(stream, [invoice(1)])], metadata=META)

        slow_task = asyncio.create_task(slow.append(request("subject/garage-a/dealer/slow")))
        await asyncio.sleep(0.15)  # the slow writer now holds the head and sleeps in its insert
        fast_task = asyncio.create_task(fast.append(request("subject/garage-a/dealer/fast")))
        await asyncio.sleep(0.15)
        assert not fast_task.done(), "the second writer must wait for the head"
        assert await reader.read_all(0) == [], "nothing is visible before the first writer commits"
        slow_result, fast_result = await asyncio.gather(slow_task, fast_task)
        assert slow_result.last_position == 1 and fast_result.first_position == 2
        assert slow_result.recorded_at <= fast_result.recorded_at
        assert [e.stream_id for e in await reader.read_all(0)] == [
            "subject/garage-a/dealer/slow", "subject/garage-a/dealer/fast",
        ]
    finally:
        await slow.stop()
        await fast.stop()
        for p in pools:
            await p.close()

"""Reading without skipping: many writers, each with its own pool (as separate processes
would be), that dawdle INSIDE their transactions, on tenants in several log partitions,
and one follower per partition that polls that partition's order.

The dawdling is done by the test database itself (triggers that ``pg_sleep``), so the
production code has no test hooks: a writer holds its transaction open for a random time
after it has taken positions and before it commits. If positions could be handed out
before the previous writer of the same partition committed (a sequence, say), a follower
reading ``position > p`` of that partition would sometimes move past a row that becomes visible only later and
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
# Five log partitions of 32 (3, 31, 13, 7, 2), one of them (13) shared by two tenants.
TENANTS = ("garage-a", "garage-b", "acme", "beta", "x", "t")


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
            "CREATE TRIGGER dawdle_after_head AFTER UPDATE ON ledger.partitions"
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
        tenant = TENANTS[(writer + n) % len(TENANTS)]
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


async def test_a_follower_per_partition_sees_every_committed_event_once_in_position_order(
    stores: list[EventStore], reader_pool: asyncpg.Pool
) -> None:
    follower_store = EventStore(reader_pool)  # reads only: its writer is never started
    partitions = {await follower_store.partition_of(t) for t in TENANTS}
    assert len(partitions) == 5
    committed: list[AppendResult] = []
    writers_done = asyncio.Event()
    final_heads: dict[int, int] = {}
    seen: dict[int, list[RecordedEvent]] = {p: [] for p in partitions}
    seen_per_tenant: dict[str, list[RecordedEvent]] = {t: [] for t in TENANTS}

    def caught_up(partition: int) -> bool:
        last = seen[partition][-1].position if seen[partition] else 0
        return writers_done.is_set() and bool(final_heads) and last >= final_heads[partition]

    async def follow(partition: int) -> None:
        # A small batch makes the follower page through its partition while it is written.
        async for event in follower_store.follow_partition(
            partition, 0, batch=7, idle_sleep=0.002, stop=lambda: caught_up(partition)
        ):
            seen[partition].append(event)

    async def follow_tenant(tenant: str) -> None:
        after = 0
        while True:
            events = await follower_store.read_all(after, 5, tenant_id=tenant)
            seen_per_tenant[tenant] += events
            if events:
                after = events[-1].position
            elif writers_done.is_set() and final_heads:
                # Nothing more for this tenant: confirm once more past the final head.
                if not await follower_store.read_all(after, 5, tenant_id=tenant):
                    return
            else:
                await asyncio.sleep(0.002)

    followers = ([asyncio.create_task(follow(p)) for p in partitions]
                 + [asyncio.create_task(follow_tenant(t)) for t in TENANTS])
    started = time.perf_counter()
    refused = await asyncio.gather(*(write_a_lot(s, i, committed) for i, s in enumerate(stores)))
    write_seconds = time.perf_counter() - started
    final_heads.update(await follower_store.heads())
    writers_done.set()
    await asyncio.wait_for(asyncio.gather(*followers), timeout=60)

    committed_ids = [eid for r in committed for eid in r.event_ids]
    assert len(committed_ids) == sum(final_heads.values()) > 100, "the writers should have appended a fair amount"
    assert sum(refused) > 0, "some racing expected versions should have lost (the race was real)"
    assert all(final_heads[p] == 0 for p in final_heads if p not in partitions)

    for partition in partitions:
        # Every committed event of the partition exactly once, positions 1..head without gaps.
        assert [e.position for e in seen[partition]] == list(range(1, final_heads[partition] + 1))
        # recorded_at never goes backwards along a partition.
        events = seen[partition]
        assert all(a.recorded_at <= b.recorded_at for a, b in zip(events, events[1:]))
        assert all(e.partition == partition for e in events)
    everything = [e for p in sorted(partitions) for e in seen[p]]
    assert sorted(e.event_id for e in everything) == sorted(committed_ids)
    assert len({e.event_id for e in everything}) == len(everything)

    # What each writer was told matches what the follower saw at those places.
    by_place = {(e.partition, e.position): e for e in everything}
    for result in committed:
        places = [(result.partition, p) for p in range(result.first_position, result.last_position + 1)]
        assert [by_place[x].event_id for x in places] == result.event_ids
        assert all(by_place[x].recorded_at == result.recorded_at for x in places)

    # Per stream: versions 1, 2, 3, ... in position order.
    versions: dict[str, list[int]] = collections.defaultdict(list)
    for e in everything:
        versions[e.stream_id].append(e.version)
    for stream, vs in versions.items():
        assert vs == list(range(1, len(vs) + 1)), stream

    # Tenant followers: exactly that tenant's events, once each, in position order.
    for tenant in TENANTS:
        expected = [e.event_id for e in everything if e.tenant_id == tenant]
        assert [e.event_id for e in seen_per_tenant[tenant]] == expected
        assert expected, tenant
    print(f"{len(committed_ids)} events in {len(committed)} appends by {WRITERS} writers in {write_seconds:.2f}s")


async def test_an_append_to_another_partition_does_not_wait_for_a_slow_one(
    db_url: str, reader_pool: asyncpg.Pool
) -> None:
    """garage-a (partition 3) holds its head in a slow insert; garage-b (partition 31),
    from another process's store, appends (bulk and grouped) and commits meanwhile."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "CREATE FUNCTION public.slow_stream() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN PERFORM pg_sleep(1.0); RETURN NEW; END $$"
        )
        await conn.execute(
            "CREATE TRIGGER slow_stream BEFORE INSERT ON ledger.events FOR EACH ROW"
            " WHEN (NEW.stream_id = 'subject/garage-a/dealer/slow') EXECUTE FUNCTION public.slow_stream()"
        )
    finally:
        await conn.close()
    pools = [await asyncpg.create_pool(db_url, min_size=1, max_size=2) for _ in range(2)]
    slow, other = EventStore(pools[0]), EventStore(pools[1])
    reader = EventStore(reader_pool)
    try:
        await slow.start()
        await other.start()
        slow_task = asyncio.create_task(slow.append(AppendRequest(
            tenant_id="garage-a", writes=[StreamWrite("subject/garage-a/dealer/slow", [invoice(1)])], metadata=META)))
        await asyncio.sleep(0.2)  # the slow writer now holds partition 3's head
        started = time.perf_counter()
        # The bulk path too (the DMS import of another tenant): it takes only its partition's lock.
        bulk = await asyncio.wait_for(other.append_bulk(AppendRequest(
            tenant_id="garage-b", writes=[StreamWrite("subject/garage-b/dealer/bulk", [invoice(3), invoice(4)])],
            metadata=META)), 0.6)
        result = await asyncio.wait_for(other.append(AppendRequest(
            tenant_id="garage-b", writes=[StreamWrite("subject/garage-b/dealer/fast", [invoice(2)])], metadata=META)),
            0.6)
        assert time.perf_counter() - started < 0.6 and not slow_task.done()
        assert (bulk.partition, bulk.first_position, result.first_position) == (31, 1, 3)
        assert [e.stream_id for e in await reader.read_all(0, tenant_id="garage-b")] == [
            "subject/garage-b/dealer/bulk", "subject/garage-b/dealer/bulk", "subject/garage-b/dealer/fast"]
        assert await reader.read_all(0, tenant_id="garage-a") == []  # the slow one is not committed yet
        assert (await slow_task).partition == 3
    finally:
        await slow.stop()
        await other.stop()
        for p in pools:
            await p.close()


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
        assert await reader.read_all(0, tenant_id="garage-a") == [], "nothing is visible before the first commits"
        slow_result, fast_result = await asyncio.gather(slow_task, fast_task)
        assert slow_result.last_position == 1 and fast_result.first_position == 2
        assert slow_result.recorded_at <= fast_result.recorded_at
        assert [e.stream_id for e in await reader.read_all(0, tenant_id="garage-a")] == [
            "subject/garage-a/dealer/slow", "subject/garage-a/dealer/fast",
        ]
    finally:
        await slow.stop()
        await fast.stop()
        for p in pools:
            await p.close()

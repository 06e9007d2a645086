"""The event store's bulk path (services/ledger/bulk.py, used by the DMS import): events
written with binary COPY under the same head lock, with the same chain, positions,
expected-version and closed-stream guarantees as the group-commit writer."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest

from schemas.events import (
    Actor,
    InvoiceRecorded,
    Metadata,
    ProspectRegistered,
    Sealed,
    SubjectErased,
)
from services.ledger.bulk import _Prepared
from services.ledger.errors import LedgerError, StreamClosed, WrongExpectedVersion
from services.ledger.hashchain import event_hash
from services.ledger.store import AppendRequest, AppendResult, EventStore, StreamWrite
from services.ledger.verify import verify_ledger

META = Metadata(actor=Actor(kind="importer", id="test"), method="import", request_id="run-1")


def invoice(n: int, day: dt.date = dt.date(2024, 1, 31)) -> InvoiceRecorded:
    return InvoiceRecorded(invoice_id=f"F{n}", invoice_date=day,
                           personal=Sealed(key_id="sk-1", nonce="bm9uY2U=", ciphertext=f"c{n}\"\\\u00e9"))


def bulk(*writes: StreamWrite, hook=None, tenant: str = "acme") -> AppendRequest:
    return AppendRequest(tenant_id=tenant, writes=list(writes), metadata=META, in_transaction=hook)


class HookFailed(LedgerError):
    pass


async def _chain_ok(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        count, broken = await verify_ledger(conn)
    assert broken is None, broken
    return count


def test_the_bulk_hash_input_is_byte_for_byte_the_chain_s_own() -> None:
    """The bulk path assembles each hash input from pieces encoded before the lock; it
    must equal hashchain.event_hash for every kind of value (quotes, backslashes,
    non-ASCII, '%' in ids, events without a domain date)."""
    request = AppendRequest(
        tenant_id='gar%age-"é"', metadata=META,
        writes=[StreamWrite('subject/gar%age/dealer/K"1\\é', [invoice(1), invoice(2, dt.date(1999, 12, 31))]),
                StreamWrite("subject/x/dealer/2", [ProspectRegistered(acquired_on=dt.date(2020, 2, 29), how="web"),
                                                   SubjectErased(reason="request")])])
    prepared = _Prepared(request)
    recorded_at = dt.datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    prev = bytes(range(32))
    versions, hashes = prepared.chain(request.tenant_id, recorded_at, prev, 41, [7, 0])
    assert versions == [8, 9, 1, 2]
    streams = [request.writes[0].stream_id] * 2 + [request.writes[1].stream_id] * 2
    events = [e for w in request.writes for e in w.events]
    expected_prev = prev
    for i, event in enumerate(events):
        want = event_hash(expected_prev, 41 + i, prepared.event_ids[i], streams[i], versions[i], request.tenant_id,
                          type(event).__name__, event.SCHEMA_VERSION, recorded_at, event.occurred_on(),
                          prepared.data[i], prepared.metadata)
        assert hashes[i] == want, i
        expected_prev = want


async def test_bulk_appends_continue_the_chain_between_ordinary_appends(store: EventStore, pool: asyncpg.Pool) -> None:
    await store.append(AppendRequest(tenant_id="acme", writes=[StreamWrite("s/acme/a", [invoice(0)])], metadata=META))
    result = await store.append_bulk(bulk(StreamWrite("s/acme/a", [invoice(1), invoice(2)], 1),
                                          StreamWrite("s/acme/b", [invoice(3)], 0)))
    assert (result.first_position, result.last_position) == (2, 4)
    assert [(r.stream_id, r.from_version, r.to_version) for r in result.streams] == [("s/acme/a", 2, 3), ("s/acme/b", 1, 1)]
    after = await store.append(AppendRequest(tenant_id="acme", writes=[StreamWrite("s/acme/b", [invoice(4)], 1)],
                                             metadata=META))
    assert after.first_position == 5
    events = await store.read_all(0)
    assert [e.position for e in events] == [1, 2, 3, 4, 5]
    assert [e.event_id for e in events[1:4]] == result.event_ids
    assert [(e.stream_id, e.version) for e in events] == [("s/acme/a", 1), ("s/acme/a", 2), ("s/acme/a", 3), ("s/acme/b", 1), ("s/acme/b", 2)]
    assert {e.recorded_at for e in events[1:4]} == {result.recorded_at}
    assert events[1].event == invoice(1) and events[1].metadata == META
    assert events[1].occurred_on == dt.date(2024, 1, 31)
    assert await _chain_ok(pool) == 5


async def test_a_stale_expected_version_refuses_the_whole_bulk_request(store: EventStore, pool: asyncpg.Pool) -> None:
    await store.append_bulk(bulk(StreamWrite("s/acme/a", [invoice(1)], 0)))
    with pytest.raises(WrongExpectedVersion) as info:
        await store.append_bulk(bulk(StreamWrite("s/acme/b", [invoice(2)], 0), StreamWrite("s/acme/a", [invoice(3)], 0)))
    assert info.value.current == 1
    assert await pool.fetchval("SELECT count(*) FROM ledger.events") == 1
    assert await pool.fetchval("SELECT max(position) FROM ledger.partitions") == 1


async def test_a_closed_stream_refuses_the_bulk_request(store: EventStore, pool: asyncpg.Pool) -> None:
    await store.append(AppendRequest(tenant_id="acme", metadata=META,
                                     writes=[StreamWrite("s/acme/gone", [invoice(1), SubjectErased(reason="request")])]))
    with pytest.raises(StreamClosed):
        await store.append_bulk(bulk(StreamWrite("s/acme/ok", [invoice(2)]), StreamWrite("s/acme/gone", [invoice(3)])))
    assert await pool.fetchval("SELECT count(*) FROM ledger.events") == 2


async def test_a_failing_hook_leaves_nothing_and_the_chain_continues_without_a_gap(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    await pool.execute("CREATE TABLE public.side (position bigint)")

    async def failing(conn: asyncpg.Connection, result: AppendResult) -> None:
        await conn.execute("INSERT INTO public.side VALUES ($1)", result.last_position)
        raise HookFailed("index conflict")

    with pytest.raises(HookFailed):
        await store.append_bulk(bulk(StreamWrite("s/acme/a", [invoice(i) for i in range(100)], 0), hook=failing))
    assert await pool.fetchval("SELECT count(*) FROM ledger.events") == 0
    assert await pool.fetchval("SELECT count(*) FROM public.side") == 0
    assert await pool.fetchval("SELECT max(position) FROM ledger.partitions") == 0

    async def ok(conn: asyncpg.Connection, result: AppendResult) -> None:
        await conn.execute("INSERT INTO public.side VALUES ($1)", result.last_position)

    result = await store.append_bulk(bulk(StreamWrite("s/acme/a", [invoice(1)], 0), hook=ok))
    assert result.first_position == 1
    assert await pool.fetchval("SELECT position FROM public.side") == 1
    assert await _chain_ok(pool) == 1


async def test_a_bulk_request_that_breaks_a_constraint_leaves_nothing(store: EventStore, pool: asyncpg.Pool) -> None:
    # An event id that is taken already fails the COPY: the whole request rolls back.
    first = await store.append_bulk(bulk(StreamWrite("s/acme/a", [invoice(1)], 0)))
    from services.ledger import bulk as bulk_module

    original = bulk_module.new_event_ids
    bulk_module.new_event_ids = lambda n: [first.event_ids[0]] * n  # type: ignore[assignment]
    try:
        with pytest.raises(LedgerError):
            await store.append_bulk(bulk(StreamWrite("s/acme/b", [invoice(2), invoice(3)], 0)))
    finally:
        bulk_module.new_event_ids = original
    assert await pool.fetchval("SELECT count(*) FROM ledger.events") == 1
    assert (await store.append_bulk(bulk(StreamWrite("s/acme/b", [invoice(2)], 0)))).first_position == 2
    assert await _chain_ok(pool) == 2


async def test_bulk_and_ordinary_appends_interleave_in_commit_order(
    store: EventStore, pool: asyncpg.Pool, db_url: str
) -> None:
    """Bulk requests from two stores (two processes' worth of pools) race ordinary
    appends: positions are 1..N without gaps, every stream's versions count up, the
    chain verifies, and a follower that read along saw every event once."""
    other_pool = await asyncpg.create_pool(db_url, min_size=1, max_size=3)
    other = EventStore(other_pool)
    await other.start()
    seen: list[int] = []
    done = asyncio.Event()

    async def follower() -> None:
        async for e in store.follow_partition(await store.partition_of("acme"), 0, batch=7, idle_sleep=0.005, stop=lambda: done.is_set() and len(seen) >= 260):
            seen.append(e.position)

    async def bulk_writer(s: EventStore, name: str) -> None:
        for b in range(5):
            await s.append_bulk(bulk(*(StreamWrite(f"s/acme/{name}/{b}/{k}", [invoice(k), invoice(k + 1)], 0)
                                       for k in range(10))))

    async def single_writer(s: EventStore, name: str) -> None:
        for i in range(30):
            await s.append(AppendRequest(tenant_id="acme", metadata=META,
                                         writes=[StreamWrite("s/acme/shared", [invoice(i)])]))

    try:
        follow = asyncio.create_task(follower())
        await asyncio.gather(bulk_writer(store, "x"), bulk_writer(other, "y"), single_writer(store, "p"),
                             single_writer(other, "q"))
        done.set()
        await asyncio.wait_for(follow, 10)
    finally:
        await other.stop()
        await other_pool.close()
    assert seen == list(range(1, 261))
    rows = await pool.fetch("SELECT stream_id, version FROM ledger.events ORDER BY position")
    per_stream: dict[str, list[int]] = {}
    for r in rows:
        per_stream.setdefault(r["stream_id"], []).append(r["version"])
    assert all(v == list(range(1, len(v) + 1)) for v in per_stream.values())
    assert await _chain_ok(pool) == 260


async def test_bulk_event_ids_are_time_ordered_uuids(store: EventStore, pool: asyncpg.Pool) -> None:
    """Version 7 ids (time first) keep the event_id index growing at its right end."""
    import uuid

    first = await store.append_bulk(bulk(StreamWrite("s/acme/a", [invoice(i) for i in range(50)], 0)))
    await asyncio.sleep(0.002)
    second = await store.append_bulk(bulk(StreamWrite("s/acme/a", [invoice(i) for i in range(50)], 50)))
    ids = [uuid.UUID(i) for i in first.event_ids + second.event_ids]
    assert len(set(ids)) == 100
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    millis = [u.int >> 80 for u in ids]
    assert len(set(millis[:50])) == 1 and len(set(millis[50:])) == 1 and millis[0] < millis[50]
    stored = [str(r["event_id"]) for r in await pool.fetch("SELECT event_id FROM ledger.events ORDER BY position")]
    assert stored == first.event_ids + second.event_ids

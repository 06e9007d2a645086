"""The group-commit writer's own guarantees (docs/performance.md): closed streams are
refused inside the batch's transaction, and the connection the writer keeps between
batches survives failed batches and a server-side disconnect."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from schemas.events import Actor, InvoiceRecorded, Metadata, PreferencesChanged, PreferenceSetting, SubjectErased
from services.ledger.api.context import STORE
from services.ledger.errors import IntegrityError, StreamClosed, WrongExpectedVersion
from services.ledger.verify import verify_ledger
from services.ledger.store import AppendRequest, AppendResult, EventStore, StreamWrite
from tests.conftest import Dealer

META = Metadata(actor=Actor(kind="api", id="writer-test"), method="api")
STREAM = "subject/acme/dealer/C1"


def invoice(n: int) -> InvoiceRecorded:
    return InvoiceRecorded(invoice_id=f"F{n}", invoice_date=dt.date(2024, 1, 1) + dt.timedelta(days=n))


def req(stream: str, *events: object, expected: int | None = None, key: str | None = None) -> AppendRequest:
    return AppendRequest(tenant_id="acme", writes=[StreamWrite(stream, list(events), expected)],  # type: ignore[arg-type]
                         metadata=META, idempotency_key=key, fingerprint=b"fp" if key else b"")


async def chain_is_intact(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        count, broken = await verify_ledger(conn)
    assert broken is None, broken
    return count


async def test_nothing_can_be_appended_after_a_closing_event(store: EventStore, pool: asyncpg.Pool) -> None:
    await store.append(req(STREAM, invoice(1)))
    await store.append(req(STREAM, SubjectErased(reason="request")))
    with pytest.raises(StreamClosed) as refused:
        await store.append(req(STREAM, invoice(2)))
    assert refused.value.stream_id == STREAM and refused.value.closed_by == "SubjectErased"
    with pytest.raises(StreamClosed):  # an expected version does not reopen it either
        await store.append(req(STREAM, invoice(3), expected=2))
    assert [e.event_type for e in await store.read_stream(STREAM)] == ["InvoiceRecorded", "SubjectErased"]
    assert await chain_is_intact(pool) == 2


async def test_a_stream_closed_earlier_in_the_same_batch_refuses_the_rest_of_the_batch(store: EventStore) -> None:
    await store.append(req(STREAM, invoice(1)))
    other = "subject/acme/dealer/C2"
    # Queued together, so they share one transaction: the erasure is first in the queue.
    outcomes = await asyncio.gather(
        store.append(req(STREAM, SubjectErased(reason="request"))),
        store.append(req(STREAM, invoice(2))),
        store.append(req(other, invoice(3))),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], AppendResult)
    assert isinstance(outcomes[1], StreamClosed)
    assert isinstance(outcomes[2], AppendResult)  # a refused request fails alone
    assert outcomes[0].first_position == outcomes[2].first_position - 1  # one batch, no gap left behind
    assert [e.event_type for e in await store.read_stream(STREAM)] == ["InvoiceRecorded", "SubjectErased"]


async def test_a_replayed_idempotent_request_still_gets_its_first_answer_after_the_stream_closed(
    store: EventStore,
) -> None:
    first = await store.append(req(STREAM, invoice(1), key="k-1"))
    await store.append(req(STREAM, SubjectErased(reason="request")))
    again = await store.append(req(STREAM, invoice(1), key="k-1"))
    assert again.replayed and again.event_ids == first.event_ids


async def test_columns_sent_as_joined_text_come_back_exactly(store: EventStore, pool: asyncpg.Pool) -> None:
    """The write sends each column as one newline-joined text: empty dates, text with
    escapes and non-ASCII characters, several streams and tenants must round-trip."""
    change = PreferencesChanged(changes=[PreferenceSetting(category="newsletter", channel="email", value="opt_in")],
                                changed_by=Actor(kind="staff", id="Zoë \"quoted\"\nline"), method="api")
    writes = [StreamWrite("subject/acme/dealer/Ç-1", [change, invoice(1), change]),
              StreamWrite("subject/acme/unknown/2", [invoice(2)])]
    first, second = await asyncio.gather(
        store.append(AppendRequest(tenant_id="acme", writes=writes, metadata=META)),
        store.append(AppendRequest(tenant_id="beta", writes=[StreamWrite("subject/beta/dealer/3", [change])],
                                   metadata=META)),
    )
    # Two tenants, two partitions (acme 13, beta 7): each partition numbered from 1.
    events = await store.read_all(0, tenant_id="acme") + await store.read_all(0, tenant_id="beta")
    assert [(e.partition, e.position) for e in events] == [(13, 1), (13, 2), (13, 3), (13, 4), (7, 1)]
    assert (first.partition, second.partition) == (13, 7)
    assert [e.occurred_on for e in events[:4]] == [None, invoice(1).invoice_date, None, invoice(2).invoice_date]
    assert [e.tenant_id for e in events] == ["acme"] * 4 + ["beta"]
    assert events[0].event == change and events[4].event == change
    assert [e.event_id for e in events] == first.event_ids + second.event_ids
    assert await chain_is_intact(pool) == 5


@pytest.mark.parametrize("stream, tenant", [("subject/acme/dealer/a\nb", "acme"), ("", "acme"),
                                            ("subject/acme/dealer/C1", "ac\nme"),
                                            # a stream lives in its tenant's partition: it must name it
                                            ("subject/beta/dealer/C1", "acme"), ("acme", "acme")])
async def test_ids_that_cannot_be_sent_as_joined_text_are_refused(store: EventStore, stream: str, tenant: str) -> None:
    with pytest.raises(ValueError):
        await store.append(AppendRequest(tenant_id=tenant, writes=[StreamWrite(stream, [invoice(1)])], metadata=META))


async def test_a_failed_batch_rolls_back_and_the_writer_goes_on(store: EventStore, pool: asyncpg.Pool) -> None:
    await store.append(req(STREAM, invoice(1)))

    async def break_the_transaction(conn: asyncpg.Connection, result: AppendResult) -> None:
        await conn.execute("INSERT INTO ledger.partitions (log_partition, position, hash, recorded_at)"
                           " VALUES (0, 0, '', now())")

    hooked = AppendRequest(tenant_id="acme", writes=[StreamWrite(STREAM, [invoice(2)])], metadata=META,
                           in_transaction=break_the_transaction)
    with pytest.raises(IntegrityError):
        await store.append(hooked)
    after = await store.append(req(STREAM, invoice(3), expected=1))  # invoice 2 was rolled back
    assert after.streams[0].to_version == 2
    with pytest.raises(WrongExpectedVersion):
        await store.append(req(STREAM, invoice(4), expected=1))
    assert await chain_is_intact(pool) == 2


async def test_the_writer_reconnects_when_its_connection_is_killed_between_batches(
    store: EventStore, pool: asyncpg.Pool, db_url: str
) -> None:
    await store.append(req(STREAM, invoice(1)))
    killer = await asyncpg.connect(db_url)
    try:
        killed = await killer.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
    finally:
        await killer.close()
    assert killed >= 1
    result = await store.append(req(STREAM, invoice(2), expected=1))
    assert result.streams[0].to_version == 2
    assert await chain_is_intact(pool) == 2


class _MovesTheHeadBeforeTheWrite:
    """The writer's connection, except that just before the optimistic write is sent,
    another writer (another process, say) appends: the head moves under the plan."""

    def __init__(self, conn: asyncpg.Connection, other: EventStore, *requests: AppendRequest) -> None:
        self._conn, self._other, self._requests = conn, other, list(requests)
        self.optimistic_writes: list[bool] = []
        self.locked_writes = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)

    async def fetchval(self, query: str, *args: object) -> object:
        if query.startswith("WITH heads AS") and self._conn.is_in_transaction():  # the locked way
            self.locked_writes += 1
        elif query.startswith("WITH heads AS"):
            if self._requests:
                await self._other.append(self._requests.pop(0))
            wrote = await self._conn.fetchval(query, *args)
            self.optimistic_writes.append(bool(wrote))
            return wrote
        return await self._conn.fetchval(query, *args)


async def test_a_batch_planned_on_a_head_that_moved_is_written_once_on_the_new_head(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    await store.append(req(STREAM, invoice(1)))
    other = EventStore(pool)
    await other.start()
    try:
        writer = store._writer  # the test reaches into the writer to swap its connection
        conn = await writer._connection()
        proxy = _MovesTheHeadBeforeTheWrite(conn, other, req(STREAM, invoice(2)))
        writer._conn = proxy  # type: ignore[assignment]
        mine = await store.append(req(STREAM, invoice(3)))
        # the stale plan wrote nothing; planned again on a fresh read, it was written once
        assert proxy.optimistic_writes == [False, True]
        assert (mine.first_position, mine.streams[0].to_version) == (3, 3)  # after the other
        with pytest.raises(WrongExpectedVersion):  # and a stale expected version is still caught on the new head
            await store.append(req(STREAM, invoice(4), expected=2))
        assert proxy.optimistic_writes == [False, True]  # refused at the read: nothing was sent
        await store.append(req(STREAM, invoice(5), expected=3))
        assert proxy.optimistic_writes == [False, True, True]  # unmoved head: one statement wrote it
    finally:
        writer._conn = conn
        await other.stop()
    assert [e.event.invoice_id for e in await store.read_stream(STREAM)] == ["F1", "F2", "F3", "F5"]  # type: ignore[attr-defined]
    assert await chain_is_intact(pool) == 4


async def test_a_request_whose_head_moves_at_every_try_is_written_under_the_lock_after_three(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    """Another writer gets in before each of the three optimistic writes: the request is
    planned again each time (with the next batch), then written the locked way, once."""
    other = EventStore(pool)
    await other.start()
    try:
        writer = store._writer  # the test reaches into the writer to swap its connection
        conn = await writer._connection()
        proxy = _MovesTheHeadBeforeTheWrite(conn, other, *(req(f"{STREAM}-other", invoice(n)) for n in range(1, 4)))
        writer._conn = proxy  # type: ignore[assignment]
        mine = await store.append(req(STREAM, invoice(9), expected=0))
        assert proxy.optimistic_writes == [False, False, False] and proxy.locked_writes == 1
        assert (mine.first_position, mine.streams[0].to_version) == (4, 1)
    finally:
        writer._conn = conn
        await other.stop()
    assert [e.event.invoice_id for e in await store.read_stream(STREAM)] == ["F9"]  # type: ignore[attr-defined]
    assert await chain_is_intact(pool) == 4


async def test_the_api_answers_410_for_an_erased_subject_and_records_nothing(api: TestClient, dealer: Dealer) -> None:
    store: EventStore = api.server.app[STORE]
    stream = "subject/garage-a/dealer/C9"
    await store.append(AppendRequest(tenant_id="garage-a", writes=[StreamWrite(stream, [invoice(1)])], metadata=META))
    await store.append(AppendRequest(tenant_id="garage-a", writes=[StreamWrite(stream, [SubjectErased(reason="request")])],
                                     metadata=META))
    r = await api.post("/v1/tenants/garage-a/subjects/dealer/C9/preferences",
                       json={"changes": [{"category": "newsletter", "channel": "email", "value": "opt_in"}]},
                       headers=dealer.auth("staff"))
    assert r.status == 410, await r.text()
    body = await r.json()
    assert (body["error"], body["field"]) == ("subject_erased", "ref")
    r = await api.post("/v1/tenants/garage-a/subjects:batch", headers=dealer.auth("importer"), json={"items": [
        {"kind": "preferences", "source": "dealer", "customer_ref": "C10",
         "changes": [{"category": "newsletter", "channel": "email", "value": "opt_in"}]},
        {"kind": "preferences", "source": "dealer", "customer_ref": "C9",
         "changes": [{"category": "newsletter", "channel": "email", "value": "opt_in"}]},
    ]})
    assert r.status == 410, await r.text()
    assert [e.event_type for e in await store.read_stream(stream)] == ["InvoiceRecorded", "SubjectErased"]
    assert await store.read_stream("subject/garage-a/dealer/C10") == []  # all or nothing


def test_event_ids_are_distinct_time_ordered_version_7_uuids() -> None:
    import time
    import uuid

    from services.ledger.store import new_event_ids

    before = time.time_ns() // 1_000_000
    ids = new_event_ids(2000)
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 2000
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == i for u, i in zip(parsed, ids))
    assert all(before <= u.int >> 80 <= after for u in parsed)  # the batch's time, in milliseconds, first
    assert {i[19] for i in ids} == set("89ab")  # the variant nibble keeps its two random bits
    assert new_event_ids(0) == []
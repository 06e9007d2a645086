"""`projector rebuild`: the read model again from the PostgreSQL ledger, swapped in atomically."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid

import asyncpg
import pytest

from consent.terms import add_months, ledger_day
from services.devservers import LocalBroker
from services.ledger.store import EventStore
from services.projector.clock import FixedClock
from services.projector.projection import Projection, apply_until_caught_up
from services.projector.publisher import KafkaPublisher
from services.projector.readmodel import evaluate_subject, suppressed
from services.projector.rebuild import RebuildInProgress, rebuild
from tests.projector_support import (
    append,
    comparable,
    create_tenant,
    erased,
    folded_subject,
    folded_tenant,
    invoice,
    objection,
    prefs,
    prospect,
    state_of,
    subject,
    subject_rows,
    term_edit,
)

NOW = dt.datetime.now(dt.timezone.utc)
TODAY = ledger_day(NOW)


def months_ago(n: int) -> str:
    return add_months(TODAY, -n).isoformat()


async def a_varied_ledger(store: EventStore) -> None:
    for tenant in ("acme", "bolt"):
        await create_tenant(store, tenant)
        for i in range(12):
            ref = f"S{i}"
            kind = i % 6
            if kind == 0:
                await subject(store, tenant, ref, invoice(months_ago(i + 1)))
            elif kind == 1:
                await subject(store, tenant, ref, prospect(months_ago(1)), prefs(prospect__email="opt_in"))
            elif kind == 2:
                await subject(store, tenant, ref, invoice(months_ago(30)), prefs(newsletter__post="opt_out"))
            elif kind == 3:
                await subject(store, tenant, ref, invoice(months_ago(2)), objection())
            elif kind == 4:
                await subject(store, tenant, ref, invoice(months_ago(5)), erased())
            else:
                await subject(store, tenant, ref, invoice(months_ago(40), "F1"), invoice(months_ago(3), "F2"),
                              source="unknown")
    await append(store, "acme", "tenant/acme", term_edit(newsletter__email=6, sales_campaign__phone=24))


async def test_the_rebuilt_model_equals_the_live_one(
    store: EventStore, pool: asyncpg.Pool, db_url: str, broker: LocalBroker
) -> None:
    await a_varied_ledger(store)
    clock = FixedClock(NOW)
    publisher = KafkaPublisher(broker.bootstrap, topic=f"eligibility-{uuid.uuid4().hex[:8]}", partitions=2)
    await publisher.start()
    try:
        live = Projection(pool, clock=clock, store=store, publisher=publisher)
        events = await store.read_all(0, 10_000)
        random.Random(7).shuffle(events)  # other streams' order is not guaranteed...
        events.sort(key=lambda e: (e.stream_id, e.version))  # ...but each stream's is
        for i in range(0, len(events), 9):
            await live.apply(events[i:i + 9] + events[max(0, i - 3):i])  # with re-deliveries
        await live.reevaluate_pending()
    finally:
        await publisher.stop()
    live_rows = comparable(await subject_rows(pool))
    live_tenants = await pool.fetch("SELECT tenant_id, version, last_position, state, terms_version"
                                    " FROM projector.tenants ORDER BY tenant_id")
    assert len(live_rows) == 24 and all(r[-1] is not None for r in live_rows)  # all published

    report = await rebuild(db_url, clock=clock, workers=2)
    assert report.events == await pool.fetchval("SELECT count(*) FROM ledger.events")
    assert report.subjects == 24 and report.tenants == 2
    # per log partition, the partition's head
    assert report.rebuilt_through == [h for _, h in sorted((await store.heads()).items())]
    assert comparable(await subject_rows(pool)) == live_rows
    assert await pool.fetch("SELECT tenant_id, version, last_position, state, terms_version"
                            " FROM projector.tenants ORDER BY tenant_id") == live_tenants
    indexes = {r[0] for r in await pool.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = 'projector'")}
    assert {"subjects_pkey", "subjects_next_change_idx", "subjects_tenant_id_idx", "tenants_pkey"} <= indexes
    assert not any("_new" in name for name in indexes)
    assert await pool.fetchval("SELECT rebuilt_through_partitions FROM projector.checkpoint") == report.rebuilt_through

    # The live projector carries on on the swapped tables; what the checkpoint covers is skipped.
    again = await Projection(pool, clock=clock, store=store).apply(await store.read_all(0, 10_000))
    assert again.applied == 0 and again.duplicates == report.events
    await subject(store, "acme", "S0", prefs(newsletter__sms="opt_out"))
    await apply_until_caught_up(Projection(pool, clock=clock, store=store), after=dict(enumerate(report.rebuilt_through)))
    [row] = [r for r in await subject_rows(pool) if r.key == ("acme", "dealer", "S0")]
    assert state_of(row) == await folded_subject(store, "acme", "S0")


async def test_a_rebuild_while_the_live_projector_runs_misses_nothing(
    store: EventStore, pool: asyncpg.Pool, db_url: str
) -> None:
    await a_varied_ledger(store)
    clock = FixedClock(NOW)
    live = Projection(pool, clock=clock, store=store)
    await apply_until_caught_up(live)
    stop = asyncio.Event()

    async def keep_writing() -> None:
        i = 0
        while not stop.is_set():
            await subject(store, "bolt", f"N{i % 15}", invoice(months_ago(i % 20), f"F{i}"))
            if i == 10:
                await append(store, "bolt", "tenant/bolt", term_edit(aftersales_service__sms=12))
            await apply_until_caught_up(live)
            i += 1
            await asyncio.sleep(0.005)

    writer = asyncio.create_task(keep_writing())
    try:
        await asyncio.sleep(0.1)
        reports = [await rebuild(db_url, clock=clock, workers=w) for w in (2, 1)]
        await asyncio.sleep(0.1)
    finally:
        stop.set()
        await writer
    await apply_until_caught_up(live)
    await live.reevaluate_pending()
    assert reports[0].events > 0
    for row in await subject_rows(pool):
        expected = await folded_subject(store, row.tenant_id, row.customer_ref, row.source)
        if expected.erased is not None:
            expected = suppressed(expected)
        assert state_of(row) == expected
        terms = (await folded_tenant(store, row.tenant_id)).terms
        assert row.matrix_hash == evaluate_subject(expected, terms, TODAY).matrix_hash


async def test_only_one_rebuild_runs_at_a_time(pool: asyncpg.Pool, db_url: str) -> None:
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", 0x72656275696C64)
        try:
            with pytest.raises(RebuildInProgress):
                await rebuild(db_url, clock=FixedClock(NOW))
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", 0x72656275696C64)

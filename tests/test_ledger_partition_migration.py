"""A ledger written before the log was partitioned migrates forward: its events keep their
positions and hashes, `verify` passes, and appends continue every tenant's order in the
tenant's partition, chained to the old head.

The old ledger is built the way the code of before partitioning wrote it: migrations
0001-0008 only, then appends under the single ``ledger.head`` lock with global positions
and one hash chain (the hash formula did not change), an idempotency key and the relay's
single checkpoint.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest

from schemas.events import Actor, InvoiceRecorded, Metadata, encode_event
from services.devservers import LocalPostgres
from services.ledger.hashchain import event_hash
from services.ledger.migrate import migrate, migration_files
from services.ledger.partitions import partition_of
from services.ledger.relay import Relay, RelayConfig
from services.ledger.store import AppendRequest, EventStore, StreamWrite, new_event_ids
from services.ledger.verify import verify_ledger
from tests.conftest import fresh_database

META = Metadata(actor=Actor(kind="api", id="old-code"), method="api")
PARTITIONS = 8
TENANTS = ("garage-a", "garage-b", "acme")
OLD_EVENTS = 30


@pytest.fixture
async def old_db(pg_server: LocalPostgres) -> AsyncIterator[str]:
    """An empty database: the test builds the old schema itself."""
    async with fresh_database(pg_server) as url:
        yield url


async def build_old_ledger(conn: asyncpg.Connection) -> dict[int, tuple[str, str, int]]:
    """Schema of before partitioning, and OLD_EVENTS events of three tenants interleaved in
    one global order, written as the old store did. Returns position -> (tenant, stream, version)."""
    await conn.execute("CREATE SCHEMA ledger")
    await conn.execute("CREATE TABLE ledger.schema_migrations (name text PRIMARY KEY,"
                       " applied_at timestamptz NOT NULL DEFAULT now())")
    for name, text in migration_files():
        if "/" not in name and name < "0009":
            await conn.execute(text)
            await conn.execute("INSERT INTO ledger.schema_migrations (name) VALUES ($1)", name)
    placed: dict[int, tuple[str, str, int]] = {}
    versions: dict[str, int] = {}
    metadata = msgspec.json.encode(META).decode()
    for position in range(1, OLD_EVENTS + 1):
        async with conn.transaction():
            head = await conn.fetchrow("SELECT position, hash, recorded_at FROM ledger.head FOR UPDATE")
            tenant = TENANTS[position % 3]
            stream = f"subject/{tenant}/dealer/C{position % 2}"
            version = versions[stream] = versions.get(stream, 0) + 1
            event = InvoiceRecorded(invoice_id=f"F{position}", invoice_date=dt.date(2024, 1, 1))
            data = encode_event(event).decode()
            recorded_at = max(dt.datetime.now(dt.UTC), head["recorded_at"])
            [event_id] = new_event_ids(1)
            digest = event_hash(bytes(head["hash"]), position, event_id, stream, version, tenant, "InvoiceRecorded",
                                event.SCHEMA_VERSION, recorded_at, event.occurred_on(), data, metadata)
            await conn.execute(
                "INSERT INTO ledger.events (position, event_id, stream_id, version, tenant_id, event_type,"
                " schema_version, recorded_at, occurred_on, data, metadata, prev_hash, hash)"
                " VALUES ($1, $2, $3, $4, $5, 'InvoiceRecorded', $6, $7, $8, $9::json, $10::json, $11, $12)",
                position, event_id, stream, version, tenant, event.SCHEMA_VERSION, recorded_at,
                event.occurred_on(), data, metadata, bytes(head["hash"]), digest)
            await conn.execute("UPDATE ledger.head SET position = $1, hash = $2, recorded_at = $3",
                               position, digest, recorded_at)
            if position == 9:  # garage-a's idempotent request, answered as the old code stored it
                result = {"streams": [{"stream_id": stream, "from_version": version, "to_version": version}],
                          "first_position": 9, "last_position": 9, "event_ids": [event_id],
                          "recorded_at": recorded_at.isoformat(), "replayed": False}
                await conn.execute("INSERT INTO ledger.idempotency (tenant_id, key, fingerprint, result)"
                                   " VALUES ($1, 'k-old', $2, $3::json)", tenant, b"fp", json.dumps(result))
        placed[position] = (tenant, stream, version)
    await conn.execute("INSERT INTO ledger.checkpoints (name, position) VALUES ('relay:consent.ledger.events.v1', 12)")
    return placed


async def test_a_ledger_of_before_partitioning_migrates_verifies_and_goes_on(old_db: str) -> None:
    conn = await asyncpg.connect(old_db)
    try:
        placed = await build_old_ledger(conn)
        old_hashes = {r[0]: bytes(r[1]) for r in await conn.fetch("SELECT position, hash FROM ledger.events")}
        await migrate(conn, log_partitions=PARTITIONS)

        # Nothing rewritten; every event in its tenant's partition; every head at the old one.
        rows = await conn.fetch("SELECT position, hash, tenant_id, log_partition FROM ledger.events")
        assert {r["position"]: bytes(r["hash"]) for r in rows} == old_hashes
        assert all(r["log_partition"] == partition_of(r["tenant_id"], PARTITIONS) for r in rows)
        heads = await conn.fetch("SELECT log_partition, position, hash FROM ledger.partitions ORDER BY 1")
        assert [r["log_partition"] for r in heads] == list(range(PARTITIONS))
        assert {(r["position"], bytes(r["hash"])) for r in heads} == {(OLD_EVENTS, old_hashes[OLD_EVENTS])}
        assert await verify_ledger(conn) == (OLD_EVENTS, None)

        # The relay's single checkpoint stands in for every partition's own.
        relay = Relay(RelayConfig(database_url=old_db, bootstrap="unused:9092"))
        assert await relay._load_checkpoints(conn) == dict.fromkeys(range(PARTITIONS), 12)
    finally:
        await conn.close()

    pool = await asyncpg.create_pool(old_db, min_size=1, max_size=3)
    store = EventStore(pool)
    await store.start()
    try:
        # Appends continue each tenant's streams, above the old positions, chained to the old head.
        for tenant in TENANTS:
            stream = f"subject/{tenant}/dealer/C0"
            before = max(v for t, s, v in placed.values() if s == stream)
            result = await store.append(AppendRequest(tenant_id=tenant, metadata=META, writes=[
                StreamWrite(stream, [InvoiceRecorded(invoice_id="NEW", invoice_date=dt.date(2025, 1, 1))],
                            expected_version=before)]))
            assert result.partition == partition_of(tenant, PARTITIONS)
            assert result.first_position == OLD_EVENTS + 1 and result.streams[0].to_version == before + 1
            history = await store.read_all(0, 1000, tenant_id=tenant)
            assert [e.position for e in history] == sorted(p for p, (t, _, _) in placed.items() if t == tenant) + [
                OLD_EVENTS + 1]
        # The idempotency key of before partitioning still answers with its first result.
        again = await store.append(AppendRequest(tenant_id="garage-a", metadata=META, idempotency_key="k-old",
                                                 fingerprint=b"fp", writes=[StreamWrite(
                                                     "subject/garage-a/dealer/C1", [InvoiceRecorded(
                                                         invoice_id="F9", invoice_date=dt.date(2024, 1, 1))])]))
        assert again.replayed and again.first_position == 9 and again.partition == partition_of("garage-a", PARTITIONS)
        async with pool.acquire() as conn:
            assert await verify_ledger(conn) == (OLD_EVENTS + 3, None)
            # An event of before partitioning altered: reported on the old chain, by position.
            await conn.execute("UPDATE ledger.events SET data = replace(data::text, 'F7', 'F77')::json"
                               " WHERE position = 7")
            count, broken = await verify_ledger(conn)
            assert broken is not None and (broken.partition, broken.position) == (None, 7)
            assert "content does not match" in broken.problem and count == 6
    finally:
        await store.stop()
        await pool.close()


async def test_the_partition_of_a_tenant_is_the_same_in_python_and_in_sql(pool: asyncpg.Pool) -> None:
    tenants = ["garage-a", "acme", "", "é-ünï", "x" * 200, 'gar%age-"é"'] + [f"t{i}" for i in range(200)]
    in_sql = await pool.fetch("SELECT t, p, ledger.partition_of(t, p) AS part FROM unnest($1::text[]) AS t,"
                              " unnest(array[1, 7, 32, 1024]) AS p", tenants)
    assert len(in_sql) == 4 * len(tenants)
    assert all(r["part"] == partition_of(r["t"], r["p"]) for r in in_sql)
    assert len({partition_of(t, 32) for t in tenants}) == 32  # 200 tenants reach every partition

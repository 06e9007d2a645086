"""Erasure end to end with the real relay, projector and broker: after erasing a subject
no Postgres table (any schema, any text/json/bytea column) and neither Kafka topic holds
its plaintext personal data, the projector keeps no facts about it and published a
tombstone, and the ledger's hash chain still verifies."""

from __future__ import annotations

import asyncio
import time

import asyncpg
from aiohttp.test_utils import TestClient
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.eligibility import TOPIC as ELIGIBILITY_TOPIC
from services.devservers import LocalBroker
from services.ledger.relay import TOPIC as LEDGER_TOPIC
from services.ledger.relay import RelayConfig, running_relay
from services.ledger.verify import verify_ledger
from services.projector.clock import SystemClock
from services.projector.projection import Projection, apply_until_caught_up
from services.projector.publisher import KafkaPublisher
from services.projector.readmodel import decode_state
from tests.conftest import Dealer

REF = "K-7731"
SUBJ = f"/v1/tenants/garage-a/subjects/dealer/{REF}"
PERSONAL = {
    "name": "Wilhelmina Verstappen-Ouwehand",
    "email": "w.ouwehand@voorbeeld.nl",
    "phone": "+31 20 555 0199",
    "licence_plate": "XK-771-Q",
    "street": "Prinsengracht 263",
}
NOTE = "Mevrouw belde over haar Toyota Yaris hybride"
TEXT_TYPES = ("text", "character varying", "character", "json", "jsonb", "ARRAY", "xml", "name")


async def columns_holding(conn: asyncpg.Connection, needle: str) -> list[str]:
    """Every (schema.table.column) of every user table whose value contains ``needle``:
    text-like columns compared as text (case-insensitive), bytea columns byte for byte."""
    cols = await conn.fetch(
        "SELECT c.table_schema, c.table_name, c.column_name, c.data_type FROM information_schema.columns c"
        " JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
        " WHERE t.table_type = 'BASE TABLE' AND c.table_schema NOT IN ('pg_catalog', 'information_schema')"
    )
    assert {"ledger", "audit", "projector"} <= {c["table_schema"] for c in cols}
    found = []
    for c in cols:
        ident = f'"{c["table_schema"]}"."{c["table_name"]}"'
        column = f'"{c["column_name"]}"'
        if c["data_type"] == "bytea":
            sql, arg = f"SELECT count(*) FROM {ident} WHERE position($1::bytea in {column}) > 0", needle.encode()
        elif c["data_type"] in TEXT_TYPES:
            sql, arg = f"SELECT count(*) FROM {ident} WHERE strpos(lower({column}::text), lower($1)) > 0", needle
        else:
            continue
        if await conn.fetchval(sql, arg):
            found.append(f"{c['table_schema']}.{c['table_name']}.{c['column_name']}")
    return found


async def topic_records(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) on the topic from the beginning to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        assert partitions, f"no topic {topic}"
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        out: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 20
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"reading {topic} timed out"
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out += [(r.key, r.value) for r in records]
        return out
    finally:
        await consumer.stop()


async def relay_until_caught_up(db_url: str, bootstrap: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        async with running_relay(RelayConfig(database_url=db_url, bootstrap=bootstrap, partitions=2)):
            deadline = time.monotonic() + 30
            while True:
                head = await conn.fetchval("SELECT sum(position)::bigint FROM ledger.partitions")
                done = await conn.fetchval("SELECT sum(position)::bigint FROM ledger.checkpoints WHERE name LIKE $1 || '/p%'",
                                           f"relay:{LEDGER_TOPIC}")
                if done is not None and done >= head:
                    return
                assert time.monotonic() < deadline, "the relay did not catch up"
                await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def test_after_erasure_no_table_and_no_topic_holds_the_subjects_plaintext(
    api: TestClient, dealer: Dealer, db_url: str, pool: asyncpg.Pool, fresh_broker: LocalBroker
) -> None:
    bootstrap = fresh_broker.bootstrap
    auth = dealer.auth("admin")
    r = await api.post(SUBJ + "/invoices", json={"invoice_id": "F-1", "invoice_date": "2025-09-01",
                                                 "contact": PERSONAL}, headers=auth)
    assert r.status == 201, await r.text()
    r = await api.post(SUBJ + "/preferences", headers=dealer.auth("staff"), json={
        "changes": [{"category": "sales_campaign", "channel": "phone", "value": "opt_out"}], "method": "phone",
        "note": NOTE})
    assert r.status == 201, await r.text()
    r = await api.post(SUBJ + "/objection", json={"method": "email", "note": NOTE + " (bezwaar)"},
                       headers=dealer.auth("staff"))
    assert r.status == 201, await r.text()

    publisher = KafkaPublisher(bootstrap, partitions=2)
    await publisher.start()
    try:
        projection = Projection(pool, clock=SystemClock(), publisher=publisher)
        await relay_until_caught_up(db_url, bootstrap)
        await apply_until_caught_up(projection)
        row = await pool.fetchrow("SELECT erased, state FROM projector.subjects WHERE customer_ref = $1", REF)
        assert row is not None and not row["erased"] and decode_state(row["state"]).invoices  # projected before

        r = await api.post(SUBJ + "/erasure", json={"confirm_ref": REF}, headers=auth)
        assert r.status == 201, await r.text()
        assert (await r.json())["suppressed"]

        await relay_until_caught_up(db_url, bootstrap)
        await apply_until_caught_up(projection)
    finally:
        await publisher.stop()

    # The projector handled SubjectErased itself: no facts are left in its row.
    row = await pool.fetchrow("SELECT erased, state FROM projector.subjects WHERE customer_ref = $1", REF)
    assert row is not None and row["erased"]
    state = decode_state(row["state"])
    assert not state.invoices and not state.preferences and not state.objections and not state.acquisitions
    # ... and the eligibility topic's last word for the subject is a tombstone.
    key = f"garage-a/dealer/{REF}".encode()
    eligibility = await topic_records(bootstrap, ELIGIBILITY_TOPIC)
    mine = [value for k, value in eligibility if k == key]
    assert mine and mine[0] is not None and mine[-1] is None

    ledger_topic = await topic_records(bootstrap, LEDGER_TOPIC)
    assert any(b"SubjectErased" in (v or b"") for _, v in ledger_topic)
    async with pool.acquire() as conn:
        # The searches can find things: the pseudonymous ref is in ledger, projector and both topics.
        assert {"ledger.events.stream_id", "projector.subjects.customer_ref",
                "projector.subjects.state"} <= set(await columns_holding(conn, REF))
        assert any(REF.encode() in (k or b"") for k, _ in ledger_topic) and any(k == key for k, _ in eligibility)
        # No plaintext personal value anywhere.
        for value in (*PERSONAL.values(), NOTE, "Wilhelmina", "ouwehand@"):
            assert await columns_holding(conn, value) == [], value
            needle = value.lower().encode()
            for topic, records in ((LEDGER_TOPIC, ledger_topic), (ELIGIBILITY_TOPIC, eligibility)):
                assert not any(needle in (k or b"").lower() or needle in (v or b"").lower() for k, v in records), \
                    (topic, value)
        count, broken = await verify_ledger(conn)
        assert broken is None and count >= 5

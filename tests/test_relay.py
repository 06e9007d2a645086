"""The relay to Kafka: every committed event reaches ``consent.ledger.events.v1``, keyed by
stream, in stream order, at least once, whatever the broker or the process does."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.events import Actor, InvoiceRecorded, Metadata, RecordedEvent, decode_recorded
from schemas.vocabulary import subject_stream
from services.devservers import LocalBroker, free_port
from services.ledger.api_keys import issue_key
from services.ledger.relay import TOPIC, RelayConfig, running_relay
from services.ledger.store import AppendRequest, EventStore, StreamWrite
from tests import processes
from tests.conftest import MASTER_KEY

META = Metadata(actor=Actor(kind="system", id="relay-test"), method="system")


async def wait_for(condition: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def append_invoices(store: EventStore, streams: list[str], per_stream: int, tag: str) -> None:
    """``per_stream`` invoices on each stream, interleaved across streams, a few per append."""
    for i in range(per_stream):
        for chunk in range(0, len(streams), 5):
            writes = [
                StreamWrite(s, [InvoiceRecorded(invoice_id=f"{tag}-{i}", invoice_date=dt.date(2025, 1, 1))])
                for s in streams[chunk:chunk + 5]
            ]
            await store.append(AppendRequest(tenant_id="garage-a", writes=writes, metadata=META))


async def read_topic(bootstrap: str, topic: str, *, at_least: int, timeout: float = 20.0) -> list[tuple[int, RecordedEvent, bytes]]:
    """Every record on the topic from the beginning: (partition, envelope, key), in partition order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fetches the cluster's metadata
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        assert partitions, f"topic {topic} has no partitions"
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        out: list[tuple[int, RecordedEvent, bytes]] = []
        deadline = time.monotonic() + timeout
        quiet_until = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                out += [(tp.partition, decode_recorded(r.value), r.key) for r in records]
            if len(out) >= at_least:
                # keep reading briefly: duplicates (at-least-once) may follow
                quiet_until = quiet_until or time.monotonic() + 0.5
                if time.monotonic() > quiet_until:
                    break
        return out
    finally:
        await consumer.stop()


def apply_as_a_consumer(records: list[tuple[int, RecordedEvent, bytes]]) -> dict[str, list[RecordedEvent]]:
    """The documented consumer rule: per stream, apply an event iff its version is the last
    applied + 1 (skip duplicates and events after a gap: the relay re-sends them in order)."""
    applied: dict[str, list[RecordedEvent]] = defaultdict(list)
    partition_of: dict[bytes, int] = {}
    for partition, event, key in records:
        assert key == event.stream_id.encode()
        assert partition_of.setdefault(key, partition) == partition, "one stream, one partition"
        done = applied[event.stream_id]
        if event.version == (done[-1].version if done else 0) + 1:
            done.append(event)
    return applied


async def ledger_events(db_url: str) -> list[tuple[int, str, str, int]]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT position, event_id::text, stream_id, version FROM ledger.events"
                                " ORDER BY log_partition, position")
    finally:
        await conn.close()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def assert_topic_matches_ledger(records: list[tuple[int, RecordedEvent, bytes]],
                                ledger: list[tuple[int, str, str, int]]) -> None:
    applied = apply_as_a_consumer(records)
    expected: dict[str, list[str]] = defaultdict(list)
    for _, event_id, stream_id, _ in ledger:
        expected[stream_id].append(event_id)
    assert {s: [e.event_id for e in events] for s, events in applied.items()} == dict(expected)


def lag(relay: object) -> float | None:
    return relay.metrics.registry.get_sample_value("ledger_relay_lag_events")  # type: ignore[attr-defined]


def relay_config(db_url: str, bootstrap: str, **kw: object) -> RelayConfig:
    values: dict[str, object] = {"backoff_initial": 0.05, "backoff_max": 0.5, "request_timeout_ms": 3000}
    values.update(kw)
    return RelayConfig(database_url=db_url, bootstrap=bootstrap, **values)  # type: ignore[arg-type]


async def test_events_appended_while_the_broker_is_down_all_arrive_in_stream_order(
    db_url: str, store: EventStore, fresh_broker: LocalBroker
) -> None:
    streams = [subject_stream("garage-a", "dealer", f"c{n}") for n in range(20)]
    async with running_relay(relay_config(db_url, fresh_broker.bootstrap)) as relay:
        await append_invoices(store, streams[:10], 1, "before")
        await wait_for(lambda: relay.checkpoint == 10, 15, "the first 10 events on the topic")

        fresh_broker.stop()
        started = time.monotonic()
        await append_invoices(store, streams, 50, "down")  # 1,000 events, 20 streams
        assert time.monotonic() - started < 15, "appends must not wait for the broker"
        assert relay.checkpoint == 10
        # The lag gauge sees the backlog while the broker is away.
        await wait_for(lambda: lag(relay) == 1000, 10, "lag of 1,000 events")

        fresh_broker.start()  # same port, empty memory: the first 10 events are gone from it
        await wait_for(lambda: relay.checkpoint == 1010, 30, "the relay to catch up")
        assert relay.republishes >= 1
        # The gauge is set from the partition heads right after the checkpoint is saved.
        await wait_for(lambda: lag(relay) == 0, 5, "lag back to 0")

    records = await read_topic(fresh_broker.bootstrap, TOPIC, at_least=1010)
    assert_topic_matches_ledger(records, await ledger_events(db_url))
    assert len({r[1].event_id for r in records}) == 1010


async def test_a_restarted_relay_resumes_from_its_checkpoint(db_url: str, store: EventStore, broker: LocalBroker) -> None:
    topic = f"relay-test-{uuid.uuid4().hex[:8]}"
    streams = [subject_stream("garage-a", "dealer", f"r{n}") for n in range(10)]
    config = relay_config(db_url, broker.bootstrap, topic=topic, partitions=3)
    async with running_relay(config) as relay:
        await append_invoices(store, streams, 10, "first")
        await wait_for(lambda: relay.checkpoint == 100, 15, "100 events relayed")
    await append_invoices(store, streams, 5, "second")
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT sum(position)::bigint FROM ledger.checkpoints WHERE name LIKE $1 || '/p%'",
                                   f"relay:{topic}") == 100
    finally:
        await conn.close()
    async with running_relay(config) as relay:
        await wait_for(lambda: relay.checkpoint == 150, 15, "the next 50 events relayed")
        assert relay.published == 50, "resumed after the checkpoint, not from the start"
    records = await read_topic(broker.bootstrap, topic, at_least=150)
    assert len(records) == 150, "nothing published twice"
    assert_topic_matches_ledger(records, await ledger_events(db_url))


async def test_a_second_relay_waits_as_a_standby_while_the_first_one_runs(
    db_url: str, store: EventStore, broker: LocalBroker
) -> None:
    topic = f"relay-test-{uuid.uuid4().hex[:8]}"
    config = relay_config(db_url, broker.bootstrap, topic=topic, partitions=2, standby_poll=0.1)
    streams = [subject_stream("garage-a", "dealer", f"s{n}") for n in range(5)]
    async with running_relay(config) as first, running_relay(config) as second:
        await append_invoices(store, streams, 20, "x")
        await wait_for(lambda: max(first.checkpoint, second.checkpoint) == 100, 15, "100 events relayed")
        assert sorted((first.published, second.published)) == [0, 100]
    records = await read_topic(broker.bootstrap, topic, at_least=100)
    assert len(records) == 100


# -- the whole process: `consent-ledger serve` killed with SIGKILL under load --------------


# Four tenants in four log partitions (of 32): the load spans partitions.
KILL_TENANTS = {"garage-k": 6, "garage-a": 3, "acme": 13, "beta": 7}


async def test_every_acknowledged_append_survives_a_kill_9_of_serve_and_reaches_the_topic(
    db_url: str, fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LEDGER_DATABASE_URL": db_url, "LEDGER_MASTER_KEY": MASTER_KEY,
           "LEDGER_KAFKA_BOOTSTRAP": fresh_broker.bootstrap, "LEDGER_HTTP_PORT": str(port),
           "LEDGER_LOG_LEVEL": "warning"}
    log_path = tmp_path / "serve.log"
    conn = await asyncpg.connect(db_url)
    try:
        operator = (await issue_key(conn, None, "operator", "test")).key
    finally:
        await conn.close()

    proc = processes.start(["serve"], env, log_path)
    acknowledged: dict[str, list[str]] = {}  # invoice id -> event ids, for every 2xx
    try:
        await processes.wait_http_ok(f"{base}/readyz", proc, log_path)
        async with aiohttp.ClientSession() as http:
            auths: dict[str, dict[str, str]] = {}
            for tenant, partition in KILL_TENANTS.items():
                r = await http.post(f"{base}/v1/tenants", json={"tenant_id": tenant, "name": "Autobedrijf K"},
                                    headers={"Authorization": f"Bearer {operator}"})
                assert r.status == 201, await r.text()
                assert (await r.json())["partition"] == partition
                auths[tenant] = {"Authorization": f"Bearer {(await r.json())['admin_key']['key']}"}

            async def worker(w: int) -> None:
                tenant = list(KILL_TENANTS)[w % len(KILL_TENANTS)]
                for i in range(10_000):
                    invoice = f"w{w}-{i}"
                    try:
                        async with http.post(
                            f"{base}/v1/tenants/{tenant}/subjects/dealer/k{w}-{i % 4}/invoices",
                            json={"invoice_id": invoice, "invoice_date": "2025-03-01"}, headers=auths[tenant],
                        ) as resp:
                            if 200 <= resp.status < 300:
                                acknowledged[invoice] = (await resp.json())["event_ids"]
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        return  # the server is gone

            workers = [asyncio.create_task(worker(w)) for w in range(12)]
            await wait_for(lambda: len(acknowledged) >= 300, 30, "300 acknowledged appends")
            proc.send_signal(signal.SIGKILL)  # mid-load: requests in flight, relay mid-batch
            proc.wait(10)
            await asyncio.wait_for(asyncio.gather(*workers), 30)
        killed_at = len(acknowledged)

        proc = processes.start(["serve"], env, log_path)
        await processes.wait_http_ok(f"{base}/readyz", proc, log_path)
        ledger = await ledger_events(db_url)

        async def relayed() -> bool:
            c = await asyncpg.connect(db_url)
            try:
                # every partition's checkpoint at its head
                heads = {r[0]: r[1] for r in await c.fetch("SELECT log_partition, position FROM ledger.partitions")}
                done = {int(r[0].rsplit("/p", 1)[1]): r[1] for r in await c.fetch(
                    "SELECT name, position FROM ledger.checkpoints WHERE name LIKE $1 || '/p%'", f"relay:{TOPIC}")}
                return all(done.get(p, 0) == h for p, h in heads.items()) and len(ledger) == sum(heads.values())
            finally:
                await c.close()

        await wait_for(relayed, 30, "the restarted relay to catch up")
    finally:
        processes.stop(proc)

    assert killed_at >= 300
    # Postgres: every acknowledged invoice exactly once, with the event ids the client got.
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT data->>'invoice_id' AS invoice, event_id::text AS event_id"
                                " FROM ledger.events WHERE event_type = 'InvoiceRecorded'")
    finally:
        await conn.close()
    by_invoice: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        by_invoice[r["invoice"]].append(r["event_id"])
    for invoice, event_ids in acknowledged.items():
        assert by_invoice[invoice] == event_ids, invoice
    # The topic: every ledger event, each stream complete and in order.
    records = await read_topic(fresh_broker.bootstrap, TOPIC, at_least=len(ledger))
    assert_topic_matches_ledger(records, ledger)
    on_topic = {r[1].event_id for r in records}
    assert all(e in on_topic for ids in acknowledged.values() for e in ids)


async def test_consent_ledger_relay_runs_on_its_own_and_stops_cleanly_on_sigterm(
    db_url: str, store: EventStore, fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    metrics_port = free_port()
    env = {**os.environ, "LEDGER_DATABASE_URL": db_url, "LEDGER_KAFKA_BOOTSTRAP": fresh_broker.bootstrap,
           "LEDGER_RELAY_PARTITIONS": "2"}
    log_path = tmp_path / "relay.log"
    streams = [subject_stream("garage-a", "dealer", f"alone{n}") for n in range(4)]
    await append_invoices(store, streams, 5, "alone")
    proc = processes.start(["relay", "--metrics-port", str(metrics_port)], env, log_path)
    try:
        async def caught_up() -> bool:
            try:
                async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
                    text = await r.text()
            except aiohttp.ClientError:
                return False
            c = await asyncpg.connect(db_url)
            try:
                done = await c.fetchval("SELECT sum(position)::bigint FROM ledger.checkpoints WHERE name LIKE $1 || '/p%'", f"relay:{TOPIC}")
            finally:
                await c.close()
            return done == 20 and "ledger_relay_lag_events 0.0" in text

        await wait_for(caught_up, 20, "the relay process to publish 20 events and report lag 0")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log_path.read_text()
    finally:
        processes.stop(proc)
    records = await read_topic(fresh_broker.bootstrap, TOPIC, at_least=20, timeout=10)
    assert_topic_matches_ledger(records, await ledger_events(db_url))
    assert "relay_stopped" in log_path.read_text()

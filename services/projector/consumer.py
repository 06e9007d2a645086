"""Follows ``consent.ledger.events.v1`` and feeds the projection.

As a consumer group (``group_id``), instances share the partitions; without one, the
consumer assigns itself every partition (one instance, tests, benchmarks). Either way the
position that counts is the one in ``projector.offsets``, written in the same transaction
as the read model: on every assignment the consumer seeks there. Kafka's own committed
offsets are updated too, for lag monitoring only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from schemas.events import RecordedEvent, decode_recorded
from services.kafka_security import PLAINTEXT, KafkaSecurity
from services.projector.projection import Projection

log = structlog.get_logger(__name__)

LEDGER_TOPIC: Final = "consent.ledger.events.v1"
DEFAULT_GROUP: Final = "consent-projector"


class _Seeker(ConsumerRebalanceListener):
    def __init__(self, consumer: LedgerConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        log.info("projector_partitions_revoked", partitions=sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._consumer.seek_to_stored(list(assigned))


class LedgerConsumer:
    def __init__(
        self,
        projection: Projection,
        bootstrap: str,
        *,
        topic: str = LEDGER_TOPIC,
        group_id: str | None = DEFAULT_GROUP,
        max_records: int = 2000,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        fetch_max_wait_ms: int = 20,
        backoff_max: float = 5.0,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self.projection = projection
        self.bootstrap = bootstrap
        self.security = security
        self.topic = topic
        self.group_id = group_id
        self.max_records = max_records
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        # tansu answers a fetch only when this wait is over, even if records arrived
        # meanwhile: the wait is added to every event's latency (500 ms by default).
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.backoff_max = backoff_max
        self.consumed = 0
        self.assigned: set[int] = set()
        self._consumer: AIOKafkaConsumer | None = None

    async def seek_to_stored(self, partitions: list[TopicPartition]) -> None:
        """Seek each partition to the offset stored with the read model (or its start)."""
        consumer = self._consumer
        assert consumer is not None
        records = await self.projection.pool.fetch(
            "SELECT partition, next_offset FROM projector.offsets WHERE topic = $1", self.topic)
        stored = {r[0]: r[1] for r in records}
        for tp in partitions:
            offset = stored.get(tp.partition)
            if offset is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)
        self.assigned = {tp.partition for tp in consumer.assignment()}
        log.info("projector_partitions_assigned", partitions=sorted(tp.partition for tp in partitions),
                 stored={p: stored.get(p) for p in sorted(tp.partition for tp in partitions)})

    async def run(self, stop: Callable[[], bool] | None = None) -> None:
        """Consume until cancelled (or ``stop()``), reconnecting with backoff."""
        backoff = 0.2
        while stop is None or not stop():
            try:
                await self._session(stop)
                return
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                log.warning("projector_consumer_retrying", error=f"{type(exc).__name__}: {exc}", retry_in_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max)

    async def _session(self, stop: Callable[[], bool] | None) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            **self.security.client_options(),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
        )
        await consumer.start()
        self._consumer = consumer
        try:
            if self.group_id is not None:
                consumer.subscribe([self.topic], listener=_Seeker(self))
            else:
                partitions = await self._wait_for_partitions(stop)
                if partitions is None:
                    return
                tps = [TopicPartition(self.topic, p) for p in partitions]
                consumer.assign(tps)
                await self.seek_to_stored(tps)
            await self._loop(consumer, stop)
        finally:
            self._consumer = None
            await consumer.stop()

    async def _wait_for_partitions(self, stop: Callable[[], bool] | None) -> list[int] | None:
        """The topic's partitions, once it exists (the relay creates it)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.security.client_options())
        await admin.start()
        try:
            while stop is None or not stop():
                if self.topic in await admin.list_topics():
                    described = await admin.describe_topics([self.topic])
                    partitions = sorted(p["partition"] for d in described if d["topic"] == self.topic
                                        for p in d["partitions"])
                    if partitions:
                        return partitions
                await asyncio.sleep(0.2)
            return None
        finally:
            await admin.close()

    async def _loop(self, consumer: AIOKafkaConsumer, stop: Callable[[], bool] | None) -> None:
        backoff = 0.2
        while stop is None or not stop():
            batch = await consumer.getmany(timeout_ms=100, max_records=self.max_records)
            if not batch:
                continue
            events: list[RecordedEvent] = []
            offsets: dict[tuple[str, int], int] = {}
            for tp, records in batch.items():
                events.extend(decode_recorded(r.value) for r in records if r.value is not None)
                offsets[(tp.topic, tp.partition)] = records[-1].offset + 1
            try:
                await self.projection.apply(events, offsets)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, KafkaError, asyncio.TimeoutError) as exc:
                # Nothing of the batch is committed (or it is, and re-applying is a no-op):
                # go back to the stored offsets and try again.
                log.warning("projector_batch_failed", error=f"{type(exc).__name__}: {exc}", retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max)
                await self.seek_to_stored(list(consumer.assignment()))
                continue
            backoff = 0.2
            self.consumed += len(events)
            if self.group_id is not None:
                try:
                    await consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
                except KafkaError as exc:  # only for lag monitoring; the stored offsets are what counts
                    log.info("projector_kafka_commit_skipped", error=type(exc).__name__)

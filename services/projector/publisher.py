"""Writes eligibility matrices to ``consent.eligibility.v1``.

The projector publishes a batch and waits for every acknowledgement *before* it commits
the rows that record what was published: a crash in between re-publishes the same
(deterministic) value, never loses one. The topic is compacted (latest value per key).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Sequence
from typing import Final, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from schemas.eligibility import MARKER_KEY_PREFIX, TOPIC, EpochMarker, encode_marker
from services.kafka_security import PLAINTEXT, KafkaSecurity

log = structlog.get_logger(__name__)

_TOPIC_EXISTS: Final = 36

Message = tuple[str, bytes | None]
"""(key, value); value None is a tombstone."""


class Publisher(Protocol):
    async def send(self, messages: Sequence[Message]) -> Awaitable[None]:
        """Hands the messages to the producer; the returned awaitable completes once the
        broker acknowledged every one of them (and raises if any failed). Splitting the two
        lets the caller write its rows while the broker acknowledges."""
        ...


class KafkaPublisher:
    """A batching producer (linger, large batches, gzip: a matrix compresses ~10x)."""

    def __init__(self, bootstrap: str, *, topic: str = TOPIC, partitions: int = 6, compression: str | None = "gzip",
                 request_timeout_ms: int = 10_000, security: KafkaSecurity = PLAINTEXT) -> None:
        self.bootstrap = bootstrap
        self.security = security
        self.topic = topic
        self.partitions = partitions
        self.compression = compression
        self.request_timeout_ms = request_timeout_ms
        self.published = 0
        # Per partition, the end offset the broker acknowledged a write up to (in this
        # process, or as stored by the projector): a partition that ends below it, or a
        # write acknowledged below it, means the topic lost what was published.
        self.acked_ends: dict[int, int] = {}
        self.lost_reason: str | None = None  # set when an acknowledgement went backwards
        self.lost = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._offsets: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        await self.ensure_topic()
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            **self.security.client_options(),
            acks="all",
            linger_ms=5,
            max_batch_size=1024 * 1024,
            max_request_size=4 * 1024 * 1024,
            compression_type=self.compression,
            request_timeout_ms=self.request_timeout_ms,
        )
        await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._offsets is not None:
            await self._offsets.stop()
            self._offsets = None

    async def ensure_topic(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=self.request_timeout_ms,
                                    **self.security.client_options())
        await admin.start()
        try:
            if self.topic in await admin.list_topics():
                return
            response = await admin.create_topics([NewTopic(
                self.topic, num_partitions=self.partitions, replication_factor=1,
                topic_configs={"cleanup.policy": "compact"},
            )])
            for name, code, message in response.topic_errors:
                if code not in (0, _TOPIC_EXISTS):
                    raise KafkaError(f"creating topic {name} failed: error {code} {message}")
            log.info("eligibility_topic_created", topic=self.topic, partitions=self.partitions)
        finally:
            await admin.close()

    async def send(self, messages: Sequence[Message]) -> Awaitable[None]:
        producer = self._producer
        if producer is None:
            raise RuntimeError("the publisher is not started")
        futures = [await producer.send(self.topic, key=key.encode(), value=value) for key, value in messages]
        return self._acknowledged(futures)

    async def _acknowledged(self, futures: list[asyncio.Future[object]]) -> None:
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed
        self.published += len(futures)
        for meta in results:
            self._acked(meta.partition, meta.offset)  # type: ignore[attr-defined]

    def _acked(self, partition: int, offset: int) -> None:
        end = self.acked_ends.get(partition, 0)
        if offset < end and self.lost_reason is None:
            # The broker gave this write an offset it had given before: it no longer holds
            # what it acknowledged (restarted empty, topic recreated). The write stands (it is
            # on the new topic); the projector publishes everything again under a new epoch.
            self.lost_reason = f"partition {partition} acknowledged offset {offset} below {end}"
            log.warning("eligibility_topic_lost_data", topic=self.topic, reason=self.lost_reason)
            self.lost.set()
        self.acked_ends[partition] = max(end, offset + 1)

    async def topic_partitions(self) -> list[int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=self.request_timeout_ms,
                                    **self.security.client_options())
        await admin.start()
        try:
            described = await admin.describe_topics([self.topic])
        finally:
            await admin.close()
        return sorted(p["partition"] for d in described if d["topic"] == self.topic for p in d["partitions"])

    async def end_offsets(self, partitions: Sequence[int]) -> dict[int, int]:
        if self._offsets is None:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                        request_timeout_ms=self.request_timeout_ms, **self.security.client_options())
            await consumer.start()
            self._offsets = consumer
        try:
            ends = await self._offsets.end_offsets([TopicPartition(self.topic, p) for p in partitions])
        except BaseException:
            # A broker that restarted leaves the client with stale metadata: start afresh next time.
            consumer, self._offsets = self._offsets, None
            await consumer.stop()
            raise
        return {tp.partition: offset for tp, offset in ends.items()}

    async def check_topic(self) -> str | None:
        """Why the topic no longer holds what this publisher knows it acknowledged (None:
        it does). A missing topic is created again (empty) before answering."""
        if self.lost_reason is not None:
            return self.lost_reason
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=self.request_timeout_ms,
                                    **self.security.client_options())
        await admin.start()
        try:
            missing = self.topic not in await admin.list_topics()
        finally:
            await admin.close()
        if missing:
            await self.ensure_topic()
            return "the topic was missing (created again, empty)"
        partitions = await self.topic_partitions()
        gone = sorted(set(p for p, end in self.acked_ends.items() if end > 0) - set(partitions))
        if gone:
            return f"partition {gone[0]} is gone ({len(partitions)} partitions now)"
        return await self._still_holds({p: end for p, end in self.acked_ends.items() if end > 0})

    async def _still_holds(self, acked: dict[int, int]) -> str | None:
        """Fetch the last acknowledged record of each partition: an "offset out of range"
        answer, or a partition end (high watermark) below it, means the records are gone.
        (ListOffsets is no use here: tansu answers it with the last batch's first offset + 1.)"""
        if not acked:
            return None
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="none", request_timeout_ms=self.request_timeout_ms,
                                    max_partition_fetch_bytes=64 * 1024, fetch_max_wait_ms=50,
                                    **self.security.client_options())
        await consumer.start()
        try:
            tps = {p: TopicPartition(self.topic, p) for p in acked}
            consumer.assign(list(tps.values()))
            for p, tp in tps.items():
                consumer.seek(tp, acked[p] - 1)
            deadline = asyncio.get_running_loop().time() + self.request_timeout_ms / 1000
            while any(consumer.highwater(tp) is None for tp in tps.values()):
                if asyncio.get_running_loop().time() > deadline:
                    raise asyncio.TimeoutError("no fetch answer for every partition")
                try:
                    await consumer.getmany(timeout_ms=100)
                except OffsetOutOfRangeError as exc:
                    return f"the broker no longer has offset {acked[min(acked)] - 1} and on ({exc})"
            for p, tp in sorted(tps.items()):
                end = consumer.highwater(tp)
                if end is not None and end < acked[p]:
                    return f"partition {p} ends at offset {end}, below {acked[p]} that was acknowledged"
            return None
        finally:
            await consumer.stop()

    async def reset_after_loss(self) -> dict[int, int]:
        """Forget the old topic's offsets: from now on, what the current topic holds counts."""
        ends = await self.end_offsets(await self.topic_partitions())
        self.acked_ends = dict(ends)
        self.lost_reason = None
        self.lost.clear()
        return ends

    async def send_markers(self, epoch: int, *, complete: bool, subjects: int, at: dt.datetime) -> int:
        """One :class:`EpochMarker` to every partition (explicitly: its key names it); waits
        for the acknowledgements. Returns the number of partitions marked."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("the publisher is not started")
        partitions = await self.topic_partitions()
        if set(partitions) - set(await producer.partitions_for(self.topic)):
            # The producer's metadata is of the topic as it was (a broker that restarted,
            # a recreated topic): refresh it before naming partitions.
            await producer.client.force_metadata_update()
            missing = set(partitions) - set(await producer.partitions_for(self.topic))
            if missing:
                raise KafkaError(f"the producer does not know partition(s) {sorted(missing)} of {self.topic} yet")
        futures = [
            await producer.send(self.topic, key=f"{MARKER_KEY_PREFIX}{p}".encode(), partition=p,
                                value=encode_marker(EpochMarker(epoch=epoch, complete=complete, partition=p,
                                                                subjects=subjects, at=at)))
            for p in partitions
        ]
        await self._acknowledged(futures)
        return len(partitions)

    async def publish(self, messages: Sequence[Message]) -> None:
        """Send and wait for every acknowledgement."""
        await (await self.send(messages))

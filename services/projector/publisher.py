"""Writes eligibility matrices to ``consent.eligibility.v1``.

The projector publishes a batch and waits for every acknowledgement *before* it commits
the rows that record what was published: a crash in between re-publishes the same
(deterministic) value, never loses one. The topic is compacted (latest value per key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Final, Protocol

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from schemas.eligibility import TOPIC
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
        self._producer: AIOKafkaProducer | None = None

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

    async def publish(self, messages: Sequence[Message]) -> None:
        """Send and wait for every acknowledgement."""
        await (await self.send(messages))

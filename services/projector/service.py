"""The projector process: the Kafka consumer plus the maintenance loop.

Maintenance (one leader at a time, by a PostgreSQL advisory lock, so several instances do
not fight over the same rows): pending tenant re-evaluations (a term edit), pending
publications (after a rebuild, or a spell without a broker) and the daily scheduler that
re-publishes the subjects whose matrix changes today with no new event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Final

import asyncpg
import msgspec
import structlog
from aiokafka.errors import KafkaError

from schemas.eligibility import TOPIC as ELIGIBILITY_TOPIC
from services.kafka_security import PLAINTEXT, KafkaSecurity
from services.ledger.subject_keys import parse_master_key
from services.mail.tokens import AnswerLinks
from services.projector.clock import Clock, SystemClock
from services.projector.consumer import DEFAULT_GROUP, LEDGER_TOPIC, LedgerConsumer
from services.projector.metrics import ProjectorMetrics
from services.projector.projection import Projection
from services.projector.publisher import KafkaPublisher

log = structlog.get_logger(__name__)

_MAINTENANCE_LOCK: Final = 0x70726F6A6563  # "projec"


class ProjectorConfig(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str
    bootstrap: str | None
    group_id: str | None = DEFAULT_GROUP  # None: assign every partition (a single instance)
    ledger_topic: str = LEDGER_TOPIC
    eligibility_topic: str = ELIGIBILITY_TOPIC
    eligibility_partitions: int = 6
    compression: str | None = "gzip"
    batch_size: int = 2000
    pool_size: int = 5
    maintenance_interval: float = 1.0  # seconds between looks for pending work
    due_interval: float = 60.0  # seconds between scheduler passes (and at every new day)
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    kafka_security: KafkaSecurity = PLAINTEXT  # TLS and SASL (services/kafka_security.py)
    # Signs the one-click unsubscribe links in the messages (LEDGER_MASTER_KEY); None: no links.
    master_key: str | None = None
    portal_base_url: str = "http://127.0.0.1:8081"


class ProjectorService:
    def __init__(self, config: ProjectorConfig, *, clock: Clock | None = None,
                 metrics: ProjectorMetrics | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.metrics = metrics or ProjectorMetrics()
        self.pool: asyncpg.Pool | None = None
        self.publisher: KafkaPublisher | None = None
        self.projection: Projection | None = None
        self.consumer: LedgerConsumer | None = None
        self.leader = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        c = self.config
        self.pool = await asyncpg.create_pool(c.database_url, min_size=1, max_size=c.pool_size)
        if c.bootstrap:
            self.publisher = KafkaPublisher(c.bootstrap, topic=c.eligibility_topic,
                                            partitions=c.eligibility_partitions, compression=c.compression,
                                            security=c.kafka_security)
            await self.publisher.start()
        links = AnswerLinks(parse_master_key(c.master_key), c.portal_base_url) if c.master_key else None
        self.projection = Projection(self.pool, clock=self.clock, publisher=self.publisher, metrics=self.metrics,
                                     batch_size=c.batch_size, links=links)
        if c.bootstrap:
            self.consumer = LedgerConsumer(
                self.projection, c.bootstrap, topic=c.ledger_topic, group_id=c.group_id, max_records=c.batch_size,
                session_timeout_ms=c.session_timeout_ms, heartbeat_interval_ms=c.heartbeat_interval_ms,
                security=c.kafka_security,
            )
            self._tasks.append(asyncio.create_task(self.consumer.run(), name="projector-consumer"))
        self._tasks.append(asyncio.create_task(self._maintenance(), name="projector-maintenance"))
        log.info("projector_started", group=c.group_id, bootstrap=c.bootstrap)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.publisher is not None:
            await self.publisher.stop()
        if self.pool is not None:
            await self.pool.close()
        log.info("projector_stopped")

    def failed(self) -> BaseException | None:
        """The exception a background task died of, if any (a stored event the rules
        cannot apply stops the projector rather than skip it)."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return task.exception()
        return None

    async def _maintenance(self) -> None:
        c = self.config
        assert self.projection is not None
        projection = self.projection
        conn: asyncpg.Connection | None = None
        last_due = -float("inf")
        last_day = None
        try:
            while True:
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(c.database_url)
                        self.leader = False
                    if not self.leader:
                        self.leader = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", _MAINTENANCE_LOCK))
                        if self.leader:
                            log.info("projector_maintenance_leader")
                    if self.leader:
                        await projection.reevaluate_pending()
                        await projection.publish_pending()
                        today = self.clock.today()
                        if time.monotonic() - last_due >= c.due_interval or today != last_day:
                            due = await projection.run_due()
                            if due:
                                log.info("projector_day_reevaluated", day=today.isoformat(), subjects=due)
                            last_due, last_day = time.monotonic(), today
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError,
                        KafkaError) as exc:  # keep the consumer running; retry at the next round
                    log.error("projector_maintenance_failed", error=f"{type(exc).__name__}: {exc}")
                    if conn is not None and not conn.is_closed():
                        await conn.close()
                    conn = None
                if self.leader:  # woken early by a term edit this process applied
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(projection.reeval_wanted.wait(), timeout=c.maintenance_interval)
                else:  # the leader does the work; the wake-up is not for us
                    projection.reeval_wanted.clear()
                    await asyncio.sleep(c.maintenance_interval)
        finally:
            if conn is not None and not conn.is_closed():
                await conn.close()  # also releases the leader lock


@contextlib.asynccontextmanager
async def running_projector(config: ProjectorConfig, *, clock: Clock | None = None) -> AsyncIterator[ProjectorService]:
    service = ProjectorService(config, clock=clock)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()

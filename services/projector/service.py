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
    rules_pause: float = 0.05  # seconds between batches of the start-up re-evaluation for a new rule table
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    kafka_security: KafkaSecurity = PLAINTEXT  # TLS and SASL (services/kafka_security.py)
    # How often the leader checks that the eligibility topic still holds what was published
    # (a write acknowledged at an offset given before is noticed at once, without waiting).
    topic_check_interval: float = 5.0
    republish_rate: float | None = 50_000.0  # subjects/s a republish may publish (None: no limit)
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
        self._republish: asyncio.Task[int] | None = None
        self._acked_loaded = False
        self._persisted_ends: dict[int, int] = {}
        self._last_topic_check = -float("inf")
        self._topic_suspect = True  # check at the first round (on start)

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
        if self._republish is not None:
            self._republish.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._republish
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
        rules_done = False  # once per process: rows evaluated with another legal rule table
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
                    if self.leader and self.publisher is not None:
                        await self._watch_topic()
                    elif self.publisher is not None:  # the leader may have started a new epoch
                        await projection.load_epoch(c.eligibility_topic)
                    if self.leader:
                        await projection.reevaluate_pending()
                        if not rules_done:
                            await projection.reevaluate_rules(pause=c.rules_pause)
                            rules_done = True
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

    async def _watch_topic(self) -> None:
        """The leader's look at the eligibility topic: a loss found (on start, every
        ``topic_check_interval``, at once after an acknowledgement went backwards or a
        failed check) starts a new epoch and a republish of every subject, which runs as a
        task of its own so term edits, the day's lapses and live changes go on meanwhile."""
        c = self.config
        publisher, projection = self.publisher, self.projection
        assert publisher is not None and projection is not None
        topic = c.eligibility_topic
        stored = await projection.pool.fetchrow(
            "SELECT epoch, acked_ends FROM projector.eligibility_topic WHERE topic = $1", topic)
        if stored is not None and (not self._acked_loaded or stored[0] > projection.epoch):
            # On start, or another process (`projector republish`) started a new epoch and
            # recorded the offsets of the topic as it found it: those count from now on.
            ends = {p: end for p, end in enumerate(stored[1] or [])}
            publisher.acked_ends = ends if self._acked_loaded else {
                p: max(publisher.acked_ends.get(p, 0), ends.get(p, 0)) for p in {*ends, *publisher.acked_ends}}
            self._persisted_ends = dict(publisher.acked_ends)
        if not self._acked_loaded or stored is not None:
            await projection.load_epoch(topic)
        self._acked_loaded = True
        due = time.monotonic() - self._last_topic_check >= c.topic_check_interval
        if due or self._topic_suspect or publisher.lost.is_set():
            try:
                reason = await asyncio.wait_for(self._topic_loss(), timeout=publisher.request_timeout_ms / 1000)
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:  # the broker is away: look again next round
                self._topic_suspect = True
                log.info("projector_topic_check_failed", error=f"{type(exc).__name__}: {exc}")
                return
            self._last_topic_check = time.monotonic()
            self._topic_suspect = False
            if reason is not None:
                self.metrics.topic_losses.inc()
                ends = await publisher.reset_after_loss()
                await projection.request_republish(topic, reason, acked_ends=ends)
                self._persisted_ends = dict(ends)
            elif publisher.acked_ends != self._persisted_ends:
                ends = dict(publisher.acked_ends)
                await projection.pool.execute(
                    "INSERT INTO projector.eligibility_topic (topic, acked_ends) VALUES ($1, $2)"
                    " ON CONFLICT (topic) DO UPDATE SET acked_ends = excluded.acked_ends",
                    topic, [ends.get(p, 0) for p in range(max(ends) + 1)])
                self._persisted_ends = ends
        task = self._republish
        if task is not None and task.done():
            self._republish = None
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                self._topic_suspect = True  # perhaps the broker went away again
                log.warning("projector_republish_interrupted", error=f"{type(exc).__name__}: {exc}")
        if self._republish is None and await projection.pool.fetchval(
                "SELECT republish_epoch IS NOT NULL FROM projector.eligibility_topic WHERE topic = $1", topic):
            self._republish = asyncio.create_task(projection.republish_pending(topic, rate=c.republish_rate),
                                                  name="projector-republish")

    async def _topic_loss(self) -> str | None:
        publisher = self.publisher
        assert publisher is not None and self.projection is not None
        reason = await publisher.check_topic()
        if reason is None and not any(publisher.acked_ends.values()):
            # Nothing known to be acknowledged (the first start with this table): an empty
            # topic while subjects were published lost them.
            ends = await publisher.end_offsets(await publisher.topic_partitions())
            if not any(ends.values()) and await self.projection.pool.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM projector.subjects WHERE published_hash IS NOT NULL)"):
                reason = "the topic is empty but subjects were published to it"
        return reason


@contextlib.asynccontextmanager
async def running_projector(config: ProjectorConfig, *, clock: Clock | None = None) -> AsyncIterator[ProjectorService]:
    service = ProjectorService(config, clock=clock)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()

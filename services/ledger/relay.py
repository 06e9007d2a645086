"""The relay: publishes every committed ledger event to Kafka, in ledger order.

Topic ``consent.ledger.events.v1``, key = stream id (bytes), value = the JSON envelope
(:func:`schemas.events.encode_recorded`). Appends never wait for Kafka: they only touch
PostgreSQL, and this relay follows ``ledger.events`` on its own (a task inside
``consent-ledger serve`` or the ``consent-ledger relay`` process).

Guarantees (see docs/relay-and-local-stack.md):

* **one checkpoint per log partition** (``ledger.checkpoints``, ``relay:{topic}/p{n}``):
  the relay reads every partition after its own checkpoint in one query (positions of
  different partitions are not comparable; within one, a row that commits later always
  gets a higher position, so nothing is skipped);
* **at least once**: a partition's checkpoint advances only after the broker acknowledged
  (``acks="all"``) every event of a batch; a crash re-sends at most the batch in flight;
* **stream order**: one producer, one batch in flight (publish, await every ack, then
  advance); same key -> same partition; aiokafka keeps one request in flight per broker,
  so retries do not reorder;
* **a broker that lost its data** (in-memory tansu restarted, topic deleted) is noticed
  (topic missing or empty while the checkpoint says we published, or acknowledged
  offsets going backwards) and the whole ledger is published again from the start.
  Consumers de-duplicate: per stream, apply an event iff its version is the last applied
  version + 1.
* **one active relay per topic and database**: a PostgreSQL advisory lock, held on the
  relay's own connection; other relays (more API replicas) wait as standbys.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import signal
from collections.abc import AsyncIterator
from typing import Final

import asyncpg
import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from schemas.events import encode_recorded
from services.kafka_security import PLAINTEXT, KafkaSecurity
from services.ledger.metrics import LedgerMetrics
from services.ledger.store import partition_count, partition_heads, read_partitions
from services.settings import Settings

log = structlog.get_logger(__name__)

TOPIC: Final = "consent.ledger.events.v1"
_TOPIC_EXISTS: Final = 36  # Kafka error code TOPIC_ALREADY_EXISTS


class RelayConfig(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str
    bootstrap: str
    topic: str = TOPIC
    partitions: int = 6
    replication_factor: int = 1
    batch_size: int = 500
    idle_poll: float = 0.05  # seconds between looks at the ledger when there is nothing new
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    standby_poll: float = 1.0
    request_timeout_ms: int = 10_000
    security: KafkaSecurity = PLAINTEXT  # TLS and SASL (services/kafka_security.py)

    @property
    def checkpoint_name(self) -> str:
        """The single checkpoint of the relay before the log was partitioned: the fallback
        of every partition's own (its positions are below every partition's new ones)."""
        return f"relay:{self.topic}"

    def partition_checkpoint(self, partition: int) -> str:
        return f"relay:{self.topic}/p{partition}"

    @property
    def lock_id(self) -> int:
        """Advisory lock key: stable per checkpoint name, signed 64-bit."""
        return int.from_bytes(hashlib.sha256(self.checkpoint_name.encode()).digest()[:8], "big", signed=True)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> RelayConfig:
        if not settings.kafka_bootstrap:
            raise ValueError("the relay needs LEDGER_KAFKA_BOOTSTRAP")
        values: dict[str, object] = {
            "database_url": settings.database_url,
            "bootstrap": settings.kafka_bootstrap,
            "partitions": settings.relay_partitions,
            "replication_factor": settings.relay_replication_factor,
            "security": KafkaSecurity.from_settings(settings),
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


# The relay's two signals below are caught by the relay loop itself (republish, reconnect);
# no request or user causes them, so they stay outside the error family (services/errors.py).
class BrokerLostData(Exception):
    """The broker no longer has what it acknowledged: publish everything again."""


class TopicMissing(Exception):
    """The topic disappeared between two batches (reconnect, then decide)."""


class Relay:
    def __init__(self, config: RelayConfig, metrics: LedgerMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or LedgerMetrics()
        self.checkpoints: dict[int, int] = {}  # per log partition, the last position the broker acknowledged
        self.published = 0  # events acknowledged by the broker since start (re-sends included)
        self.republishes = 0  # times the broker's loss of data made us start from position 1
        self._log = log.bind(topic=config.topic)

    # -- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Relay forever (until cancelled), reconnecting with capped exponential backoff."""
        backoff = self.config.backoff_initial
        while True:
            before = self.published
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError,
                    BrokerLostData, TopicMissing) as exc:
                if self.published > before:
                    backoff = self.config.backoff_initial
                self._log.warning("relay_retrying", error=f"{type(exc).__name__}: {exc}",
                                  relayed=self.checkpoint, retry_in_s=round(backoff, 2))
            except Exception:  # a bug must not stop the relay for good: log it loudly and retry
                self._log.exception("relay_failed", relayed=self.checkpoint, retry_in_s=round(backoff, 2))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.backoff_max)

    async def _session(self) -> None:
        """One connection to each side; returns or raises when either breaks."""
        async with contextlib.AsyncExitStack() as stack:
            conn: asyncpg.Connection = await asyncpg.connect(self.config.database_url, timeout=10)
            stack.push_async_callback(conn.close, timeout=5)
            await self._become_leader(conn)
            self.checkpoints = await self._load_checkpoints(conn)
            await self._update_lag(conn)
            admin = AIOKafkaAdminClient(bootstrap_servers=self.config.bootstrap,
                                        request_timeout_ms=self.config.request_timeout_ms,
                                        **self.config.security.client_options())
            stack.push_async_callback(admin.close)  # safe after a failed start
            await admin.start()
            await self._ensure_topic(conn, admin)
            producer = AIOKafkaProducer(
                bootstrap_servers=self.config.bootstrap,
                **self.config.security.client_options(),
                acks="all",
                request_timeout_ms=self.config.request_timeout_ms,
                linger_ms=2,
                max_batch_size=256 * 1024,
            )
            stack.push_async_callback(producer.stop)
            await producer.start()
            self._log.info("relay_connected", bootstrap=self.config.bootstrap, relayed=self.checkpoint)
            await self._publish_loop(conn, admin, producer)

    async def _become_leader(self, conn: asyncpg.Connection) -> None:
        waiting = False
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.config.lock_id):
            if not waiting:
                self._log.info("relay_standby", reason="another relay holds the lock")
                waiting = True
            self.checkpoints = await self._load_checkpoints(conn)
            await self._update_lag(conn)
            await asyncio.sleep(self.config.standby_poll)

    async def _publish_loop(self, conn: asyncpg.Connection, admin: AIOKafkaAdminClient,
                            producer: AIOKafkaProducer) -> None:
        last_offsets: dict[int, int] = {}
        partitions = await partition_count(conn)
        while True:
            # Every partition after its own checkpoint, in one round trip (store verb).
            events = await read_partitions(conn, self.checkpoints, partitions, self.config.batch_size)
            if not events:
                self.metrics.relay_lag.set(0)
                await asyncio.sleep(self.config.idle_poll)
                continue
            if self.config.topic not in await admin.list_topics():
                raise TopicMissing(f"topic {self.config.topic} is gone")
            futures = [
                await producer.send(self.config.topic, key=e.stream_id.encode(), value=encode_recorded(e))
                for e in events
            ]
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
            failed = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if failed is not None:
                raise failed
            for meta in outcomes:
                assert not isinstance(meta, BaseException)
                previous = last_offsets.get(meta.partition)
                if previous is not None and meta.offset <= previous:
                    await self._reset_checkpoints(conn)
                    self.republishes += 1
                    raise BrokerLostData(f"partition {meta.partition} acknowledged offset {meta.offset}"
                                         f" after {previous}: the broker lost its data")
                last_offsets[meta.partition] = meta.offset
            self.published += len(events)
            # Events come ordered by partition, then position: the last of each partition wins.
            await self._save_checkpoints(conn, {e.partition: e.position for e in events})
            await self._update_lag(conn)

    # -- the topic -----------------------------------------------------------------

    async def _ensure_topic(self, conn: asyncpg.Connection, admin: AIOKafkaAdminClient) -> None:
        topic = self.config.topic
        if topic not in await admin.list_topics():
            response = await admin.create_topics([NewTopic(
                topic, num_partitions=self.config.partitions, replication_factor=self.config.replication_factor,
                # The topic is the ledger's public log: never expire it by time.
                topic_configs={"retention.ms": "-1"},
            )])
            for name, code, message in response.topic_errors:
                if code not in (0, _TOPIC_EXISTS):
                    raise KafkaError(f"creating topic {name} failed: error {code} {message}")
            self._log.info("relay_topic_created", partitions=self.config.partitions)
            if self.checkpoint > 0:
                await self._lost(conn, "the topic is missing")
            return
        partitions = await self._partitions(admin)
        if len(partitions) != self.config.partitions:
            self._log.warning("relay_topic_partitions_differ", found=len(partitions), configured=self.config.partitions)
        if self.checkpoint > 0 and await self._is_empty(partitions):
            await self._lost(conn, "the topic is empty")

    async def _lost(self, conn: asyncpg.Connection, why: str) -> None:
        self._log.warning("relay_republishing_from_start", reason=why, relayed=self.checkpoint)
        self.republishes += 1
        await self._reset_checkpoints(conn)

    async def _partitions(self, admin: AIOKafkaAdminClient) -> list[int]:
        described = await admin.describe_topics([self.config.topic])
        return sorted(p["partition"] for d in described if d["topic"] == self.config.topic for p in d["partitions"])

    async def _is_empty(self, partitions: list[int]) -> bool:
        """No partition ever held a record (end offsets never go back on a healthy broker)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.config.bootstrap, enable_auto_commit=False,
                                    request_timeout_ms=self.config.request_timeout_ms,
                                    **self.config.security.client_options())
        try:
            await consumer.start()
            ends = await consumer.end_offsets([TopicPartition(self.config.topic, p) for p in partitions])
        finally:
            await consumer.stop()
        return all(offset == 0 for offset in ends.values())

    # -- the checkpoint ------------------------------------------------------------

    @property
    def checkpoint(self) -> int:
        """The checkpoints added up: on a ledger partitioned from its start, the number of
        events the broker acknowledged (for logs and tests; the relay uses the map)."""
        return sum(self.checkpoints.values())

    async def _load_checkpoints(self, conn: asyncpg.Connection) -> dict[int, int]:
        rows = await conn.fetch("SELECT name, position FROM ledger.checkpoints WHERE name = $1 OR name LIKE $2",
                                self.config.checkpoint_name, f"relay:{self.config.topic}/p%")
        stored = {r["name"]: int(r["position"]) for r in rows}
        # A partition without a checkpoint of its own continues from the single checkpoint
        # of the relay before partitioning: everything at or below it was published, and
        # every event written since is above it in whatever partition.
        legacy = stored.get(self.config.checkpoint_name, 0)
        partitions = await partition_count(conn)
        return {p: stored.get(self.config.partition_checkpoint(p), legacy) for p in range(partitions)}

    async def _save_checkpoints(self, conn: asyncpg.Connection, positions: dict[int, int]) -> None:
        parts = sorted(positions)
        await conn.execute(
            "INSERT INTO ledger.checkpoints (name, position) SELECT * FROM unnest($1::text[], $2::bigint[])"
            " ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()",
            [self.config.partition_checkpoint(p) for p in parts], [positions[p] for p in parts],
        )
        self.checkpoints.update(positions)

    async def _reset_checkpoints(self, conn: asyncpg.Connection) -> None:
        """Publish everything again: every partition from the start (the checkpoint of
        before partitioning too, so that it no longer stands in for a missing one)."""
        partitions = await partition_count(conn)
        await self._save_checkpoints(conn, dict.fromkeys(range(partitions), 0))
        await conn.execute("UPDATE ledger.checkpoints SET position = 0, updated_at = now() WHERE name = $1",
                           self.config.checkpoint_name)

    async def _update_lag(self, conn: asyncpg.Connection) -> None:
        heads = await partition_heads(conn)
        lag = sum(max(0, head - self.checkpoints.get(p, 0)) for p, head in heads.items())
        self.metrics.relay_lag.set(lag)


# -- running it --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_relay(config: RelayConfig, metrics: LedgerMetrics | None = None) -> AsyncIterator[Relay]:
    """The relay as a background task for the life of the block."""
    relay = Relay(config, metrics)
    task = asyncio.create_task(relay.run(), name="ledger-relay")
    try:
        yield relay
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def relay_context(app: object) -> AsyncIterator[None]:
    """``cleanup_ctx`` of the ledger API: the relay runs next to the HTTP server when
    LEDGER_KAFKA_BOOTSTRAP is set, with its lag on the API's /metrics."""
    from aiohttp import web

    from services.ledger.api.context import METRICS, SETTINGS

    assert isinstance(app, web.Application)
    async with running_relay(RelayConfig.from_settings(app[SETTINGS]), app[METRICS]):
        yield


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("relay", help=f"publish ledger events to Kafka ({TOPIC}) on its own")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics (ledger_relay_lag_events) on this port")
    p.set_defaults(func=cmd_relay)


def cmd_relay(args: argparse.Namespace) -> int:
    from services.settings import from_env

    settings = from_env()
    if not settings.database_url:
        raise SystemExit("consent-ledger: LEDGER_DATABASE_URL is not set")
    if not settings.kafka_bootstrap:
        raise SystemExit("consent-ledger: LEDGER_KAFKA_BOOTSTRAP is not set")
    asyncio.run(_relay_main(RelayConfig.from_settings(settings), settings.host, args.metrics_port))
    return 0


async def _relay_main(config: RelayConfig, host: str, metrics_port: int | None) -> None:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST

    metrics = LedgerMetrics()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner: web.AppRunner | None = None
    if metrics_port is not None:
        async def serve_metrics(_: web.Request) -> web.Response:
            return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", serve_metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, metrics_port).start()
    log.info("relay_started", topic=config.topic, metrics_port=metrics_port)
    try:
        async with running_relay(config, metrics):
            await stop.wait()
    finally:
        if runner is not None:
            await runner.cleanup()
    log.info("relay_stopped")

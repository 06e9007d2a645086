"""``consent-ledger projector run|rebuild|status``."""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys

import asyncpg
import msgspec
import structlog

from services.errors import LedgerError
from services.projector.clock import SystemClock
from services.projector.consumer import DEFAULT_GROUP
from services.settings import Settings, from_env

log = structlog.get_logger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("projector", help="the eligibility projector (read models, consent.eligibility.v1)")
    commands = p.add_subparsers(dest="projector_command", required=True)

    run = commands.add_parser("run", help="consume consent.ledger.events.v1, keep the read model, publish eligibility")
    run.add_argument("--group", default=DEFAULT_GROUP,
                     help=f"Kafka consumer group shared by all instances (default {DEFAULT_GROUP})")
    run.add_argument("--no-group", action="store_true",
                     help="no consumer group: this single instance takes every partition")
    run.add_argument("--batch", type=int, default=2000, help="events per consumed batch / subjects per re-evaluation")
    run.add_argument("--partitions", type=int, default=6, help="partitions of consent.eligibility.v1 if created")
    run.add_argument("--metrics-port", type=int, default=None, help="serve /metrics and /healthz on this port")
    run.set_defaults(func=cmd_run)

    rebuild = commands.add_parser("rebuild", help="rebuild the read model from the PostgreSQL ledger and swap it in")
    rebuild.add_argument("--fetch", type=int, default=20_000, help="rows per cursor fetch")
    rebuild.add_argument("--workers", type=int, default=None,
                         help="processes folding and evaluating subjects in parallel"
                         " (default: one per 250,000 events, at most the CPU count)")
    rebuild.set_defaults(func=cmd_rebuild)

    republish = commands.add_parser(
        "republish", help="publish every subject's current matrix (tombstones for erased ones) again,"
        " e.g. after restoring a Kafka cluster")
    republish.add_argument("--tenant", default=None,
                           help="only this tenant's subjects (the topic's epoch stays; default: every subject,"
                           " under a new epoch)")
    republish.add_argument("--rate", type=float, default=50_000.0, help="subjects per second at most (default 50000)")
    republish.add_argument("--topic", default=None, help="the eligibility topic (default consent.eligibility.v1)")
    republish.set_defaults(func=cmd_republish)

    status = commands.add_parser("status", help="offsets, pending work and the checkpoint of the read model")
    status.set_defaults(func=cmd_status)


def _settings(*, kafka: bool) -> Settings:
    settings = from_env()
    if not settings.database_url:
        raise SystemExit("consent-ledger: LEDGER_DATABASE_URL is not set")
    if kafka and not settings.kafka_bootstrap:
        raise SystemExit("consent-ledger: LEDGER_KAFKA_BOOTSTRAP is not set (the projector consumes Kafka)")
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    from services.kafka_security import KafkaSecurity
    from services.projector.service import ProjectorConfig

    settings = _settings(kafka=True)
    if args.batch < 1 or args.partitions < 1:
        raise SystemExit("consent-ledger: --batch and --partitions must be at least 1")
    config = ProjectorConfig(
        database_url=settings.database_url, bootstrap=settings.kafka_bootstrap,
        group_id=None if args.no_group else args.group, batch_size=args.batch,
        eligibility_partitions=args.partitions, pool_size=max(2, min(settings.pool_size, 10)),
        kafka_security=KafkaSecurity.from_settings(settings),
        master_key=settings.master_key, portal_base_url=settings.portal_base_url,
    )
    return asyncio.run(_run(config, settings.host, args.metrics_port))


async def _run(config: object, host: str, metrics_port: int | None) -> int:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from services.projector.service import ProjectorConfig, ProjectorService

    assert isinstance(config, ProjectorConfig)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    service = ProjectorService(config)
    await service.start()
    runner: web.AppRunner | None = None
    if metrics_port is not None:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(service.metrics.registry),
                                headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def healthz(_: web.Request) -> web.Response:
            failed = service.failed()
            if failed is not None:
                return web.json_response({"status": "failed", "error": type(failed).__name__}, status=503)
            return web.json_response({"status": "ok", "leader": service.leader})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, metrics_port).start()
    code = 0
    try:
        while not stop.is_set():
            failed = service.failed()
            if failed is not None:
                log.error("projector_failed", error=f"{type(failed).__name__}: {failed}")
                code = 1
                break
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
    finally:
        if runner is not None:
            await runner.cleanup()
        await service.stop()
    return code


def cmd_rebuild(args: argparse.Namespace) -> int:
    from services.projector.rebuild import RebuildInProgress, rebuild

    settings = _settings(kafka=False)
    if args.fetch < 1 or (args.workers is not None and args.workers < 1):
        raise SystemExit("consent-ledger: --fetch and --workers must be at least 1")
    try:
        report = asyncio.run(rebuild(settings.database_url, clock=SystemClock(), fetch_size=args.fetch,
                                     workers=args.workers))
    except RebuildInProgress as exc:
        print(f"consent-ledger: {exc}", file=sys.stderr)
        return 1
    figures = msgspec.structs.asdict(report) | {"events_per_s": round(report.events_per_s, 1)}
    print(msgspec.json.encode(figures).decode())
    return 0


def cmd_republish(args: argparse.Namespace) -> int:
    from schemas.vocabulary import SLUG_PATTERN
    from schemas.eligibility import TOPIC

    settings = _settings(kafka=True)
    if args.rate <= 0:
        raise SystemExit("consent-ledger: --rate must be above 0")
    if args.tenant is not None and not re.fullmatch(SLUG_PATTERN, args.tenant):
        raise SystemExit(f"consent-ledger: --tenant {args.tenant!r} is not a tenant id")
    try:
        report = asyncio.run(_republish(settings, args.topic or TOPIC, args.tenant, args.rate))
    except _CommandError as exc:
        print(f"consent-ledger: {exc}", file=sys.stderr)
        return 1
    print(msgspec.json.encode(report).decode())
    return 0


class _CommandError(LedgerError):
    """A projector command that cannot run as asked (unknown tenant, broker unreachable)."""


async def _republish(settings: Settings, topic: str, tenant: str | None, rate: float) -> dict[str, object]:
    import time

    from aiokafka.errors import KafkaError

    from services.kafka_security import KafkaSecurity
    from services.projector.projection import Projection
    from services.projector.publisher import KafkaPublisher

    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=3)
    publisher = KafkaPublisher(settings.kafka_bootstrap, topic=topic, security=KafkaSecurity.from_settings(settings))
    try:
        if tenant is not None and not await pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM projector.tenants WHERE tenant_id = $1)", tenant):
            raise _CommandError(f"the projector holds no tenant {tenant!r}")
        try:
            await asyncio.wait_for(publisher.start(), timeout=30)
            ends = await publisher.end_offsets(await publisher.topic_partitions())
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            raise _CommandError(f"the broker at {settings.kafka_bootstrap} cannot be reached:"
                                f" {type(exc).__name__}: {exc}") from None
        projection = Projection(pool, clock=SystemClock(), publisher=publisher)
        await projection.load_epoch(topic)
        epoch = await projection.request_republish(
            topic, "consent-ledger projector republish", tenant=tenant,
            acked_ends=ends if tenant is None else None)
        started = time.monotonic()
        published = 0
        while True:
            published += await projection.republish_pending(topic, rate=rate)
            pending = await pool.fetchval(
                "SELECT republish_epoch FROM projector.eligibility_topic WHERE topic = $1", topic)
            if pending is None or pending > epoch:
                break  # done (by us or by a running projector), or superseded by a newer epoch
            await asyncio.sleep(0.5)  # a running projector is doing it: wait for it to finish
        seconds = time.monotonic() - started
        return {"topic": topic, "epoch": epoch, "tenant": tenant, "published_here": published,
                "seconds": round(seconds, 2)}
    finally:
        await publisher.stop()
        await pool.close()


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(kafka=False)

    from services.ledger.store import partition_heads

    async def status() -> dict[str, object]:
        conn = await asyncpg.connect(settings.database_url)
        try:
            return {
                "subjects": await conn.fetchval("SELECT count(*) FROM projector.subjects"),
                "tenants": await conn.fetchval("SELECT count(*) FROM projector.tenants"),
                # Per log partition (index = partition): positions of two are not comparable.
                "ledger_heads": [h for _, h in sorted((await partition_heads(conn)).items())],
                "rebuilt_through": await conn.fetchval(
                    "SELECT coalesce(rebuilt_through_partitions, array[rebuilt_through]) FROM projector.checkpoint"),
                "offsets": {f"{r[0]}/{r[1]}": r[2] for r in await conn.fetch(
                    "SELECT topic, partition, next_offset FROM projector.offsets ORDER BY topic, partition")},
                "pending_term_reevaluations": [r[0] for r in await conn.fetch(
                    "SELECT tenant_id FROM projector.tenants WHERE reeval_version IS NOT NULL ORDER BY 1")],
                "unpublished": await conn.fetchval(
                    "SELECT count(*) FROM projector.subjects WHERE published_hash IS DISTINCT FROM matrix_hash"),
                "due_today_or_earlier": await conn.fetchval(
                    "SELECT count(*) FROM projector.subjects WHERE next_change <= $1", SystemClock().today()),
                "eligibility_topics": {r[0]: {"epoch": r[1], "republishing": r[2] is not None,
                                              "republish_tenant": r[3], "republished": r[4],
                                              "republished_at": r[5].isoformat() if r[5] else None}
                                       for r in await conn.fetch(
                    "SELECT topic, epoch, republish_epoch, republish_tenant, republish_done, republished_at"
                    " FROM projector.eligibility_topic ORDER BY topic")},
            }
        finally:
            await conn.close()

    print(msgspec.json.encode(asyncio.run(status())).decode())
    return 0

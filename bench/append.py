"""Append throughput and latency of the ledger over HTTP, against two baselines.

Phases, one after the other, all against the same durable PostgreSQL (fsync on):

1. raw: asyncpg single-row INSERT, one transaction each, 8 connections, into a plain
   table shaped like ``ledger.events`` (``LIKE ledger.events INCLUDING ALL``);
2. eventsourcing: the ``eventsourcing`` library's PostgreSQL recorder (psycopg3),
   one event per ``insert_events`` call, 8 threads;
3. ledger: HTTP ``POST .../subjects/{source}/{ref}/preferences``, one event per
   request, 32 concurrent aiohttp clients, server in its own process;
4. executemany: asyncpg ``executemany`` of 500 rows per transaction, 4 connections;
5. bulk: HTTP ``POST /v1/tenants/{tenant}/subjects:batch`` with 500 items, 4 clients.

Every phase writes the same event (a PreferencesChanged JSON and its metadata).
``--quick`` runs each phase for a few seconds (whole run < 60 s); the last stdout line
is the JSON object with the figures (see bench/common.py, docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import structlog

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    CpuMeter,
    LedgerProcess,
    LoadResult,
    closed_loop,
    create_database,
    local_postgres,
    machine,
    postmaster_pid,
    run_loop,
    ratio,
    server_settings,
    threaded_closed_loop,
    write_result,
)
from schemas.events import Actor, Metadata, PreferenceSetting, PreferencesChanged, encode_event  # noqa: E402
from services.devservers import remove_tree  # noqa: E402
from services.ledger.api_keys import issue_key  # noqa: E402
from services.ledger.migrate import migrate  # noqa: E402
from services.ledger.subject_keys import new_master_key  # noqa: E402

TENANT = "bench-garage"
STREAMS_PER_WORKER = 100
BULK_ROWS = 500

_CATEGORIES = ("aftersales_service", "newsletter", "sales_campaign", "aftersales_campaign")
_CHANNELS = ("email", "sms", "app", "post", "phone")

INSERT_ROW = (
    "INSERT INTO bench.{table} (position, event_id, stream_id, version, tenant_id, event_type, schema_version,"
    " recorded_at, occurred_on, data, metadata, prev_hash, hash)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
)


class Profile(msgspec.Struct, frozen=True):
    seconds: float
    warmup: float
    http_clients: int = 32
    raw_connections: int = 8
    es_threads: int = 8
    bulk_clients: int = 4


QUICK = Profile(seconds=5.0, warmup=1.0)
FULL = Profile(seconds=30.0, warmup=3.0)


def preference_change(w: int, i: int) -> dict[str, str]:
    return {
        "category": _CATEGORIES[(w + i) % len(_CATEGORIES)],
        "channel": _CHANNELS[i % len(_CHANNELS)],
        "value": "opt_out" if i % 2 else "opt_in",
    }


def sample_event_json() -> tuple[str, str]:
    """The data and metadata JSON of a typical preference change, as the ledger writes them."""
    actor = Actor(kind="staff", id="key:0123456789ab")
    event = PreferencesChanged(changes=[PreferenceSetting(**preference_change(0, 1))], changed_by=actor, method="api")
    request_id = uuid.uuid4().hex
    meta = Metadata(actor=actor, method="api", request_id=request_id, correlation_id=request_id)
    return encode_event(event).decode(), msgspec.json.encode(meta).decode()


def stream_of(prefix: str, w: int, i: int) -> tuple[str, int]:
    """Each worker owns its streams, so versions never conflict: (stream, version)."""
    return (f"subject/{TENANT}/dealer/{prefix}{w}-{i % STREAMS_PER_WORKER}",
            i // STREAMS_PER_WORKER + 1)


# -- baselines ---------------------------------------------------------------------------


async def prepare_tables(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        await conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
        # Same columns, types, primary key, unique constraints and indexes as the ledger's table.
        for table in ("raw_events", "raw_bulk"):
            await conn.execute(f"CREATE TABLE bench.{table} (LIKE ledger.events INCLUDING ALL)")
    finally:
        await conn.close()


class RawRows:
    """Rows for the baselines: same JSON, fresh ids, positions from one counter."""

    def __init__(self) -> None:
        self.data, self.metadata = sample_event_json()
        self.position = 0

    def row(self, prefix: str, w: int, i: int) -> tuple[Any, ...]:
        self.position += 1
        stream, version = stream_of(prefix, w, i)
        return (self.position, uuid.uuid4(), stream, version, TENANT, "PreferencesChanged", 1,
                dt.datetime.now(dt.timezone.utc), None, self.data, self.metadata,
                secrets.token_bytes(32), secrets.token_bytes(32))


async def run_raw(url: str, profile: Profile) -> LoadResult:
    pool = await asyncpg.create_pool(url, min_size=profile.raw_connections, max_size=profile.raw_connections)
    assert pool is not None
    rows = RawRows()
    conns = [await pool.acquire() for _ in range(profile.raw_connections)]
    sql = INSERT_ROW.format(table="raw_events")

    async def op(w: int, i: int) -> int:
        await conns[w].execute(sql, *rows.row("r", w, i))  # autocommit: one transaction per row
        return 1

    try:
        return await closed_loop(op, workers=profile.raw_connections, seconds=profile.seconds, warmup=profile.warmup)
    finally:
        for c in conns:
            await pool.release(c)
        await pool.close()


async def run_executemany(url: str, profile: Profile) -> LoadResult:
    pool = await asyncpg.create_pool(url, min_size=profile.bulk_clients, max_size=profile.bulk_clients)
    assert pool is not None
    rows = RawRows()
    conns = [await pool.acquire() for _ in range(profile.bulk_clients)]
    sql = INSERT_ROW.format(table="raw_bulk")

    async def op(w: int, i: int) -> int:
        batch = [rows.row("m", w, i * BULK_ROWS + k) for k in range(BULK_ROWS)]
        async with conns[w].transaction():
            await conns[w].executemany(sql, batch)
        return BULK_ROWS

    try:
        return await closed_loop(op, workers=profile.bulk_clients, seconds=profile.seconds, warmup=profile.warmup)
    finally:
        for c in conns:
            await pool.release(c)
        await pool.close()


def run_eventsourcing(port: int, dbname: str, profile: Profile) -> LoadResult:
    """The library's PostgreSQL application recorder, configured as an application would
    be, through its environment variables."""
    from eventsourcing.persistence import InfrastructureFactory, StoredEvent
    from eventsourcing.utils import Environment

    env = Environment("", {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(port),
        "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD": "",
        "POSTGRES_POOL_SIZE": str(profile.es_threads),
        "POSTGRES_MAX_OVERFLOW": "0",
        "ORIGINATOR_ID_TYPE": "uuid",
    })
    factory = InfrastructureFactory.construct(env)
    recorder = factory.application_recorder()
    data, _ = sample_event_json()
    state = data.encode()
    topic = "schemas.events:PreferencesChanged"

    def op(w: int, i: int) -> int:
        stream, version = stream_of("e", w, i)
        recorder.insert_events([StoredEvent(originator_id=uuid.uuid5(uuid.NAMESPACE_URL, stream),
                                            originator_version=version, topic=topic, state=state)])
        return 1

    try:
        return threaded_closed_loop(op, workers=profile.es_threads, seconds=profile.seconds, warmup=profile.warmup)
    finally:
        factory.close()


# -- the ledger over HTTP -------------------------------------------------------------------


async def tenant_keys(session: aiohttp.ClientSession, base: str, operator_key: str) -> dict[str, str]:
    r = await session.post(f"{base}/v1/tenants", json={"tenant_id": TENANT, "name": "Autobedrijf Bench"},
                           headers={"Authorization": f"Bearer {operator_key}"})
    body = await r.json()
    if r.status != 201:
        raise RuntimeError(f"creating the tenant failed: {r.status} {body}")
    keys = {"admin": body["admin_key"]["key"]}
    for role in ("staff", "importer"):
        r = await session.post(f"{base}/v1/tenants/{TENANT}/api-keys", json={"role": role},
                               headers={"Authorization": f"Bearer {keys['admin']}"})
        if r.status != 201:
            raise RuntimeError(f"issuing a {role} key failed: {r.status} {await r.text()}")
        keys[role] = (await r.json())["key"]
    return keys


async def run_http_single(session: aiohttp.ClientSession, base: str, key: str, profile: Profile) -> LoadResult:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    encode = msgspec.json.encode

    async def op(w: int, i: int) -> int:
        ref = f"p{w}-{i % STREAMS_PER_WORKER}"
        body = encode({"changes": [preference_change(w, i)]})
        async with session.post(f"{base}/v1/tenants/{TENANT}/subjects/dealer/{ref}/preferences",
                                data=body, headers=headers) as r:
            payload = await r.read()
            if r.status != 201:
                raise RuntimeError(f"HTTP {r.status}: {payload[:200]!r}")
        return 1

    return await closed_loop(op, workers=profile.http_clients, seconds=profile.seconds, warmup=profile.warmup)


async def run_http_bulk(session: aiohttp.ClientSession, base: str, key: str, profile: Profile) -> LoadResult:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    encode = msgspec.json.encode

    async def op(w: int, i: int) -> int:
        items = [{"kind": "preferences", "source": "dealer", "customer_ref": f"b{w}-{i}-{k}",
                  "changes": [preference_change(w, k)]} for k in range(BULK_ROWS)]
        async with session.post(f"{base}/v1/tenants/{TENANT}/subjects:batch", data=encode({"items": items}),
                                headers=headers) as r:
            payload = await r.read()
            if r.status != 201:
                raise RuntimeError(f"HTTP {r.status}: {payload[:200]!r}")
        return BULK_ROWS

    return await closed_loop(op, workers=profile.bulk_clients, seconds=profile.seconds, warmup=profile.warmup)


class Phases:
    """Runs the phases one by one; for each keeps the load result, the CPU split
    (bench.common.CpuMeter) and, for ledger phases, the server's own counters."""

    def __init__(self, postgres_pid: int) -> None:
        self.postgres_pid = postgres_pid
        self.summaries: dict[str, dict[str, Any]] = {}
        self.results: dict[str, LoadResult] = {}

    async def run(self, name: str, title: str, phase: Awaitable[LoadResult],
                  ledger: LedgerProcess | None = None) -> LoadResult:
        log(f"{title} ...")
        before = await asyncio.to_thread(ledger.metrics) if ledger else {}
        with CpuMeter(server_pid=ledger.pid if ledger else None, postgres_pid=self.postgres_pid) as cpu:
            result = await phase
        summary = result.summary()
        summary["cpu_cores"] = cpu.cores
        # CPU per event of each party, over every event of the phase (warm-up included):
        # steadier than events/s on a busy machine, so the figure to compare runs by.
        summary["cpu_us_per_event"] = cpu.per_event_us(result.total_events)
        if ledger is not None:
            after = await asyncio.to_thread(ledger.metrics)
            batches = after.get(BATCHES, 0) - before.get(BATCHES, 0)
            events = after.get(APPENDED, 0) - before.get(APPENDED, 0)
            summary["server_batches"] = int(batches)
            summary["server_mean_batch_events"] = round(events / batches, 1) if batches else None
        log(f"  {summary}")
        self.summaries[name] = summary
        self.results[name] = result
        return result


BATCHES = "ledger_append_batch_seconds_count"
APPENDED = "ledger_events_appended_total"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run(profile: Profile, *, quick: bool, ledger_env: dict[str, str]) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="ledger-bench-append-"))
    with local_postgres(durable=True) as pg:
        url = await create_database(pg, "bench")
        await prepare_tables(url)
        pg_settings = await server_settings(url)
        log(f"postgres {pg_settings.get('server_version')} fsync={pg_settings.get('fsync')} "
            f"synchronous_commit={pg_settings.get('synchronous_commit')}")
        phases = Phases(postmaster_pid(pg))
        raw = await phases.run("raw_insert", "raw asyncpg single-row inserts", run_raw(url, profile))
        es = await phases.run("eventsourcing", "eventsourcing recorder",
                              asyncio.to_thread(run_eventsourcing, pg.port, "bench", profile))

        conn = await asyncpg.connect(url)
        try:
            operator = (await issue_key(conn, None, "operator", "bench")).key
        finally:
            await conn.close()
        with LedgerProcess(url, new_master_key(), log_path=workdir / "ledger.log", extra_env=ledger_env) as ledger:
            connector = aiohttp.TCPConnector(limit=profile.http_clients)
            async with aiohttp.ClientSession(connector=connector) as session:
                keys = await tenant_keys(session, ledger.base_url, operator)
                single = await phases.run(
                    "ledger_http", "ledger over HTTP, one event per request",
                    run_http_single(session, ledger.base_url, keys["staff"], profile), ledger)
                many = await phases.run("raw_executemany", "raw asyncpg executemany, 500 rows a transaction",
                                        run_executemany(url, profile))
                bulk = await phases.run(
                    "ledger_bulk", "ledger bulk endpoint, 500 events a request",
                    run_http_bulk(session, ledger.base_url, keys["importer"], profile), ledger)
        remove_tree(workdir)

    s = phases.summaries["ledger_http"]
    everything = list(phases.results.values())
    return {
        "benchmark": "append",
        "mode": "quick" if quick else "full",
        "events_per_s": s["events_per_s"],
        "p50_ms": s["p50_ms"],
        "p99_ms": s["p99_ms"],
        "raw_events_per_s": round(raw.events_per_s, 1),
        "ratio_vs_raw": ratio(single.events_per_s, raw.events_per_s),
        "eventsourcing_events_per_s": round(es.events_per_s, 1),
        "ratio_vs_eventsourcing": ratio(single.events_per_s, es.events_per_s),
        "bulk_events_per_s": round(bulk.events_per_s, 1),
        "executemany_events_per_s": round(many.events_per_s, 1),
        "ratio_bulk_vs_executemany": ratio(bulk.events_per_s, many.events_per_s),
        "errors": sum(r.errors for r in everything),
        "first_error": next((r.first_error for r in everything if r.first_error), None),
        "phases": phases.summaries,
        "setup": {
            **msgspec.structs.asdict(profile),
            "bulk_rows": BULK_ROWS,
            "streams_per_worker": STREAMS_PER_WORKER,
            "postgres": pg_settings,
            "ledger_env": ledger_env,
            "event_loop": type(asyncio.get_running_loop()).__module__,
        },
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per phase (whole run < 60 s)")
    parser.add_argument("--seconds", type=float, help="override the measured seconds per phase")
    parser.add_argument("--log-level", default="info", help="the ledger's LEDGER_LOG_LEVEL (default info)")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.seconds:
        profile = msgspec.structs.replace(profile, seconds=args.seconds)
    ledger_env = {"LEDGER_LOG_LEVEL": args.log_level}
    for name in ("LEDGER_DB_POOL_SIZE",):
        if name in os.environ:
            ledger_env[name] = os.environ[name]
    # Progress and library logs go to stderr: stdout ends with the one JSON line.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    figures = run_loop(run(profile, quick=args.quick, ledger_env=ledger_env))
    write_result("append", figures)
    return 1 if figures["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Append throughput and latency of the ledger over HTTP, against two baselines.

Five phases, all against one durable PostgreSQL (fsync on, synchronous_commit on):

1. raw: asyncpg single-row INSERT, one transaction each, 8 connections, into a plain
   table shaped like ``ledger.events`` (``LIKE ledger.events INCLUDING ALL``);
2. eventsourcing: the ``eventsourcing`` library's PostgreSQL application recorder
   (psycopg3), configured through its environment variables, one event per
   ``insert_events`` call, 8 threads;
3. ledger: HTTP ``POST .../subjects/{source}/{ref}/preferences``, one event per
   request, 32 concurrent clients spread over 64 tenants (so over most of the ledger's 32
   log partitions), against ``consent-ledger serve`` with 1, 2 and 4 server processes
   (``LEDGER_HTTP_WORKERS``; three servers on one database, each phase against its own),
   and once more with every client on one tenant (one partition), 1 process;
4. executemany: asyncpg ``executemany`` of 500 rows per transaction, 4 connections;
5. bulk: HTTP ``POST /v1/tenants/{tenant}/subjects:batch``, 500 items each, 4 clients.

The machine is shared (2 cores, other engineers' tests), so the phases run in short
interleaved slices, round after round: a burst of someone else's load then hits all
phases alike instead of one, and the ratios stay comparable. Every phase writes the same
event (a PreferencesChanged JSON and its metadata). ``--quick`` finishes in < 60 s; the
last stdout line is the JSON object with the figures (bench/common.py,
docs/performance.md).
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import datetime as dt
import os
import secrets
import sys
import tempfile
import uuid
from collections.abc import Callable
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
    merge_results,
    postmaster_pid,
    ratio,
    run_loop,
    server_settings,
    threaded_closed_loop,
    write_result,
)
from bench.http_load import HttpConnection  # noqa: E402
from schemas.events import Actor, Metadata, PreferencesChanged, PreferenceSetting, encode_event  # noqa: E402
from services.devservers import remove_tree  # noqa: E402
from services.ledger.api_keys import issue_key  # noqa: E402
from services.ledger.migrate import migrate  # noqa: E402
from services.ledger.subject_keys import new_master_key  # noqa: E402

TENANT = "bench-garage"  # the one-tenant phase, and the bulk phase
TENANTS = tuple(f"bench-garage-{i:02d}" for i in range(64))  # the many-tenant phases
SERVER_PROCESSES = (1, 2, 4)
STREAMS_PER_WORKER = 100
BULK_ROWS = 500

_CATEGORIES = ("aftersales_service", "newsletter", "sales_campaign", "aftersales_campaign")
_CHANNELS = ("email", "sms", "app", "post", "phone")

INSERT_ROW = (
    "INSERT INTO bench.{table} (position, event_id, stream_id, version, tenant_id, event_type, schema_version,"
    " recorded_at, occurred_on, data, metadata, prev_hash, hash, log_partition)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 0)"
)


class Profile(msgspec.Struct, frozen=True):
    rounds: int
    slice_seconds: float  # measured per phase per round
    warmup: float  # per slice, not counted
    http_clients: int = 32
    raw_connections: int = 8
    es_threads: int = 8
    bulk_clients: int = 4


QUICK = Profile(rounds=3, slice_seconds=1.6, warmup=0.4)
FULL = Profile(rounds=6, slice_seconds=5.0, warmup=1.0)


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


# -- phases ------------------------------------------------------------------------------


class Phase(abc.ABC):
    """One kind of load, run slice by slice. Each worker keeps its own iteration count
    across slices, so streams and versions go on where the last slice stopped."""

    name: str = ""
    title: str = ""
    workers: int = 1
    ledger: LedgerProcess | None = None

    def __init__(self) -> None:
        self.results: list[LoadResult] = []
        self._next: list[int] = []
        self.server_before: dict[str, float] = {}
        self.server_after: dict[str, float] = {}

    def iteration(self, w: int) -> int:
        i = self._next[w]
        self._next[w] = i + 1
        return i

    async def open(self) -> None:
        self._next = [0] * self.workers

    @abc.abstractmethod
    async def run_slice(self, seconds: float, warmup: float) -> LoadResult:
        """Each kind implements this."""

    async def close(self) -> None:
        pass


class RawPhase(Phase):
    """A baseline: one asyncpg connection per worker, writing ``RawRows`` into ``table``."""

    table = ""

    def __init__(self, url: str, workers: int) -> None:
        super().__init__()
        self.url, self.workers = url, workers
        self.rows = RawRows()
        self.sql = INSERT_ROW.format(table=self.table)

    async def open(self) -> None:
        await super().open()
        self.conns = [await asyncpg.connect(self.url) for _ in range(self.workers)]

    async def close(self) -> None:
        for c in self.conns:
            await c.close()


class RawInserts(RawPhase):
    name, title, table = "raw_insert", "raw asyncpg single-row inserts", "raw_events"

    def __init__(self, url: str, profile: Profile) -> None:
        super().__init__(url, profile.raw_connections)

    async def run_slice(self, seconds: float, warmup: float) -> LoadResult:
        async def op(w: int, _: int) -> int:
            # autocommit: one transaction, one WAL flush wait, per row
            await self.conns[w].execute(self.sql, *self.rows.row("r", w, self.iteration(w)))
            return 1

        return await closed_loop(op, workers=self.workers, seconds=seconds, warmup=warmup)


class RawExecutemany(RawPhase):
    name, title, table = "raw_executemany", "raw asyncpg executemany, 500 rows a transaction", "raw_bulk"

    def __init__(self, url: str, profile: Profile) -> None:
        super().__init__(url, profile.bulk_clients)

    async def run_slice(self, seconds: float, warmup: float) -> LoadResult:
        async def op(w: int, _: int) -> int:
            i = self.iteration(w)
            batch = [self.rows.row("m", w, i * BULK_ROWS + k) for k in range(BULK_ROWS)]
            async with self.conns[w].transaction():
                await self.conns[w].executemany(self.sql, batch)
            return BULK_ROWS

        return await closed_loop(op, workers=self.workers, seconds=seconds, warmup=warmup)


class EventsourcingRecorder(Phase):
    """The library's PostgreSQL application recorder, configured as an application
    would be, through its environment variables; blocking, so one thread per worker."""

    name, title = "eventsourcing", "eventsourcing recorder"

    def __init__(self, port: int, dbname: str, profile: Profile) -> None:
        super().__init__()
        self.port, self.dbname, self.workers = port, dbname, profile.es_threads

    async def open(self) -> None:
        from eventsourcing.persistence import InfrastructureFactory
        from eventsourcing.utils import Environment

        await super().open()
        env = Environment("", {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": self.dbname,
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": "postgres",
            "POSTGRES_PASSWORD": "",
            "POSTGRES_POOL_SIZE": str(self.workers),
            "POSTGRES_MAX_OVERFLOW": "0",
            "ORIGINATOR_ID_TYPE": "uuid",
        })
        self.factory = await asyncio.to_thread(InfrastructureFactory.construct, env)
        self.recorder = await asyncio.to_thread(self.factory.application_recorder)
        self.state = sample_event_json()[0].encode()

    async def run_slice(self, seconds: float, warmup: float) -> LoadResult:
        from eventsourcing.persistence import StoredEvent

        def op(w: int, _: int) -> int:
            stream, version = stream_of("e", w, self.iteration(w))
            self.recorder.insert_events([StoredEvent(
                originator_id=uuid.uuid5(uuid.NAMESPACE_URL, stream), originator_version=version,
                topic="schemas.events:PreferencesChanged", state=self.state)])
            return 1

        return await asyncio.to_thread(threaded_closed_loop, op, workers=self.workers, seconds=seconds,
                                       warmup=warmup)

    async def close(self) -> None:
        await asyncio.to_thread(self.factory.close)


class HttpPhase(Phase):
    """Load on the ledger over HTTP: each worker on its own keep-alive connection
    (bench.http_load: a lean client, so the load generator takes as little of the shared
    CPU as it can), with one API key."""

    def __init__(self, ledger: LedgerProcess, key: str, workers: int) -> None:
        super().__init__()
        self.ledger, self.workers = ledger, workers
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def open(self) -> None:
        await super().open()
        assert self.ledger is not None
        self.conns = [HttpConnection("127.0.0.1", self.ledger.port) for _ in range(self.workers)]

    async def close(self) -> None:
        for c in self.conns:
            c.close()


class LedgerSingle(HttpPhase):
    """Each of the 32 clients changes preferences of its own 100 subjects in turn, all of
    one tenant (one log partition): every append of every process waits for that
    partition's head."""

    name, title = "ledger_http_one_tenant", "ledger over HTTP, one event per request, one tenant"

    def __init__(self, ledger: LedgerProcess, key: str, profile: Profile) -> None:
        super().__init__(ledger, key, profile.http_clients)

    def target(self, w: int, i: int) -> tuple[str, dict[str, str]]:
        return TENANT, self.headers

    async def run_slice(self, seconds: float, warmup: float) -> LoadResult:
        async def op(w: int, _: int) -> int:
            i = self.iteration(w)
            conn = self.conns[w]
            tenant, headers = self.target(w, i)
            body = msgspec.json.encode({"changes": [preference_change(w, i)]})
            path = f"/v1/tenants/{tenant}/subjects/dealer/p{w}-{i % STREAMS_PER_WORKER}/preferences"
            status, payload = await conn.send(conn.request_bytes("POST", path, headers, body))
            if status != 201:
                raise RuntimeError(f"HTTP {status}: {payload[:200]!r}")
            return 1

        return await closed_loop(op, workers=self.workers, seconds=seconds, warmup=warmup)


class LedgerManyTenants(LedgerSingle):
    """The same load spread over 64 tenants: client w alternates between tenants w and
    w + 32, so every tenant gets appends and they fall into most of the 32 partitions."""

    def __init__(self, ledger: LedgerProcess, keys: dict[str, str], profile: Profile, processes: int) -> None:
        super().__init__(ledger, "", profile)
        self.name = f"ledger_http_w{processes}"
        self.title = f"ledger over HTTP, one event per request, {len(TENANTS)} tenants, {processes} server processes"
        self.tenant_headers = {t: {"Authorization": f"Bearer {k}", "Content-Type": "application/json"}
                               for t, k in keys.items()}

    def target(self, w: int, i: int) -> tuple[str, dict[str, str]]:
        tenant = TENANTS[(w + self.workers * (i % 2)) % len(TENANTS)]
        return tenant, self.tenant_headers[tenant]


class LedgerBulk(HttpPhase):
    name, title = "ledger_bulk", "ledger bulk endpoint, 500 events a request"

    def __init__(self, ledger: LedgerProcess, key: str, profile: Profile) -> None:
        super().__init__(ledger, key, profile.bulk_clients)

    async def run_slice(self, seconds: float, warmup: float) -> LoadResult:
        path = f"/v1/tenants/{TENANT}/subjects:batch"

        async def op(w: int, _: int) -> int:
            i = self.iteration(w)
            conn = self.conns[w]
            items = [{"kind": "preferences", "source": "dealer", "customer_ref": f"b{w}-{i}-{k}",
                      "changes": [preference_change(w, k)]} for k in range(BULK_ROWS)]
            body = msgspec.json.encode({"items": items})
            status, payload = await conn.send(conn.request_bytes("POST", path, self.headers, body))
            if status != 201:
                raise RuntimeError(f"HTTP {status}: {payload[:200]!r}")
            return BULK_ROWS

        return await closed_loop(op, workers=self.workers, seconds=seconds, warmup=warmup)


BATCHES = "ledger_append_batch_seconds_count"
APPENDED = "ledger_events_appended_total"
CONFLICTS = "ledger_append_partition_conflicts_total"


async def run_rounds(phases: list[Phase], profile: Profile, postgres_pid: int,
                     progress: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Every phase for one slice, round after round; then each phase's figures: rate and
    latency over all its slices, the CPU split (bench.common.CpuMeter) and, for the
    ledger's phases, the server's group-commit batches."""
    meters = {p.name: CpuMeter(server_pid=p.ledger.pid if p.ledger else None, postgres_pid=postgres_pid)
              for p in phases}
    server: dict[str, dict[str, float]] = {p.name: {"batches": 0.0, "events": 0.0, "conflicts": 0.0} for p in phases}
    for p in phases:
        await p.open()
    try:
        for r in range(profile.rounds):
            progress(f"round {r + 1}/{profile.rounds}")
            for p in phases:
                # /metrics adds up all server processes (services/serving.py).
                before = await asyncio.to_thread(p.ledger.metrics) if p.ledger else {}
                with meters[p.name]:
                    result = await p.run_slice(profile.slice_seconds, profile.warmup)
                if p.ledger:
                    after = await asyncio.to_thread(p.ledger.metrics)
                    server[p.name]["batches"] += after.get(BATCHES, 0) - before.get(BATCHES, 0)
                    server[p.name]["events"] += after.get(APPENDED, 0) - before.get(APPENDED, 0)
                    server[p.name]["conflicts"] += after.get(CONFLICTS, 0) - before.get(CONFLICTS, 0)
                p.results.append(result)
                progress(f"  {p.name}: {result.events_per_s:.0f} events/s")
    finally:
        for p in phases:
            await p.close()
    out: dict[str, dict[str, Any]] = {}
    for p in phases:
        merged = merge_results(p.results)
        summary = merged.summary()
        summary["slices_events_per_s"] = [round(r.events_per_s, 1) for r in p.results]
        summary["cpu_cores"] = meters[p.name].cores
        # CPU per event of each party over every event of the phase (warm-ups included):
        # steadier than events/s on a busy machine, the figure to compare runs by.
        summary["cpu_us_per_event"] = meters[p.name].per_event_us(merged.total_events)
        if p.ledger:
            b, e = server[p.name]["batches"], server[p.name]["events"]
            summary["server_batches"] = int(b)
            summary["server_mean_batch_events"] = round(e / b, 1) if b else None
            # Partitions planned again per committed batch (another process appended to
            # them meanwhile), over all server processes.
            summary["server_conflicts_per_batch"] = round(server[p.name]["conflicts"] / b, 2) if b else None
        out[p.name] = summary
    return out


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def tenant_keys(session: aiohttp.ClientSession, base: str, operator_key: str,
                      tenant: str = TENANT) -> dict[str, str]:
    r = await session.post(f"{base}/v1/tenants", json={"tenant_id": tenant, "name": "Autobedrijf Bench"},
                           headers={"Authorization": f"Bearer {operator_key}"})
    body = await r.json()
    if r.status != 201:
        raise RuntimeError(f"creating the tenant failed: {r.status} {body}")
    keys = {"admin": body["admin_key"]["key"]}
    for role in ("staff", "importer"):
        r = await session.post(f"{base}/v1/tenants/{tenant}/api-keys", json={"role": role},
                               headers={"Authorization": f"Bearer {keys['admin']}"})
        if r.status != 201:
            raise RuntimeError(f"issuing a {role} key failed: {r.status} {await r.text()}")
        keys[role] = (await r.json())["key"]
    return keys


async def run(profile: Profile, *, quick: bool, ledger_env: dict[str, str]) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="ledger-bench-append-"))
    with local_postgres(durable=True) as pg:
        url = await create_database(pg, "bench")
        await prepare_tables(url)
        pg_settings = await server_settings(url)
        log(f"postgres {pg_settings.get('server_version')} fsync={pg_settings.get('fsync')} "
            f"synchronous_commit={pg_settings.get('synchronous_commit')}")
        conn = await asyncpg.connect(url)
        try:
            operator = (await issue_key(conn, None, "operator", "bench")).key
        finally:
            await conn.close()
        master_key = new_master_key()
        with contextlib.ExitStack() as servers:
            # One server per process count, all on the same database, started up front;
            # each many-tenant phase loads its own, the others idle meanwhile.
            ledgers = {n: servers.enter_context(LedgerProcess(
                url, master_key, log_path=workdir / f"ledger-w{n}.log",
                extra_env={**ledger_env, "LEDGER_HTTP_WORKERS": str(n)})) for n in SERVER_PROCESSES}
            ledger = ledgers[1]
            connector = aiohttp.TCPConnector(limit=profile.http_clients)
            async with aiohttp.ClientSession(connector=connector) as session:
                keys = await tenant_keys(session, ledger.base_url, operator)
                staff = {t: (await tenant_keys(session, ledger.base_url, operator, t))["staff"] for t in TENANTS}
                phases: list[Phase] = [
                    RawInserts(url, profile),
                    EventsourcingRecorder(pg.port, "bench", profile),
                    *(LedgerManyTenants(ledgers[n], staff, profile, n) for n in SERVER_PROCESSES),
                    LedgerSingle(ledger, keys["staff"], profile),
                    RawExecutemany(url, profile),
                    LedgerBulk(ledger, keys["importer"], profile),
                ]
                summaries = await run_rounds(phases, profile, postmaster_pid(pg), log)
        remove_tree(workdir)

    rate = {name: s["events_per_s"] for name, s in summaries.items()}
    s = summaries["ledger_http_w1"]
    per_processes: dict[str, Any] = {}
    for n in SERVER_PROCESSES:
        phase = summaries[f"ledger_http_w{n}"]
        per_processes[f"events_per_s_w{n}"] = phase["events_per_s"]
        per_processes[f"p99_ms_w{n}"] = phase["p99_ms"]
        per_processes[f"ratio_vs_raw_w{n}"] = ratio(phase["events_per_s"], rate["raw_insert"])
    one = summaries["ledger_http_one_tenant"]
    return {
        "benchmark": "append",
        "mode": "quick" if quick else "full",
        # many tenants, 1 server process (the _wN figures below for 1, 2 and 4)
        "events_per_s": s["events_per_s"],
        "p50_ms": s["p50_ms"],
        "p99_ms": s["p99_ms"],
        **per_processes,
        "one_tenant_events_per_s": one["events_per_s"],
        "one_tenant_p99_ms": one["p99_ms"],
        "raw_events_per_s": rate["raw_insert"],
        "ratio_vs_raw": ratio(rate["ledger_http_w1"], rate["raw_insert"]),
        "eventsourcing_events_per_s": rate["eventsourcing"],
        "ratio_vs_eventsourcing": ratio(rate["ledger_http_w1"], rate["eventsourcing"]),
        "bulk_events_per_s": rate["ledger_bulk"],
        "executemany_events_per_s": rate["raw_executemany"],
        "ratio_bulk_vs_executemany": ratio(rate["ledger_bulk"], rate["raw_executemany"]),
        "errors": sum(x["errors"] for x in summaries.values()),
        "phases": summaries,
        "setup": {
            **msgspec.structs.asdict(profile),
            "bulk_rows": BULK_ROWS,
            "streams_per_worker": STREAMS_PER_WORKER,
            "tenants": len(TENANTS),
            "server_processes": list(SERVER_PROCESSES),
            "postgres": pg_settings,
            "ledger_env": ledger_env,
            "event_loop": type(asyncio.get_running_loop()).__module__,
        },
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 short rounds (whole run < 60 s)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--log-level", default="info", help="the ledger's LEDGER_LOG_LEVEL (default info)")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.rounds:
        profile = msgspec.structs.replace(profile, rounds=args.rounds)
    ledger_env = {"LEDGER_LOG_LEVEL": args.log_level}
    if "LEDGER_DB_POOL_SIZE" in os.environ:
        ledger_env["LEDGER_DB_POOL_SIZE"] = os.environ["LEDGER_DB_POOL_SIZE"]
    # Progress and library logs go to stderr: stdout ends with the one JSON line.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    figures = run_loop(run(profile, quick=args.quick, ledger_env=ledger_env))
    write_result("append", figures)
    errors = [(name, p["errors"]) for name, p in figures["phases"].items() if p["errors"]]
    if errors:
        log(f"errors: {errors}")
    return 1 if figures["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

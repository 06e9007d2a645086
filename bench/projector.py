"""The eligibility projector: rebuild, Kafka catch-up, freshness, bulk checks, term edits.

Phases, one after the other, against one durable PostgreSQL (fsync on) and one tansu broker:

0. data: tenant ``bench-a`` and tenant ``bench-b`` (the term-edit tenant), 5 events per
   subject (invoices or a prospect registration, preference changes, a marketing
   activity), written with the event store itself (real positions, hash chain);
1. rebuild: ``consent-ledger projector rebuild`` (``services.projector.rebuild``) of the whole
   ledger, and in the same run the raw server-side-cursor read of ``ledger.events`` (same
   columns, rows discarded): events/s of both and their ratio;
2. Kafka catch-up: the relay publishes the ledger, the read model is emptied, and a
   projector (consumer on every partition, publishing every subject's first matrix)
   consumes the whole topic: events/s;
3. the running system: ``consent-ledger serve`` (API + relay) and ``consent-ledger projector
   run`` as processes; a consumer in this process follows consent.eligibility.v1.
   Freshness: a preference change over HTTP until its matrix (with that ledger position)
   is on the topic, one at a time, idle and under a background of 500 appends/s;
4. bulk checks: POST .../eligibility:check with 10,000 subjects, 2 concurrent clients;
5. term edit: PATCH bench-b's newsletter e-mail term until every changed matrix of its
   subjects is on the topic (the re-evaluation commits only after the broker acknowledged);
6. republish: ``consent-ledger projector republish`` (a new epoch: every subject's matrix
   again, then the epoch markers) next to the running projector, with live preference
   changes measured for freshness while it runs.

``--quick`` uses smaller sizes (stated in ``sizes``; whole run < 60 s). The last stdout
line is the JSON object with the figures (bench/common.py, docs/projector.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import structlog

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    REPO,
    LedgerProcess,
    create_database,
    latency_summary,
    local_postgres,
    machine,
    percentile,
    process_cpu_seconds,
    ratio,
    server_settings,
    write_result,
)
from consent.seed import new_tenant  # noqa: E402
from consent.terms import add_months, ledger_day  # noqa: E402
from schemas.eligibility import TOPIC as ELIGIBILITY_TOPIC  # noqa: E402
from schemas.events import (  # noqa: E402
    Actor,
    Event,
    InvoiceRecorded,
    MarketingActivityRecorded,
    Metadata,
    PreferencesChanged,
    PreferenceSetting,
    ProspectRegistered,
)
from schemas.vocabulary import subject_stream, tenant_stream  # noqa: E402
from services.devservers import LocalBroker, free_port, remove_tree  # noqa: E402
from services.ledger.api_keys import issue_key  # noqa: E402
from services.ledger.migrate import migrate  # noqa: E402
from services.ledger.relay import TOPIC as LEDGER_TOPIC  # noqa: E402
from services.ledger.relay import RelayConfig, running_relay  # noqa: E402
from services.ledger.store import AppendRequest, EventStore, StreamWrite  # noqa: E402
from services.ledger.subject_keys import new_master_key  # noqa: E402
from services.projector.clock import SystemClock  # noqa: E402
from services.projector.consumer import LedgerConsumer  # noqa: E402
from services.projector.projection import Projection  # noqa: E402
from services.projector.publisher import KafkaPublisher  # noqa: E402
from services.projector.rebuild import raw_read, rebuild  # noqa: E402

META = Metadata(actor=Actor(kind="importer", id="bench"), method="import")
SUBJECT = Actor(kind="subject", id="subject")
TENANT_A, TENANT_B = "bench-a", "bench-b"
EVENTS_PER_SUBJECT = 5
CHECK_SIZE = 10_000


class Profile(msgspec.Struct, frozen=True):
    subjects_a: int
    subjects_b: int
    freshness_samples: int
    bulk_seconds: float
    loaded_appends_per_s: int = 500


FULL = Profile(subjects_a=100_000, subjects_b=100_000, freshness_samples=200, bulk_seconds=10)
QUICK = Profile(subjects_a=5_000, subjects_b=5_000, freshness_samples=25, bulk_seconds=3)


def log(message: str) -> None:
    print(f"[bench projector] {message}", file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------


def subject_events(i: int, rnd: random.Random, today: dt.date) -> list[Event]:
    """Four customers in five (two invoices), one prospect (opt-in to e-mail)."""
    def pref(category: str, channel: str, value: str) -> PreferencesChanged:
        return PreferencesChanged(changes=[PreferenceSetting(category=category, channel=channel, value=value)],  # type: ignore[arg-type]
                                  changed_by=SUBJECT, method="portal")

    activity = MarketingActivityRecorded(activity_on=today, category="newsletter", channel="email")
    if i % 5 == 4:
        return [ProspectRegistered(acquired_on=today - dt.timedelta(days=rnd.randint(0, 80)), how="proefrit"),
                pref("prospect", "email", "opt_in"), activity, pref("prospect", "sms", "opt_out"),
                pref("newsletter", "post", "opt_out")]
    return [InvoiceRecorded(invoice_id=f"F{i}", invoice_date=today - dt.timedelta(days=rnd.randint(200, 2400))),
            pref("newsletter", "email", rnd.choice(["opt_in", "opt_out", "default"])), activity,
            InvoiceRecorded(invoice_id=f"G{i}", invoice_date=today - dt.timedelta(days=rnd.randint(0, 500))),
            pref("sales_campaign", "sms", "opt_out")]


def ref(i: int) -> str:
    return f"C{i:07d}"


async def generate(store: EventStore, tenant: str, subjects: int) -> int:
    """The tenant and its subjects' events, 5,000 events per append (4 appends in flight)."""
    await store.append(AppendRequest(tenant_id=tenant, writes=[
        StreamWrite(tenant_stream(tenant), [new_tenant(tenant, f"Bench {tenant}")])], metadata=META))
    rnd = random.Random(tenant)
    today = ledger_day(dt.datetime.now(dt.timezone.utc))
    pending: list[asyncio.Task[Any]] = []
    writes: list[StreamWrite] = []
    for i in range(subjects):
        writes.append(StreamWrite(subject_stream(tenant, "dealer", ref(i)), subject_events(i, rnd, today)))
        if len(writes) * EVENTS_PER_SUBJECT >= 5000 or i == subjects - 1:
            pending.append(asyncio.create_task(store.append(AppendRequest(tenant_id=tenant, writes=writes,
                                                                          metadata=META))))
            writes = []
            if len(pending) >= 4:
                await asyncio.gather(*pending)
                pending = []
    await asyncio.gather(*pending)
    return 1 + subjects * EVENTS_PER_SUBJECT


# -- the eligibility topic, watched from here --------------------------------------------


class _Position(msgspec.Struct):
    position: int


class TopicWatcher:
    """Follows consent.eligibility.v1 from its current end; wakes whoever waits for a key
    to reach a ledger position, and counts messages per tenant."""

    def __init__(self, bootstrap: str, topic: str = ELIGIBILITY_TOPIC) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.counts: dict[str, int] = {}
        self._waiters: dict[str, list[tuple[int, asyncio.Future[float]]]] = {}
        self._decoder = msgspec.json.Decoder(_Position)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 30)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wait(self, key: str, position: int) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append((position, future))
        return future

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10)
        await consumer.start()
        try:
            while True:
                await consumer.topics()
                partitions = consumer.partitions_for_topic(self.topic)
                if partitions:
                    break
                await asyncio.sleep(0.2)
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
            self._ready.set()
            while True:
                batch = await consumer.getmany(timeout_ms=50, max_records=5000)
                now = time.perf_counter()
                for records in batch.values():
                    for r in records:
                        key = r.key.decode()
                        tenant = key.split("/", 1)[0]
                        self.counts[tenant] = self.counts.get(tenant, 0) + 1
                        waiting = self._waiters.get(key)
                        if not waiting or r.value is None:
                            continue
                        position = self._decoder.decode(r.value).position
                        still = []
                        for target, future in waiting:
                            if position >= target and not future.done():
                                future.set_result(now)
                            elif not future.done():
                                still.append((target, future))
                        self._waiters[key] = still
        finally:
            await consumer.stop()


# -- phases ------------------------------------------------------------------------------


async def kafka_catch_up(url: str, bootstrap: str, total_events: int) -> dict[str, Any]:
    """Relay the ledger to Kafka, empty the read model, then time a projector consuming it all."""
    conn = await asyncpg.connect(url)
    try:
        t0 = time.perf_counter()
        async with running_relay(RelayConfig(database_url=url, bootstrap=bootstrap, partitions=6, batch_size=5000)):
            head = await conn.fetchval("SELECT sum(position)::bigint FROM ledger.partitions")
            while (await conn.fetchval("SELECT sum(position)::bigint FROM ledger.checkpoints WHERE name LIKE $1 || '/p%'",
                                       f"relay:{LEDGER_TOPIC}") or 0) < head:
                await asyncio.sleep(0.1)
        relay_s = time.perf_counter() - t0
        await conn.execute("TRUNCATE projector.subjects, projector.tenants, projector.offsets, projector.checkpoint")
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
    publisher = KafkaPublisher(bootstrap, partitions=6)
    await publisher.start()
    try:
        projection = Projection(pool, clock=SystemClock(), publisher=publisher, batch_size=5000)
        consumer = LedgerConsumer(projection, bootstrap, group_id=None, max_records=5000)
        t0 = time.perf_counter()
        task = asyncio.create_task(consumer.run())
        while consumer.consumed < total_events:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - t0
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return {"kafka_catchup_events_per_s": round(total_events / seconds, 1), "kafka_catchup_s": round(seconds, 2),
                "kafka_catchup_published": publisher.published,
                "relay_events_per_s": round(total_events / relay_s, 1)}
    finally:
        await publisher.stop()
        await pool.close()


class Projector:
    """``consent-ledger projector run --no-group`` as a process."""

    def __init__(self, url: str, bootstrap: str, log_path: Path) -> None:
        self.port = free_port()
        env = dict(os.environ)
        env.update({"LEDGER_DATABASE_URL": url, "LEDGER_KAFKA_BOOTSTRAP": bootstrap, "LEDGER_LOG_LEVEL": "warning"})
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "projector", "run", "--no-group", "--metrics-port", str(self.port)],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    async def ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the projector exited with {self.proc.returncode}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{self.port}/healthz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise TimeoutError("the projector did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


async def freshness(http: aiohttp.ClientSession, base: str, key: str, watcher: TopicWatcher,
                    refs: list[str], samples: int) -> list[float]:
    """Sequential preference toggles; seconds from before the POST to the matrix on the topic."""
    latencies: list[float] = []
    for n in range(samples):
        r_ = refs[n % len(refs)]
        value = "opt_in" if (n // len(refs)) % 2 == 0 else "opt_out"
        body = {"changes": [{"category": "sales_campaign", "channel": "phone", "value": value}]}
        t0 = time.perf_counter()
        async with http.post(f"{base}/v1/tenants/{TENANT_A}/subjects/dealer/{r_}/preferences", json=body,
                             headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 201, await r.text()
            position = (await r.json())["last_position"]
        seen = await asyncio.wait_for(watcher.wait(f"{TENANT_A}/dealer/{r_}", position), 30)
        latencies.append(seen - t0)
    return latencies


async def background_load(http: aiohttp.ClientSession, base: str, key: str, rate: int, refs: list[str],
                          stop: asyncio.Event, done: list[int]) -> None:
    """``rate`` preference changes per second (paced every 20 ms), at most 64 in flight."""
    limit = asyncio.Semaphore(64)
    rnd = random.Random(5)
    tasks: set[asyncio.Task[None]] = set()

    async def one(r_: str) -> None:
        async with limit:
            body = {"changes": [{"category": "newsletter", "channel": rnd.choice(["sms", "app", "phone"]),
                                 "value": rnd.choice(["opt_in", "opt_out"])}]}
            async with http.post(f"{base}/v1/tenants/{TENANT_A}/subjects/dealer/{r_}/preferences", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as r:
                if r.status == 201:
                    done[0] += 1

    per_tick = rate / 50
    owed = 0.0
    next_tick = time.perf_counter()
    while not stop.is_set():
        owed += per_tick
        while owed >= 1:
            owed -= 1
            task = asyncio.create_task(one(rnd.choice(refs)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        next_tick += 0.02
        await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
    await asyncio.gather(*tasks, return_exceptions=True)


async def bulk_checks(http: aiohttp.ClientSession, base: str, key: str, subjects: int, seconds: float,
                      clients: int = 2) -> dict[str, Any]:
    rnd = random.Random(9)
    body = msgspec.json.encode({
        "category": "newsletter", "channel": "email", "send_date": ledger_day(dt.datetime.now(dt.timezone.utc)),
        "subjects": [{"source": "dealer", "customer_ref": ref(rnd.randrange(int(subjects * 1.01)))}
                     for _ in range(CHECK_SIZE)],
    })
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    last: dict[str, Any] = {}

    async def client() -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            async with http.post(f"{base}/v1/tenants/{TENANT_A}/eligibility:check", data=body, headers=headers) as r:
                raw = await r.read()
                assert r.status == 200, raw[:300]
            latencies.append(time.perf_counter() - t0)
            last["raw"] = raw

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    answer = msgspec.json.decode(last["raw"])
    return {"bulk_checks_per_s": round(len(latencies) * CHECK_SIZE / wall, 1), "bulk_requests": len(latencies),
            "bulk_request_ms": latency_summary(latencies), "bulk_unknown_per_request": answer["unknown"]}


async def bulk_checks_per_processes(http: aiohttp.ClientSession, ledger: LedgerProcess, url: str, key: str,
                                    profile: Profile, folder: Path) -> dict[str, Any]:
    """The bulk check with 1 and with 2 API processes (issue 13, item 6), 4 clients each:
    the check reads the projector's read model only, so a second process should add
    whatever a free core gives. The second server runs on the same database, without a
    relay; the two are measured in turns (1, 2, 1, 2) so that other load on the host hits
    both alike."""
    two = LedgerProcess(url, ledger.master_key, log_path=folder / "ledger-w2.log",
                        extra_env={"LEDGER_LOG_LEVEL": "warning", "LEDGER_HTTP_WORKERS": "2"})
    two.start()
    rates: dict[int, list[float]] = {1: [], 2: []}
    try:
        for _ in range(2):
            for n, server in ((1, ledger), (2, two)):
                got = await bulk_checks(http, server.base_url, key, profile.subjects_a, profile.bulk_seconds / 2,
                                        clients=4)
                rates[n].append(got["bulk_checks_per_s"])
    finally:
        two.stop()
    w1, w2 = (round(sum(rates[n]) / len(rates[n]), 1) for n in (1, 2))
    log(f"bulk checks, 4 clients: 1 process {w1:.0f}/s, 2 processes {w2:.0f}/s")
    return {"bulk_checks_per_s_w1_4_clients": w1, "bulk_checks_per_s_w2_4_clients": w2,
            "ratio_bulk_checks_w2_vs_w1": ratio(w2, w1)}


async def term_edit(http: aiohttp.ClientSession, base: str, key: str, url: str, watcher: TopicWatcher,
                    timeout: float) -> dict[str, Any]:
    before = watcher.counts.get(TENANT_B, 0)
    conn = await asyncpg.connect(url)
    try:
        t0 = time.perf_counter()
        async with http.patch(f"{base}/v1/tenants/{TENANT_B}/terms", headers={"Authorization": f"Bearer {key}"},
                              json={"cells": [{"category": "newsletter", "channel": "email", "months": 12}]}) as r:
            assert r.status == 200, await r.text()
            target = (await r.json())["streams"][0]["to_version"]
        while True:
            row = await conn.fetchrow("SELECT terms_version, reeval_version FROM projector.tenants WHERE tenant_id = $1",
                                      TENANT_B)
            if row["terms_version"] == target and row["reeval_version"] is None:
                break
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError("the term edit was not re-evaluated in time")
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - t0
        unpublished = await conn.fetchval("SELECT count(*) FROM projector.subjects WHERE tenant_id = $1"
                                          " AND published_hash IS DISTINCT FROM matrix_hash", TENANT_B)
    finally:
        await conn.close()
    await asyncio.sleep(0.5)
    return {"term_edit_s": round(seconds, 2), "term_edit_published": watcher.counts.get(TENANT_B, 0) - before,
            "term_edit_unpublished_left": unpublished}


async def republish(http: aiohttp.ClientSession, base: str, key: str, url: str, bootstrap: str,
                    watcher: TopicWatcher, refs: list[str], timeout: float) -> dict[str, Any]:
    """`projector republish` as a process; live preference changes one at a time meanwhile.
    The republish's own times come from its row in projector.eligibility_topic."""
    env = dict(os.environ)
    env.update({"LEDGER_DATABASE_URL": url, "LEDGER_KAFKA_BOOTSTRAP": bootstrap, "LEDGER_LOG_LEVEL": "warning"})
    conn = await asyncpg.connect(url)
    try:
        before = await conn.fetchval("SELECT coalesce(max(epoch), 0) FROM projector.eligibility_topic")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "projector", "republish", cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        finished = asyncio.create_task(proc.communicate())

        async def running() -> bool:
            row = await conn.fetchrow("SELECT epoch, republish_epoch FROM projector.eligibility_topic"
                                      " WHERE topic = $1", ELIGIBILITY_TOPIC)
            return row is not None and row[0] > before and row[1] is not None

        latencies: list[float] = []
        n = 0
        t0 = time.perf_counter()
        while not finished.done():
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError("the republish did not finish in time")
            if not await running():
                await asyncio.sleep(0.01)
                continue
            r_ = refs[n % len(refs)]
            value = "opt_in" if (n // len(refs)) % 2 == 0 else "opt_out"
            n += 1
            started = time.perf_counter()
            async with http.post(f"{base}/v1/tenants/{TENANT_A}/subjects/dealer/{r_}/preferences",
                                 json={"changes": [{"category": "aftersales_campaign", "channel": "phone",
                                                    "value": value}]},
                                 headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == 201, await r.text()
                position = (await r.json())["last_position"]
            seen = await asyncio.wait_for(watcher.wait(f"{TENANT_A}/dealer/{r_}", position), 60)
            if await running():  # the change was made and seen while the republish ran
                latencies.append(seen - started)
        out, err = await finished
        assert proc.returncode == 0, err.decode()[-2000:]
        row = await conn.fetchrow("SELECT epoch, republish_done, extract(epoch FROM republished_at - republish_started_at)"
                                  " FROM projector.eligibility_topic WHERE topic = $1", ELIGIBILITY_TOPIC)
    finally:
        await conn.close()
    seconds = float(row[2])
    return {"republish_subjects_per_s": round(row[1] / seconds, 1), "republish_s": round(seconds, 2),
            "republish_subjects": row[1], "republish_epoch": row[0],
            "freshness_republish_p50_ms": round(percentile(latencies, 50) * 1000, 1) if latencies else None,
            "freshness_republish_p99_ms": round(percentile(latencies, 99) * 1000, 1) if latencies else None,
            "freshness_republish_samples": len(latencies)}


# -- the run -----------------------------------------------------------------------------


async def run(profile: Profile, *, quick: bool, workers: int | None) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    total_subjects = profile.subjects_a + profile.subjects_b
    folder = Path(tempfile.mkdtemp(prefix="bench-projector-"))
    broker = LocalBroker()
    broker.start()
    try:
        with local_postgres(durable=True) as pg:
            url = await create_database(pg, "projector_bench")
            conn = await asyncpg.connect(url)
            await migrate(conn)
            await conn.close()
            pool = await asyncpg.create_pool(url, min_size=2, max_size=6)
            store = EventStore(pool, max_batch_events=20_000)
            await store.start()
            t0 = time.perf_counter()
            events = await generate(store, TENANT_A, profile.subjects_a) + await generate(store, TENANT_B,
                                                                                         profile.subjects_b)
            await store.stop()
            await pool.close()
            log(f"generated {events} events for {total_subjects} subjects in {time.perf_counter() - t0:.1f}s")

            rows, raw_s = await raw_read(url)
            report = await rebuild(url, clock=SystemClock(), workers=workers)
            figures.update({
                "rebuild_events_per_s": round(report.events_per_s, 1),
                "raw_read_rows_per_s": round(rows / raw_s, 1),
                "ratio_vs_raw_read": ratio(report.events_per_s, rows / raw_s),
                "rebuild": {"seconds": round(report.seconds, 2), "workers": report.workers,
                            "fold_seconds": round(report.fold_seconds, 2), "build_seconds": round(report.build_seconds, 2),
                            "index_seconds": round(report.index_seconds, 2), "swap_seconds": round(report.swap_seconds, 3),
                            "subjects": report.subjects},
            })
            log(f"rebuild {report.events_per_s:.0f} events/s, raw read {rows / raw_s:.0f} rows/s")

            figures.update(await kafka_catch_up(url, broker.bootstrap, events))
            log(f"kafka catch-up {figures['kafka_catchup_events_per_s']:.0f} events/s")

            keys: dict[str, str] = {}
            conn = await asyncpg.connect(url)
            for tenant in (TENANT_A, TENANT_B):
                for role in ("admin", "staff", "sender"):
                    keys[f"{tenant}:{role}"] = (await issue_key(conn, tenant, role, "bench")).key
            await conn.close()

            ledger = LedgerProcess(url, new_master_key(), log_path=folder / "ledger.log",
                                   extra_env={"LEDGER_KAFKA_BOOTSTRAP": broker.bootstrap, "LEDGER_LOG_LEVEL": "warning"})
            projector = Projector(url, broker.bootstrap, folder / "projector.log")
            watcher = TopicWatcher(broker.bootstrap)
            ledger.start()
            try:
                await projector.ready()
                await watcher.start()
                async with aiohttp.ClientSession() as http:
                    base = ledger.base_url
                    staff = keys[f"{TENANT_A}:staff"]
                    fresh_refs = [ref(i) for i in range(0, 40)]
                    idle = await freshness(http, base, staff, watcher, fresh_refs, profile.freshness_samples)
                    stop = asyncio.Event()
                    done = [0]
                    load_refs = [ref(i) for i in range(100, profile.subjects_a)]
                    load = asyncio.create_task(background_load(http, base, staff, profile.loaded_appends_per_s,
                                                               load_refs, stop, done))
                    await asyncio.sleep(1.0)
                    t_load = time.perf_counter()
                    done_before = done[0]
                    loaded = await freshness(http, base, staff, watcher, fresh_refs, profile.freshness_samples)
                    achieved = (done[0] - done_before) / (time.perf_counter() - t_load)
                    stop.set()
                    await load
                    figures.update({
                        "freshness_p50_ms": round(percentile(idle, 50) * 1000, 1),
                        "freshness_p99_ms": round(percentile(idle, 99) * 1000, 1),
                        "freshness_loaded_p50_ms": round(percentile(loaded, 50) * 1000, 1),
                        "freshness_loaded_p99_ms": round(percentile(loaded, 99) * 1000, 1),
                        "freshness_loaded_appends_per_s": round(achieved, 1),
                    })
                    log(f"freshness p99 idle {figures['freshness_p99_ms']} ms, loaded {figures['freshness_loaded_p99_ms']} ms")
                    await asyncio.sleep(1.0)  # let the projector drain the background load
                    cpu0 = process_cpu_seconds(ledger.pid)
                    figures.update(await bulk_checks(http, base, keys[f"{TENANT_A}:sender"], profile.subjects_a,
                                                     profile.bulk_seconds))
                    # The server's CPU per check moves far less with the host's speed than checks/s.
                    figures["bulk_server_cpu_us_per_check"] = round(
                        (process_cpu_seconds(ledger.pid) - cpu0) / (figures["bulk_requests"] * CHECK_SIZE) * 1e6, 2)
                    log(f"bulk checks {figures['bulk_checks_per_s']:.0f} subject checks/s")
                    figures.update(await bulk_checks_per_processes(http, ledger, url, keys[f"{TENANT_A}:sender"],
                                                                   profile, folder))
                    edit = await term_edit(http, base, keys[f"{TENANT_B}:admin"], url, watcher, timeout=300)
                    figures["term_edit_100k_s"] = edit.pop("term_edit_s")
                    figures.update(edit)
                    log(f"term edit on {profile.subjects_b} subjects: {figures['term_edit_100k_s']} s")
                    figures.update(await republish(http, base, staff, url, broker.bootstrap, watcher, fresh_refs,
                                                   timeout=600))
                    log(f"republish of {figures['republish_subjects']} subjects:"
                        f" {figures['republish_subjects_per_s']:.0f} subjects/s, live changes meanwhile p99"
                        f" {figures['freshness_republish_p99_ms']} ms ({figures['freshness_republish_samples']} samples)")
            finally:
                await watcher.stop()
                projector.stop()
                ledger.stop()
            figures["postgres"] = await server_settings(url)
    finally:
        broker.stop()
        remove_tree(folder)
    figures["sizes"] = {
        "quick": quick,
        "events": events,
        "subjects": total_subjects,
        "term_edit_tenant_subjects": profile.subjects_b,
        "freshness_samples": profile.freshness_samples,
        "bulk_check_size": CHECK_SIZE,
        "note": ("quick: smaller than the targets' sizes (1M events / 200k subjects, term edit on 100k)"
                 if quick else "full sizes"),
    }
    figures["targets"] = {"rebuild_events_per_s": ">= 50000", "freshness_p99_ms": "< 500",
                          "bulk_checks_per_s": ">= 100000", "term_edit_100k_s": "< 30",
                          "republish_subjects_per_s": ">= 20000 (at 200,000 subjects)"}
    figures["machine"] = machine()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (whole run < 60 s)")
    parser.add_argument("--workers", type=int, default=None, help="rebuild worker processes (default: one per 250,000 events, at most the CPU count)")
    args = parser.parse_args(argv)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    figures = asyncio.run(run(QUICK if args.quick else FULL, quick=args.quick, workers=args.workers))
    write_result("projector", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

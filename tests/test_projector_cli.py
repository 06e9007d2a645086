"""`consent-ledger projector run|rebuild|status` as real processes, and the projector in
the local stack's component list."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg

from consent.terms import add_months, ledger_day
from services.devservers import LocalBroker, free_port
from services.ledger.relay import RelayConfig, running_relay
from services.ledger.store import EventStore
from services.settings import Settings
from tests import processes
from tests.conftest import MASTER_KEY
from tests.projector_support import create_tenant, invoice, subject, wait_for

TODAY = ledger_day(dt.datetime.now(dt.timezone.utc))


def env_for(db_url: str, bootstrap: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update({"LEDGER_DATABASE_URL": db_url, "LEDGER_MASTER_KEY": MASTER_KEY, "LEDGER_LOG_LEVEL": "info"})
    if bootstrap:
        env["LEDGER_KAFKA_BOOTSTRAP"] = bootstrap
    return env


async def _rows(pool: asyncpg.Pool, n: int) -> bool:
    return await pool.fetchval("SELECT count(*) FROM projector.subjects") == n


async def test_projector_run_follows_the_ledger_serves_metrics_and_stops_cleanly(
    db_url: str, pool: asyncpg.Pool, store: EventStore, fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    await create_tenant(store, "acme")
    for i in range(5):
        await subject(store, "acme", f"C{i}", invoice(add_months(TODAY, -3).isoformat()))
    port = free_port()
    log_path = tmp_path / "projector.log"
    async with running_relay(RelayConfig(database_url=db_url, bootstrap=fresh_broker.bootstrap, partitions=2)):
        proc = processes.start(["projector", "run", "--no-group", "--metrics-port", str(port)],
                               env_for(db_url, fresh_broker.bootstrap), log_path)
        try:
            await processes.wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc, log_path)
            await wait_for(lambda: _rows(pool, 5), 30, "5 subjects projected")
            await subject(store, "acme", "C9", invoice(TODAY.isoformat()))
            await wait_for(lambda: _rows(pool, 6), 30, "the 6th subject projected")
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
                metrics = await r.text()
            assert "projector_events_applied_total 7.0" in metrics
        finally:
            code = await asyncio.to_thread(processes.stop, proc)
    assert code == 0, log_path.read_text()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "projector_stopped" for line in lines)


async def test_projector_rebuild_and_status_print_json(db_url: str, pool: asyncpg.Pool, store: EventStore,
                                                       tmp_path: Path) -> None:
    await create_tenant(store, "acme")
    await subject(store, "acme", "C1", invoice(TODAY.isoformat()))
    env = env_for(db_url, None)
    done = await asyncio.to_thread(subprocess.run, [*processes.consent_ledger(), "projector", "rebuild"], env=env,
                                   capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["events"] == 2 and report["subjects"] == 1 and max(report["rebuilt_through"]) == 2
    done = await asyncio.to_thread(subprocess.run, [*processes.consent_ledger(), "projector", "status"], env=env,
                                   capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads(done.stdout.strip().splitlines()[-1])
    assert status["subjects"] == 1 and max(status["rebuilt_through"]) == 2 and status["unpublished"] == 1


async def test_projector_run_without_a_broker_says_so_and_fails(db_url: str) -> None:
    done = await asyncio.to_thread(subprocess.run, [*processes.consent_ledger(), "projector", "run"],
                                   env=env_for(db_url, None), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "LEDGER_KAFKA_BOOTSTRAP" in done.stderr


async def test_the_local_stack_runs_the_projector(
    db_url: str, pool: asyncpg.Pool, store: EventStore, fresh_broker: LocalBroker
) -> None:
    from services.devstack import COMPONENTS, load_component

    assert "services.projector.devstack:projector_component" in COMPONENTS
    component = load_component("services.projector.devstack:projector_component")
    settings = Settings(database_url=db_url, kafka_bootstrap=fresh_broker.bootstrap, master_key=MASTER_KEY)
    await create_tenant(store, "acme")
    await subject(store, "acme", "C1", invoice(TODAY.isoformat()))
    async with running_relay(RelayConfig(database_url=db_url, bootstrap=fresh_broker.bootstrap, partitions=2)):
        async with component(settings) as lines:
            assert "consent.eligibility.v1" in lines[0]
            await wait_for(lambda: _rows(pool, 1), 30, "the subject projected by the stack's projector")


async def test_projector_republish_publishes_every_subject_again_under_a_new_epoch_and_marks_every_partition(
    db_url: str, pool: asyncpg.Pool, store: EventStore, broker: LocalBroker
) -> None:
    from schemas.eligibility import decode_marker, decode_matrix, is_marker_key
    from services.projector.clock import SystemClock
    from services.projector.projection import Projection, apply_until_caught_up
    from services.projector.publisher import KafkaPublisher
    from tests.projector_support import erased, topic_records

    topic = f"eligibility-{os.urandom(4).hex()}"
    await create_tenant(store, "acme")
    await create_tenant(store, "other")
    for ref in ("C1", "C2"):
        await subject(store, "acme", ref, invoice(add_months(TODAY, -3).isoformat()))
    await subject(store, "acme", "E1", invoice(TODAY.isoformat()), erased())
    await subject(store, "other", "X1", invoice(TODAY.isoformat()))
    publisher = KafkaPublisher(broker.bootstrap, topic=topic, partitions=2)
    await publisher.start()
    try:
        await apply_until_caught_up(Projection(pool, clock=SystemClock(), store=store, publisher=publisher))
    finally:
        await publisher.stop()
    env = env_for(db_url, broker.bootstrap)
    cli = processes.consent_ledger()

    def republish(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, "projector", "republish", "--topic", topic, *args], env=env,
                              capture_output=True, text=True, timeout=60)

    done = await asyncio.to_thread(republish)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert (report["epoch"], report["published_here"], report["tenant"]) == (1, 4, None)
    records = await topic_records(broker.bootstrap, topic)
    latest = {k: v for k, v in records}
    assert latest["acme/dealer/E1"] is None, "an erased subject gets its tombstone again"
    for key in ("acme/dealer/C1", "acme/dealer/C2", "other/dealer/X1"):
        assert decode_matrix(latest[key]).epoch == 1  # type: ignore[arg-type]
    marks = {decode_marker(v).partition: decode_marker(v) for k, v in records if is_marker_key(k) and v is not None}
    assert sorted(marks) == [0, 1] and all(m.epoch == 1 and m.complete and m.subjects == 4 for m in marks.values())

    done = await asyncio.to_thread(republish, "--tenant", "other")  # one tenant: the epoch stays
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["published_here"] == 1
    added = Counter(k for k, _ in await topic_records(broker.bootstrap, topic)) - Counter(k for k, _ in records)
    assert added == Counter({"other/dealer/X1": 1}), "only that tenant's subjects, and no epoch markers"

    done = await asyncio.to_thread(republish, "--tenant", "nobody")
    assert done.returncode == 1 and "no tenant 'nobody'" in done.stderr
    done = await asyncio.to_thread(republish, "--tenant", "Not A Tenant")
    assert done.returncode != 0 and "is not a tenant id" in done.stderr
    done = await asyncio.to_thread(subprocess.run, [*cli, "projector", "republish"], env=env_for(db_url, None),
                                   capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "LEDGER_KAFKA_BOOTSTRAP" in done.stderr

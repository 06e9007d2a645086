"""The eligibility topic converges to PostgreSQL whatever happens to the broker, and the
example sender (a real process following the topic) never filters from a copy it cannot
trust: it refuses first.

Real broker (tansu, in memory: stopping it loses every topic), real relay and projector
(in this process, so the lapse test can move the projector's clock), the example sender's
``follow`` as a process of its own and its ``filter`` as a process per call."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consent.terms import add_months, ledger_day
from schemas.eligibility import TOPIC, decode_marker, decode_matrix, is_marker_key
from services.devservers import LocalBroker
from services.ledger.relay import RelayConfig, running_relay
from services.projector.clock import Clock, FixedClock
from services.projector.service import ProjectorConfig, ProjectorService, running_projector
from tests.conftest import Dealer
from tests.projector_support import topic_records

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "campaign_sender.py"
TODAY = ledger_day(dt.datetime.now(dt.timezone.utc))
T = "/v1/tenants/garage-a"
MAX_AGE = 1.5
REFS = ["C1", "C2", "C3", "E1", "P1"]


def projector_config(db_url: str, bootstrap: str, **kw: object) -> ProjectorConfig:
    values: dict[str, object] = {
        "database_url": db_url, "bootstrap": bootstrap, "group_id": None, "eligibility_partitions": 2,
        "maintenance_interval": 0.1, "topic_check_interval": 0.3, "due_interval": 0.5,
    }
    values.update(kw)
    return ProjectorConfig(**values)  # type: ignore[arg-type]


def relay_config(db_url: str, bootstrap: str, **kw: object) -> RelayConfig:
    values: dict[str, object] = {"partitions": 2, "idle_poll": 0.01, "backoff_initial": 0.05, "backoff_max": 0.3,
                                 "request_timeout_ms": 3000}
    values.update(kw)
    return RelayConfig(database_url=db_url, bootstrap=bootstrap, **values)  # type: ignore[arg-type]


async def customers(api: TestClient, dealer: Dealer, invoice_day: dt.date) -> None:
    """C1-C3 and E1 customers (invoice on ``invoice_day``), P1 a prospect."""
    for ref in ("C1", "C2", "C3", "E1"):
        r = await api.post(f"{T}/subjects/dealer/{ref}/invoices", headers=dealer.auth("importer"),
                           json={"invoice_id": f"F-{ref}", "invoice_date": invoice_day.isoformat()})
        assert r.status == 201, await r.text()
    r = await api.post(f"{T}/subjects/dealer/P1/prospect", headers=dealer.auth("importer"),
                       json={"acquired_on": add_months(TODAY, -1).isoformat(), "how": "beurs"})
    assert r.status == 201, await r.text()


@asynccontextmanager
async def follower(bootstrap: str, db: Path, topic: str = TOPIC) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "follow", "--bootstrap", bootstrap, "--db", str(db), "--topic", topic,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


def run_filter(db: Path, on: dt.date, topic: str = TOPIC) -> subprocess.CompletedProcess[str]:
    send_list = "customer_ref\n" + "\n".join(REFS) + "\n"
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "filter", "--db", str(db), "--topic", topic, "--tenant", "garage-a",
         "--category", "newsletter", "--channel", "email", "--date", on.isoformat(), "--max-age", str(MAX_AGE), "-"],
        input=send_list, capture_output=True, text=True, timeout=30)


def filtered(done: subprocess.CompletedProcess[str]) -> set[str]:
    return {line.split(",")[1] for line in done.stdout.strip().splitlines()[1:]}


def copy_of(db: Path) -> dict[str, dict[str, object]]:
    """The follower's table: ref -> the matrix message as held."""
    conn = sqlite3.connect(db)
    try:
        return {json.loads(m)["customer_ref"]: json.loads(m) for (m,) in conn.execute("SELECT matrix FROM eligibility")}
    finally:
        conn.close()


async def ledger_answers(api: TestClient, dealer: Dealer, on: dt.date) -> dict[str, dict[str, object] | None]:
    """What the HTTP check says now (None: erased, the topic holds a tombstone)."""
    out: dict[str, dict[str, object] | None] = {}
    for ref in REFS:
        r = await api.get(f"{T}/subjects/dealer/{ref}/eligibility?on={on.isoformat()}", headers=dealer.auth("sender"))
        assert r.status == 200, await r.text()
        body = await r.json()
        out[ref] = None if body["erased"] else body
    return out


async def allowed_now(api: TestClient, dealer: Dealer, on: dt.date) -> set[str]:
    return {ref for ref, m in (await ledger_answers(api, dealer, on)).items()
            if m is not None and m["cells"]["newsletter"]["email"]["eligible"]}  # type: ignore[index]


async def converged(api: TestClient, dealer: Dealer, db: Path, on: dt.date) -> bool:
    if not db.exists():
        return False
    held = copy_of(db)
    for ref, answer in (await ledger_answers(api, dealer, on)).items():
        mine = held.get(ref)
        if answer is None:
            if mine is not None:
                return False
        elif mine is None or mine["evaluated_on"] != on.isoformat() or mine["cells"] != answer["cells"]:
            return False
    return True


async def follow_until(api: TestClient, dealer: Dealer, db: Path, on: dt.date, timeout: float, what: str,
                       topic: str = TOPIC, changed_at: float | None = None) -> int:
    """Filter over and over until the copy equals the HTTP check for every subject and the
    follower filters again. Every filter either refuses or keeps only subjects the ledger
    allows at that moment; except within --max-age of a change made at ``changed_at``
    (monotonic) while the follower was live: a copy that young may not hold it yet, which is
    what --max-age bounds. Returns how many filters refused."""
    refused = 0
    deadline = time.monotonic() + timeout
    while not db.exists():  # the follower has not opened its database yet
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.1)
    while True:
        done = await asyncio.to_thread(run_filter, db, on, topic)
        if done.returncode == 3:
            refused += 1
            assert "refusing to filter" in done.stderr
        else:
            assert done.returncode == 0, done.stderr
            allowed = await allowed_now(api, dealer, on)
            young = changed_at is not None and time.monotonic() - changed_at < MAX_AGE
            assert young or filtered(done) <= allowed, f"the copy allowed {filtered(done) - allowed}: {done.stderr}"
        if done.returncode == 0 and await converged(api, dealer, db, on):
            return refused
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.1)


async def edit_newsletter_email_term(api: TestClient, dealer: Dealer, months: int) -> None:
    r = await api.patch(f"{T}/terms", headers=dealer.auth("admin"),
                        json={"cells": [{"category": "newsletter", "channel": "email", "months": months}]})
    assert r.status == 200, await r.text()


async def opt_out(api: TestClient, dealer: Dealer, ref: str) -> None:
    r = await api.post(f"{T}/subjects/dealer/{ref}/preferences", headers=dealer.auth("staff"), json={
        "changes": [{"category": "newsletter", "channel": "email", "value": "opt_out"}]})
    assert r.status == 201, await r.text()


async def erase(api: TestClient, dealer: Dealer, ref: str) -> None:
    r = await api.post(f"{T}/subjects/dealer/{ref}/erasure", json={"confirm_ref": ref}, headers=dealer.auth("admin"))
    assert r.status == 201, await r.text()


async def markers(bootstrap: str, topic: str) -> dict[int, tuple[int, bool]]:
    out: dict[int, tuple[int, bool]] = {}
    for key, value in await topic_records(bootstrap, topic):
        if is_marker_key(key) and value is not None:
            m = decode_marker(value)
            out[m.partition] = (m.epoch, m.complete)
    return out


async def test_a_follower_converges_after_the_broker_restarts_empty_and_refuses_to_filter_until_then(
    api: TestClient, dealer: Dealer, db_url: str, fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    await customers(api, dealer, add_months(TODAY, -10))  # newsletter e-mail: 18 months, 8 left
    db = tmp_path / "sender.sqlite"
    bootstrap = fresh_broker.bootstrap
    async with running_relay(relay_config(db_url, bootstrap)), \
            running_projector(projector_config(db_url, bootstrap)) as projector, follower(bootstrap, db):
        await follow_until(api, dealer, db, TODAY, 30, "the first copy")
        done = await asyncio.to_thread(run_filter, db, TODAY)
        assert done.returncode == 0 and filtered(done) == {"C1", "C2", "C3", "E1"}, done.stderr

        fresh_broker.stop()  # every topic is gone with it
        await asyncio.sleep(MAX_AGE + 0.5)
        await opt_out(api, dealer, "C1")
        await edit_newsletter_email_term(api, dealer, 6)  # C2, C3 (10 months ago) lapse
        await erase(api, dealer, "E1")
        done = await asyncio.to_thread(run_filter, db, TODAY)
        assert done.returncode == 3, "a copy older than --max-age must not be used"
        assert "more than --max-age" in done.stderr

        fresh_broker.start()  # the same port, empty
        await follow_until(api, dealer, db, TODAY, 30, "the copy to converge after the broker came back")
        assert await allowed_now(api, dealer, TODAY) == set()
        done = await asyncio.to_thread(run_filter, db, TODAY)
        assert done.returncode == 0 and filtered(done) == set(), done.stderr
        assert projector.projection is not None and projector.projection.epoch >= 1
        assert projector.metrics.registry.get_sample_value("projector_topic_losses_total") >= 1
        assert projector.metrics.registry.get_sample_value("projector_republish_subjects_total") >= len(REFS)
        assert all(complete and epoch >= 1 for epoch, complete in (await markers(bootstrap, TOPIC)).values())
        on_topic = {k: v for k, v in await topic_records(bootstrap, TOPIC) if not is_marker_key(k)}
        assert on_topic["garage-a/dealer/E1"] is None, "the erased subject's tombstone is published again"
        assert decode_matrix(on_topic["garage-a/dealer/C1"]).epoch >= 1  # type: ignore[arg-type]


async def test_a_term_that_lapses_while_the_broker_is_down_reaches_the_follower_on_its_day(
    api: TestClient, dealer: Dealer, db_url: str, fresh_broker: LocalBroker, tmp_path: Path
) -> None:
    # The projector's clock: 23:30 in Amsterdam today; the 18-month newsletter e-mail term of
    # an invoice 18 months before tomorrow lapses at midnight.
    amsterdam = ZoneInfo("Europe/Amsterdam")
    clock = FixedClock(dt.datetime.combine(TODAY, dt.time(23, 30), tzinfo=amsterdam))
    tomorrow = TODAY + dt.timedelta(days=1)
    await customers(api, dealer, add_months(tomorrow, -18))
    db = tmp_path / "sender.sqlite"
    bootstrap = fresh_broker.bootstrap
    clocked: Clock = clock
    async with running_relay(relay_config(db_url, bootstrap)), \
            running_projector(projector_config(db_url, bootstrap), clock=clocked), follower(bootstrap, db):
        await follow_until(api, dealer, db, TODAY, 30, "the first copy")
        done = await asyncio.to_thread(run_filter, db, TODAY)
        assert filtered(done) == {"C1", "C2", "C3", "E1"}, done.stderr

        fresh_broker.stop()
        clock.set(dt.datetime.combine(tomorrow, dt.time(0, 5), tzinfo=amsterdam))  # the term lapsed
        await opt_out(api, dealer, "P1")
        await asyncio.sleep(MAX_AGE + 0.5)
        done = await asyncio.to_thread(run_filter, db, tomorrow)
        assert done.returncode == 3, done.stderr  # without the refusal it would answer from a stale copy

        fresh_broker.start()
        await follow_until(api, dealer, db, tomorrow, 30, "the lapsed matrices on the follower")
        assert await allowed_now(api, dealer, tomorrow) == set()
        done = await asyncio.to_thread(run_filter, db, tomorrow)
        assert done.returncode == 0 and filtered(done) == set(), done.stderr


async def test_a_topic_deleted_and_recreated_by_an_admin_while_the_projector_runs_is_published_again(
    api: TestClient, dealer: Dealer, db_url: str, broker: LocalBroker, tmp_path: Path
) -> None:
    await customers(api, dealer, add_months(TODAY, -3))
    tag = tmp_path.name[-12:].replace("_", "-").lower()
    ledger_topic, topic = f"ledger-{tag}", f"eligibility-{tag}"
    db = tmp_path / "sender.sqlite"
    bootstrap = broker.bootstrap
    async with running_relay(relay_config(db_url, bootstrap, topic=ledger_topic)), \
            running_projector(projector_config(db_url, bootstrap, ledger_topic=ledger_topic,
                                               eligibility_topic=topic)) as projector, \
            follower(bootstrap, db, topic):
        await follow_until(api, dealer, db, TODAY, 30, "the first copy", topic)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic])
            await wait_gone(admin, topic)
            # A change while the topic is away, or already back: the projector may notice the
            # deletion, recreate the topic and republish it before the follower looks again.
            changed_at = time.monotonic()
            await opt_out(api, dealer, "C3")
            await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1,
                                                topic_configs={"cleanup.policy": "compact"})])
        finally:
            await admin.close()
        await follow_until(api, dealer, db, TODAY, 30, "the copy after the topic was recreated", topic, changed_at)
        assert await allowed_now(api, dealer, TODAY) == {"C1", "C2", "E1"}
        assert await wait_epoch(projector, 1)
        assert all(complete and epoch >= 1 for epoch, complete in (await markers(bootstrap, topic)).values())


async def wait_gone(admin: AIOKafkaAdminClient, topic: str) -> None:
    deadline = time.monotonic() + 10
    while topic in await admin.list_topics():
        assert time.monotonic() < deadline, "the topic was not deleted"
        await asyncio.sleep(0.1)


async def wait_epoch(projector: ProjectorService, epoch: int) -> bool:
    assert projector.projection is not None
    return projector.projection.epoch >= epoch


@pytest.fixture(autouse=True)
def _system_clock_is_today() -> None:
    """These tests date invoices from the real today; a run across midnight would not hold."""
    if ledger_day(dt.datetime.now(dt.timezone.utc)) != TODAY:
        pytest.skip("the Dutch day changed while the tests ran")


"""The law moves eligibility like a lapsing term (consent/law.py, docs/law.md): the projector
republishes on a switch date, and a projector started after a switch date (or with a new rule
table) re-evaluates every subject evaluated with another rules version, once, and publishes
the answers the law changed."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Sequence

import asyncpg
import msgspec

from consent.law import RULES_VERSION
from schemas.eligibility import decode_matrix
from services.devservers import LocalBroker
from services.ledger.relay import running_relay
from services.ledger.store import EventStore
from services.projector.clock import FixedClock
from services.projector.projection import Projection, apply_until_caught_up
from services.projector.publisher import Message
from services.projector.service import ProjectorConfig, running_projector
from tests.projector_support import (
    create_tenant,
    invoice,
    prefs,
    projector_config,
    prospect,
    relay_for_topics,
    subject,
    subject_row,
    subject_rows,
    topic_by_key,
    wait_for,
)

UTC = dt.timezone.utc
SWITCH = dt.date(2026, 7, 1)  # phone to customers: opt-in only (nl-telecom-11.7-phone-optin-2026)


def at(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), UTC)


def config(db_url: str, broker: LocalBroker, topics: tuple[str, str]) -> ProjectorConfig:
    # No pause between the rule re-evaluation's batches: the tests wait for all of them.
    return projector_config(db_url, broker.bootstrap, topics, rules_pause=0.0)


async def test_the_switch_date_of_a_law_reaches_the_topic_on_that_day_with_no_new_event(
    db_url: str, store: EventStore, broker: LocalBroker, topics: tuple[str, str]
) -> None:
    await create_tenant(store, "acme")
    await subject(store, "acme", "C1", invoice("2026-01-15"))  # aftersales service by phone: 48 months
    await subject(store, "acme", "P1", prospect("2026-06-01"))  # a prospect: calls need consent on both sides
    clock = FixedClock(at(dt.date(2026, 6, 29), 12))
    elig = topics[1]

    async def count(key: str, n: int) -> bool:
        return len((await topic_by_key(broker.bootstrap, elig)).get(key, [])) >= n

    async with running_relay(relay_for_topics(db_url, broker.bootstrap, topics)), \
            running_projector(config(db_url, broker, topics), clock=clock):
        await wait_for(lambda: count("acme/dealer/C1", 1), 20, "C1's first matrix")
        await wait_for(lambda: count("acme/dealer/P1", 1), 20, "P1's first matrix")
        first = decode_matrix((await topic_by_key(broker.bootstrap, elig))["acme/dealer/C1"][0] or b"")
        call = first.cell("aftersales_service", "phone")
        assert (call.eligible, call.reason, call.until, call.law) == (True, "soft_opt_in", SWITCH, None)
        assert call.requires_objection_offer  # Gedragscode Telemarketing: objection offered in every call
        assert first.valid_until == SWITCH and first.rules_version == RULES_VERSION

        clock.set(at(SWITCH - dt.timedelta(days=1), 21, 30))  # 23:30 in Amsterdam, 30 June
        await asyncio.sleep(0.5)
        assert len((await topic_by_key(broker.bootstrap, elig))["acme/dealer/C1"]) == 1

        clock.set(at(SWITCH - dt.timedelta(days=1), 22, 30))  # 00:30 in Amsterdam, 1 July
        assert clock.today() == SWITCH
        await wait_for(lambda: count("acme/dealer/C1", 2), 20, "C1's matrix on the switch date")
        topic = await topic_by_key(broker.bootstrap, elig)
        second = decode_matrix(topic["acme/dealer/C1"][1] or b"")
        assert second.evaluated_on == SWITCH and second.position == first.position  # no new event
        call = second.cell("aftersales_service", "phone")
        assert (call.eligible, call.reason, call.law) == (False, "consent_required", "nl-telecom-11.7-phone-optin-2026")
        assert second.cell("aftersales_service", "post").eligible  # only the phone changed
        assert second.cell("aftersales_service", "email").eligible
        # the prospect's answer does not change on that day (calls needed consent already): not republished
        assert len(topic["acme/dealer/P1"]) == 1


async def test_a_projector_started_after_a_switch_date_republishes_what_the_law_changed_once(
    db_url: str, pool: asyncpg.Pool, store: EventStore, broker: LocalBroker, topics: tuple[str, str]
) -> None:
    """Today's case: the read model and the topic were built before the rule table existed
    (rows without a rules version, phone "yes" until 2030 for customers)."""
    await create_tenant(store, "acme")
    for i in range(7):  # more than one batch of 5
        await subject(store, "acme", f"C{i}", invoice("2026-01-15"))
    await subject(store, "acme", "K1", invoice("2026-01-15"), prefs(aftersales_service__phone="opt_in"))
    await subject(store, "acme", "P1", prospect("2016-01-01"))  # long lapsed: "no" everywhere, on both days
    elig = topics[1]
    before = FixedClock(at(dt.date(2026, 6, 15), 12))
    async with running_relay(relay_for_topics(db_url, broker.bootstrap, topics)), \
            running_projector(config(db_url, broker, topics), clock=before):
        await wait_for(lambda: _all_on_topic(broker, elig, 9), 20, "every first matrix")
    # what the old deployment left: evaluated with no rule table, next change years away
    await pool.execute("UPDATE projector.subjects SET rules_version = '', next_change = '2030-01-15'"
                       " WHERE customer_ref <> 'P1'")
    await pool.execute("UPDATE projector.subjects SET rules_version = ''")
    published_before = {k: len(v) for k, v in (await topic_by_key(broker.bootstrap, elig)).items()}

    today = FixedClock(dt.datetime.now(UTC))  # after the switch date (the opt-in of K1 counts from today)
    assert today.today() > SWITCH
    cfg = config(db_url, broker, topics)
    cfg = msgspec.structs.replace(cfg, batch_size=5)
    async with running_relay(relay_for_topics(db_url, broker.bootstrap, topics)), \
            running_projector(cfg, clock=today) as service:
        await wait_for(lambda: _republished(broker, elig, published_before, 8), 20, "the changed answers")
        await wait_for(lambda: _all_current(pool), 20, "every row on the current rules")
        reevaluated = service.metrics.reevaluated.labels("rules")._value.get()  # noqa: SLF001 - prometheus value
        assert reevaluated == 9
        await asyncio.sleep(0.5)
    topic = await topic_by_key(broker.bootstrap, elig)
    for key, values in topic.items():
        matrix = decode_matrix(values[-1] or b"")
        for category in ("aftersales_service", "newsletter", "sales_campaign", "aftersales_campaign"):
            cell = matrix.cell(category, "phone")
            assert not cell.eligible or cell.reason == "explicit_consent", (key, category)
    assert decode_matrix(topic["acme/dealer/C0"][-1] or b"").rules_version == RULES_VERSION
    k1 = decode_matrix(topic["acme/dealer/K1"][-1] or b"").cell("aftersales_service", "phone")
    assert (k1.eligible, k1.reason) == (True, "explicit_consent")  # the opt-in (recorded today) still allows it
    assert len(topic["acme/dealer/P1"]) == published_before["acme/dealer/P1"]  # nothing changed for P1

    # once: a second start finds nothing to re-evaluate
    async with running_relay(relay_for_topics(db_url, broker.bootstrap, topics)), \
            running_projector(cfg, clock=today) as again:
        await asyncio.sleep(1.0)
        assert again.metrics.reevaluated.labels("rules")._value.get() == 0  # noqa: SLF001
    after = await topic_by_key(broker.bootstrap, elig)
    assert {k: len(v) for k, v in after.items()} == {k: len(v) for k, v in topic.items()}


async def _all_on_topic(broker: LocalBroker, topic: str, n: int) -> bool:
    return len(await topic_by_key(broker.bootstrap, topic)) >= n


async def _republished(broker: LocalBroker, topic: str, before: dict[str, int], n: int) -> bool:
    now = await topic_by_key(broker.bootstrap, topic)
    return sum(1 for k, v in now.items() if len(v) > before.get(k, 0)) >= n


async def _all_current(pool: asyncpg.Pool) -> bool:
    return not await pool.fetchval("SELECT count(*) FROM projector.subjects WHERE rules_version <> $1", RULES_VERSION)


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def send(self, messages: Sequence[Message]) -> Awaitable[None]:
        self.sent.extend(messages)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_the_rules_reevaluation_does_not_wait_for_a_row_a_live_writer_holds_and_finishes_it_later(
    pool: asyncpg.Pool, store: EventStore
) -> None:
    await create_tenant(store, "acme")
    for i in range(6):
        await subject(store, "acme", f"C{i}", invoice("2026-01-15"))
    clock = FixedClock(at(dt.date(2026, 12, 4), 9))
    projection = Projection(pool, clock=clock, store=store, batch_size=2)
    await apply_until_caught_up(projection)
    await pool.execute("UPDATE projector.subjects SET rules_version = ''")
    recorder = _Recorder()
    projection.publisher = recorder  # type: ignore[assignment]

    async with pool.acquire() as holder:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM projector.subjects WHERE customer_ref = 'C3' FOR UPDATE")
        task = asyncio.create_task(projection.reevaluate_rules(pause=0.01))
        await wait_for(lambda: _current_except(pool, "C3"), 10, "every row but the held one")
        assert not task.done()  # it comes back for C3
        held = await subject_row(pool, "acme", "C3")
        assert held is not None and held.rules_version == ""
        await tx.rollback()  # the live writer gives up: nothing of it counts
    assert await asyncio.wait_for(task, 10) == 6
    assert all(r.rules_version == RULES_VERSION for r in await subject_rows(pool))


async def _current_except(pool: asyncpg.Pool, ref: str) -> bool:
    stale = await pool.fetch("SELECT customer_ref FROM projector.subjects WHERE rules_version <> $1", RULES_VERSION)
    return [r[0] for r in stale] == [ref]

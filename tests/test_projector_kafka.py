"""The projector end to end through Kafka: the real relay publishes the ledger, the
projector consumes it (alone or as a consumer group) and writes consent.eligibility.v1.

Each test uses topics of its own on the session broker, so tests never see each other's
events."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from consent.eligibility import eligibility_matrix
from consent.terms import add_months, ledger_day
from schemas.eligibility import decode_matrix
from schemas.events import MarketingActivityRecorded
from services.devservers import LocalBroker
from services.ledger.relay import running_relay
from services.ledger.store import EventStore
from services.projector.clock import FixedClock, SystemClock
from services.projector.publisher import KafkaPublisher
from services.projector.service import running_projector
from tests.projector_support import (
    append,
    create_tenant,
    erased,
    folded_subject,
    folded_tenant,
    invoice,
    prefs,
    projector_config,
    prospect,
    relay_for_topics,
    state_of,
    subject,
    subject_rows,
    term_edit,
    topic_by_key,
    wait_for,
)

TODAY = ledger_day(dt.datetime.now(dt.timezone.utc))


def months_ago(n: int) -> str:
    return add_months(TODAY, -n).isoformat()


async def test_the_projector_follows_the_relay_and_publishes_only_changed_matrices(
    db_url: str, pool: asyncpg.Pool, store: EventStore, broker: LocalBroker, topics: tuple[str, str]
) -> None:
    await create_tenant(store, "acme")
    await subject(store, "acme", "C1", invoice(months_ago(9)))
    await subject(store, "acme", "P1", prospect(months_ago(1)))
    elig = topics[1]

    async with running_relay(relay_for_topics(db_url, broker.bootstrap, topics)), \
            running_projector(projector_config(db_url, broker.bootstrap, topics), clock=SystemClock()):

        async def published(key: str, at_least: int) -> bool:
            return len((await topic_by_key(broker.bootstrap, elig)).get(key, [])) >= at_least

        await wait_for(lambda: published("acme/dealer/C1", 1), 20, "C1's first matrix")
        await wait_for(lambda: published("acme/dealer/P1", 1), 20, "P1's first matrix")
        on_topic = await topic_by_key(broker.bootstrap, elig)
        terms = (await folded_tenant(store, "acme")).terms
        for ref in ("C1", "P1"):
            [value] = on_topic[f"acme/dealer/{ref}"]
            assert value is not None
            matrix = decode_matrix(value)
            state = await folded_subject(store, "acme", ref)
            expected = eligibility_matrix(state, terms, TODAY)
            assert matrix.evaluated_on == TODAY and matrix.subject_version == state.version
            for key, decision in expected.items():
                category, channel = key.split(":")
                cell = matrix.cell(category, channel)
                assert (cell.eligible, cell.basis, cell.reason, cell.until, tuple(cell.evidence),
                        cell.requires_disclosure) == (decision.eligible, decision.basis, decision.reason,
                                                      decision.until, decision.evidence,
                                                      decision.requires_disclosure)
        p1 = decode_matrix(on_topic["acme/dealer/P1"][0])  # type: ignore[arg-type]
        assert p1.cell("prospect", "post").eligible and p1.cell("prospect", "post").requires_disclosure
        assert p1.valid_until == add_months(dt.date.fromisoformat(months_ago(1)), 3)

        # A preference change: a new matrix, reflecting the new position.
        change = await subject(store, "acme", "C1", prefs(sales_campaign__phone="opt_in"))
        await wait_for(lambda: published("acme/dealer/C1", 2), 20, "C1's second matrix")
        second = decode_matrix(
            (await topic_by_key(broker.bootstrap, elig))["acme/dealer/C1"][1])  # type: ignore[arg-type]
        assert second.position == change.last_position
        assert second.cell("sales_campaign", "phone").reason == "explicit_consent"

        # An event that changes no decision: applied, but nothing published.
        activity = MarketingActivityRecorded(activity_on=TODAY, category="newsletter", channel="email")
        await subject(store, "acme", "C1", activity)

        async def applied(ref: str, version: int) -> bool:
            return await pool.fetchval("SELECT version FROM projector.subjects WHERE customer_ref = $1", ref) == version

        await wait_for(lambda: applied("C1", 3), 20, "the activity applied")

        # A term edit: C1's newsletter e-mail term ends earlier; P1 (a prospect) does not change.
        await append(store, "acme", "tenant/acme", term_edit(newsletter__email=12))

        async def reevaluated() -> bool:
            return not await pool.fetchval("SELECT count(*) FROM projector.tenants WHERE reeval_version IS NOT NULL") \
                and await published("acme/dealer/C1", 3)

        await wait_for(reevaluated, 20, "the term edit re-evaluated")
        on_topic = await topic_by_key(broker.bootstrap, elig)
        assert len(on_topic["acme/dealer/C1"]) == 3 and len(on_topic["acme/dealer/P1"]) == 1
        third = decode_matrix(on_topic["acme/dealer/C1"][2])  # type: ignore[arg-type]
        assert third.terms_version == 2
        assert third.cell("newsletter", "email").until == add_months(dt.date.fromisoformat(months_ago(9)), 12)

        # Erasure: a tombstone.
        await subject(store, "acme", "P1", erased())
        await wait_for(lambda: published("acme/dealer/P1", 2), 20, "P1's tombstone")
        assert (await topic_by_key(broker.bootstrap, elig))["acme/dealer/P1"][-1] is None


async def test_a_lapsing_term_reaches_the_topic_on_the_day_it_lapses_with_no_new_event(
    db_url: str, pool: asyncpg.Pool, store: EventStore, broker: LocalBroker, topics: tuple[str, str]
) -> None:
    await create_tenant(store, "acme")
    acquired = dt.date.fromisoformat(months_ago(1))
    await subject(store, "acme", "P1", prospect(acquired.isoformat()))  # prospect post: 3 months
    lapse = add_months(acquired, 3)
    clock = FixedClock(dt.datetime.now(dt.UTC))
    elig = topics[1]

    async def messages() -> list[bytes | None]:
        return (await topic_by_key(broker.bootstrap, elig)).get("acme/dealer/P1", [])

    async with running_relay(relay_for_topics(db_url, broker.bootstrap, topics)), \
            running_projector(projector_config(db_url, broker.bootstrap, topics), clock=clock):
        await wait_for(lambda: _has(messages, 1), 20, "P1's first matrix")
        [first] = await messages()
        assert first is not None
        matrix = decode_matrix(first)
        assert matrix.cell("prospect", "post").eligible and matrix.valid_until == lapse

        clock.set(dt.datetime.combine(lapse - dt.timedelta(days=1), dt.time(21, 30), dt.UTC))
        assert clock.today() == lapse - dt.timedelta(days=1)  # late evening in Amsterdam, the day before
        await asyncio.sleep(0.5)  # several maintenance rounds: nothing is due yet
        assert len(await messages()) == 1

        clock.set(dt.datetime.combine(lapse, dt.time(0, 30), dt.UTC))
        assert clock.today() == lapse  # just after midnight in Amsterdam
        await wait_for(lambda: _has(messages, 2), 20, "P1's matrix on the day its term lapses")
        second = (await messages())[1]
        assert second is not None
        lapsed = decode_matrix(second)
        assert lapsed.evaluated_on == lapse and lapsed.position == matrix.position  # no new event
        assert lapsed.cell("prospect", "post").reason == "term_expired"
        assert not lapsed.cell("prospect", "post").eligible and lapsed.valid_until is None


async def _has(messages: Callable[[], Awaitable[list[bytes | None]]], n: int) -> bool:
    return len(await messages()) >= n


async def test_the_eligibility_topic_is_created_compacted_with_the_configured_partitions(
    broker: LocalBroker, topics: tuple[str, str]
) -> None:
    publisher = KafkaPublisher(broker.bootstrap, topic=topics[1], partitions=3)
    await publisher.start()
    await publisher.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topics[1]])
        [answer] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topics[1])])
    finally:
        await admin.close()
    assert len(described["partitions"]) == 3
    configs = {name: value for name, value, *_ in answer.resources[0][4]}
    assert configs["cleanup.policy"] == "compact"


async def test_a_restarted_projector_resumes_at_its_stored_offsets(
    db_url: str, pool: asyncpg.Pool, store: EventStore, broker: LocalBroker, topics: tuple[str, str]
) -> None:
    await create_tenant(store, "acme")
    for i in range(20):
        await subject(store, "acme", f"C{i}", invoice(months_ago(2)))
    async with running_relay(relay_for_topics(db_url, broker.bootstrap, topics)):
        async with running_projector(projector_config(db_url, broker.bootstrap, topics)) as first:
            await wait_for(lambda: _count(pool, 20), 20, "20 subjects")
            assert first.metrics.events_applied._value.get() == 21  # noqa: SLF001 - prometheus counter value
        for i in range(20, 25):
            await subject(store, "acme", f"C{i}", invoice(months_ago(2)))
        async with running_projector(projector_config(db_url, broker.bootstrap, topics)) as second:
            await wait_for(lambda: _count(pool, 25), 20, "25 subjects")
            await asyncio.sleep(0.3)
            assert second.metrics.events_applied._value.get() == 5  # noqa: SLF001
            assert second.metrics.duplicates._value.get() == 0  # noqa: SLF001
    offsets = await pool.fetchval("SELECT sum(next_offset) FROM projector.offsets WHERE topic = $1", topics[0])
    assert offsets == 26


async def _count(pool: asyncpg.Pool, n: int) -> bool:
    return await pool.fetchval("SELECT count(*) FROM projector.subjects") == n


async def test_two_instances_in_a_consumer_group_share_the_partitions_and_agree_with_the_ledger(
    db_url: str, pool: asyncpg.Pool, store: EventStore, broker: LocalBroker, topics: tuple[str, str]
) -> None:
    await create_tenant(store, "acme")
    for i in range(30):
        await subject(store, "acme", f"C{i}", invoice(months_ago(i % 12 + 1)))
    group = f"projector-{topics[0]}"
    fast = {"group_id": group, "session_timeout_ms": 6000, "heartbeat_interval_ms": 500}
    async with running_relay(relay_for_topics(db_url, broker.bootstrap, topics)):
        async with running_projector(projector_config(db_url, broker.bootstrap, topics, **fast)) as a, \
                running_projector(projector_config(db_url, broker.bootstrap, topics, **fast)) as b:
            assert a.consumer is not None and b.consumer is not None

            async def shared() -> bool:
                return bool(a.consumer.assigned) and bool(b.consumer.assigned)  # type: ignore[union-attr]

            await wait_for(shared, 30, "both instances to get partitions")
            assert not (a.consumer.assigned & b.consumer.assigned)
            for i in range(30, 40):
                await subject(store, "acme", f"C{i}", invoice(months_ago(3)), prefs(newsletter__sms="opt_out"))
            await wait_for(lambda: _count(pool, 40), 30, "40 subjects")
            await wait_for(lambda: _versions(pool, 40), 30, "every event applied")
    for row in await subject_rows(pool):
        assert state_of(row) == await folded_subject(store, "acme", row.customer_ref)


async def _versions(pool: asyncpg.Pool, n: int) -> bool:
    return await pool.fetchval("SELECT sum(version) FROM projector.subjects") == 30 + 2 * (n - 30)

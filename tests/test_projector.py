"""The projector's read model: exactly-once application, gaps, tenants, term edits, time.

These tests feed the projection the ledger's own RecordedEvents (read back from a real
event store); tests/test_projector_kafka.py does the same through Kafka.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Sequence

import asyncpg
import pytest

from consent.eligibility import eligibility_matrix, next_change
from consent.terms import add_months, ledger_day
from schemas.eligibility import decode_matrix
from services.ledger.store import EventStore
from services.projector.clock import FixedClock
from services.projector.projection import Projection, apply_until_caught_up
from services.projector.publisher import Message
from services.projector.readmodel import TOMBSTONE_HASH, evaluate_subject
from tests.projector_support import (
    append,
    create_tenant,
    erased,
    folded_subject,
    folded_tenant,
    invoice,
    objection,
    prefs,
    prospect,
    state_of,
    subject,
    subject_row,
    subject_rows,
    term_edit,
)

# The ledger stamps events with the real time, so the tests' clock starts at the real now
# and every domain date is relative to it.
NOW = dt.datetime.now(dt.timezone.utc)
TODAY = ledger_day(NOW)
UTC = dt.timezone.utc


def months_ago(n: int) -> str:
    return add_months(TODAY, -n).isoformat()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def projection(pool: asyncpg.Pool, store: EventStore, clock: FixedClock) -> Projection:
    return Projection(pool, clock=clock, store=store, batch_size=3)


async def test_a_customer_row_holds_the_folded_state_and_when_it_next_changes(
    store: EventStore, projection: Projection, pool: asyncpg.Pool
) -> None:
    await create_tenant(store, "acme")
    await subject(store, "acme", "C1", invoice(months_ago(9)), prefs(newsletter__email="opt_out"))
    await apply_until_caught_up(projection)

    row = await subject_row(pool, "acme", "C1")
    assert row is not None
    expected = await folded_subject(store, "acme", "C1")
    terms = (await folded_tenant(store, "acme")).terms
    assert state_of(row) == expected
    assert (row.version, row.last_position) == (2, expected.last_position)
    assert row.evaluated_on == TODAY
    # 18 months of sales and newsletter e-mail, sms and app from the invoice lapse first
    lapse = add_months(dt.date.fromisoformat(months_ago(9)), 18)
    assert row.next_change == next_change(expected, terms, TODAY) == lapse
    assert row.matrix_hash == evaluate_subject(expected, terms, TODAY).matrix_hash
    assert row.published_hash is None  # no broker configured: the publication is pending


async def test_redelivered_events_are_ignored_by_stream_version(
    store: EventStore, projection: Projection, pool: asyncpg.Pool
) -> None:
    await create_tenant(store, "acme")
    await subject(store, "acme", "C1", invoice(months_ago(9)), objection())
    events = await store.read_all(0, 100)
    first = await projection.apply(events)
    before = await subject_rows(pool)
    again = await projection.apply(events + events)
    assert first.applied == 3 and first.duplicates == 0
    assert again.applied == 0 and again.duplicates == 6
    assert await subject_rows(pool) == before


async def test_a_version_gap_is_filled_from_the_ledger(
    store: EventStore, projection: Projection, pool: asyncpg.Pool
) -> None:
    await create_tenant(store, "acme")
    await subject(store, "acme", "C1", invoice(months_ago(9)))
    await subject(store, "acme", "C1", prefs(sales_campaign__sms="opt_in"))
    await subject(store, "acme", "C1", invoice(months_ago(6), "F2"))
    events = await store.read_all(0, 100)
    last_only = [e for e in events if e.stream_id == "subject/acme/dealer/C1" and e.version == 3]
    result = await projection.apply(last_only)  # versions 1 and 2 never delivered, nor the tenant
    assert result.gap_events == 1 + 2  # the tenant stream and two subject events, read from the ledger
    row = await subject_row(pool, "acme", "C1")
    assert row is not None and row.version == 3
    assert state_of(row) == await folded_subject(store, "acme", "C1")
    tenant_version = await pool.fetchval("SELECT version FROM projector.tenants WHERE tenant_id = 'acme'")
    assert tenant_version == 1


async def test_an_erased_subject_keeps_only_a_suppression_record(
    store: EventStore, projection: Projection, pool: asyncpg.Pool
) -> None:
    await create_tenant(store, "acme")
    await subject(store, "acme", "C1", invoice(months_ago(9)), prefs(newsletter__email="opt_in"), erased())
    await apply_until_caught_up(projection)
    row = await subject_row(pool, "acme", "C1")
    assert row is not None and row.erased and row.matrix_hash == TOMBSTONE_HASH and row.next_change is None
    state = state_of(row)
    assert state.erased is not None and state.invoices == {} and state.preferences == {}
    assert state.version == 3


async def test_a_term_edit_reevaluates_every_subject_of_that_tenant_only(
    store: EventStore, projection: Projection, pool: asyncpg.Pool, clock: FixedClock
) -> None:
    await create_tenant(store, "acme")
    await create_tenant(store, "other")
    for i in range(7):  # more than one batch (batch_size=3)
        await subject(store, "acme", f"C{i}", invoice(months_ago(i + 1)))
    await subject(store, "other", "X1", invoice(months_ago(10)))
    await apply_until_caught_up(projection)
    await projection.reevaluate_pending()
    other_before = await subject_row(pool, "other", "X1")

    result = await append(store, "acme", "tenant/acme", term_edit(newsletter__email=6))
    applied = await projection.apply(await store.read_all(result.first_position - 1, 10))
    assert applied.reeval_marked == ["acme"]
    assert projection.reeval_wanted.is_set()
    done = await projection.reevaluate_pending()
    assert done == 7

    terms = (await folded_tenant(store, "acme")).terms
    for row in await subject_rows(pool):
        if row.tenant_id != "acme":
            continue
        state = state_of(row)
        assert row.terms_version == 2
        assert row.matrix_hash == evaluate_subject(state, terms, clock.today()).matrix_hash
        decisions = eligibility_matrix(state, terms, clock.today())
        assert decisions["newsletter:email"].evidence[-1] == result.event_ids[0]
    assert await subject_row(pool, "other", "X1") == other_before
    pending = await pool.fetchval("SELECT count(*) FROM projector.tenants WHERE reeval_version IS NOT NULL")
    assert pending == 0


async def test_a_lapsing_term_is_reevaluated_on_the_day_it_lapses(
    store: EventStore, projection: Projection, pool: asyncpg.Pool, clock: FixedClock
) -> None:
    await create_tenant(store, "acme")
    await subject(store, "acme", "P1", prospect(months_ago(1)))  # prospect post: 3 months
    await subject(store, "acme", "C1", invoice(months_ago(9)))
    await apply_until_caught_up(projection)
    row = await subject_row(pool, "acme", "P1")
    lapse = add_months(dt.date.fromisoformat(months_ago(1)), 3)
    assert row is not None and row.next_change == lapse

    evening_before = dt.datetime.combine(lapse - dt.timedelta(days=1), dt.time(21, 30), UTC)
    assert ledger_day(evening_before) == lapse - dt.timedelta(days=1)
    clock.set(evening_before)
    assert await projection.run_due() == 0
    night_of = dt.datetime.combine(lapse, dt.time(0, 30), UTC)
    assert ledger_day(night_of) == lapse
    clock.set(night_of)
    assert await projection.run_due() == 1
    row = await subject_row(pool, "acme", "P1")
    assert row is not None and row.evaluated_on == lapse and row.next_change is None
    terms = (await folded_tenant(store, "acme")).terms
    state = state_of(row)
    assert eligibility_matrix(state, terms, lapse)["prospect:post"].reason == "term_expired"
    assert row.matrix_hash == evaluate_subject(state, terms, lapse).matrix_hash
    untouched = await subject_row(pool, "acme", "C1")
    assert untouched is not None and untouched.evaluated_on == TODAY


class _Recorder:
    """A publisher that records what it sends in a list shared by several instances (the
    topic, in the order the messages reached it); with ``hold`` every send waits until
    ``release`` is set."""

    def __init__(self, topic: list[Message], *, hold: bool = False) -> None:
        self.topic = topic
        self.sending = asyncio.Event()
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def send(self, messages: Sequence[Message]) -> Awaitable[None]:
        self.sending.set()
        await self.release.wait()
        self.topic.extend(messages)
        acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acknowledged.set_result(None)
        return acknowledged


async def test_two_instances_given_the_same_new_subject_at_once_never_take_it_back_a_version(
    store: EventStore, pool: asyncpg.Pool, clock: FixedClock
) -> None:
    """During a consumer-group rebalance the old and the new owner of a partition can apply
    the same new subject at once: the slower one, holding fewer events, must not overwrite
    the row or publish after the faster one."""
    await create_tenant(store, "acme")
    await subject(store, "acme", "C1", invoice(months_ago(9)), prefs(newsletter__email="opt_out"),
                  prefs(sales_campaign__post="opt_out"))
    await subject(store, "acme", "C1", prefs(newsletter__sms="opt_in"), invoice(months_ago(2), "F2"))
    events = await store.read_all(0, 100)
    await Projection(pool, clock=clock, store=store).apply([e for e in events if e.stream_id == "tenant/acme"])
    c1 = [e for e in events if e.stream_id == "subject/acme/dealer/C1"]
    topic: list[Message] = []
    slow_publisher, fast_publisher = _Recorder(topic, hold=True), _Recorder(topic)
    slow = Projection(pool, clock=clock, store=store, publisher=slow_publisher)
    fast = Projection(pool, clock=clock, store=store, publisher=fast_publisher)

    slow_apply = asyncio.create_task(slow.apply(c1[:3]))  # versions 1-3, fetched before the rebalance
    await asyncio.wait_for(slow_publisher.sending.wait(), 10)  # evaluated, now publishing
    fast_apply = asyncio.create_task(fast.apply(c1))  # versions 1-5, the new owner
    await asyncio.sleep(0.5)
    slow_publisher.release.set()
    await asyncio.wait_for(asyncio.gather(slow_apply, fast_apply), 20)

    row = await subject_row(pool, "acme", "C1")
    assert row is not None and row.version == 5
    assert state_of(row) == await folded_subject(store, "acme", "C1")
    key, value = topic[-1]
    assert key == "acme/dealer/C1" and value is not None
    assert decode_matrix(value).subject_version == 5  # the last matrix on the topic is the newest


async def test_the_topic_message_carries_unsubscribe_links_for_the_eligible_email_cells(
    store: EventStore, pool: asyncpg.Pool, clock: FixedClock
) -> None:
    from schemas.eligibility import decode_matrix
    from services.mail.tokens import AnswerLinks, MailTokens

    await create_tenant(store, "acme")
    await subject(store, "acme", "C1", invoice(months_ago(2)), prefs(newsletter__email="opt_out"))
    topic: list[Message] = []
    links = AnswerLinks(bytes(range(32)), "https://portal.example")
    await Projection(pool, clock=clock, store=store, publisher=_Recorder(topic), links=links).apply(
        await store.read_all(0, 100))
    [(key, value)] = [m for m in topic if m[0] == "acme/dealer/C1"]
    assert value is not None
    matrix = decode_matrix(value)
    assert matrix.unsubscribe is not None
    assert "newsletter" not in matrix.unsubscribe.email  # opted out: no link
    sales = matrix.unsubscribe.email["sales_campaign"]
    assert sales.url.startswith("https://portal.example/u/acme/") and sales.list_unsubscribe == f"<{sales.url}>"
    token = sales.url.rsplit("/", 1)[1]
    opened = MailTokens(bytes(range(32))).open_unsubscribe("acme", token)
    assert opened is not None and (opened.customer_ref, opened.category, opened.channel) == ("C1", "sales_campaign",
                                                                                             "email")

"""Property: whatever the history and however it is delivered (any interleaving of streams,
re-deliveries, lost deliveries), the projector's read model equals evaluating the folded
history directly with consent.eligibility, today and on any later day."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import asyncpg
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from consent.eligibility import next_change
from consent.terms import ledger_day
from schemas.events import (
    Event,
    InvoiceCorrected,
    MarketingActivityRecorded,
    ObjectionWithdrawn,
)
from schemas.vocabulary import CATEGORIES, CHANNELS, subject_stream
from services.ledger.store import EventStore
from services.projector.clock import FixedClock
from services.projector.projection import Projection
from services.projector.readmodel import evaluate_subject, suppressed
from tests.projector_support import (
    ACTOR,
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
    subject_rows,
    term_edit,
)

NOW = dt.datetime.now(dt.timezone.utc)
TODAY = ledger_day(NOW)
REFS = ("R0", "R1", "R2")
_tenants = itertools.count(1)


def _day(offset: int) -> str:
    return (TODAY + dt.timedelta(days=offset)).isoformat()


days = st.integers(min_value=-2000, max_value=60)
cells = st.tuples(st.sampled_from(CATEGORIES), st.sampled_from(CHANNELS))
subject_ops = st.one_of(
    st.tuples(st.just("invoice"), days, st.integers(0, 2)),
    st.tuples(st.just("correct"), days, st.integers(0, 2)),
    st.tuples(st.just("prospect"), days),
    st.tuples(st.just("pref"), cells, st.sampled_from(["opt_in", "opt_out", "default"])),
    st.tuples(st.just("object"),),
    st.tuples(st.just("withdraw"),),
    st.tuples(st.just("activity"), days),
    st.tuples(st.just("erase"),),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("subject"), st.sampled_from(REFS), subject_ops),
        st.tuples(st.just("terms"), cells, st.integers(0, 60)),
    ),
    min_size=1, max_size=14,
)


def subject_event(op: tuple[object, ...]) -> Event:
    kind = op[0]
    if kind == "invoice":
        return invoice(_day(op[1]), f"F{op[2]}")  # type: ignore[arg-type]
    if kind == "correct":
        return InvoiceCorrected(invoice_id=f"F{op[2]}", invoice_date=dt.date.fromisoformat(_day(op[1])))  # type: ignore[arg-type]
    if kind == "prospect":
        return prospect(_day(op[1]))  # type: ignore[arg-type]
    if kind == "pref":
        (category, channel), value = op[1], op[2]  # type: ignore[misc]
        return prefs(**{f"{category}__{channel}": value})
    if kind == "object":
        return objection()
    if kind == "withdraw":
        return ObjectionWithdrawn(changed_by=ACTOR, method="portal")
    if kind == "activity":
        return MarketingActivityRecorded(activity_on=dt.date.fromisoformat(_day(op[1])),  # type: ignore[arg-type]
                                         category="newsletter", channel="email")
    return erased()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ops=operations, seed=st.integers(0, 2**32), batch=st.integers(1, 6), later=st.integers(1, 1500),
       start=st.dates(dt.date(2019, 1, 1), dt.date(2031, 12, 31)))
async def test_the_read_model_equals_the_rules_applied_to_the_folded_history(
    store: EventStore, pool: asyncpg.Pool, ops: list[tuple[object, ...]], seed: int, batch: int, later: int,
    start: dt.date,
) -> None:
    """``start``: the projector's day, 2019-2031 (both sides of every switch date of the
    law, consent/law.py); the events are dated around the real today."""
    tenant = f"p{next(_tenants)}"
    note(f"ops={ops!r}")
    await create_tenant(store, tenant)
    closed: set[object] = set()  # the ledger refuses events after SubjectErased
    for op in ops:
        if op[0] == "terms":
            (category, channel), months = op[1], op[2]  # type: ignore[misc]
            await append(store, tenant, f"tenant/{tenant}", term_edit(**{f"{category}__{channel}": months}))
        elif op[1] not in closed:
            event = subject_event(op[2])  # type: ignore[arg-type]
            await append(store, tenant, subject_stream(tenant, "dealer", op[1]), event)  # type: ignore[arg-type]
            if op[2][0] == "erase":  # type: ignore[index]
                closed.add(op[1])

    # Deliver: streams interleaved at random (each stream in its own order), some events
    # delivered twice, some never (the projector fills the gap from the ledger).
    rnd = random.Random(seed)
    events = await store.read_all(0, 100_000, tenant_id=tenant)
    queues: dict[str, list] = {}
    for e in events:
        queues.setdefault(e.stream_id, []).append(e)
    delivery = []
    while queues:
        stream = rnd.choice(sorted(queues))
        e = queues[stream].pop(0)
        if not queues[stream]:
            del queues[stream]
        roll = rnd.random()
        if roll < 0.15 and queues.get(stream):
            continue  # lost (never the last event of a stream: nothing would reveal the gap)
        delivery.append(e)
        if roll > 0.85:
            delivery.append(e)
    begin = dt.datetime.combine(start, dt.time(12), dt.timezone.utc)
    clock = FixedClock(begin)
    projection = Projection(pool, clock=clock, store=store, batch_size=2)
    for i in range(0, len(delivery), batch):
        await projection.apply(delivery[i:i + batch])
    await projection.reevaluate_pending()

    terms = (await folded_tenant(store, tenant)).terms
    rows = [r for r in await subject_rows(pool) if r.tenant_id == tenant]
    touched = {op[1] for op in ops if op[0] == "subject"}
    assert {r.customer_ref for r in rows} == touched
    for day in (start, start + dt.timedelta(days=later)):
        if day != start:
            clock.set(begin + dt.timedelta(days=later))
            await projection.run_due()
            rows = [r for r in await subject_rows(pool) if r.tenant_id == tenant]
        for row in rows:
            state = await folded_subject(store, tenant, row.customer_ref)
            if state.erased is not None:
                state = suppressed(state)
            assert state_of(row) == state
            expected = evaluate_subject(state, terms, day)
            assert row.matrix_hash == expected.matrix_hash, (row.customer_ref, day, row.evaluated_on, row.next_change,
                                                             state, terms)
            if row.evaluated_on == day:
                assert row.next_change == next_change(state, terms, day)
            else:  # not due: nothing changed since it was evaluated
                assert row.next_change is None or row.next_change > day

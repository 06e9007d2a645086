from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from schemas.events import Actor, InvoiceRecorded, Metadata, PreferencesChanged, PreferenceSetting
from services.ledger.errors import IdempotencyKeyReused, WrongExpectedVersion
from services.ledger.store import AppendRequest, EventStore, StreamWrite, request_fingerprint

META = Metadata(actor=Actor(kind="api", id="test"), method="api")


def invoice(n: int, day: str = "2024-01-31") -> InvoiceRecorded:
    return InvoiceRecorded(invoice_id=f"F{n}", invoice_date=dt.date.fromisoformat(day))


def req(stream: str, *events, expected=None, key=None, fp=b"") -> AppendRequest:
    return AppendRequest(
        tenant_id="acme",
        writes=[StreamWrite(stream, list(events), expected)],
        metadata=META,
        idempotency_key=key,
        fingerprint=fp,
    )


async def test_appended_events_are_read_back_in_stream_order(store: EventStore) -> None:
    r = await store.append(req("subject/acme/dealer/C1", invoice(1), invoice(2), expected=0))
    assert (r.streams[0].from_version, r.streams[0].to_version) == (1, 2)
    events = await store.read_stream("subject/acme/dealer/C1")
    assert [e.version for e in events] == [1, 2]
    assert [e.event.invoice_id for e in events] == ["F1", "F2"]
    assert events[0].occurred_on == dt.date(2024, 1, 31)
    assert events[0].metadata.actor.id == "test"


async def test_a_stale_expected_version_is_refused_with_the_current_version(store: EventStore) -> None:
    await store.append(req("s/acme/1", invoice(1), expected=0))
    with pytest.raises(WrongExpectedVersion) as info:
        await store.append(req("s/acme/1", invoice(2), expected=0))
    assert info.value.current == 1
    assert [e.version for e in await store.read_stream("s/acme/1")] == [1]


async def test_concurrent_writers_with_the_same_expected_version_only_one_wins(store: EventStore) -> None:
    await store.append(req("s/acme/race", invoice(0), expected=0))
    results = await asyncio.gather(
        *(store.append(req("s/acme/race", invoice(i), expected=1)) for i in range(1, 11)), return_exceptions=True
    )
    assert sum(1 for r in results if not isinstance(r, Exception)) == 1
    assert all(isinstance(r, WrongExpectedVersion) for r in results if isinstance(r, Exception))
    assert await store.stream_version("s/acme/race") == 2


async def test_a_retried_request_with_the_same_idempotency_key_appends_nothing(store: EventStore) -> None:
    fp = request_fingerprint("body-1")
    first = await store.append(req("s/acme/idem", invoice(1), key="k1", fp=fp))
    again = await store.append(req("s/acme/idem", invoice(1), key="k1", fp=fp))
    assert again.replayed and again.event_ids == first.event_ids
    assert len(await store.read_stream("s/acme/idem")) == 1


async def test_concurrent_retries_in_one_batch_append_once(store: EventStore) -> None:
    fp = request_fingerprint("same")
    results = await asyncio.gather(*(store.append(req("s/acme/idem2", invoice(1), key="k", fp=fp)) for _ in range(5)))
    assert len({tuple(r.event_ids) for r in results}) == 1
    assert len(await store.read_stream("s/acme/idem2")) == 1


async def test_an_idempotency_key_reused_for_another_request_is_refused(store: EventStore) -> None:
    await store.append(req("s/acme/idem3", invoice(1), key="k", fp=request_fingerprint("a")))
    with pytest.raises(IdempotencyKeyReused):
        await store.append(req("s/acme/idem3", invoice(2), key="k", fp=request_fingerprint("b")))
    assert len(await store.read_stream("s/acme/idem3")) == 1


async def test_a_multi_stream_append_is_all_or_nothing(store: EventStore) -> None:
    await store.append(req("s/acme/b", invoice(1), expected=0))
    bad = AppendRequest(
        tenant_id="acme",
        writes=[StreamWrite("s/acme/a", [invoice(1)], 0), StreamWrite("s/acme/b", [invoice(2)], 0)],
        metadata=META,
    )
    with pytest.raises(WrongExpectedVersion):
        await store.append(bad)
    assert await store.read_stream("s/acme/a") == []


async def test_positions_are_global_and_recorded_at_never_goes_backwards(store: EventStore) -> None:
    await asyncio.gather(*(store.append(req(f"s/acme/{i}", invoice(i))) for i in range(50)))
    events = await store.read_all(0, 1000)
    assert [e.position for e in events] == list(range(1, 51))
    assert all(a.recorded_at <= b.recorded_at for a, b in zip(events, events[1:]))


async def test_preference_events_round_trip_through_the_store(store: EventStore) -> None:
    ev = PreferencesChanged(
        changes=[PreferenceSetting("newsletter", "email", "opt_out")],
        changed_by=Actor(kind="subject", id="subject"),
        method="portal",
        policy_version="pv-1",
    )
    await store.append(req("subject/acme/dealer/C9", ev))
    [read] = await store.read_stream("subject/acme/dealer/C9")
    assert read.event == ev

"""A consent record names the dealer's policy version in force when it is recorded, even
when another API process changed the policy a moment before: each process keeps a copy of
the tenant, and the append checks, in its own transaction, that the copy is current."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from schemas.events import Actor, ObjectionRecorded, PreferencesChanged, PreferenceSetting
from services.ledger.commands import Context, Ledger
from services.ledger.store import EventStore
from services.ledger.subject_keys import SubjectKeys, new_master_key, parse_master_key

STAFF = Context(actor=Actor(kind="staff", id="key:test"), method="api")
TENANT = "garage-policy"


@pytest.fixture
async def two_processes(pool: asyncpg.Pool) -> AsyncIterator[tuple[Ledger, Ledger]]:
    """Two ledgers on one database, each with its own store (group-commit writer) and its
    own copy of the tenant: what two API processes have."""
    master = parse_master_key(new_master_key())
    stores = [EventStore(pool), EventStore(pool)]
    for store in stores:
        await store.start()
    try:
        first, second = (Ledger(pool, store, SubjectKeys(pool, master)) for store in stores)
        await first.create_tenant(STAFF, TENANT, "Garage Policy")
        yield first, second
    finally:
        for store in stores:
            await store.stop()


async def _last_event(ledger: Ledger, ref: str) -> object:
    events = await ledger.store.read_stream(f"subject/{TENANT}/dealer/{ref}")
    return events[-1].event


async def test_a_preference_names_the_policy_another_process_published_a_moment_before(
    two_processes: tuple[Ledger, Ledger],
) -> None:
    first, second = two_processes
    change = [PreferenceSetting(category="newsletter", channel="email", value="opt_out")]
    await first.change_preferences(STAFF, TENANT, "dealer", "K1", change)  # first's copy of the tenant is now warm
    before = await first.current_policy_version(TENANT)

    await second.add_chapter(STAFF, TENANT, "Nieuw", "Een nieuwe alinea over bewaartermijnen.", True)
    published = await second.current_policy_version(TENANT)
    assert published != before

    await first.change_preferences(STAFF, TENANT, "dealer", "K2", change)
    event = await _last_event(first, "K2")
    assert isinstance(event, PreferencesChanged)
    assert (event.policy_version, event.policy_version_basis) == (published, "in_force")


async def test_an_objection_names_the_policy_another_process_published_a_moment_before(
    two_processes: tuple[Ledger, Ledger],
) -> None:
    first, second = two_processes
    await first.record_objection(STAFF, TENANT, "dealer", "K1")
    await second.add_chapter(STAFF, TENANT, "Nieuw", "Nog een alinea.", True)

    await first.record_objection(STAFF, TENANT, "dealer", "K2")
    event = await _last_event(first, "K2")
    assert isinstance(event, ObjectionRecorded)
    assert event.policy_version == await second.current_policy_version(TENANT)


async def test_a_stale_expected_version_still_names_the_subject_stream_not_the_tenant(
    two_processes: tuple[Ledger, Ledger],
) -> None:
    from services.ledger.errors import WrongExpectedVersion

    first, _ = two_processes
    change = [PreferenceSetting(category="newsletter", channel="email", value="opt_in")]
    await first.change_preferences(STAFF, TENANT, "dealer", "K1", change)
    with pytest.raises(WrongExpectedVersion) as caught:
        await first.change_preferences(STAFF, TENANT, "dealer", "K1", change, expected=5)
    assert caught.value.stream_id == f"subject/{TENANT}/dealer/K1"
    assert (caught.value.expected, caught.value.current) == (5, 1)

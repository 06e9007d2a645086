"""The reach dashboard and the lapse list: figures from the projector's read model,
evaluated with the eligibility rule, equal to a bulk check over every subject."""

from __future__ import annotations

import datetime as dt
import random

import asyncpg
from aiohttp.test_utils import TestClient

from consent.terms import add_months, ledger_day
from schemas.vocabulary import CATEGORIES, CHANNELS
from services.ledger.store import EventStore
from services.projector.reach import ReachCache
from tests.conftest import Dealer
from tests.projector_support import erased, invoice, objection, prefs, prospect, subject
from tests.test_eligibility_api import project

TODAY = ledger_day(dt.datetime.now(dt.timezone.utc))
T = "/v1/tenants/garage-a"


async def _population(pool: asyncpg.Pool, n: int = 240) -> list[str]:
    """Customers whose 18-month e-mail terms lapse around TODAY + 10 days, older ones, prospects,
    opt-outs, opt-ins, objections, an erased subject, and a second data source."""
    store = EventStore(pool)
    await store.start()
    rng = random.Random(15)
    refs: list[str] = []
    lapse = TODAY + dt.timedelta(days=10)
    try:
        for i in range(n):
            ref = f"K{i:04d}"
            source = "unknown" if i % 7 == 0 else "dealer"
            kind = i % 6
            if kind == 5:
                events = [prospect((TODAY - dt.timedelta(days=rng.randrange(0, 120))).isoformat())]
            else:
                # invoice dates spread over +-60 days around "18 months before the lapse day"
                base = add_months(lapse, -18) + dt.timedelta(days=rng.randrange(-60, 60))
                events = [invoice(min(base, TODAY).isoformat(), f"F{i}")]
            if i % 11 == 0:
                events.append(prefs(newsletter__email="opt_out"))
            if i % 13 == 0:
                events.append(prefs(prospect__email="opt_in", sales_campaign__sms="opt_in"))
            if i % 17 == 0:
                events.append(objection())
            if i % 29 == 0:
                events.append(erased())
            await subject(store, "garage-a", ref, *events, source=source)
            refs.append(f"{source}/{ref}")
    finally:
        await store.stop()
    await project(pool)
    return refs


async def _bulk_count(api: TestClient, dealer: Dealer, refs: list[str], category: str, channel: str,
                      day: dt.date) -> dict[str, int]:
    body = {"category": category, "channel": channel, "send_date": day.isoformat(),
            "subjects": [{"source": r.split("/")[0], "customer_ref": r.split("/")[1]} for r in refs]}
    r = await api.post(f"{T}/eligibility:check", json=body, headers=dealer.auth("sender"))
    assert r.status == 200, await r.text()
    per_source: dict[str, int] = {}
    for s in (await r.json())["results"]:
        per_source[s["source"]] = per_source.get(s["source"], 0) + s["eligible"]
    return per_source


async def test_dashboard_figures_equal_a_bulk_check_over_every_subject_across_a_lapse_date(
    api: TestClient, dealer: Dealer, pool: asyncpg.Pool
) -> None:
    refs = await _population(pool)
    cache = ReachCache(pool)
    # the evaluation day moves (an injected "today") across the day most e-mail terms lapse
    for on in (TODAY, TODAY + dt.timedelta(days=10), TODAY + dt.timedelta(days=45)):
        counts = await cache.counts("garage-a", on)
        assert counts.dates == (on, on + dt.timedelta(days=30), on + dt.timedelta(days=90))
        for j, day in enumerate(counts.dates):
            for category in CATEGORIES:
                for channel in CHANNELS:
                    expected = await _bulk_count(api, dealer, refs, category, channel, day)
                    got = {s: counts.counts[s][j][f"{category}:{channel}"] for s in counts.counts}
                    assert {s: n for s, n in got.items() if n} == {s: n for s, n in expected.items() if n}, (
                        on, day, category, channel)
    moved = (await cache.counts("garage-a", TODAY)).total(0, "newsletter:email")
    later = (await cache.counts("garage-a", TODAY + dt.timedelta(days=45))).total(0, "newsletter:email")
    assert later < moved  # the lapse is in the figures, not just equal zeros


async def test_the_dashboard_follows_new_events_without_evaluating_everyone_again(
    api: TestClient, dealer: Dealer, pool: asyncpg.Pool
) -> None:
    refs = await _population(pool, 60)
    cache = ReachCache(pool)
    before = await cache.counts("garage-a", TODAY)
    eligible_before = before.total(0, "sales_campaign:post")
    target = next(r for r in refs if r.startswith("dealer/"))
    ref = target.split("/")[1]
    was = (await _bulk_count(api, dealer, [target], "sales_campaign", "post", TODAY)).get("dealer", 0)
    r = await api.post(f"{T}/subjects/dealer/{ref}/objection", json={}, headers=dealer.auth("staff"))
    assert r.status == 201, await r.text()
    await project(pool)
    after = await cache.counts("garage-a", TODAY)
    assert after.total(0, "sales_campaign:post") == eligible_before - was
    assert after.subjects == before.subjects


async def test_the_reach_api_answers_per_source_and_in_total_for_staff_of_the_tenant_only(
    api: TestClient, dealer: Dealer, other_dealer: Dealer, pool: asyncpg.Pool
) -> None:
    refs = await _population(pool, 50)
    r = await api.get(f"{T}/reach", headers=dealer.auth("staff"))
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["on"] == TODAY.isoformat() and len(body["dates"]) == 3
    assert {s["source"] for s in body["sources"]} == {"dealer", "unknown"}
    for category in CATEGORIES:
        for channel in CHANNELS:
            total = body["total"][category][channel]
            assert total == [sum(s["cells"][category][channel][j] for s in body["sources"]) for j in range(3)]
    expected = await _bulk_count(api, dealer, refs, "newsletter", "post", TODAY)
    assert body["total"]["newsletter"]["post"][0] == sum(expected.values())
    assert (await api.get(f"{T}/reach", headers=other_dealer.auth("admin"))).status == 403
    assert (await api.get(f"{T}/reach", headers=dealer.auth("sender"))).status == 403
    bad = await api.get(f"{T}/reach?on=2026-02-30", headers=dealer.auth("staff"))
    assert bad.status == 422 and (await bad.json())["field"] == "on"


async def test_the_lapse_list_names_who_loses_a_basis_within_n_days_and_on_which_day(
    api: TestClient, dealer: Dealer, pool: asyncpg.Pool
) -> None:
    refs = await _population(pool, 120)
    r = await api.get(f"{T}/reach/lapses?days=30&category=newsletter&channel=email", headers=dealer.auth("staff"))
    assert r.status == 200, await r.text()
    body = await r.json()
    listed = {(x["source"], x["customer_ref"]): x["lapses_on"] for x in body["lapses"]}
    assert listed and body["count"] == len(listed)
    # exactly those eligible today and not eligible on the day before the window ends + 1
    eligible_today = await _eligible_set(api, dealer, refs, TODAY)
    eligible_end = await _eligible_set(api, dealer, refs, TODAY + dt.timedelta(days=30))
    assert set(listed) == eligible_today - eligible_end
    for (source, ref), day in listed.items():
        lapse_day = dt.date.fromisoformat(day)
        assert (source, ref) in await _eligible_set(api, dealer, [f"{source}/{ref}"], lapse_day - dt.timedelta(days=1))
        assert (source, ref) not in await _eligible_set(api, dealer, [f"{source}/{ref}"], lapse_day)


async def _eligible_set(api: TestClient, dealer: Dealer, refs: list[str], day: dt.date) -> set[tuple[str, str]]:
    body = {"category": "newsletter", "channel": "email", "send_date": day.isoformat(),
            "subjects": [{"source": r.split("/")[0], "customer_ref": r.split("/")[1]} for r in refs]}
    r = await api.post(f"{T}/eligibility:check", json=body, headers=dealer.auth("sender"))
    return {(s["source"], s["customer_ref"]) for s in (await r.json())["results"] if s["eligible"]}


async def test_the_lapse_list_refuses_a_huge_or_malformed_window_and_unknown_cells(
    api: TestClient, dealer: Dealer, pool: asyncpg.Pool
) -> None:
    await _population(pool, 5)
    for query, field in (("days=100000", "days"), ("days=-1", "days"), ("days=abc", "days"), ("days=0", "days"),
                         ("category=spam", "category"), ("channel=fax", "channel"), ("on=2026-13-01", "on")):
        r = await api.get(f"{T}/reach/lapses?{query}", headers=dealer.auth("staff"))
        assert r.status == 422, (query, await r.text())
        assert (await r.json())["field"] == field


async def test_a_row_the_projector_applies_late_still_reaches_the_dashboard(
    api: TestClient, dealer: Dealer, pool: asyncpg.Pool
) -> None:
    """Kafka partitions are applied independently: subject A's event (an earlier position in
    the tenant's log partition) can reach the read model after B's. The dashboard has then
    seen B's higher position; its fingerprint check finds A's change anyway."""
    from services.projector.clock import SystemClock
    from services.projector.projection import Projection

    await _population(pool, 30)
    store = EventStore(pool)
    await store.start()
    try:
        head = await store.tenant_head("garage-a")
        await subject(store, "garage-a", "K0001", objection())  # A
        await subject(store, "garage-a", "K0002", objection())  # B
        new = await store.read_all(head, tenant_id="garage-a")
    finally:
        await store.stop()
    cache = ReachCache(pool)
    before = (await cache.counts("garage-a", TODAY)).total(0, "aftersales_service:post")
    projection = Projection(pool, clock=SystemClock())
    await projection.apply([e for e in new if e.stream_id.endswith("/K0002")])
    after_b = (await cache.counts("garage-a", TODAY)).total(0, "aftersales_service:post")
    await projection.apply([e for e in new if e.stream_id.endswith("/K0001")])
    after_a = (await cache.counts("garage-a", TODAY)).total(0, "aftersales_service:post")
    fresh = (await ReachCache(pool).counts("garage-a", TODAY)).total(0, "aftersales_service:post")
    assert before > after_b > after_a == fresh


async def test_each_lapse_carries_the_requires_flags_the_bulk_check_gives_today(
    api: TestClient, dealer: Dealer, pool: asyncpg.Pool
) -> None:
    """A re-permission mailing from the lapse list must do what each message must do while
    the subject is still eligible (first-letter disclosure, Postfilter check, objection
    offer): the list carries today's decision's requires_* flags, equal to the bulk check's."""
    refs = await _population(pool, 120)
    r = await api.get(f"{T}/reach/lapses?days=366", headers=dealer.auth("staff"))
    assert r.status == 200, await r.text()
    lapses = (await r.json())["lapses"]
    assert lapses
    flags = ("requires_disclosure", "requires_postfilter_check", "requires_objection_offer")
    by_cell: dict[tuple[str, str], list[dict]] = {}
    for x in lapses:
        by_cell.setdefault((x["category"], x["channel"]), []).append(x)
    for (category, channel), entries in by_cell.items():
        body = {"category": category, "channel": channel, "send_date": TODAY.isoformat(),
                "subjects": [{"source": x["source"], "customer_ref": x["customer_ref"]} for x in entries]}
        r = await api.post(f"{T}/eligibility:check", json=body, headers=dealer.auth("sender"))
        checked = {(s["source"], s["customer_ref"]): s for s in (await r.json())["results"]}
        for x in entries:
            answer = checked[(x["source"], x["customer_ref"])]
            assert answer["eligible"] and all(x[f] == answer[f] for f in flags), (x, answer)
    assert any(x[f] for x in lapses for f in flags)  # the flags are not all false by construction
    assert refs

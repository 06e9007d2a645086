"""Read your own writes over HTTP: an append answers with its ledger position, and the
eligibility checks (one subject, bulk) accept ``min_position`` and answer only once the read
model reflects it, or say clearly that it does not (yet)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from consent.terms import add_months, ledger_day
from services.projector.clock import SystemClock
from services.projector.projection import Projection, apply_until_caught_up
from tests.conftest import Dealer

TODAY = ledger_day(dt.datetime.now(dt.timezone.utc))
T = "/v1/tenants/garage-a"
WAIT_MS = 1500


@pytest.fixture
def settings_options() -> dict[str, int]:
    return {"min_position_wait_ms": WAIT_MS}


async def project(pool: asyncpg.Pool) -> None:
    projection = Projection(pool, clock=SystemClock())
    await apply_until_caught_up(projection)
    await projection.reevaluate_pending()


async def project_later(pool: asyncpg.Pool, delay: float) -> None:
    await asyncio.sleep(delay)
    await project(pool)


@pytest.fixture
async def customer(api: TestClient, dealer: Dealer, pool: asyncpg.Pool) -> Dealer:
    """C1: a customer with a recent invoice (newsletter e-mail allowed on soft opt-in), projected."""
    r = await api.post(f"{T}/subjects/dealer/C1/invoices", headers=dealer.auth("importer"),
                       json={"invoice_id": "F1", "invoice_date": add_months(TODAY, -2).isoformat()})
    assert r.status == 201, await r.text()
    await project(pool)
    return dealer


async def opt_out(api: TestClient, dealer: Dealer) -> int:
    r = await api.post(f"{T}/subjects/dealer/C1/preferences", headers=dealer.auth("staff"), json={
        "changes": [{"category": "newsletter", "channel": "email", "value": "opt_out"}]})
    assert r.status == 201, await r.text()
    return (await r.json())["last_position"]


def bulk(ref: str = "C1") -> dict[str, object]:
    return {"category": "newsletter", "channel": "email", "send_date": TODAY.isoformat(),
            "subjects": [{"source": "dealer", "customer_ref": ref}, {"source": "dealer", "customer_ref": "NOPE"}]}


async def test_a_sender_that_just_opted_a_customer_out_gets_an_answer_that_includes_it(
    api: TestClient, customer: Dealer, pool: asyncpg.Pool
) -> None:
    position = await opt_out(api, customer)
    url = f"{T}/subjects/dealer/C1/eligibility"
    before = await (await api.get(url, headers=customer.auth("sender"))).json()
    assert before["cells"]["newsletter"]["email"]["eligible"], "without min_position: what the model holds now"
    assert before["position"] < position

    late = asyncio.create_task(project_later(pool, 0.3))  # the projector gets to it while the check waits
    started = time.monotonic()
    r = await api.get(f"{url}?min_position={position}", headers=customer.auth("sender"))
    assert r.status == 200, await r.text()
    answer = await r.json()
    assert 0.25 < time.monotonic() - started < WAIT_MS / 1000
    assert answer["position"] >= position
    assert answer["cells"]["newsletter"]["email"] == {**answer["cells"]["newsletter"]["email"], "eligible": False,
                                                      "reason": "opted_out"}
    assert answer["evaluated_at"] is not None and answer["epoch"] == 0
    await late


async def test_the_bulk_check_waits_for_min_position_too_and_says_which_position_each_answer_reflects(
    api: TestClient, customer: Dealer, pool: asyncpg.Pool
) -> None:
    position = await opt_out(api, customer)
    late = asyncio.create_task(project_later(pool, 0.3))
    r = await api.post(f"{T}/eligibility:check?min_position={position}", json=bulk(), headers=customer.auth("sender"))
    assert r.status == 200, await r.text()
    answer = await r.json()
    c1, nope = answer["results"]
    assert (c1["eligible"], c1["reason"]) == (False, "opted_out")
    assert c1["position"] >= position and answer["position"] >= position
    assert (nope["known"], nope["position"]) == (False, 0)
    await late


async def test_a_min_position_in_the_past_is_answered_at_once(api: TestClient, customer: Dealer) -> None:
    started = time.monotonic()
    r = await api.get(f"{T}/subjects/dealer/C1/eligibility?min_position=1", headers=customer.auth("sender"))
    assert r.status == 200
    r = await api.post(f"{T}/eligibility:check?min_position=0", json=bulk(), headers=customer.auth("sender"))
    assert r.status == 200
    assert time.monotonic() - started < 0.5


async def test_a_min_position_the_model_does_not_reach_in_time_is_a_503_naming_the_position_reached(
    api: TestClient, customer: Dealer
) -> None:
    reached = (await (await api.get(f"{T}/subjects/dealer/C1/eligibility", headers=customer.auth("sender"))).json())
    position = await opt_out(api, customer)  # and no projector runs
    for r in (await api.get(f"{T}/subjects/dealer/C1/eligibility?min_position={position}",
                            headers=customer.auth("sender")),
              await api.post(f"{T}/eligibility:check?min_position={position}", json=bulk(),
                             headers=customer.auth("sender"))):
        assert r.status == 503
        body = await r.json()
        assert body["error"] == "not_caught_up" and body["field"] == "min_position"
        assert body["position"] == reached["position"] < position
        assert str(position) in body["message"]
        assert r.headers["Retry-After"] == "1"


async def test_a_min_position_beyond_the_ledger_head_is_refused_with_the_head(
    api: TestClient, customer: Dealer
) -> None:
    position = await opt_out(api, customer)
    for r in (await api.get(f"{T}/subjects/dealer/C1/eligibility?min_position={position + 1000}",
                            headers=customer.auth("sender")),
              await api.post(f"{T}/eligibility:check?min_position={position + 1000}", json=bulk(),
                             headers=customer.auth("sender"))):
        assert r.status == 422
        body = await r.json()
        assert (body["error"], body["field"], body["position"]) == ("position_beyond_head", "min_position", position)


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "1e3", "99999999999999999999"])
async def test_a_min_position_that_is_not_a_whole_number_is_a_422_naming_it(
    api: TestClient, customer: Dealer, value: str
) -> None:
    for r in (await api.get(f"{T}/subjects/dealer/C1/eligibility?min_position={value}",
                            headers=customer.auth("sender")),
              await api.post(f"{T}/eligibility:check?min_position={value}", json=bulk(),
                             headers=customer.auth("sender"))):
        assert r.status == 422, await r.text()
        body = await r.json()
        assert body["field"] == "min_position" and "whole number" in body["message"]


async def test_every_append_answer_carries_its_ledger_position(api: TestClient, customer: Dealer) -> None:
    first = await opt_out(api, customer)
    second = await opt_out(api, customer)
    assert second > first > 0

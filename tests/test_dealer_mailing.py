"""The mailing export: eligible subjects of a campaign with the contact fields the channel
needs and the requires_* flags; a role of its own; every export recorded."""

from __future__ import annotations

import csv
import datetime as dt
import io

import asyncpg
from aiohttp.test_utils import TestClient

from tests.conftest import Dealer
from tests.portal_support import OPERATOR, csrf_of, login
from tests.test_dealer_pages import _today, _world
from tests.test_eligibility_api import project

T = "/v1/tenants/garage-a"


async def _marketing_key(api: TestClient, dealer: Dealer) -> dict[str, str]:
    r = await api.post(f"{T}/api-keys", json={"role": "marketing"}, headers=dealer.auth("admin"))
    assert r.status == 201, await r.text()
    return {"Authorization": f"Bearer {(await r.json())['key']}"}


async def _people(api: TestClient, dealer: Dealer) -> None:
    day = (dt.date.today() - dt.timedelta(days=60)).isoformat()
    people = {
        "K1": {"name": "Ann Post", "street": "Laan 1", "postcode": "1234 AB", "city": "Zwolle", "email": "ann@x.nl"},
        "K2": {"name": "Bob Mail", "email": "bob@x.nl"},  # no address: cannot get a letter
        "K3": {"name": "Cor Weg", "street": "Dijk 2", "postcode": "2345 BC", "email": "cor@x.nl"},
    }
    for ref, contact in people.items():
        r = await api.post(f"{T}/subjects/dealer/{ref}/invoices", headers=dealer.auth("importer"),
                           json={"invoice_id": f"F{ref}", "invoice_date": day, "contact": contact})
        assert r.status == 201, await r.text()
    r = await api.post(f"{T}/subjects/dealer/K3/preferences", headers=dealer.auth("staff"),
                        json={"changes": [{"category": "sales_campaign", "channel": "post", "value": "opt_out"}]})
    assert r.status == 201
    r = await api.post(f"{T}/subjects/dealer/P1/prospect", headers=dealer.auth("importer"), json={
        "acquired_on": day, "how": "beurs", "contact": {"name": "Pia Prospect", "street": "Plein 3",
                                                       "postcode": "3456 CD"}})
    assert r.status == 201


async def test_a_marketing_key_exports_who_may_get_the_campaign_with_address_and_flags(
    api: TestClient, dealer: Dealer, pool: asyncpg.Pool
) -> None:
    await _people(api, dealer)
    await project(pool)
    key = await _marketing_key(api, dealer)
    send = (dt.date.today() + dt.timedelta(days=7)).isoformat()
    r = await api.post(f"{T}/mailings:export", json={"category": "sales_campaign", "channel": "post",
                                                     "send_date": send}, headers=key)
    assert r.status == 200, await r.text()
    rows = list(csv.DictReader(io.StringIO(await r.text()), delimiter=";"))
    # K3 opted out, K2 has no address (counted), P1 is no customer
    assert [(x["customer_ref"], x["name"], x["street"], x["postcode"]) for x in rows] == [
        ("K1", "Ann Post", "Laan 1", "1234 AB")]
    assert r.headers["X-Eligible"] == "2" and r.headers["X-Missing-Contact"] == "1"
    assert rows[0]["basis"] == "legitimate_interest" and rows[0]["requires_disclosure"] == "false"
    check = await api.post(f"{T}/eligibility:check", headers=dealer.auth("sender"), json={
        "category": "sales_campaign", "channel": "post", "send_date": send,
        "subjects": [{"source": "dealer", "customer_ref": r} for r in ("K1", "K2", "K3", "P1")]})
    assert [s["customer_ref"] for s in (await check.json())["results"] if s["eligible"]] == ["K1", "K2"]

    r = await api.post(f"{T}/mailings:export", json={"category": "prospect", "channel": "post", "send_date": send},
                       headers=key)
    rows = list(csv.DictReader(io.StringIO(await r.text()), delimiter=";"))
    assert [(x["customer_ref"], x["requires_disclosure"]) for x in rows] == [("P1", "true")]
    r = await api.post(f"{T}/mailings:export", json={"category": "newsletter", "channel": "email", "send_date": send},
                       headers=key)
    rows = list(csv.DictReader(io.StringIO(await r.text()), delimiter=";"))
    assert [(x["customer_ref"], x["email"]) for x in rows] == [("K1", "ann@x.nl"), ("K2", "bob@x.nl"),
                                                               ("K3", "cor@x.nl")]
    assert "street" not in rows[0]  # an e-mail campaign gets no postal address
    # each row has the subject's one-click unsubscribe link for this category: the same one
    # the eligibility check answers with, and a POST to it records the opt-out
    check = await api.post(f"{T}/eligibility:check", headers=dealer.auth("sender"), json={
        "category": "newsletter", "channel": "email", "send_date": send,
        "subjects": [{"source": "dealer", "customer_ref": "K2"}]})
    [answer] = (await check.json())["results"]
    [k2] = [x for x in rows if x["customer_ref"] == "K2"]
    assert k2["unsubscribe_url"] == answer["unsubscribe"]["url"] and "/u/garage-a/" in k2["unsubscribe_url"]
    assert len({x["unsubscribe_url"] for x in rows}) == 3  # one per subject

    events = await pool.fetch("SELECT data, metadata FROM ledger.events WHERE stream_id = 'exports/garage-a'"
                              " ORDER BY position")
    assert len(events) == 3 and '"mailing_list"' in events[0]["data"] and '"rows":1' in events[0]["data"]


async def test_only_the_marketing_role_exports_and_bad_input_is_named(
    api: TestClient, dealer: Dealer, other_dealer: Dealer, pool: asyncpg.Pool
) -> None:
    await _people(api, dealer)
    await project(pool)
    body = {"category": "newsletter", "channel": "email", "send_date": dt.date.today().isoformat()}
    for role in ("admin", "staff", "sender", "importer", "auditor"):
        assert (await api.post(f"{T}/mailings:export", json=body, headers=dealer.auth(role))).status == 403, role
    key = await _marketing_key(api, dealer)
    for bad, field in (({**body, "channel": "fax"}, "$.channel"), ({**body, "send_date": "2026-02-30"}, "$.send_date"),
                       ({**body, "source": "nope"}, "$.source"), ({**body, "extra": 1}, "$.extra")):
        r = await api.post(f"{T}/mailings:export", json=bad, headers=key)
        assert r.status == 422, (bad, await r.text())
        assert (await r.json())["field"] == field
    r = await api.post("/v1/tenants/garage-b/mailings:export", json=body, headers=key)
    assert r.status == 403
    assert await pool.fetchval("SELECT count(*) FROM ledger.events WHERE stream_id LIKE 'exports/%'") == 0


async def test_the_portal_mailing_download_is_for_marketing_users_and_is_in_the_change_log(
    aiohttp_client, settings, pool: asyncpg.Pool
) -> None:
    from schemas.api import Contact

    world = await _world(aiohttp_client, settings)
    await world.ledger.record_invoice(OPERATOR, "garage-a", "dealer", "K9", "F9", _today() - dt.timedelta(days=5),
                                      Contact(name="Kees Klant", email="kees@x.nl"))
    await project(pool)
    await world.accounts.create("garage-a", "mk@garage-a.example.nl", "marketing",
                                "correct horse battery staple", created_by="tests")
    admin = await login(world.client, "garage-a", world.users["garage-a:admin"])
    page = await world.client.get("/beheer/garage-a/mailing", headers=admin)
    assert page.status == 200 and "mailing.csv" not in await page.text()
    data = {"category": "newsletter", "channel": "email", "send_date": _today().isoformat(),
            "csrf_token": csrf_of(await (await world.client.get("/beheer/garage-a/bereik", headers=admin)).text())}
    assert (await world.client.post("/beheer/garage-a/mailing.csv", data=data, headers=admin)).status == 403
    mk = await login(world.client, "garage-a", "mk@garage-a.example.nl")
    page = await world.client.get("/beheer/garage-a/mailing", headers=mk)
    data["csrf_token"] = csrf_of(await page.text())
    r = await world.client.post("/beheer/garage-a/mailing.csv", data=data, headers=mk)
    assert r.status == 200, await r.text()
    rows = list(csv.DictReader(io.StringIO(await r.text()), delimiter=";"))
    assert [(x["customer_ref"], x["email"]) for x in rows] == [("K9", "kees@x.nl")]  # K1 has no e-mail address
    bad = await world.client.post("/beheer/garage-a/mailing.csv", data={**data, "send_date": "1999-01-01"},
                                  headers=mk)
    assert bad.status == 422
    html = await (await world.client.get("/beheer/garage-a/wijzigingen", headers=admin)).text()
    assert html.count('data-kind="export"') == 1 and "mk@garage-a.example.nl" in html and "1 regels" in html

"""Portal links through the JSON API: a mailing system issues each customer's own link,
rotates it when it needs the URL again, and staff revoke it; the URL is shown only once
and opens the customer's portal page until it is revoked or rotated."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from services.portal.links import LinkStore
from tests.conftest import Dealer

LINK = "/v1/tenants/garage-a/subjects/dealer/C1/portal-link"


async def invoice(api: TestClient, dealer: Dealer, ref: str = "C1") -> None:
    r = await api.post(f"/v1/tenants/garage-a/subjects/dealer/{ref}/invoices",
                       json={"invoice_id": f"F-{ref}", "invoice_date": "2026-01-05"}, headers=dealer.auth("importer"))
    assert r.status == 201, await r.text()


async def test_a_link_is_issued_once_and_a_second_issue_must_rotate(api: TestClient, dealer: Dealer, pool) -> None:  # type: ignore[no-untyped-def]
    await invoice(api, dealer)
    r = await api.post(LINK, json={}, headers=dealer.auth("importer"))
    assert r.status == 201, await r.text()
    first = await r.json()
    assert first["rotated"] is False and "/p/" in first["url"]
    token = first["url"].rsplit("/", 1)[1]
    target = await LinkStore(pool).lookup(token)
    assert target is not None and (target.tenant_id, target.source, target.customer_ref) == ("garage-a", "dealer", "C1")

    r = await api.post(LINK, json={}, headers=dealer.auth("importer"))
    assert r.status == 409
    body = await r.json()
    assert body["error"] == "portal_link_exists" and body["field"] == "rotate"

    r = await api.post(LINK, json={"rotate": True}, headers=dealer.auth("staff"))
    assert r.status == 201
    second = await r.json()
    assert second["rotated"] is True and second["url"] != first["url"]
    assert await LinkStore(pool).lookup(token) is None  # the old link stopped working
    assert await LinkStore(pool).lookup(second["url"].rsplit("/", 1)[1]) is not None


async def test_the_status_shows_who_issued_and_revoked_but_never_a_token(api: TestClient, dealer: Dealer, pool) -> None:  # type: ignore[no-untyped-def]
    await invoice(api, dealer)
    issued = await (await api.post(LINK, json={}, headers=dealer.auth("admin"))).json()
    r = await api.get(LINK, headers=dealer.auth("auditor"))
    assert r.status == 200
    status = await r.json()
    assert status["live"]["issued_by"].startswith("key:") and status["live"].get("revoked_at") is None
    assert issued["url"].rsplit("/", 1)[1] not in await r.text()

    r = await api.delete(LINK, headers=dealer.auth("staff"))
    assert r.status == 204
    assert await LinkStore(pool).lookup(issued["url"].rsplit("/", 1)[1]) is None
    status = await (await api.get(LINK, headers=dealer.auth("admin"))).json()
    assert status["live"] is None and status["history"][0]["revoked_by"].startswith("key:")
    r = await api.delete(LINK, headers=dealer.auth("staff"))
    assert r.status == 404 and (await r.json())["error"] == "no_live_link"


async def test_no_link_for_a_subject_the_ledger_does_not_know_or_has_erased(api: TestClient, dealer: Dealer) -> None:
    r = await api.post("/v1/tenants/garage-a/subjects/dealer/NOBODY/portal-link", json={}, headers=dealer.auth())
    assert r.status == 404 and (await r.json())["field"] == "ref"
    r = await api.post("/v1/tenants/garage-a/subjects/nosuchsource/C1/portal-link", json={}, headers=dealer.auth())
    assert r.status in (404, 422) and (await r.json())["field"] == "source"

    await invoice(api, dealer, "C2")
    r = await api.post("/v1/tenants/garage-a/subjects/dealer/C2/erasure", json={"confirm_ref": "C2"},
                       headers=dealer.auth("admin"))
    assert r.status in (200, 201), await r.text()
    r = await api.post("/v1/tenants/garage-a/subjects/dealer/C2/portal-link", json={}, headers=dealer.auth())
    assert r.status == 410 and (await r.json())["error"] == "subject_erased"


async def test_bad_bodies_and_wrong_roles_are_refused(api: TestClient, dealer: Dealer, other_dealer: Dealer) -> None:
    await invoice(api, dealer)
    r = await api.post(LINK, json={"rotate": "yes"}, headers=dealer.auth())
    assert r.status == 422 and (await r.json())["field"] == "$.rotate"
    r = await api.post(LINK, json={"rotate": True, "url": "x"}, headers=dealer.auth())
    assert r.status == 422
    for role in ("sender", "auditor"):
        assert (await api.post(LINK, json={}, headers=dealer.auth(role))).status == 403
    assert (await api.delete(LINK, headers=dealer.auth("importer"))).status == 403
    assert (await api.post(LINK, json={}, headers=other_dealer.auth())).status == 403
    assert (await api.get(LINK, headers=dealer.auth("admin"))).status == 200
    assert (await (await api.get(LINK, headers=dealer.auth("admin"))).json())["live"] is None  # nothing was issued

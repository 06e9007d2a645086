from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.conftest import Dealer

SUBJ = "/v1/tenants/garage-a/subjects/dealer/C1"


async def test_a_new_tenant_starts_with_the_seed_policy_and_terms(api: TestClient, dealer: Dealer) -> None:
    r = await api.get("/v1/tenants/garage-a", headers=dealer.auth())
    assert r.status == 200
    body = await r.json()
    assert len(body["chapters"]) == 10
    assert sum(1 for c in body["chapters"] if not c["active"]) == 2
    terms = {(t["category"], t["channel"]): t["months"] for t in body["terms"]}
    assert terms[("newsletter", "email")] == 18 and terms[("newsletter", "post")] == 48
    assert terms[("prospect", "phone")] == 3
    assert body["data_sources"] == {"dealer": "Dealer", "unknown": "Onbekende bron"}


async def test_an_invoice_is_appended_and_readable_by_an_auditor(api: TestClient, dealer: Dealer) -> None:
    r = await api.post(SUBJ + "/invoices", json={"invoice_id": "F-1", "invoice_date": "2024-01-31",
                                                 "contact": {"name": "Jan Jansen", "email": "jan@example.nl"}},
                       headers=dealer.auth("importer"))
    assert r.status == 201, await r.text()
    r = await api.get(SUBJ + "/events", headers=dealer.auth("auditor"))
    page = await r.json()
    [event] = page["events"]
    assert event["event_type"] == "InvoiceRecorded" and event["occurred_on"] == "2024-01-31"
    assert "Jan Jansen" not in await r.text()  # personal data is sealed
    assert event["metadata"]["actor"]["kind"] == "importer"


async def test_a_stale_expected_version_gets_409_with_the_current_version(api: TestClient, dealer: Dealer) -> None:
    body = {"changes": [{"category": "newsletter", "channel": "email", "value": "opt_out"}], "expected_version": 0}
    r = await api.post(SUBJ + "/preferences", json=body, headers=dealer.auth("staff"))
    assert r.status == 201
    r = await api.post(SUBJ + "/preferences", json=body, headers=dealer.auth("staff"))
    assert r.status == 409
    err = await r.json()
    assert err["error"] == "wrong_expected_version" and err["current_version"] == 1


async def test_a_retried_request_with_an_idempotency_key_returns_the_first_result(api: TestClient, dealer: Dealer) -> None:
    headers = {**dealer.auth("importer"), "Idempotency-Key": "inv-77"}
    body = {"invoice_id": "F-77", "invoice_date": "2024-05-01"}
    first = await (await api.post(SUBJ + "/invoices", json=body, headers=headers)).json()
    second = await (await api.post(SUBJ + "/invoices", json=body, headers=headers)).json()
    assert second["event_ids"] == first["event_ids"] and second["replayed"] is True
    page = await (await api.get(SUBJ + "/events", headers=dealer.auth("auditor"))).json()
    assert len(page["events"]) == 1


async def test_moving_and_deactivating_chapters_changes_the_policy_version(api: TestClient, dealer: Dealer) -> None:
    before = await (await api.get("/v1/tenants/garage-a", headers=dealer.auth())).json()
    r = await api.post("/v1/tenants/garage-a/policy/chapters/c02/move", json={"direction": "up"}, headers=dealer.auth())
    assert r.status == 200, await r.text()
    r = await api.put("/v1/tenants/garage-a/policy/chapters/c03/active", json={"active": False}, headers=dealer.auth())
    assert r.status == 200
    after = await (await api.get("/v1/tenants/garage-a", headers=dealer.auth())).json()
    assert [c["chapter_id"] for c in after["chapters"]][:2] == ["c02", "c01"]
    assert after["policy_version"] != before["policy_version"]


async def test_bulk_append_is_atomic(api: TestClient, dealer: Dealer) -> None:
    items = [{"kind": "invoice", "source": "dealer", "customer_ref": f"B{i}", "invoice_id": f"BI{i}",
              "invoice_date": "2024-03-01"} for i in range(100)]
    r = await api.post("/v1/tenants/garage-a/subjects:batch", json={"items": items}, headers=dealer.auth("importer"))
    assert r.status == 201, await r.text()
    body = await r.json()
    assert body["last_position"] - body["first_position"] == 99
    items.append({"kind": "invoice", "source": "nope", "customer_ref": "X", "invoice_id": "X", "invoice_date": "2024-03-01"})
    r = await api.post("/v1/tenants/garage-a/subjects:batch", json={"items": items}, headers=dealer.auth("importer"))
    assert r.status == 422
    assert (await r.json())["field"] == "$.items[100].source"

"""The eligibility HTTP API for senders: one subject's matrix, the bulk campaign check,
and the compliance warnings on the term matrix."""

from __future__ import annotations

import datetime as dt
import io
import json

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from consent.eligibility import eligibility_matrix, evaluate
from consent.law import RULES_VERSION
from consent.terms import add_months, ledger_day
from schemas.eligibility import decode_matrix
from services.projector.clock import SystemClock
from services.projector.projection import Projection, apply_until_caught_up
from tests.conftest import Dealer
from tests.projector_support import folded_subject, folded_tenant

TODAY = ledger_day(dt.datetime.now(dt.timezone.utc))
T = "/v1/tenants/garage-a"


def months_ago(n: int) -> str:
    return add_months(TODAY, -n).isoformat()


async def project(pool: asyncpg.Pool) -> Projection:
    projection = Projection(pool, clock=SystemClock())
    await apply_until_caught_up(projection)
    await projection.reevaluate_pending()
    return projection


@pytest.fixture
async def customers(api: TestClient, dealer: Dealer, pool: asyncpg.Pool) -> Dealer:
    """C1 a recent customer who opted out of newsletter e-mail, C2 an old customer, P1 a
    prospect, E1 erased."""
    imp, staff = dealer.auth("importer"), dealer.auth("staff")
    for ref, day in (("C1", months_ago(3)), ("C2", months_ago(30)), ("E1", months_ago(2))):
        r = await api.post(f"{T}/subjects/dealer/{ref}/invoices", json={"invoice_id": f"F-{ref}", "invoice_date": day},
                           headers=imp)
        assert r.status == 201, await r.text()
    r = await api.post(f"{T}/subjects/dealer/C1/preferences", headers=staff, json={
        "changes": [{"category": "newsletter", "channel": "email", "value": "opt_out"}]})
    assert r.status == 201, await r.text()
    r = await api.post(f"{T}/subjects/dealer/P1/prospect", json={"acquired_on": months_ago(1), "how": "beurs"},
                       headers=imp)
    assert r.status == 201, await r.text()
    r = await api.post(f"{T}/subjects/dealer/E1/erasure", json={"confirm_ref": "E1"}, headers=dealer.auth("admin"))
    assert r.status == 201, await r.text()
    await project(pool)
    return dealer


async def test_a_sender_gets_the_full_matrix_of_a_subject_for_today(
    api: TestClient, customers: Dealer, pool: asyncpg.Pool
) -> None:
    from services.ledger.store import EventStore

    r = await api.get(f"{T}/subjects/dealer/C1/eligibility", headers=customers.auth("sender"))
    assert r.status == 200, await r.text()
    matrix = decode_matrix(await r.read())
    store = EventStore(pool)
    state = await folded_subject(store, "garage-a", "C1")
    terms = (await folded_tenant(store, "garage-a")).terms
    assert matrix.evaluated_on == TODAY and not matrix.erased and matrix.subject_version == 2
    assert matrix.position == state.last_position
    for key, d in eligibility_matrix(state, terms, TODAY).items():
        cell = matrix.cell(*key.split(":"))
        assert (cell.eligible, cell.reason, cell.until, tuple(cell.evidence)) == (d.eligible, d.reason, d.until,
                                                                                  d.evidence)
    assert matrix.cell("newsletter", "email").reason == "opted_out"
    assert matrix.cell("newsletter", "post").reason == "soft_opt_in"


async def test_the_matrix_on_a_past_date_uses_what_was_in_force_then(api: TestClient, customers: Dealer) -> None:
    before_invoice = add_months(TODAY, -4).isoformat()
    r = await api.get(f"{T}/subjects/dealer/C1/eligibility?on={before_invoice}", headers=customers.auth("auditor"))
    assert r.status == 200, await r.text()
    matrix = decode_matrix(await r.read())
    assert matrix.evaluated_on.isoformat() == before_invoice
    assert matrix.cell("newsletter", "email").reason == "not_a_customer"  # the opt-out was recorded later


async def test_an_erased_subject_is_never_eligible_and_an_unknown_one_is_404(
    api: TestClient, customers: Dealer
) -> None:
    r = await api.get(f"{T}/subjects/dealer/E1/eligibility", headers=customers.auth("sender"))
    matrix = decode_matrix(await r.read())
    assert matrix.erased and {c.reason for row in matrix.cells.values() for c in row.values()} == {"erased"}
    r = await api.get(f"{T}/subjects/dealer/NOPE/eligibility", headers=customers.auth("sender"))
    assert r.status == 404 and (await r.json())["error"] == "unknown_subject"


@pytest.mark.parametrize("value", ["2026-13-01", "tomorrow", "20260101", "3001-01-01"])
async def test_a_bad_date_is_a_422_naming_the_parameter(api: TestClient, customers: Dealer, value: str) -> None:
    r = await api.get(f"{T}/subjects/dealer/C1/eligibility?on={value}", headers=customers.auth("sender"))
    assert r.status == 422
    assert (await r.json())["field"] == "on"


async def test_only_senders_admins_and_auditors_of_the_tenant_may_ask(
    api: TestClient, customers: Dealer, other_dealer: Dealer
) -> None:
    url = f"{T}/subjects/dealer/C1/eligibility"
    assert (await api.get(url, headers=customers.auth("staff"))).status == 403
    assert (await api.get(url, headers=customers.auth("importer"))).status == 403
    assert (await api.get(url, headers=other_dealer.auth("sender"))).status == 403
    assert (await api.get(url)).status == 401
    check = {"category": "newsletter", "channel": "email", "send_date": TODAY.isoformat(),
             "subjects": [{"source": "dealer", "customer_ref": "C1"}]}
    assert (await api.post(f"{T}/eligibility:check", json=check, headers=other_dealer.auth("sender"))).status == 403


async def test_a_campaign_check_answers_every_subject_in_order_and_unknown_ones_as_unknown(
    api: TestClient, customers: Dealer, pool: asyncpg.Pool
) -> None:
    from services.ledger.store import EventStore

    send_date = TODAY + dt.timedelta(days=7)
    refs = ["C2", "C1", "NOPE", "P1", "E1", "C1"]
    body = {"category": "sales_campaign", "channel": "post", "send_date": send_date.isoformat(),
            "subjects": [{"source": "dealer", "customer_ref": ref} for ref in refs]}
    r = await api.post(f"{T}/eligibility:check", json=body, headers=customers.auth("sender"))
    assert r.status == 200, await r.text()
    answer = await r.json()
    assert [a["customer_ref"] for a in answer["results"]] == refs
    assert answer["checked"] == 6 and answer["unknown"] == 1
    by_ref = {a["customer_ref"]: a for a in answer["results"]}
    assert by_ref["NOPE"] == {"source": "dealer", "customer_ref": "NOPE", "known": False, "eligible": False,
                              "basis": None, "reason": "unknown_subject", "until": None,
                              "requires_disclosure": False, "evidence": [], "law": None,
                              "requires_postfilter_check": False, "requires_objection_offer": False, "cell": None,
                              "position": 0, "unsubscribe": None, "disclosure": None}
    store = EventStore(pool)
    terms = (await folded_tenant(store, "garage-a")).terms
    for ref in ("C1", "C2", "P1"):
        d = evaluate(await folded_subject(store, "garage-a", ref), terms, "sales_campaign", "post", send_date)
        got = by_ref[ref]
        assert (got["known"], got["eligible"], got["reason"], got["until"], tuple(got["evidence"])) == (
            True, d.eligible, d.reason, d.until.isoformat() if d.until else None, d.evidence)
    assert by_ref["C1"]["eligible"] and by_ref["C1"]["basis"] == "legitimate_interest"
    assert by_ref["E1"]["reason"] == "erased"
    assert answer["eligible"] == 3  # C1 twice, and C2: invoiced 30 months ago, sales post runs 48 months


async def test_a_prospect_letter_requires_disclosure(api: TestClient, customers: Dealer) -> None:
    body = {"category": "prospect", "channel": "post", "send_date": TODAY.isoformat(),
            "subjects": [{"source": "dealer", "customer_ref": "P1"}]}
    answer = await (await api.post(f"{T}/eligibility:check", json=body, headers=customers.auth("sender"))).json()
    [p1] = answer["results"]
    assert p1["eligible"] and p1["reason"] == "prospect_term" and p1["requires_disclosure"]
    assert p1["until"] == add_months(dt.date.fromisoformat(months_ago(1)), 3).isoformat()
    # what the sender must do with this "yes": Code Postfilter, and the right to object
    assert p1["requires_postfilter_check"] and p1["requires_objection_offer"] and p1["law"] is None
    assert answer["rules_version"] == RULES_VERSION


async def test_a_call_to_a_customer_is_refused_by_the_law_from_2026_07_01_unless_they_opted_in(
    api: TestClient, customers: Dealer, pool: asyncpg.Pool
) -> None:
    async def check(send_date: str, ref: str) -> dict:
        body = {"category": "aftersales_service", "channel": "phone", "send_date": send_date,
                "subjects": [{"source": "dealer", "customer_ref": ref}]}
        r = await api.post(f"{T}/eligibility:check", json=body, headers=customers.auth("sender"))
        assert r.status == 200, await r.text()
        answer = await r.json()
        assert answer["rules_version"] == RULES_VERSION
        return answer["results"][0]

    # T1 and T2 bought in January 2026 (aftersales service by phone: 48 months); T2 opted in to calls
    r = await api.post(f"{T}/subjects/dealer/T1/invoices", json={"invoice_id": "F-T1", "invoice_date": "2026-01-15"},
                       headers=customers.auth("importer"))
    assert r.status == 201, await r.text()
    r = await api.post(f"{T}/subjects/dealer/T2/invoices", json={"invoice_id": "F-T2", "invoice_date": "2026-01-15"},
                       headers=customers.auth("importer"))
    assert r.status == 201, await r.text()
    r = await api.post(f"{T}/subjects/dealer/T2/preferences", headers=customers.auth("staff"), json={
        "changes": [{"category": "aftersales_service", "channel": "phone", "value": "opt_in"}]})
    assert r.status == 201, await r.text()
    await project(pool)
    yes = await check("2026-06-30", "T1")
    assert (yes["eligible"], yes["reason"], yes["until"], yes["law"]) == (True, "soft_opt_in", "2026-07-01", None)
    assert yes["requires_objection_offer"]
    no = await check("2026-07-01", "T1")
    assert (no["eligible"], no["reason"], no["law"]) == (False, "consent_required", "nl-telecom-11.7-phone-optin-2026")
    consented = await check(max(TODAY, dt.date(2026, 7, 1)).isoformat(), "T2")  # opt-in counts from today
    assert (consented["eligible"], consented["reason"], consented["requires_objection_offer"]) == (
        True, "explicit_consent", False)


@pytest.mark.parametrize(("change", "field"), [
    ({"category": "flyers"}, "$.category"),
    ({"channel": "fax"}, "$.channel"),
    ({"send_date": "3001-01-01"}, "$.send_date"),
    ({"subjects": []}, "$.subjects"),
    ({"subjects": [{"source": "dealer", "customer_ref": "C1", "extra": 1}]}, "$.subjects[0].extra"),
    ({"subjects": [{"source": "Dealer!", "customer_ref": "C1"}]}, "$.subjects[0].source"),
    ({"subjects": [{"source": "dealer", "customer_ref": f"R{i}"} for i in range(10_001)]}, "$.subjects"),
])
async def test_a_bad_campaign_check_is_a_422_naming_the_field(
    api: TestClient, customers: Dealer, change: dict[str, object], field: str
) -> None:
    body = {"category": "newsletter", "channel": "email", "send_date": TODAY.isoformat(),
            "subjects": [{"source": "dealer", "customer_ref": "C1"}], **change}
    r = await api.post(f"{T}/eligibility:check", json=body, headers=customers.auth("sender"))
    assert r.status == 422, await r.text()
    assert (await r.json())["field"] == field


async def test_ten_thousand_subjects_fit_in_one_check(api: TestClient, customers: Dealer) -> None:
    body = {"category": "aftersales_service", "channel": "email", "send_date": TODAY.isoformat(),
            "subjects": [{"source": "dealer", "customer_ref": f"C{i % 3 + 1}"} for i in range(10_000)]}
    r = await api.post(f"{T}/eligibility:check", json=body, headers=customers.auth("sender"))
    assert r.status == 200, await r.text()
    answer = await r.json()
    assert answer["checked"] == 10_000 and answer["unknown"] == 3333  # "C3" does not exist


async def test_ten_thousand_subjects_with_the_longest_refs_still_fit(api: TestClient, customers: Dealer) -> None:
    long_ref = "R" * 59
    body = {"category": "newsletter", "channel": "post", "send_date": TODAY.isoformat(),
            "subjects": [{"source": "dealer", "customer_ref": f"{long_ref}{i:05d}"} for i in range(10_000)]}
    # A body this large goes as a stream (aiohttp warns about sending big raw bytes).
    r = await api.post(f"{T}/eligibility:check", data=io.BytesIO(json.dumps(body).encode()),
                       headers={**customers.auth("sender"), "Content-Type": "application/json"})
    assert r.status == 200, await r.text()
    assert (await r.json())["unknown"] == 10_000


async def test_a_check_body_over_its_limit_is_a_413(api: TestClient, customers: Dealer) -> None:
    huge = b'{"category": "newsletter", "channel": "post", "send_date": "2026-01-01", "subjects": [' + b" " * (5 * 1024 * 1024) + b"]}"
    r = await api.post(f"{T}/eligibility:check", data=io.BytesIO(huge),
                       headers={**customers.auth("sender"), "Content-Type": "application/json"})
    assert r.status == 413
    assert (await r.json())["error"] == "body_too_large"


async def test_the_term_warnings_follow_the_matrix(api: TestClient, dealer: Dealer) -> None:
    r = await api.get(f"{T}/terms/warnings?on=2026-06-30", headers=dealer.auth("staff"))
    assert r.status == 200, await r.text()
    body = await r.json()
    codes = {(w["code"], w["category"]) for w in body["warnings"]}
    assert ("phone_term_above_telemarketing_code", "aftersales_service") in codes  # seed: 48 months
    assert ("customer_phone_opt_in_from", None) in codes
    r = await api.patch(f"{T}/terms", json={"cells": [{"category": "aftersales_service", "channel": "phone",
                                                         "months": 36}]}, headers=dealer.auth("admin"))
    assert r.status == 200, await r.text()
    after = await (await api.get(f"{T}/terms/warnings?on=2026-06-30", headers=dealer.auth("auditor"))).json()
    assert after["tenant_version"] == body["tenant_version"] + 1
    assert ("phone_term_above_telemarketing_code", "aftersales_service") not in {
        (w["code"], w["category"]) for w in after["warnings"]}
    assert (await api.get(f"{T}/terms/warnings", headers=dealer.auth("sender"))).status == 403


async def test_the_term_warnings_show_the_law_in_force_on_the_day_and_what_starts_later(
    api: TestClient, dealer: Dealer
) -> None:
    before = await (await api.get(f"{T}/terms/warnings?on=2026-06-30", headers=dealer.auth("staff"))).json()
    assert before["on"] == "2026-06-30" and before["rules_version"] == RULES_VERSION
    assert "nl-gedragscode-telemarketing-2020" in {r["id"] for r in before["law_in_force"]}
    upcoming = {r["id"]: r for r in before["law_upcoming"]}
    assert upcoming["nl-telecom-11.7-phone-optin-2026"]["first_send"] == "2026-07-01"
    assert "36 378" in upcoming["nl-telecom-11.7-phone-optin-2026"]["source"]
    after = await (await api.get(f"{T}/terms/warnings?on=2026-07-01", headers=dealer.auth("staff"))).json()
    in_force = {r["id"]: r for r in after["law_in_force"]}
    assert in_force["nl-telecom-11.7-phone-optin-2026"]["kind"] == "statute"
    assert "nl-gedragscode-telemarketing-2020" not in in_force
    assert ("customer_phone_term_unused", None) in {(w["code"], w["category"]) for w in after["warnings"]}
    today = await (await api.get(f"{T}/terms/warnings", headers=dealer.auth("staff"))).json()
    assert today["on"] == SystemClock().today().isoformat()
    bad = await api.get(f"{T}/terms/warnings?on=2026-02-30", headers=dealer.auth("staff"))
    assert bad.status == 422 and (await bad.json())["field"] == "on"


async def test_the_openapi_document_declares_the_eligibility_routes(api: TestClient) -> None:
    doc = await (await api.get("/v1/openapi.json")).json()
    check = doc["paths"]["/v1/tenants/{tenant}/eligibility:check"]["post"]
    assert check["x-roles"] == ["sender", "admin", "auditor"]
    assert check["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/CampaignCheck")
    get = doc["paths"]["/v1/tenants/{tenant}/subjects/{source}/{ref}/eligibility"]["get"]
    assert get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/EligibilityMatrix")
    assert "TermWarnings" in doc["components"]["schemas"]


async def test_every_eligible_email_answer_carries_a_one_click_unsubscribe_link_that_works(
    api: TestClient, customers: Dealer, pool: asyncpg.Pool
) -> None:
    check = {"category": "sales_campaign", "channel": "email", "send_date": TODAY.isoformat(),
             "subjects": [{"source": "dealer", "customer_ref": ref} for ref in ("C1", "C2")]}
    r = await api.post(f"{T}/eligibility:check", json=check, headers=customers.auth("sender"))
    by_ref = {a["customer_ref"]: a for a in (await r.json())["results"]}
    assert by_ref["C1"]["eligible"] and not by_ref["C2"]["eligible"]
    unsub = by_ref["C1"]["unsubscribe"]
    assert unsub["url"].startswith("http://127.0.0.1:8081/u/garage-a/")
    assert unsub["list_unsubscribe"] == f"<{unsub['url']}>"
    assert unsub["list_unsubscribe_post"] == "List-Unsubscribe=One-Click"
    assert "C1" not in unsub["url"]  # opaque: names no customer
    assert by_ref["C2"]["unsubscribe"] is None
    # the same link in the subject's matrix, per category whose e-mail cell is eligible
    r = await api.get(f"{T}/subjects/dealer/C1/eligibility", headers=customers.auth("sender"))
    matrix = decode_matrix(await r.read())
    assert matrix.unsubscribe is not None
    assert matrix.unsubscribe.email["sales_campaign"].url == unsub["url"]
    assert "newsletter" not in matrix.unsubscribe.email  # opted out: not eligible, no link
    assert matrix.unsubscribe.all.url != unsub["url"]
    # the link is live: a one-click POST on the portal opts C1 out of sales mail
    from services.api.portal import create_portal_app
    from tests.portal_support import FAST_HASHER

    from aiohttp.test_utils import TestClient as Client
    from aiohttp.test_utils import TestServer

    from services.ledger.api.context import SETTINGS

    settings = api.app[SETTINGS]
    async with Client(TestServer(create_portal_app(settings, password_hasher=FAST_HASHER))) as portal:
        path = unsub["url"].removeprefix("http://127.0.0.1:8081")
        r = await portal.post(path, data={"List-Unsubscribe": "One-Click"})
        assert r.status == 200
    await project(pool)
    r = await api.post(f"{T}/eligibility:check", json=check, headers=customers.auth("sender"))
    answer = (await r.json())["results"][0]
    assert answer["reason"] == "opted_out" and answer["unsubscribe"] is None


async def test_every_answer_that_requires_disclosure_carries_the_dealers_text(
    api: TestClient, customers: Dealer
) -> None:
    check = {"category": "prospect", "channel": "post", "send_date": TODAY.isoformat(),
             "subjects": [{"source": "dealer", "customer_ref": "P1"}]}
    r = await api.post(f"{T}/eligibility:check", json=check, headers=customers.auth("sender"))
    [answer] = (await r.json())["results"]
    assert answer["requires_disclosure"] and answer["eligible"]
    assert "Autobedrijf garage-a" in answer["disclosure"]["text"] and "bezwaar" in answer["disclosure"]["text"]
    assert answer["disclosure"]["version"].startswith("dv-")
    r = await api.get(f"{T}/subjects/dealer/P1/eligibility", headers=customers.auth("sender"))
    matrix = decode_matrix(await r.read())
    assert matrix.disclosure is not None and matrix.disclosure.version == answer["disclosure"]["version"]
    r = await api.get(f"{T}/subjects/dealer/C1/eligibility", headers=customers.auth("sender"))
    assert decode_matrix(await r.read()).disclosure is None  # a customer: no cell requires it

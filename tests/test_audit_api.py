"""The audit HTTP API end to end: as-of view, comparison, policy, receipts, access export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

from aiohttp.test_utils import TestClient

from consent.terms import ledger_day
from schemas.events import Actor, InvoiceRecorded, Metadata
from services.ledger.api.context import STORE
from services.ledger.store import AppendRequest, StreamWrite
from tests.conftest import Dealer

SUBJ = "/v1/tenants/garage-a/subjects/dealer/C1"
AUDIT = "/v1/tenants/garage-a/audit"


def today() -> dt.date:
    return ledger_day(dt.datetime.now(dt.timezone.utc))


async def post(api: TestClient, path: str, body: dict, auth: dict[str, str]) -> dict:
    r = await api.post(path, json=body, headers=auth)
    assert r.status == 201, await r.text()
    return await r.json()


async def policy_version(api: TestClient, dealer: Dealer) -> str:
    r = await api.get(AUDIT + "/policy", headers=dealer.auth("auditor"))
    assert r.status == 200, await r.text()
    return (await r.json())["version_id"]


async def test_the_as_of_view_shows_both_times_and_the_evidence_of_every_cell(api: TestClient, dealer: Dealer) -> None:
    old_invoice = (today() - dt.timedelta(days=800)).isoformat()
    first = await post(api, SUBJ + "/invoices", {"invoice_id": "F-1", "invoice_date": old_invoice,
                                                 "contact": {"name": "Jan Jansen"}}, dealer.auth("importer"))
    known_at = first["recorded_at"]
    version = await policy_version(api, dealer)
    await post(api, SUBJ + "/preferences", {
        "changes": [{"category": "newsletter", "channel": "sms", "value": "opt_in"}],
        "method": "phone", "policy_version": version, "note": "telefonisch verzoek"}, dealer.auth("staff"))
    late_invoice = (today() - dt.timedelta(days=10)).isoformat()
    await post(api, SUBJ + "/invoices", {"invoice_id": "F-2", "invoice_date": late_invoice}, dealer.auth("importer"))

    r = await api.get(AUDIT + "/subjects/dealer/C1", params={"known_at": known_at, "on": today().isoformat()},
                      headers=dealer.auth("auditor"))
    assert r.status == 200, await r.text()
    then = await r.json()
    assert dt.datetime.fromisoformat(then["known_at"]) == dt.datetime.fromisoformat(known_at)
    assert then["on"] == today().isoformat() and then["stream_version"] == 1
    cells = {(c["category"], c["channel"]): c for c in then["cells"]}
    assert len(cells) == 25
    assert cells[("newsletter", "email")]["reason"] == "term_expired"
    assert cells[("newsletter", "sms")]["reason"] == "term_expired"  # the opt-in came after K
    [invoice] = cells[("newsletter", "email")]["evidence"][:1]
    assert invoice["event_type"] == "InvoiceRecorded" and invoice["actor"]["kind"] == "importer"

    r = await api.get(AUDIT + "/subjects/dealer/C1", headers=dealer.auth("auditor"))
    now = await r.json()
    cells = {(c["category"], c["channel"]): c for c in now["cells"]}
    sms = cells[("newsletter", "sms")]
    assert sms["reason"] == "explicit_consent"
    [pref] = sms["evidence"]
    assert (pref["method"], pref["policy_version"], pref["note"]) == ("phone", version, "telefonisch verzoek")
    assert pref["actor"]["kind"] == "staff"

    r = await api.get(AUDIT + "/subjects/dealer/C1/compare", params={"known_at": known_at, "on": today().isoformat()},
                      headers=dealer.auth("admin"))
    assert r.status == 200, await r.text()
    comparison = await r.json()
    changed = {(c["category"], c["channel"]): c for c in comparison["changed_cells"]}
    assert changed[("newsletter", "email")]["then_reason"] == "term_expired"
    assert changed[("newsletter", "email")]["now_reason"] == "soft_opt_in"
    assert [e["event_type"] for e in comparison["recorded_after"]] == ["PreferencesChanged", "InvoiceRecorded"]
    assert comparison["recorded_after"][1]["facts"]["invoice_id"] == "F-2"


async def test_bad_times_unknown_subjects_and_wrong_roles_get_clear_4xx(api: TestClient, dealer: Dealer,
                                                                         other_dealer: Dealer) -> None:
    await post(api, SUBJ + "/invoices", {"invoice_id": "F-1", "invoice_date": "2024-01-01"}, dealer.auth("importer"))
    path = AUDIT + "/subjects/dealer/C1"
    auditor = dealer.auth("auditor")
    cases = [
        ({"known_at": "2999-01-01T00:00:00Z"}, 422, "known_at_in_future", "known_at"),
        ({"known_at": "next week"}, 422, "validation_error", "known_at"),
        ({"known_at": "2024-01-01T10:00:00"}, 422, "validation_error", "known_at"),
        ({"on": "1 januari"}, 422, "validation_error", "on"),
        ({"known_at": "2000-01-01"}, 404, "not_known_at", "known_at"),
        # Before 1940 Amsterdam was not on CET: an old date is a question, not a crash.
        ({"known_at": "1939-06-01"}, 404, "not_known_at", "known_at"),
        ({"known_at": "1900-01-01T00:00:00+00:20"}, 404, "not_known_at", "known_at"),
    ]
    for params, status, error, field in cases:
        r = await api.get(path, params=params, headers=auditor)
        body = await r.json()
        assert (r.status, body["error"], body.get("field")) == (status, error, field), (params, body)
    for on in ("1930-05-03", "1939-12-31", "1900-01-01"):  # a date long before the invoice: a plain "no"
        r = await api.get(path, params={"on": on}, headers=auditor)
        assert r.status == 200, (on, await r.text())
    r = await api.get(AUDIT + "/subjects/dealer/NOPE", headers=auditor)
    assert r.status == 404 and (await r.json())["error"] == "unknown_subject"
    r = await api.get(path, headers=dealer.auth("sender"))
    assert r.status == 403
    r = await api.get(path, headers=other_dealer.auth("auditor"))
    assert r.status == 403
    r = await api.get("/v1/tenants/garage-b/audit/subjects/dealer/C1", headers=other_dealer.auth("auditor"))
    assert r.status == 404  # garage-b has no such subject: one tenant never sees another's
    r = await api.get(AUDIT + "/policy/versions/pv-0000", headers=auditor)
    assert r.status == 404 and (await r.json())["field"] == "version"


async def test_policy_history_returns_the_exact_text_by_time_and_by_version(api: TestClient, dealer: Dealer) -> None:
    first = await policy_version(api, dealer)
    r = await api.get(AUDIT + "/policy/versions/" + first, headers=dealer.auth("auditor"))
    original = await r.json()
    r = await api.put("/v1/tenants/garage-a/policy/chapters/" + original["chapters"][0]["chapter_id"],
                        json={"title": "Wie zijn wij?", "body": "Nieuwe tekst", "active": True},
                        headers=dealer.auth("admin"))
    assert r.status in (200, 201), await r.text()
    second = await policy_version(api, dealer)
    assert second != first
    r = await api.get(AUDIT + "/policy/versions", headers=dealer.auth("auditor"))
    assert [v["version_id"] for v in (await r.json())["versions"]] == [first, second]
    r = await api.get(AUDIT + "/policy", params={"known_at": original["first_published_at"]},
                      headers=dealer.auth("auditor"))
    assert (await r.json())["chapters"] == original["chapters"]
    assert len(original["chapters"]) == 10 and original["active_chapter_count"] == 8


async def test_receipts_list_and_download(api: TestClient, dealer: Dealer) -> None:
    version = await policy_version(api, dealer)
    done = await post(api, SUBJ + "/preferences", {
        "changes": [{"category": "newsletter", "channel": "email", "value": "opt_in"}],
        "method": "portal", "policy_version": version}, dealer.auth("staff"))
    r = await api.get(AUDIT + "/subjects/dealer/C1/receipts", headers=dealer.auth("auditor"))
    [receipt] = (await r.json())["receipts"]
    assert receipt["consentReceiptID"] == "cr-" + done["event_ids"][0]
    assert receipt["piiControllers"][0]["piiController"] == "Autobedrijf garage-a"
    assert receipt["policyVersion"] == version and receipt["services"][0]["purposes"][0]["consentType"] == "explicit"
    r = await api.get(AUDIT + "/subjects/dealer/C1/receipts/" + receipt["consentReceiptID"], headers=dealer.auth("admin"))
    assert r.status == 200 and "attachment" in r.headers["Content-Disposition"]
    assert (await r.json()) == receipt
    r = await api.get(AUDIT + "/subjects/dealer/C1/receipts/cr-nope", headers=dealer.auth("admin"))
    assert r.status == 404 and (await r.json())["error"] == "unknown_receipt"


async def test_the_access_export_holds_the_decrypted_personal_data_as_json_and_csv(api: TestClient,
                                                                                     dealer: Dealer) -> None:
    contact = {"name": "Jan Jansen", "email": "jan@example.nl", "phone": "+31 6 1234 5678", "licence_plate": "AB-123-C"}
    await post(api, SUBJ + "/invoices", {"invoice_id": "F-1", "invoice_date": "2024-05-01", "contact": contact},
               dealer.auth("importer"))
    await post(api, SUBJ + "/objection", {"method": "phone", "note": "belde boos op"}, dealer.auth("staff"))
    r = await api.get(SUBJ + "/export", headers=dealer.auth("auditor"))
    assert r.status == 200, await r.text()
    export = await r.json()
    assert export["personal_data"] == contact and export["controller"] == "Autobedrijf garage-a"
    assert [e["event_type"] for e in export["events"]] == ["InvoiceRecorded", "ObjectionRecorded"]
    assert export["events"][1]["data"]["note"] == {"note": "belde boos op"}
    assert export["state"]["last_invoice_on"] == "2024-05-01"
    assert {c["reason"] for c in export["eligibility_today"]["cells"]} == {"objected"}
    assert [x["services"][0]["purposes"][0]["preference"] for x in export["receipts"]] == ["objection"]

    r = await api.get(SUBJ + "/export.csv", headers=dealer.auth("admin"))
    assert r.status == 200 and r.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await r.text())))
    assert rows[0]["name"] == "Jan Jansen" and rows[0]["licence_plate"] == "AB-123-C"
    assert rows[1]["note"] == "belde boos op" and rows[1]["event_type"] == "ObjectionRecorded"
    r = await api.get(SUBJ + "/export.csv", headers=dealer.auth("sender"))
    assert r.status == 403
    r = await api.get(SUBJ + "/export", headers=dealer.auth("staff"))
    assert r.status == 403


async def test_the_access_export_csv_also_holds_the_derived_state_todays_matrix_and_the_receipts(
    api: TestClient, dealer: Dealer
) -> None:
    contact = {"name": "Jan Jansen", "email": "jan@example.nl"}
    await post(api, SUBJ + "/invoices", {"invoice_id": "F-1", "invoice_date": today().isoformat(), "contact": contact},
               dealer.auth("importer"))
    version = await policy_version(api, dealer)
    done = await post(api, SUBJ + "/preferences", {
        "changes": [{"category": "newsletter", "channel": "sms", "value": "opt_in"},
                    {"category": "sales_campaign", "channel": "email", "value": "opt_out"}],
        "method": "phone", "policy_version": version}, dealer.auth("staff"))
    r = await api.get(SUBJ + "/export.csv", headers=dealer.auth("auditor"))
    assert r.status == 200, await r.text()
    rows = list(csv.DictReader(io.StringIO(await r.text())))
    kinds = [row["record"] for row in rows]
    assert kinds == ["event"] * 2 + ["state"] + ["eligibility"] * 25 + ["receipt"] * 2

    [state] = [row for row in rows if row["record"] == "state"]
    assert (state["name"], state["email"], state["policy_version"]) == ("Jan Jansen", "jan@example.nl", version)
    assert json.loads(state["details"])["status"] == "customer"
    cells = {(row["category"], row["channel"]): row for row in rows if row["record"] == "eligibility"}
    assert (cells[("newsletter", "sms")]["eligible"], cells[("newsletter", "sms")]["reason"]) == ("yes",
                                                                                                   "explicit_consent")
    assert (cells[("sales_campaign", "email")]["eligible"], cells[("sales_campaign", "email")]["reason"]) == (
        "no", "opted_out")
    receipts = [row for row in rows if row["record"] == "receipt"]
    assert {row["receipt_id"] for row in receipts} == {"cr-" + done["event_ids"][0]}
    assert [(row["category"], row["channel"], row["reason"]) for row in receipts] == [
        ("newsletter", "sms", "opt_in"), ("sales_campaign", "email", "opt_out")]
    assert receipts[0]["method"] == "phone" and receipts[0]["policy_version"] == version
    assert "Autobedrijf garage-a" in receipts[0]["details"] and "privacy portal" in receipts[0]["details"]


async def test_the_as_of_view_sees_events_recorded_after_an_earlier_request(api: TestClient, dealer: Dealer) -> None:
    await post(api, SUBJ + "/invoices", {"invoice_id": "F-1", "invoice_date": "2020-01-01"}, dealer.auth("importer"))
    r = await api.get(AUDIT + "/subjects/dealer/C1", headers=dealer.auth("auditor"))
    assert (await r.json())["stream_version"] == 1
    await post(api, SUBJ + "/invoices", {"invoice_id": "F-2", "invoice_date": "2021-01-01"}, dealer.auth("importer"))
    r = await api.patch("/v1/tenants/garage-a/terms", json={"cells": [
        {"category": "aftersales_service", "channel": "post", "months": 120}]}, headers=dealer.auth("admin"))
    assert r.status in (200, 201), await r.text()
    r = await api.get(AUDIT + "/subjects/dealer/C1", params={"on": "2026-01-01"}, headers=dealer.auth("auditor"))
    view = await r.json()
    assert view["stream_version"] == 2 and view["last_invoice_on"] == "2021-01-01"
    post_cell = next(c for c in view["cells"] if (c["category"], c["channel"]) == ("aftersales_service", "post"))
    assert post_cell["term_months"] == 120 and post_cell["eligible"]


async def test_a_preference_or_objection_naming_a_policy_version_never_published_is_refused(
    api: TestClient, dealer: Dealer
) -> None:
    first = await policy_version(api, dealer)
    r = await api.get(AUDIT + "/policy", headers=dealer.auth("auditor"))
    chapter = (await r.json())["chapters"][0]
    r = await api.put("/v1/tenants/garage-a/policy/chapters/" + chapter["chapter_id"],
                      json={"title": "Wie zijn wij?", "body": "Nieuwe tekst", "active": True},
                      headers=dealer.auth("admin"))
    assert r.status in (200, 201), await r.text()
    second = await policy_version(api, dealer)
    change = {"changes": [{"category": "newsletter", "channel": "email", "value": "opt_in"}], "method": "phone"}
    for path, body in ((SUBJ + "/preferences", change), (SUBJ + "/objection", {"method": "phone"}),
                       (SUBJ + "/objection/withdraw", {"method": "phone"})):
        r = await api.post(path, json={**body, "policy_version": "pv-never-published"}, headers=dealer.auth("staff"))
        answer = await r.json()
        assert (r.status, answer["error"], answer["field"]) == (422, "unknown_policy_version", "$.policy_version")
    r = await api.get(AUDIT + "/subjects/dealer/C1", headers=dealer.auth("auditor"))
    assert r.status == 404  # nothing was recorded

    # The version shown may be the current one or an older one the dealer did publish (a page
    # opened before the edit), or none at all (nothing was shown, e.g. a DMS delivery).
    for version in (second, first, None):
        await post(api, SUBJ + "/preferences", {**change, "policy_version": version}, dealer.auth("staff"))
    r = await api.get(AUDIT + "/subjects/dealer/C1/receipts", headers=dealer.auth("auditor"))
    receipts = (await r.json())["receipts"]
    # Without a version shown, the record names the version in force when it was given (issue 16).
    assert [(x["policyVersion"], x["policyVersionLabel"]) for x in receipts] == [
        (second, "policy shown"), (first, "policy shown"), (second, "policy in force")]
    for receipt in receipts:
        r = await api.get(AUDIT + "/policy/versions/" + receipt["policyVersion"], headers=dealer.auth("auditor"))
        assert r.status == 200  # every version a receipt names resolves to its exact text


async def test_an_invoice_dated_in_year_9999_never_turns_a_question_about_a_late_date_into_a_500(
    api: TestClient, dealer: Dealer
) -> None:
    # The API and the import refuse such a date now; the ledger may still hold one written
    # before they did, and the audit must answer for it.
    await api.app[STORE].append(AppendRequest(
        tenant_id="garage-a", writes=[StreamWrite("subject/garage-a/dealer/C1", [
            InvoiceRecorded(invoice_id="F-1", invoice_date=dt.date(9999, 6, 1))])],
        metadata=Metadata(actor=Actor(kind="api", id="test"))))
    for path in (AUDIT + "/subjects/dealer/C1", AUDIT + "/subjects/dealer/C1/compare"):
        r = await api.get(path, params={"on": "9999-12-31"}, headers=dealer.auth("auditor"))
        answer = await r.json()
        assert (r.status, answer["error"], answer["field"]) == (422, "validation_error", "on"), answer
        r = await api.get(path, params={"on": "2999-12-31"}, headers=dealer.auth("auditor"))
        assert r.status == 200, await r.text()
    r = await api.get(SUBJ + "/export", headers=dealer.auth("auditor"))
    assert r.status == 200 and (await r.json())["state"]["last_invoice_on"] == "9999-06-01"


async def test_an_as_of_date_before_the_oldest_legal_rule_answers_with_the_oldest_rules_and_says_so(
    api: TestClient, dealer: Dealer
) -> None:
    from consent.law import RULES_VERSION

    await post(api, SUBJ + "/invoices", {"invoice_id": "F-1", "invoice_date": "2026-01-15"}, dealer.auth("importer"))
    r = await api.get(AUDIT + "/subjects/dealer/C1", params={"on": "1990-01-01"}, headers=dealer.auth("auditor"))
    assert r.status == 200, await r.text()
    view = await r.json()
    assert view["before_oldest_rule"] is True and view["rules_version"] == RULES_VERSION
    assert "nl-telecom-11.7-phone-optin-2026" not in {rule["id"] for rule in view["law_in_force"]}
    r = await api.get(AUDIT + "/subjects/dealer/C1", params={"on": "2026-07-01"}, headers=dealer.auth("auditor"))
    view = await r.json()
    assert view["before_oldest_rule"] is False
    phone = next(c for c in view["cells"] if (c["category"], c["channel"]) == ("aftersales_service", "phone"))
    assert (phone["reason"], phone["law"]) == ("consent_required", "nl-telecom-11.7-phone-optin-2026")

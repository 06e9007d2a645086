"""Dated preferences and the policy version of every consent record, over HTTP (issue 16,
items 3 and 4). The rules themselves: tests/test_consent_dated_preferences.py."""

from __future__ import annotations

import datetime as dt

import pytest
from aiohttp.test_utils import TestClient

from consent.terms import ledger_day
from tests.conftest import Dealer

SUBJ = "/v1/tenants/garage-a/subjects/dealer/C1"
AUDIT = "/v1/tenants/garage-a/audit"
NEWSLETTER_EMAIL_OPT_OUT = [{"category": "newsletter", "channel": "email", "value": "opt_out"}]


def today() -> dt.date:
    return ledger_day(dt.datetime.now(dt.timezone.utc))


async def post(api: TestClient, path: str, body: dict, auth: dict[str, str]) -> dict:
    r = await api.post(path, json=body, headers=auth)
    assert r.status == 201, await r.text()
    return await r.json()


async def events(api: TestClient, dealer: Dealer) -> list[dict]:
    r = await api.get(SUBJ + "/events", headers=dealer.auth("auditor"))
    return (await r.json())["events"]


async def cell(api: TestClient, dealer: Dealer, on: dt.date, known_at: str | None = None) -> dict:
    params = {"on": on.isoformat()} | ({"known_at": known_at} if known_at else {})
    r = await api.get(AUDIT + "/subjects/dealer/C1", params=params, headers=dealer.auth("auditor"))
    assert r.status == 200, await r.text()
    return next(c for c in (await r.json())["cells"] if (c["category"], c["channel"]) == ("newsletter", "email"))


async def test_a_paper_opt_out_counts_from_the_day_it_was_given_once_recorded(api: TestClient, dealer: Dealer) -> None:
    given = today() - dt.timedelta(days=30)
    invoice = await post(api, SUBJ + "/invoices", {"invoice_id": "F-1", "invoice_date": (today() - dt.timedelta(
        days=100)).isoformat()}, dealer.auth("importer"))
    done = await post(api, SUBJ + "/preferences", {
        "changes": NEWSLETTER_EMAIL_OPT_OUT, "method": "in_person", "given_on": given.isoformat(),
        "evidence_ref": "formulier 2026-0113"}, dealer.auth("staff"))
    before_given, after_given = given - dt.timedelta(days=1), given + dt.timedelta(days=1)
    assert (await cell(api, dealer, before_given))["reason"] == "soft_opt_in"
    on_given = await cell(api, dealer, given)
    assert on_given["reason"] == "opted_out"
    [evidence] = on_given["evidence"]
    assert evidence["given_on"] == given.isoformat() and evidence["evidence_ref"] == "formulier 2026-0113"
    assert (await cell(api, dealer, after_given))["reason"] == "opted_out"
    # As the ledger knew it before the form was recorded: the soft opt-in held.
    assert (await cell(api, dealer, after_given, known_at=invoice["recorded_at"]))["reason"] == "soft_opt_in"
    assert done["event_ids"]


async def test_a_paper_opt_in_never_makes_the_days_before_it_was_recorded_lawful(api: TestClient,
                                                                                 dealer: Dealer) -> None:
    await post(api, SUBJ + "/invoices", {"invoice_id": "F-1", "invoice_date": "2020-01-10"}, dealer.auth("importer"))
    given = today() - dt.timedelta(days=30)
    await post(api, SUBJ + "/preferences", {
        "changes": [{"category": "newsletter", "channel": "email", "value": "opt_in"}],
        "given_on": given.isoformat(), "evidence_ref": "dms/export-1.csv:12"}, dealer.auth("staff"))
    assert (await cell(api, dealer, given))["reason"] == "term_expired"
    assert (await cell(api, dealer, today() - dt.timedelta(days=1)))["reason"] == "term_expired"
    assert (await cell(api, dealer, today()))["reason"] == "explicit_consent"


async def test_an_objection_on_paper_counts_from_the_day_given(api: TestClient, dealer: Dealer) -> None:
    await post(api, SUBJ + "/invoices", {"invoice_id": "F-1", "invoice_date": (today() - dt.timedelta(
        days=100)).isoformat()}, dealer.auth("importer"))
    given = today() - dt.timedelta(days=20)
    await post(api, SUBJ + "/objection", {"given_on": given.isoformat(), "evidence_ref": "brief-77"},
               dealer.auth("staff"))
    assert (await cell(api, dealer, given - dt.timedelta(days=1)))["reason"] == "soft_opt_in"
    assert (await cell(api, dealer, given))["reason"] == "objected"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"given_on": "2999-01-01", "evidence_ref": "form-1"}, "$.given_on", "in the future"),
        ({"given_on": "1900-01-01", "evidence_ref": "form-1"}, "$.given_on", "before 1950"),
        ({"given_on": "2024-01-01"}, "$.evidence_ref", "evidence_ref is required"),
        ({"evidence_ref": "form-1"}, "$.given_on", "goes with given_on"),
        ({"given_on": "2024-02-30", "evidence_ref": "form-1"}, "$.given_on", "YYYY-MM-DD"),
        ({"given_on": "2024-01-01", "evidence_ref": "\nform"}, "$.evidence_ref", ""),
    ],
)
async def test_a_dated_preference_in_the_future_or_without_evidence_is_refused_naming_the_field(
        api: TestClient, dealer: Dealer, body: dict, field: str, words: str) -> None:
    r = await api.post(SUBJ + "/preferences", json={"changes": NEWSLETTER_EMAIL_OPT_OUT, **body},
                       headers=dealer.auth("staff"))
    assert r.status == 422, await r.text()
    err = await r.json()
    assert err["field"] == field and words in err["message"]
    r = await api.get(SUBJ + "/events", headers=dealer.auth("auditor"))
    assert r.status == 404  # nothing was appended


async def test_a_change_without_a_policy_version_names_the_version_in_force(api: TestClient, dealer: Dealer) -> None:
    before_edit = (await (await api.get(AUDIT + "/policy", headers=dealer.auth("auditor"))).json())["version_id"]
    await post(api, SUBJ + "/preferences", {"changes": NEWSLETTER_EMAIL_OPT_OUT}, dealer.auth("staff"))
    await post(api, SUBJ + "/objection", {}, dealer.auth("staff"))
    recorded = await events(api, dealer)
    assert [(e["data"]["policy_version"], e["data"]["policy_version_basis"]) for e in recorded] == [
        (before_edit, "in_force"), (before_edit, "in_force")]


async def test_a_dated_change_names_the_policy_in_force_on_the_day_given_not_today(api: TestClient,
                                                                                   dealer: Dealer) -> None:
    """The policy is edited after the form was signed: the record names the older text."""
    yesterday_version = (await (await api.get(AUDIT + "/policy", headers=dealer.auth("auditor"))).json())["version_id"]
    r = await api.put("/v1/tenants/garage-a/policy/chapters/c03/active", json={"active": False}, headers=dealer.auth())
    assert r.status == 200
    now_version = (await (await api.get(AUDIT + "/policy", headers=dealer.auth("auditor"))).json())["version_id"]
    assert now_version != yesterday_version
    # The tenant was created today, so "the day given" must be today for an older version to exist
    # before the edit: a change given today names today's version; one given earlier names the
    # first version the tenant had (the one before the edit).
    await post(api, SUBJ + "/preferences", {"changes": NEWSLETTER_EMAIL_OPT_OUT, "given_on": (
        today() - dt.timedelta(days=3)).isoformat(), "evidence_ref": "form-3"}, dealer.auth("staff"))
    await post(api, SUBJ + "/preferences", {"changes": NEWSLETTER_EMAIL_OPT_OUT}, dealer.auth("staff"))
    recorded = await events(api, dealer)
    assert [e["data"]["policy_version"] for e in recorded] == [yesterday_version, now_version]


async def test_a_policy_version_the_tenant_never_published_is_still_refused(api: TestClient, dealer: Dealer) -> None:
    r = await api.post(SUBJ + "/preferences", json={"changes": NEWSLETTER_EMAIL_OPT_OUT, "policy_version": "pv-nope"},
                       headers=dealer.auth("staff"))
    assert r.status == 422 and (await r.json())["error"] == "unknown_policy_version"


async def test_a_bulk_preference_item_names_the_policy_in_force_and_may_be_dated(api: TestClient,
                                                                                dealer: Dealer) -> None:
    given = (today() - dt.timedelta(days=5)).isoformat()
    items = [{"kind": "preferences", "source": "dealer", "customer_ref": "C1", "changes": NEWSLETTER_EMAIL_OPT_OUT,
              "given_on": given, "evidence_ref": "dms-2026-12-01.csv"}]
    await post(api, "/v1/tenants/garage-a/subjects:batch", {"items": items}, dealer.auth("importer"))
    [event] = await events(api, dealer)
    assert event["data"]["given_on"] == given and event["data"]["policy_version_basis"] == "in_force"
    assert event["data"]["policy_version"]
    items[0]["given_on"] = "2999-01-01"
    r = await api.post("/v1/tenants/garage-a/subjects:batch", json={"items": items}, headers=dealer.auth("importer"))
    assert r.status == 422 and (await r.json())["field"] == "$.items[0].given_on"

"""Errors a person understands (issue 16, item 6): a wrong enum value lists the values
allowed, a bad date says "not a calendar date (YYYY-MM-DD)" in a body and in a query alike,
and every 4xx names the field."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import Dealer

SUBJ = "/v1/tenants/garage-a/subjects/dealer/C1"


@pytest.mark.parametrize(
    ("path", "body", "field", "message"),
    [
        (SUBJ + "/preferences", {"changes": [{"category": "nieuwsbrief", "channel": "email", "value": "opt_in"}]},
         "$.changes[0].category",
         "Invalid enum value 'nieuwsbrief'; allowed: aftersales_campaign, aftersales_service, newsletter, prospect, sales_campaign"),
        (SUBJ + "/preferences", {"changes": [{"category": "newsletter", "channel": "fax", "value": "opt_in"}]},
         "$.changes[0].channel", "Invalid enum value 'fax'; allowed: app, email, phone, post, sms"),
        (SUBJ + "/preferences", {"changes": [{"category": "newsletter", "channel": "email", "value": "yes"}]},
         "$.changes[0].value", "Invalid enum value 'yes'; allowed: default, opt_in, opt_out"),
        (SUBJ + "/objection", {"method": "fax"}, "$.method", "Invalid enum value 'fax'; allowed: api, email, import"),
        (SUBJ + "/invoices", {"invoice_id": "F1", "invoice_date": "31-01-2024"}, "$.invoice_date",
         "not a calendar date (YYYY-MM-DD)"),
        (SUBJ + "/invoices", {"invoice_id": "F1", "invoice_date": "2024-02-30"}, "$.invoice_date",
         "not a calendar date (YYYY-MM-DD)"),
        ("/v1/tenants/garage-a/eligibility:check", {"category": "newsletter", "channel": "email",
                                                    "send_date": "morgen", "subjects": [{"source": "dealer",
                                                                                         "customer_ref": "C1"}]},
         "$.send_date", "not a calendar date (YYYY-MM-DD)"),
    ],
)
async def test_a_wrong_value_in_a_body_is_answered_with_the_field_and_what_is_allowed(
        api: TestClient, dealer: Dealer, path: str, body: dict, field: str, message: str) -> None:
    r = await api.post(path, json=body, headers=dealer.auth("admin"))
    assert r.status == 422, await r.text()
    err = await r.json()
    assert err["field"] == field
    assert message in err["message"]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (SUBJ + "/eligibility?on=2024-02-30", "on"),
        (SUBJ + "/eligibility?on=morgen", "on"),
        ("/v1/tenants/garage-a/audit/subjects/dealer/C1?on=2024-13-01", "on"),
    ],
)
async def test_a_bad_date_in_a_query_gets_the_same_words_as_in_a_body(api: TestClient, dealer: Dealer, path: str,
                                                                       field: str) -> None:
    r = await api.get(path, headers=dealer.auth("auditor"))
    assert r.status == 422, await r.text()
    err = await r.json()
    assert err["field"] == field and "not a calendar date (YYYY-MM-DD)" in err["message"]


async def test_every_kind_of_4xx_names_the_field(api: TestClient, dealer: Dealer) -> None:
    cases = [
        ("GET", "/v1/tenants/garage-a", {}, 401, "Authorization"),
        ("GET", "/v1/tenants/garage-a", {"Authorization": "Bearer clk_nope_nope"}, 401, "Authorization"),
        ("POST", "/v1/tenants/garage-a/api-keys", dealer.auth("sender"), 403, "Authorization"),
        ("GET", "/v1/tenants/garage-b", dealer.auth("admin"), 403, "tenant"),
        ("GET", "/v1/nothing-here", {}, 404, "path"),
        ("DELETE", "/v1/tenants", dealer.auth("admin"), 405, "method"),
    ]
    for method, path, headers, status, field in cases:
        r = await api.request(method, path, headers=headers)
        body = await r.json()
        assert (r.status, body.get("field")) == (status, field), (method, path, body)
        assert body["message"]

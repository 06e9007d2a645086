"""One question, one shape (issue 16, item 5): the single-subject check and the bulk check
accept ``known_at`` (the answer as the ledger knew it then) and answer cells in the same
shape as the matrix on the topic and the audit view."""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec
from aiohttp.test_utils import TestClient

from consent.terms import add_months, ledger_day
from schemas.eligibility import Cell
from services.projector.clock import SystemClock
from services.projector.projection import Projection, apply_until_caught_up
from tests.conftest import Dealer

TODAY = ledger_day(dt.datetime.now(dt.timezone.utc))
T = "/v1/tenants/garage-a"
CELL_FIELDS = set(msgspec.structs.fields(Cell)[i].encode_name for i in range(len(msgspec.structs.fields(Cell))))


async def project(pool: asyncpg.Pool) -> None:
    projection = Projection(pool, clock=SystemClock())
    await apply_until_caught_up(projection)
    await projection.reevaluate_pending()


async def opted_out_after_invoice(api: TestClient, dealer: Dealer, pool: asyncpg.Pool) -> str:
    """C1: an invoice three months ago (soft opt-in on newsletter e-mail), then an opt-out.
    Returns the moment between the two."""
    r = await api.post(f"{T}/subjects/dealer/C1/invoices", headers=dealer.auth("importer"),
                       json={"invoice_id": "F-1", "invoice_date": add_months(TODAY, -3).isoformat()})
    assert r.status == 201, await r.text()
    between = (await r.json())["recorded_at"]
    r = await api.post(f"{T}/subjects/dealer/C1/preferences", headers=dealer.auth("staff"),
                       json={"changes": [{"category": "newsletter", "channel": "email", "value": "opt_out"}]})
    assert r.status == 201, await r.text()
    await project(pool)
    return between


async def test_the_matrix_as_known_at_an_earlier_moment_is_what_the_ledger_knew_then(
        api: TestClient, dealer: Dealer, pool: asyncpg.Pool) -> None:
    between = await opted_out_after_invoice(api, dealer, pool)
    path = f"{T}/subjects/dealer/C1/eligibility"
    now = await (await api.get(path, headers=dealer.auth("sender"))).json()
    assert now["cells"]["newsletter"]["email"]["reason"] == "opted_out"
    r = await api.get(path, params={"known_at": between}, headers=dealer.auth("sender"))
    assert r.status == 200, await r.text()
    then = await r.json()
    assert then["cells"]["newsletter"]["email"]["reason"] == "soft_opt_in"
    assert then["subject_version"] == 1 and then["evaluated_on"] == TODAY.isoformat()
    # The same shape, with or without known_at.
    assert set(then) == set(now) and set(then["cells"]["newsletter"]["email"]) == CELL_FIELDS
    # Known now, asked with known_at = now: the same answer as the read model's.
    r = await api.get(path, params={"known_at": dt.datetime.now(dt.timezone.utc).isoformat()},
                      headers=dealer.auth("auditor"))
    assert (await r.json())["cells"] == now["cells"]


async def test_the_bulk_check_as_known_at_an_earlier_moment(api: TestClient, dealer: Dealer,
                                                            pool: asyncpg.Pool) -> None:
    between = await opted_out_after_invoice(api, dealer, pool)
    body = {"category": "newsletter", "channel": "email", "send_date": TODAY.isoformat(),
            "subjects": [{"source": "dealer", "customer_ref": "C1"}, {"source": "dealer", "customer_ref": "NOPE"}]}
    now = await (await api.post(f"{T}/eligibility:check", json=body, headers=dealer.auth("sender"))).json()
    r = await api.post(f"{T}/eligibility:check", json={**body, "known_at": between}, headers=dealer.auth("sender"))
    assert r.status == 200, await r.text()
    then = await r.json()
    assert [x["reason"] for x in now["results"]] == ["opted_out", "unknown_subject"]
    assert [x["reason"] for x in then["results"]] == ["soft_opt_in", "unknown_subject"]
    assert dt.datetime.fromisoformat(then["known_at"]) == dt.datetime.fromisoformat(between)
    assert then["eligible"] == 1 and then["unknown"] == 1


async def test_the_bulk_check_the_matrix_and_the_audit_view_answer_a_cell_in_one_shape(
        api: TestClient, dealer: Dealer, pool: asyncpg.Pool) -> None:
    await opted_out_after_invoice(api, dealer, pool)
    matrix = await (await api.get(f"{T}/subjects/dealer/C1/eligibility", headers=dealer.auth("auditor"))).json()
    from_matrix = matrix["cells"]["newsletter"]["email"]
    body = {"category": "newsletter", "channel": "email", "send_date": TODAY.isoformat(),
            "subjects": [{"source": "dealer", "customer_ref": "C1"}]}
    [answer] = (await (await api.post(f"{T}/eligibility:check", json=body,
                                      headers=dealer.auth("auditor"))).json())["results"]
    audit = await (await api.get(f"{T}/audit/subjects/dealer/C1", headers=dealer.auth("auditor"))).json()
    [from_audit] = [c["cell"] for c in audit["cells"] if (c["category"], c["channel"]) == ("newsletter", "email")]
    assert answer["cell"] == from_matrix == from_audit
    assert set(from_matrix) == CELL_FIELDS


async def test_known_at_in_the_future_or_without_an_offset_is_refused_naming_the_field(
        api: TestClient, dealer: Dealer, pool: asyncpg.Pool) -> None:
    await opted_out_after_invoice(api, dealer, pool)
    r = await api.get(f"{T}/subjects/dealer/C1/eligibility", params={"known_at": "2999-01-01T00:00:00Z"},
                      headers=dealer.auth("sender"))
    assert r.status == 422 and (await r.json())["field"] == "known_at"
    body = {"category": "newsletter", "channel": "email", "send_date": TODAY.isoformat(),
            "subjects": [{"source": "dealer", "customer_ref": "C1"}]}
    for known_at, error in (("2999-01-01T00:00:00Z", "known_at_in_future"), ("2024-01-01T10:00:00", "validation_error"),
                            ("2000-01-01T00:00:00Z", "tenant_not_yet_created")):
        r = await api.post(f"{T}/eligibility:check", json={**body, "known_at": known_at}, headers=dealer.auth("sender"))
        answer = await r.json()
        assert (r.status, answer["error"], answer["field"]) == (422, error, "$.known_at"), answer
    r = await api.get(f"{T}/subjects/dealer/C1/eligibility", params={"known_at": "2000-01-01"},
                      headers=dealer.auth("sender"))
    assert r.status == 422 and (await r.json())["field"] == "known_at"

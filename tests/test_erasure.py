"""Erasure (GDPR art. 17) through the API: the key is shredded, the stream refuses new
events (410), audit views show "[erased]", an objection leaves only a hashed suppression
record, the subject's portal links are removed, and the hash chain still verifies."""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from schemas.events import Actor
from services.audit.erasure import erase_subject
from services.audit.retention import run_retention
from services.ledger.api.context import LEDGER
from services.ledger.commands import Context
from services.ledger.subject_keys import parse_master_key
from services.ledger.verify import verify_ledger
from services.portal.links import LinkStore
from services.settings import Settings
from tests.conftest import Dealer

SUBJ = "/v1/tenants/garage-a/subjects/dealer/C1"
AUDIT = "/v1/tenants/garage-a/audit/subjects/dealer/C1"
CONTACT = {"name": "Jan Jansen", "email": "jan.jansen@example.nl", "phone": "+31 6 1111 2222",
           "licence_plate": "ZZ-999-Z"}
NOTE = "klant belde zelf, wil niets meer"


async def make_subject(api: TestClient, dealer: Dealer, *, objection: bool) -> None:
    r = await api.post(SUBJ + "/invoices", json={"invoice_id": "F-1", "invoice_date": "2025-02-01",
                                                 "contact": CONTACT}, headers=dealer.auth("importer"))
    assert r.status == 201, await r.text()
    r = await api.post(SUBJ + "/preferences", json={
        "changes": [{"category": "newsletter", "channel": "email", "value": "opt_out"}], "method": "phone",
        "note": NOTE}, headers=dealer.auth("staff"))
    assert r.status == 201, await r.text()
    if objection:
        r = await api.post(SUBJ + "/objection", json={"method": "phone"}, headers=dealer.auth("staff"))
        assert r.status == 201, await r.text()


async def erase(api: TestClient, dealer: Dealer, ref: str = "C1", role: str = "admin"):
    return await api.post(f"/v1/tenants/garage-a/subjects/dealer/{ref}/erasure", json={"confirm_ref": ref},
                          headers=dealer.auth(role))


async def test_erasure_shreds_the_key_and_refuses_every_later_event(api: TestClient, dealer: Dealer,
                                                                      db_url: str) -> None:
    await make_subject(api, dealer, objection=False)
    r = await erase(api, dealer)
    assert r.status == 201, await r.text()
    result = await r.json()
    assert result["keys_shredded"] == 1 and not result["already_erased"] and not result["suppressed"]
    assert result["reason"] == "request"

    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ledger.subject_keys WHERE stream_id LIKE '%/C1'") == 0
        assert await conn.fetchval("SELECT count(*) FROM audit.suppressions") == 0
        count, broken = await verify_ledger(conn)
        assert broken is None and count >= 4
    finally:
        await conn.close()

    for path, body, role in [
        ("/invoices", {"invoice_id": "F-2", "invoice_date": "2025-03-01", "contact": {"name": "Jan"}}, "importer"),
        ("/invoices", {"invoice_id": "F-3", "invoice_date": "2025-03-01"}, "importer"),
        ("/preferences", {"changes": [{"category": "newsletter", "channel": "sms", "value": "opt_in"}]}, "staff"),
        ("/objection", {"method": "phone", "note": "nog een keer"}, "staff"),
    ]:
        r = await api.post(SUBJ + path, json=body, headers=dealer.auth(role))
        answer = await r.json()
        assert r.status == 410, (path, answer)
        assert answer["error"] == "subject_erased" and "erased" in answer["message"] and answer["field"] == "ref"
    r = await api.post("/v1/tenants/garage-a/subjects:batch", headers=dealer.auth("importer"), json={"items": [
        {"kind": "invoice", "source": "dealer", "customer_ref": "C2", "invoice_id": "F-9", "invoice_date": "2025-01-01"},
        {"kind": "invoice", "source": "dealer", "customer_ref": "C1", "invoice_id": "F-9", "invoice_date": "2025-01-01"},
    ]})
    assert r.status == 410, await r.text()
    r = await api.get("/v1/tenants/garage-a/subjects/dealer/C2/events", headers=dealer.auth("auditor"))
    assert r.status == 404  # all or nothing: the other subject of the batch was not written either
    conn = await asyncpg.connect(db_url)
    try:  # no new key was made for the erased subject by the refused commands
        assert await conn.fetchval("SELECT count(*) FROM ledger.subject_keys WHERE stream_id LIKE '%/C1'") == 0
    finally:
        await conn.close()

    r = await erase(api, dealer)
    assert r.status == 200 and (await r.json())["already_erased"]


async def test_audit_views_show_erased_personal_data_as_redacted(api: TestClient, dealer: Dealer) -> None:
    await make_subject(api, dealer, objection=False)
    r = await api.get(SUBJ + "/export", headers=dealer.auth("auditor"))
    assert (await r.json())["personal_data"] == CONTACT
    assert (await erase(api, dealer)).status == 201

    r = await api.get(SUBJ + "/export", headers=dealer.auth("auditor"))
    text = await r.text()
    export = await r.json()
    assert export["erased"] and export["personal_data"] == "[erased]"
    assert export["events"][0]["data"]["personal"] == "[erased]" and export["events"][1]["data"]["note"] == "[erased]"
    for value in (*CONTACT.values(), NOTE):
        assert value not in text

    r = await api.get(AUDIT, headers=dealer.auth("auditor"))
    view = await r.json()
    assert view["erased"] and view["status"] == "erased" and {c["reason"] for c in view["cells"]} == {"erased"}
    r = await api.get(AUDIT, params={"known_at": export["events"][1]["recorded_at"]}, headers=dealer.auth("auditor"))
    before = await r.json()  # the past stays explainable: the opt-out, its note redacted
    email = next(c for c in before["cells"] if (c["category"], c["channel"]) == ("newsletter", "email"))
    assert email["reason"] == "opted_out" and email["evidence"][0]["note"] == "[erased]"

    r = await api.get(SUBJ + "/export.csv", headers=dealer.auth("auditor"))
    assert "[erased]" in await r.text() and "Jan Jansen" not in await r.text()


async def test_an_objection_outlives_erasure_as_a_hashed_suppression_record(api: TestClient, dealer: Dealer,
                                                                              other_dealer: Dealer, db_url: str) -> None:
    await make_subject(api, dealer, objection=True)
    r = await erase(api, dealer)
    result = await r.json()
    assert r.status == 201 and result["suppressed"] and result["objected_on"]

    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT * FROM audit.suppressions")
    finally:
        await conn.close()
    [row] = rows
    assert set(dict(row)) == {"tenant_id", "ref_hmac", "objected_on", "erased_at", "reason"}
    assert len(row["ref_hmac"]) == 32 and b"C1" not in row["ref_hmac"]
    assert str(row["objected_on"]) == result["objected_on"]

    r = await api.get("/v1/tenants/garage-a/suppressions/dealer/C1", headers=dealer.auth("importer"))
    found = await r.json()
    assert found["suppressed"] and found["objected_on"] == result["objected_on"]
    r = await api.get("/v1/tenants/garage-a/suppressions/dealer/C2", headers=dealer.auth("sender"))
    assert not (await r.json())["suppressed"]
    r = await api.get("/v1/tenants/garage-b/suppressions/dealer/C1", headers=other_dealer.auth("importer"))
    assert not (await r.json())["suppressed"]  # the hash is per tenant


async def test_erasure_refuses_bad_requests_with_clear_answers(api: TestClient, dealer: Dealer) -> None:
    await make_subject(api, dealer, objection=False)
    r = await api.post(SUBJ + "/erasure", json={"confirm_ref": "C2"}, headers=dealer.auth("admin"))
    assert r.status == 422 and (await r.json())["field"] == "$.confirm_ref"
    r = await api.post(SUBJ + "/erasure", json={}, headers=dealer.auth("admin"))
    assert r.status == 422
    assert (await erase(api, dealer, role="staff")).status == 403
    assert (await erase(api, dealer, role="auditor")).status == 403
    r = await erase(api, dealer, ref="NOBODY")
    assert r.status == 404 and (await r.json())["error"] == "unknown_subject"
    r = await api.get(AUDIT, headers=dealer.auth("auditor"))
    assert not (await r.json())["erased"]  # nothing was half-done


async def test_erasure_removes_the_subjects_portal_links_and_the_daily_job_removes_any_issued_in_the_race(
    api: TestClient, dealer: Dealer, settings: Settings, pool: asyncpg.Pool
) -> None:
    await make_subject(api, dealer, objection=False)
    r = await api.post("/v1/tenants/garage-a/subjects/dealer/C2/invoices", headers=dealer.auth("importer"),
                       json={"invoice_id": "F-2", "invoice_date": "2025-02-01"})
    assert r.status == 201, await r.text()
    for ref, rotate in (("C1", False), ("C1", True), ("C2", False)):  # C1: one revoked link, one live
        r = await api.post(f"/v1/tenants/garage-a/subjects/dealer/{ref}/portal-link", json={"rotate": rotate},
                           headers=dealer.auth("admin"))
        assert r.status == 201, await r.text()

    r = await erase(api, dealer)
    assert r.status == 201 and (await r.json())["portal_links_removed"] == 2
    r = await api.get(SUBJ + "/portal-link", headers=dealer.auth("auditor"))
    assert (await r.json()) == {"live": None, "history": []}
    assert await pool.fetchval("SELECT count(*) FROM portal.links WHERE customer_ref = 'C1'") == 0

    # A link issued by a request that saw the subject just before the erasure was appended:
    # the retention job's repair removes it, and leaves other subjects' links alone.
    await LinkStore(pool).issue("garage-a", "dealer", "C1", rotate=False, issued_by="racer")
    [report] = await run_retention(api.server.app[LEDGER], parse_master_key(settings.master_key or ""),
                                   now=dt.datetime.now(dt.timezone.utc), dry_run=False, tenants=["garage-a"])
    assert report.portal_links_repaired == 1 and report.erased == 0
    assert await pool.fetchval("SELECT count(*) FROM portal.links WHERE customer_ref = 'C1'") == 0
    assert await pool.fetchval("SELECT count(*) FROM portal.links WHERE customer_ref = 'C2'") == 1
    r = await erase(api, dealer)  # erasing again removes nothing more and says so
    assert r.status == 200 and (await r.json())["portal_links_removed"] == 0


async def _fail_on(pool: asyncpg.Pool, table: str, operation: str) -> None:
    """A fault: every ``operation`` on ``table`` fails from now on (a trigger that raises)."""
    await pool.execute("CREATE FUNCTION public.fail() RETURNS trigger LANGUAGE plpgsql AS"
                       " $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$")
    await pool.execute(f"CREATE TRIGGER fail BEFORE {operation} ON {table} FOR EACH ROW EXECUTE FUNCTION public.fail()")


async def _heal(pool: asyncpg.Pool, table: str) -> None:
    await pool.execute(f"DROP TRIGGER fail ON {table}")
    await pool.execute("DROP FUNCTION public.fail()")


async def _issue_links(api: TestClient, dealer: Dealer) -> None:
    for rotate in (False, True):  # one revoked link, one live
        r = await api.post(SUBJ + "/portal-link", json={"rotate": rotate}, headers=dealer.auth("admin"))
        assert r.status == 201, await r.text()


async def _left_of_c1(pool: asyncpg.Pool) -> tuple[int, int, int]:
    """(keys, portal links, suppression records) that C1 still has."""
    return (await pool.fetchval("SELECT count(*) FROM ledger.subject_keys WHERE stream_id LIKE '%/C1'"),
            await pool.fetchval("SELECT count(*) FROM portal.links WHERE customer_ref = 'C1'"),
            await pool.fetchval("SELECT count(*) FROM audit.suppressions"))


async def test_a_fault_in_the_shred_leaves_key_and_links_in_place_and_erasing_again_completes_it(
    api: TestClient, dealer: Dealer, settings: Settings, pool: asyncpg.Pool
) -> None:
    """The key, the portal's links and the suppression record are three services' tables,
    deleted and written through each owner's function in ONE transaction: the last step
    failing undoes the first two (nothing half-shredded), and the repeat finishes it."""
    await make_subject(api, dealer, objection=True)
    await _issue_links(api, dealer)
    ledger, master = api.server.app[LEDGER], parse_master_key(settings.master_key or "")
    ctx = Context(actor=Actor(kind="staff", id="tests"))
    await _fail_on(pool, "audit.suppressions", "INSERT")
    with pytest.raises(asyncpg.RaiseError, match="injected fault"):
        await erase_subject(ledger, master, ctx, "garage-a", "dealer", "C1")
    assert await _left_of_c1(pool) == (1, 2, 0)
    r = await api.get(SUBJ + "/export", headers=dealer.auth("admin"))
    assert (await r.json())["erased"]  # the event was appended before the shred failed

    await _heal(pool, "audit.suppressions")
    result = await erase_subject(ledger, master, ctx, "garage-a", "dealer", "C1")
    assert result.already_erased and result.suppressed
    assert (result.keys_shredded, result.portal_links_removed) == (1, 2)
    assert await _left_of_c1(pool) == (0, 0, 1)


async def test_the_daily_job_shreds_what_a_crash_after_the_erasure_event_left(
    api: TestClient, dealer: Dealer, settings: Settings, pool: asyncpg.Pool
) -> None:
    await make_subject(api, dealer, objection=False)
    await _issue_links(api, dealer)
    r = await api.post("/v1/tenants/garage-a/subjects/dealer/C2/invoices", headers=dealer.auth("importer"),
                       json={"invoice_id": "F-2", "invoice_date": "2025-02-01", "contact": {"name": "Piet"}})
    assert r.status == 201, await r.text()
    r = await api.post("/v1/tenants/garage-a/subjects/dealer/C2/portal-link", json={"rotate": False},
                       headers=dealer.auth("admin"))
    assert r.status == 201, await r.text()
    ledger, master = api.server.app[LEDGER], parse_master_key(settings.master_key or "")
    await _fail_on(pool, "ledger.subject_keys", "DELETE")  # the shred dies after the event is appended
    with pytest.raises(asyncpg.RaiseError, match="injected fault"):
        await erase_subject(ledger, master, Context(actor=Actor(kind="staff", id="tests")), "garage-a", "dealer", "C1")
    await _heal(pool, "ledger.subject_keys")
    assert await _left_of_c1(pool) == (1, 2, 0)

    [report] = await run_retention(ledger, master, now=dt.datetime.now(dt.timezone.utc), dry_run=False,
                                   tenants=["garage-a"])
    assert (report.erased, report.keys_repaired, report.portal_links_repaired) == (0, 1, 2)
    assert await _left_of_c1(pool) == (0, 0, 0)
    # the other subject keeps its key and its link
    assert await pool.fetchval("SELECT count(*) FROM ledger.subject_keys WHERE stream_id LIKE '%/C2'") == 1
    assert await pool.fetchval("SELECT count(*) FROM portal.links WHERE customer_ref = 'C2'") == 1

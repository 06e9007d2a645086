"""Retention: customers 7 years after their last invoice, prospects 3 months after
acquisition or the last marketing activity (per tenant), tested across the boundaries,
as a pure rule and as the daily job (with an injected clock and the CLI's --dry-run)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys

import pytest
from aiohttp.test_utils import TestClient

from consent.retention import retention_due
from services.audit.retention import run_retention
from services.audit.times import end_of_dutch_day
from services.ledger.api.context import LEDGER
from services.ledger.subject_keys import parse_master_key
from services.settings import Settings
from tests.conftest import Dealer
from tests.consent_builders import SubjectHistoryBuilder, day

SUBJECTS = "/v1/tenants/garage-a/subjects/dealer/"


@pytest.mark.parametrize(("last_invoice", "due_on"), [
    ("2018-03-15", "2025-03-15"),
    ("2020-02-29", "2027-02-28"),  # no 29 February in 2027: the month's last day
    ("2019-12-31", "2026-12-31"),
])
def test_a_customer_is_due_seven_years_after_the_last_invoice(last_invoice: str, due_on: str) -> None:
    state = SubjectHistoryBuilder().invoice("2015-01-01").invoice(last_invoice).state()
    due = retention_due(state, 7, 3)
    assert due is not None and due.kind == "customer" and due.basis == "last_invoice"
    assert due.basis_date == day(last_invoice) and due.due_on == day(due_on)


def test_an_invoice_recorded_late_with_an_earlier_date_does_not_shorten_retention() -> None:
    state = SubjectHistoryBuilder().invoice("2020-06-01").invoice("2019-01-01", at="2021-01-01").state()
    due = retention_due(state, 7, 3)
    assert due is not None and due.due_on == day("2027-06-01")


def test_a_prospect_is_due_months_after_acquisition_or_the_last_marketing_activity() -> None:
    acquired = SubjectHistoryBuilder().prospect("2025-01-31").state()
    due = retention_due(acquired, 7, 3)
    assert due is not None and (due.kind, due.basis, due.due_on) == ("prospect", "acquisition", day("2025-04-30"))
    mailed = SubjectHistoryBuilder().prospect("2025-01-31").activity("2025-03-10", "prospect", "post").state()
    due = retention_due(mailed, 7, 3)
    assert due is not None and (due.basis, due.due_on) == ("marketing_activity", day("2025-06-10"))
    assert retention_due(mailed, 7, 6).due_on == day("2025-09-10")  # type: ignore[union-attr]
    # An activity before a newer acquisition does not pull the date back.
    reacquired = SubjectHistoryBuilder().prospect("2025-01-31").activity("2025-02-01").prospect("2025-05-01").state()
    assert retention_due(reacquired, 7, 3).due_on == day("2025-08-01")  # type: ignore[union-attr]


def test_a_subject_with_neither_invoice_nor_acquisition_counts_from_its_last_event() -> None:
    state = SubjectHistoryBuilder().opt_in("newsletter", "email", at="2025-02-10T10:00:00+00:00").state()
    due = retention_due(state, 7, 3)
    assert due is not None and (due.basis, due.basis_date, due.due_on) == ("last_event", day("2025-02-10"),
                                                                            day("2025-05-10"))


def test_an_erased_subject_is_never_due_again() -> None:
    assert retention_due(SubjectHistoryBuilder().invoice("2000-01-01").erase().state(), 7, 3) is None


async def record(api: TestClient, dealer: Dealer, ref: str, path: str, body: dict) -> None:
    r = await api.post(SUBJECTS + ref + path, json=body, headers=dealer.auth("admin"))
    assert r.status == 201, await r.text()


async def test_the_daily_job_erases_exactly_who_is_due_on_the_injected_day(api: TestClient, dealer: Dealer,
                                                                           other_dealer: Dealer, settings: Settings) -> None:
    await record(api, dealer, "OLD", "/invoices", {"invoice_id": "F-1", "invoice_date": "2018-03-15",
                                                   "contact": {"name": "Oud Klant"}})
    await record(api, dealer, "RECENT", "/invoices", {"invoice_id": "F-2", "invoice_date": "2018-03-16"})
    await record(api, dealer, "PROS", "/prospect", {"acquired_on": "2024-12-15", "how": "beurs"})
    await record(api, dealer, "MAILED", "/prospect", {"acquired_on": "2024-12-15", "how": "beurs"})
    await record(api, dealer, "MAILED", "/marketing-activities", {"activity_on": "2025-01-20",
                                                                  "category": "prospect", "channel": "post"})
    r = await api.post("/v1/tenants/garage-b/subjects/dealer/OLD/invoices", headers=other_dealer.auth("admin"),
                       json={"invoice_id": "F-1", "invoice_date": "2018-03-15"})
    assert r.status == 201
    ledger = api.server.app[LEDGER]
    master = parse_master_key(settings.master_key or "")

    def at(d: str) -> dt.datetime:
        return end_of_dutch_day(day(d))

    [report] = await run_retention(ledger, master, now=at("2025-03-14"), dry_run=True, tenants=["garage-a"])
    assert report.subjects_scanned == 4 and report.due == []  # the day before both boundaries
    [report] = await run_retention(ledger, master, now=at("2025-03-15"), dry_run=True, tenants=["garage-a"])
    assert sorted(d.customer_ref for d in report.due) == ["OLD", "PROS"] and report.erased == 0
    r = await api.get(SUBJECTS + "OLD/export", headers=dealer.auth("admin"))
    assert not (await r.json())["erased"]  # a dry run writes nothing

    # The dealer keeps customers 8 years: OLD is no longer due on that day.
    r = await api.put("/v1/tenants/garage-a/retention", json={"customer_years": 8, "prospect_months": 3},
                      headers=dealer.auth("admin"))
    assert r.status in (200, 201), await r.text()
    [report] = await run_retention(ledger, master, now=at("2025-03-15"), dry_run=True, tenants=["garage-a"])
    assert report.customer_years == 8 and sorted(d.customer_ref for d in report.due) == ["PROS"]

    reports = await run_retention(ledger, master, now=at("2026-03-14"), dry_run=False)
    by_tenant = {x.tenant_id: x for x in reports}
    assert sorted(d.customer_ref for d in by_tenant["garage-a"].due) == ["MAILED", "PROS"]
    assert by_tenant["garage-a"].erased == 2
    assert sorted(d.customer_ref for d in by_tenant["garage-b"].due) == ["OLD"] and by_tenant["garage-b"].erased == 1
    for ref, erased in (("PROS", True), ("MAILED", True), ("OLD", False), ("RECENT", False)):
        r = await api.get(SUBJECTS + ref + "/export", headers=dealer.auth("admin"))
        export = await r.json()
        assert export["erased"] is erased, ref
    r = await api.get(SUBJECTS + "PROS/export", headers=dealer.auth("admin"))
    [erasure] = export_events(await r.json())
    assert erasure["data"]["reason"] == "retention" and erasure["actor"] == {"kind": "system", "id": "retention"}
    # Run again the same day: nothing more to do. The next day (8 years after OLD's invoice) OLD goes.
    [again] = await run_retention(ledger, master, now=at("2026-03-14"), dry_run=False, tenants=["garage-a"])
    assert again.due == [] and again.erased == 0
    [next_day] = await run_retention(ledger, master, now=at("2026-03-15"), dry_run=False, tenants=["garage-a"])
    assert [d.customer_ref for d in next_day.due] == ["OLD"] and next_day.erased == 1


def export_events(export: dict) -> list[dict]:
    return [e for e in export["events"] if e["event_type"] == "SubjectErased"]


async def test_the_cli_dry_run_lists_who_would_be_erased_and_refuses_a_bad_date(api: TestClient, dealer: Dealer,
                                                                                  settings: Settings) -> None:
    await record(api, dealer, "PROS", "/prospect", {"acquired_on": "2024-12-15", "how": "beurs"})
    env = {**os.environ, "LEDGER_DATABASE_URL": settings.database_url,
           "LEDGER_MASTER_KEY": settings.master_key or "", "LEDGER_LOG_LEVEL": "warning"}

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "audit", "retention", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, _ = await cli("--dry-run", "--today", "2025-03-15", "--tenant", "garage-a")
    assert code == 0
    [report] = json.loads(out)
    assert report["dry_run"] and [d["customer_ref"] for d in report["due"]] == ["PROS"]
    assert report["due"][0]["due_on"] == "2025-03-15"
    code, _, err = await cli("--dry-run", "--today", "15-03-2025")
    assert code == 2 and "--today" in err
    code, _, err = await cli("--dry-run", "--tenant", "nobody")
    assert code == 2 and "unknown_tenant" in err
    r = await api.get(SUBJECTS + "PROS/export", headers=dealer.auth("admin"))
    assert not (await r.json())["erased"]


def test_a_due_day_beyond_the_calendar_means_never_due_instead_of_stopping_the_job() -> None:
    customer = retention_due(SubjectHistoryBuilder().invoice("9999-06-01").state(), 7, 3)
    assert customer is not None and customer.due_on == dt.date.max
    prospect = retention_due(SubjectHistoryBuilder().prospect("9999-11-15").state(), 7, 3)
    assert prospect is not None and prospect.due_on == dt.date.max

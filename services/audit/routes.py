"""HTTP routes of the audit package: as-of views, policy history, consent receipts,
access export (art. 15), erasure (art. 17), suppression check, retention dry run.

Reads are for the tenant's admins and auditors; erasure is an admin command.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Literal

import msgspec
from aiohttp import web

from consent.terms import ledger_day
from services.audit import suppression
from services.audit.access import AccessExport, build_export, export_csv
from services.audit.cache import StreamCache
from services.audit.asof import AsOfView, Comparison, compare_with_now, explain_as_of
from services.audit.erasure import ErasureResult, erase_subject
from services.audit.errors import AuditError
from services.audit.loading import load_subject_events, load_tenant, revealer
from services.audit.policy_history import PolicyHistory, PolicyText, policy_at, policy_by_version, versions
from services.audit.receipts import ConsentReceipt, load_receipt, receipts_from
from services.audit.retention import RetentionReport, run_retention
from services.audit.suppression import Suppression
from services.audit.times import UTC, parse_known_at, parse_on
from services.ledger.api.context import SETTINGS, STORE, Call
from services.ledger.api.jsonapi import ApiRoutes, json_response
from services.ledger.subject_keys import master_keys, parse_master_key

routes = ApiRoutes(tag="audit")
STREAM_CACHE = web.AppKey("audit_stream_cache", StreamCache)
AUDIT = "/v1/tenants/{tenant}/audit"
AUDIT_SUBJECT = AUDIT + "/subjects/{source}/{ref}"
SUBJECT = "/v1/tenants/{tenant}/subjects/{source}/{ref}"
READERS = ("admin", "auditor")
_TIMES = (
    ("known_at", "string", False, "knowledge time K: ISO date-time with offset, or a date (= end of that Dutch day);"
                                  " default now"),
    ("on", "string", False, "date D the question is about (YYYY-MM-DD); default the Dutch day of K"),
)


class ReceiptList(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    receipts: list[ConsentReceipt]


class EraseSubject(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An erasure request (GDPR art. 17). ``confirm_ref`` must repeat the customer ref:
    erasure cannot be undone."""

    confirm_ref: str
    reason: Literal["request"] = "request"


def _now() -> dt.datetime:
    return dt.datetime.now(UTC)


def _times(call: Call, now: dt.datetime) -> tuple[dt.datetime, dt.date]:
    known_at = parse_known_at(call.request.query.get("known_at"), now)
    return known_at, parse_on(call.request.query.get("on"), known_at)


def _ids(call: Call) -> tuple[str, str, str]:
    return call.param("tenant"), call.param("source"), call.param("ref")


def _master_key(call: Call) -> bytes:
    text = call.request.app[SETTINGS].master_key
    assert text, "the app does not start without a master key"
    return parse_master_key(text)


async def audit_context(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: the app's stream cache for the as-of views (after the store exists)."""
    app[STREAM_CACHE] = StreamCache(app[STORE])
    yield


@routes.get(AUDIT_SUBJECT, summary="A subject's eligibility matrix as known at K for date D, with evidence",
            roles=READERS, responses={200: AsOfView}, query=_TIMES)
async def audit_as_of(call: Call) -> web.Response:
    """What the ledger knew at `known_at` (K, default now) about date `on` (D, default K's
    day): all 25 cells, each decision with the events it rests on resolved into who, when,
    how, the policy version and (for a dated preference) the day given and its evidence."""
    tenant_id, source, ref = _ids(call)
    now = _now()
    known_at, on = _times(call, now)
    cache = call.request.app[STREAM_CACHE]
    history = await cache.subject(tenant_id, source, ref)
    tenant = await cache.tenant(tenant_id)
    state = history.state_at(known_at)
    if state is None:
        raise AuditError(404, "not_known_at", f"the ledger knew nothing of this subject at {known_at.isoformat()}"
                         f" (its first event was recorded at {history.events[0].recorded_at.isoformat()})",
                         "known_at")
    reveal = await revealer(call.ledger.keys, tenant_id, source, ref)
    return json_response(explain_as_of(history.events, tenant, known_at, on, reveal, state=state))


@routes.get(AUDIT_SUBJECT + "/compare", summary="What was known at K about date D against what is known now",
            roles=READERS, responses={200: Comparison}, query=_TIMES)
async def audit_compare(call: Call) -> web.Response:
    """The view as known at K next to the view as known now, for the same date D: which
    cells changed and which events recorded after K changed them (a late invoice, a paper
    opt-out)."""
    tenant_id, source, ref = _ids(call)
    now = _now()
    known_at, on = _times(call, now)
    cache = call.request.app[STREAM_CACHE]
    history = await cache.subject(tenant_id, source, ref)
    tenant = await cache.tenant(tenant_id)
    reveal = await revealer(call.ledger.keys, tenant_id, source, ref)
    return json_response(compare_with_now(history.events, tenant, known_at, now, on, reveal, history=history))


@routes.get(AUDIT_SUBJECT + "/receipts", summary="Consent receipts of every preference and objection change",
            roles=READERS, responses={200: ReceiptList})
async def audit_receipts(call: Call) -> web.Response:
    """A Kantara Consent Receipt v1.1 for every preference and objection change of the
    subject, oldest first."""
    tenant_id, source, ref = _ids(call)
    store = call.request.app[STORE]
    events = await load_subject_events(store, tenant_id, source, ref)
    tenant = await load_tenant(store, tenant_id)
    public_base = call.request.app[SETTINGS].portal_base_url
    return json_response(ReceiptList(subject=f"{tenant_id}/{source}/{ref}",
                                     receipts=receipts_from(events, tenant, public_base=public_base)))


@routes.get(AUDIT_SUBJECT + "/receipts/{receipt_id}", summary="One consent receipt (JSON, for download)",
            roles=READERS, responses={200: ConsentReceipt})
async def audit_receipt(call: Call) -> web.Response:
    """One consent receipt by its id, as a download."""
    tenant_id, source, ref = _ids(call)
    receipt = await load_receipt(call.request.app[STORE], tenant_id, source, ref, call.param("receipt_id"),
                                 public_base=call.request.app[SETTINGS].portal_base_url)
    return json_response(receipt, headers={
        "Content-Disposition": f'attachment; filename="{receipt.receipt_id}.json"'})


@routes.get(AUDIT + "/policy", summary="The privacy policy (every chapter, in order) in force at K",
            roles=READERS, responses={200: PolicyText}, query=_TIMES[:1])
async def audit_policy_at(call: Call) -> web.Response:
    """The whole policy (every chapter, active or not, in order) as it stood at `known_at`,
    with its version id."""
    known_at = parse_known_at(call.request.query.get("known_at"), _now())
    return json_response(policy_at(await load_tenant(call.request.app[STORE], call.param("tenant")), known_at))


@routes.get(AUDIT + "/policy/versions", summary="Every policy version the tenant published, oldest first",
            roles=READERS, responses={200: PolicyHistory})
async def audit_policy_versions(call: Call) -> web.Response:
    """Every policy version id the tenant published, when it was first in force, and the
    event that published it."""
    return json_response(versions(await load_tenant(call.request.app[STORE], call.param("tenant"))))


@routes.get(AUDIT + "/policy/versions/{version}", summary="The exact policy text behind a version id",
            roles=READERS, responses={200: PolicyText})
async def audit_policy_version(call: Call) -> web.Response:
    """The exact text behind a version id that a consent record names. 404
    `unknown_policy_version`."""
    tenant = await load_tenant(call.request.app[STORE], call.param("tenant"))
    return json_response(policy_by_version(tenant, call.param("version")))


@routes.get(AUDIT + "/retention", summary="Dry run of the retention job: who would be erased today",
            roles=READERS, responses={200: RetentionReport})
async def audit_retention(call: Call) -> web.Response:
    """Which subjects the daily retention job would erase today, and why (the date their
    period counts from). Nothing is erased."""
    tenant_id = call.param("tenant")
    await load_tenant(call.request.app[STORE], tenant_id)  # 404 for an unknown tenant
    [report] = await run_retention(call.ledger, _master_key(call), now=_now(), dry_run=True, tenants=[tenant_id])
    return json_response(report)


async def _export(call: Call) -> AccessExport:
    tenant_id, source, ref = _ids(call)
    store = call.request.app[STORE]
    events = await load_subject_events(store, tenant_id, source, ref)
    tenant = await load_tenant(store, tenant_id)
    return build_export(events, tenant, await revealer(call.ledger.keys, tenant_id, source, ref), _now(),
                        call.request.app[SETTINGS].portal_base_url)


def _file_name(export: AccessExport) -> str:
    return f"{export.tenant_id}-{export.source}-{export.customer_ref}-{ledger_day(export.exported_at).isoformat()}"


@routes.get(SUBJECT + "/export", summary="Access export (GDPR art. 15): everything held about the subject, as JSON",
            roles=READERS, responses={200: AccessExport})
async def export_subject(call: Call) -> web.Response:
    """Everything held about the subject (GDPR art. 15): its events with personal data
    decrypted, its consent state, today's matrix with evidence, and its receipts."""
    export = await _export(call)
    return json_response(export, headers={"Content-Disposition": f'attachment; filename="{_file_name(export)}.json"'})


@routes.get(SUBJECT + "/export.csv", summary="Access export (GDPR art. 15) as CSV: one row per event (text/csv)",
            roles=READERS, responses={200: None})
async def export_subject_csv(call: Call) -> web.Response:
    """The same export as one CSV table for a spreadsheet."""
    export = await _export(call)
    return web.Response(text=export_csv(export), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{_file_name(export)}.csv"'})


@routes.post(SUBJECT + "/erasure", summary="Erase the subject (GDPR art. 17): shred its key, drop it everywhere",
             roles=("admin",), body=EraseSubject, responses={201: ErasureResult, 200: ErasureResult})
async def erase(call: Call) -> web.Response:
    """Erases the subject (GDPR art. 17): its key is destroyed (so every sealed personal
    field becomes unreadable), its stream is closed (410 for any later write), the read
    models drop it and the eligibility topic gets a tombstone. If it had objected, a hashed
    suppression record keeps the objection honoured. `confirm_ref` must repeat the customer
    ref. Cannot be undone."""
    tenant_id, source, ref = _ids(call)
    body: EraseSubject = call.body
    if body.confirm_ref != ref:
        raise AuditError(422, "validation_error", "confirm_ref must repeat the customer ref of the path",
                         "$.confirm_ref")
    result = await erase_subject(call.ledger, _master_key(call), call.ctx("api"), tenant_id, source, ref,
                                 reason=body.reason)
    return json_response(result, status=200 if result.already_erased else 201)


@routes.get("/v1/tenants/{tenant}/suppressions/{source}/{ref}",
            summary="Did this customer ref object before it was erased? (suppression list)",
            roles=("admin", "auditor", "importer", "sender"), responses={200: Suppression})
async def suppression_check(call: Call) -> web.Response:
    """Did this customer ref object to direct marketing before it was erased? Answers from
    the hashed suppression list only; no personal data."""
    tenant_id, source, ref = _ids(call)
    _, previous = master_keys(call.request.app[SETTINGS])
    found = await suppression.lookup(call.ledger.pool, _master_key(call), tenant_id, source, ref, previous=previous)
    return json_response(found)


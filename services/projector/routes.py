"""HTTP for campaign senders (and admins, auditors): eligibility of one subject, a bulk
check for a campaign, and the compliance warnings on a tenant's term matrix.

Answers come from the projector's read model in the same database: the subject's folded
state, evaluated with the pure rules (:mod:`consent.eligibility`) for the asked date and
the tenant's term matrix as the projector holds it (so the answer for today equals the
matrix on consent.eligibility.v1). The tenant's decoded state is cached per app and
re-read only when its version moves.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import re
from collections.abc import AsyncIterator, Iterator
from typing import Final

import asyncpg
import msgspec
from aiohttp import web

from consent.eligibility import evaluate
from consent.tenant import TenantState
from consent.warnings import compliance_warnings
from schemas.eligibility import CampaignCheck, CampaignCheckResult, EligibilityMatrix, SubjectCheck, TermWarnings
from services.ledger.api.app import POOL, SETTINGS, Call
from services.ledger.api.jsonapi import ApiError, ApiRoutes, json_response
from services.ledger.subject_keys import parse_master_key
from services.mail.tokens import AnswerLinks, disclosure_of
from services.projector.clock import SystemClock
from services.projector.readmodel import decode_state, decode_tenant, erased_matrix_json, evaluate_subject, matrix_json

routes = ApiRoutes(tag="eligibility")
READERS: Final = ("sender", "admin", "auditor")
_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MIN_YEAR, _MAX_YEAR = 1900, 2999


class TenantTerms(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    terms_version: int
    last_position: int
    state: TenantState


class TenantTermsCache:
    """The projector's tenant states, decoded once per tenant version."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._tenants: dict[str, TenantTerms] = {}

    async def get(self, tenant_id: str) -> TenantTerms | None:
        row = await self._pool.fetchrow(
            "SELECT version, terms_version, last_position FROM projector.tenants WHERE tenant_id = $1", tenant_id)
        if row is None:
            return None
        cached = self._tenants.get(tenant_id)
        if cached is not None and cached.version == row[0]:
            return cached
        full = await self._pool.fetchrow(
            "SELECT version, terms_version, last_position, state FROM projector.tenants WHERE tenant_id = $1",
            tenant_id)
        if full is None:
            return None
        terms = TenantTerms(version=full[0], terms_version=full[1], last_position=full[2], state=decode_tenant(full[3]))
        self._tenants[tenant_id] = terms
        return terms


TERMS_CACHE = web.AppKey("eligibility_terms_cache", TenantTermsCache)
ANSWER_LINKS = web.AppKey("eligibility_answer_links", AnswerLinks)


async def eligibility_context(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx`` of the API app (after the database context)."""
    app[TERMS_CACHE] = TenantTermsCache(app[POOL])
    settings = app[SETTINGS]
    app[ANSWER_LINKS] = AnswerLinks(parse_master_key(settings.master_key or ""), settings.portal_base_url)
    yield


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Decoding 10,000 states allocates ~100,000 containers, which makes the cyclic GC run
    over and over (it doubles the time). They hold no cycles, and the block has no await,
    so the collector is paused for exactly this synchronous loop."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _date(value: str, field: str) -> dt.date:
    if not _DATE.fullmatch(value):
        raise ApiError(422, "validation_error", "a date is YYYY-MM-DD", field=field)
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise ApiError(422, "validation_error", f"{value!r} is not a calendar date", field=field) from None
    return _in_range(day, field)


def _in_range(day: dt.date, field: str) -> dt.date:
    if not _MIN_YEAR <= day.year <= _MAX_YEAR:
        raise ApiError(422, "validation_error", f"the year must be between {_MIN_YEAR} and {_MAX_YEAR}", field=field)
    return day


def _links(call: Call) -> AnswerLinks:
    """Unsubscribe links (the API always has the master key)."""
    return call.request.app[ANSWER_LINKS]


async def _tenant_terms(call: Call, tenant: str) -> TenantTerms:
    terms = await call.request.app[TERMS_CACHE].get(tenant)
    if terms is not None:
        return terms
    if await call.ledger.tenant(tenant) is None:
        raise ApiError(404, "unknown_tenant", f"tenant {tenant!r} does not exist", field="tenant")
    raise ApiError(503, "not_projected_yet", "the eligibility projector has not seen this tenant yet; retry shortly",
                   headers={"Retry-After": "1"})


@routes.get("/v1/tenants/{tenant}/subjects/{source}/{ref}/eligibility",
            summary="The subject's full eligibility matrix (category x channel) on a date (default today)",
            roles=READERS, responses={200: EligibilityMatrix},
            query=(("on", "string", False, "YYYY-MM-DD; default today (Dutch calendar day)"),))
async def subject_eligibility(call: Call) -> web.Response:
    tenant, source, ref = call.param("tenant"), call.param("source"), call.param("ref")
    on_param = call.request.query.get("on")
    on = _date(on_param, "on") if on_param is not None else SystemClock().today()
    terms = await _tenant_terms(call, tenant)
    raw = await call.request.app[POOL].fetchval(
        "SELECT state FROM projector.subjects WHERE tenant_id = $1 AND source = $2 AND customer_ref = $3",
        tenant, source, ref)
    if raw is None:
        raise ApiError(404, "unknown_subject", "no events for this subject (or not projected yet)", field="ref")
    state = decode_state(raw)
    if state.erased is not None:
        body = erased_matrix_json(state, on, terms_version=terms.terms_version, tenant_position=terms.last_position)
    else:
        evaluation = evaluate_subject(state, terms.state.terms, on)
        assert evaluation.decisions is not None
        body = matrix_json(state, evaluation, terms_version=terms.terms_version, tenant_position=terms.last_position,
                           unsubscribe=_links(call).matrix(tenant, source, ref, evaluation.decisions),
                           disclosure=disclosure_of(terms.state))
    return web.Response(body=body, content_type="application/json")


@routes.post("/v1/tenants/{tenant}/eligibility:check",
             summary="Bulk check for a campaign: category, channel, send date, up to 10,000 subjects",
             roles=READERS, body=CampaignCheck, responses={200: CampaignCheckResult},
             max_body=4 * 1024 * 1024)  # 10,000 refs of up to 64 characters do not fit in 1 MiB
async def campaign_check(call: Call) -> web.Response:
    tenant = call.param("tenant")
    body: CampaignCheck = call.body
    send_date = _in_range(body.send_date, "$.send_date")
    terms = await _tenant_terms(call, tenant)
    subjects = body.subjects
    by_source: dict[str, list[str]] = {}
    for s in subjects:
        by_source.setdefault(s.source, []).append(s.customer_ref)
    pool = call.request.app[POOL]
    found: dict[tuple[str, str], bytes] = {}
    # One query per data source (usually one): an index scan with ANY. The refs go as one
    # newline-joined text split by PostgreSQL (a customer ref has no newline: CustomerRef's
    # pattern): asyncpg checks each element of a list parameter in Python, which cost about
    # a tenth of a 10,000-subject check.
    for source, refs in by_source.items():
        for r in await pool.fetch("SELECT customer_ref, state FROM projector.subjects WHERE tenant_id = $1"
                                  " AND source = $2 AND customer_ref = ANY(string_to_array($3, E'\\n'))",
                                  tenant, source, "\n".join(refs)):
            found[(source, r[0])] = r[1]
    matrix = terms.state.terms
    category, channel = body.category, body.channel
    links = _links(call) if channel == "email" else None
    disclosure = disclosure_of(terms.state)
    results: list[SubjectCheck] = []
    eligible = unknown = 0
    with _no_cyclic_gc():
        for s in subjects:
            raw = found.get((s.source, s.customer_ref))
            if raw is None:
                unknown += 1
                results.append(SubjectCheck(source=s.source, customer_ref=s.customer_ref, known=False,
                                            eligible=False, reason="unknown_subject"))
                continue
            d = evaluate(decode_state(raw), matrix, category, channel, send_date)
            eligible += d.eligible
            results.append(SubjectCheck(
                source=s.source, customer_ref=s.customer_ref, known=True, eligible=d.eligible, basis=d.basis,
                reason=d.reason, until=d.until, requires_disclosure=d.requires_disclosure,
                evidence=list(d.evidence),
                unsubscribe=links.cell(tenant, s.source, s.customer_ref, category)
                if links is not None and d.eligible else None,
                disclosure=disclosure if d.requires_disclosure else None,
            ))
    return json_response(CampaignCheckResult(category=category, channel=channel, send_date=send_date,
                                             checked=len(subjects), eligible=eligible, unknown=unknown,
                                             results=results))


@routes.get("/v1/tenants/{tenant}/terms/warnings",
            summary="Compliance warnings on the tenant's current opt-in term matrix (they never change it)",
            roles=("admin", "staff", "auditor"), responses={200: TermWarnings})
async def term_warnings(call: Call) -> web.Response:
    tenant = call.param("tenant")
    version, state = await call.ledger.require_tenant(tenant, fresh=True)
    return json_response(TermWarnings(tenant_id=tenant, tenant_version=version,
                                      warnings=compliance_warnings(state.terms)))

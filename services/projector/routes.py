"""HTTP for campaign senders (and admins, auditors): eligibility of one subject, a bulk
check for a campaign, and the compliance warnings on a tenant's term matrix.

Answers come from the projector's read model in the same database: the subject's folded
state, evaluated with the pure rules (:mod:`consent.eligibility`) for the asked date and
the tenant's term matrix as the projector holds it (so the answer for today equals the
matrix on consent.eligibility.v1). The tenant's decoded state is cached per app and
re-read only when its version moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Final

import asyncpg
import msgspec
from aiohttp import web

from consent.eligibility import Decision, as_cell, evaluate
from consent.law import RULES_VERSION, rules_in_force, rules_starting_after
from consent.subject import SubjectState
from consent.tenant import TenantState
from consent.terms import ledger_day
from consent.warnings import compliance_warnings
from schemas.eligibility import (
    CampaignCheck,
    CampaignCheckResult,
    CheckSubject,
    Disclosure,
    EligibilityMatrix,
    SubjectCheck,
    TermWarnings,
    Unsubscribe,
)
from schemas.events import TenantCreated, TermMatrixEdited
from schemas.vocabulary import subject_stream, tenant_stream
from services.audit.errors import AuditError
from services.audit.loading import TenantRecord
from services.audit.routes import STREAM_CACHE
from services.audit.times import parse_known_at
from services.ledger.api.context import POOL, SETTINGS, STORE, Call
from services.ledger.api.jsonapi import NOT_A_DATE, ApiError, ApiRoutes, json_response
from services.ledger.subject_keys import parse_master_key
from services.mail.tokens import AnswerLinks, disclosure_of
from services.projector.clock import SystemClock
from services.projector.readmodel import decode_state, decode_tenant, erased_matrix_json, evaluate_subject, matrix_json

routes = ApiRoutes(tag="eligibility")
READERS: Final = ("sender", "admin", "auditor")
_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MIN_YEAR, _MAX_YEAR = 1900, 2999
_POSITION: Final = re.compile(r"^[0-9]{1,18}$")
MIN_POSITION_QUERY: Final = (
    "min_position", "integer", False,
    "a ledger position (an append answer's last_position): wait up to LEDGER_MIN_POSITION_WAIT_MS (default"
    " 2 s) until the answer reflects every event of the subject(s) and the tenant at or below it; 503"
    " not_caught_up (with the position reached) if it does not in time",
)


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


def query_date(value: str, field: str) -> dt.date:
    day = None
    if _DATE.fullmatch(value):
        with contextlib.suppress(ValueError):
            day = dt.date.fromisoformat(value)
    if day is None:  # the same words as a bad date in a JSON body (jsonapi.NOT_A_DATE)
        raise ApiError(422, "validation_error", f"{value[:40]!r} is {NOT_A_DATE}", field=field)
    return date_in_range(day, field)


def date_in_range(day: dt.date, field: str) -> dt.date:
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


_KNOWN_AT_DOC: Final = ("ISO 8601 date-time with an offset, or a date (the end of that Dutch day), not in the"
                         " future: answer as the ledger knew it then (default: now)")


# -- read your own writes ------------------------------------------------------------------


async def _min_position(call: Call, tenant: str) -> int | None:
    """``?min_position=``: None when absent; a 422 naming it when it is not a whole number
    of at least 0, or lies beyond the head of the tenant's log partition (no append ever
    answered it: positions count within a partition, docs/event-store.md)."""
    text = call.request.query.get("min_position")
    if text is None:
        return None
    if not _POSITION.fullmatch(text):
        raise ApiError(422, "validation_error", "min_position is a ledger position: a whole number, at least 0",
                       field="min_position")
    position = int(text)
    head = await call.request.app[STORE].tenant_head(tenant)
    if position > head:
        raise ApiError(422, "position_beyond_head",
                       f"min_position {position} is beyond the ledger's head ({head}): no append answered it",
                       field="min_position", position=head)
    return position


class _Wait:
    """Polls the read model until it reflects ``min_position`` for some streams, or the
    configured time is up (then a 503 naming the position reached)."""

    def __init__(self, call: Call, min_position: int) -> None:
        self.min_position = min_position
        self.deadline = time.monotonic() + call.request.app[SETTINGS].min_position_wait_ms / 1000
        self._sleep = 0.005

    async def next_round(self, reached: int) -> None:
        """Sleep before looking again; or raise the 503 if the time is up. ``reached``: a
        position through which every event of the streams concerned is reflected."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ApiError(503, "not_caught_up",
                           f"the eligibility read model reflects these streams through position {reached},"
                           f" not yet {self.min_position}; retry shortly",
                           field="min_position", position=reached, headers={"Retry-After": "1"})
        await asyncio.sleep(min(self._sleep, left))
        self._sleep = min(self._sleep * 2, 0.05)


def _reached(needed: dict[str, int], have: dict[str, tuple[int, int]], min_position: int) -> int:
    """``min_position`` if every stream holds at least the needed version; else the lowest
    position through which a lagging stream is known applied (its last applied event's)."""
    lagging = [have.get(s, (0, 0))[1] for s, v in needed.items() if have.get(s, (0, 0))[0] < v]
    return min(lagging) if lagging else min_position


async def _topic_epoch(call: Call) -> int:
    return int(await call.request.app[POOL].fetchval("SELECT coalesce(max(epoch), 0) FROM projector.eligibility_topic"))


@routes.get("/v1/tenants/{tenant}/subjects/{source}/{ref}/eligibility",
            summary="The subject's full eligibility matrix (category x channel) on a date (default today)",
            roles=READERS, responses={200: EligibilityMatrix},
            query=(("on", "string", False, "YYYY-MM-DD; default today (with known_at: the Dutch day of known_at)"),
                   ("known_at", "string", False, _KNOWN_AT_DOC), MIN_POSITION_QUERY))
async def subject_eligibility(call: Call) -> web.Response:
    """Every cell of the matrix is a decision: ``eligible``, ``basis``, ``reason``,
    ``until``, ``evidence`` (ledger event ids) and ``requires_disclosure``, the same shape
    as on the topic ``consent.eligibility.v1``, in the bulk check's ``cell`` and in the
    audit view. Without ``known_at`` the answer comes from the projector's read model (what
    the topic carries); with it, from the ledger's events recorded up to then and the term
    matrix in force then."""
    tenant, source, ref = call.param("tenant"), call.param("source"), call.param("ref")
    on_param = call.request.query.get("on")
    known_param = call.request.query.get("known_at")
    if known_param:
        return await _subject_as_known(call, tenant, source, ref, known_param, on_param)
    on = query_date(on_param, "on") if on_param is not None else SystemClock().today()
    min_position = await _min_position(call, tenant)
    pool = call.request.app[POOL]
    query = ("SELECT state, version, last_position FROM projector.subjects"
             " WHERE tenant_id = $1 AND source = $2 AND customer_ref = $3")
    terms = await _tenant_terms(call, tenant)
    row = await pool.fetchrow(query, tenant, source, ref)
    if min_position is not None:
        streams = (subject_stream(tenant, source, ref), tenant_stream(tenant))
        needed = await call.request.app[STORE].stream_versions_at(tenant, streams, min_position)
        wait = _Wait(call, min_position)
        while True:
            have = {streams[1]: (terms.version, terms.last_position)}
            if row is not None:
                have[streams[0]] = (row[1], row[2])
            reached = _reached(needed, have, min_position)
            if reached == min_position:
                break
            await wait.next_round(reached)
            terms = await _tenant_terms(call, tenant)
            row = await pool.fetchrow(query, tenant, source, ref)
    if row is None:
        raise ApiError(404, "unknown_subject", "no events for this subject (or not projected yet)", field="ref")
    state = decode_state(row[0])
    now, epoch = SystemClock().now(), await _topic_epoch(call)
    if state.erased is not None:
        body = erased_matrix_json(state, on, terms_version=terms.terms_version, tenant_position=terms.last_position,
                                  evaluated_at=now, epoch=epoch)
    else:
        evaluation = evaluate_subject(state, terms.state.terms, on)
        assert evaluation.decisions is not None
        body = matrix_json(state, evaluation, terms_version=terms.terms_version, tenant_position=terms.last_position,
                           evaluated_at=now, epoch=epoch,
                           unsubscribe=_links(call).matrix(tenant, source, ref, evaluation.decisions),
                           disclosure=disclosure_of(terms.state))
    return web.Response(body=body, content_type="application/json")


def _terms_version_at(record: TenantRecord, known_at: dt.datetime) -> int:
    """The tenant stream version of the last term matrix edit recorded by ``known_at``."""
    return max((e.version for e in record.events
                if e.recorded_at <= known_at and isinstance(e.event, (TenantCreated, TermMatrixEdited))), default=0)


async def _known(call: Call, tenant: str, known_at: dt.datetime, field: str) -> tuple[TenantRecord, TenantState]:
    record = await call.request.app[STREAM_CACHE].tenant(tenant)  # AuditError: 404 unknown_tenant
    return record, record.state_at(known_at, field)


async def _subject_as_known(call: Call, tenant: str, source: str, ref: str, known_param: str,
                            on_param: str | None) -> web.Response:
    now = dt.datetime.now(dt.timezone.utc)
    known_at = parse_known_at(known_param, now)
    on = query_date(on_param, "on") if on_param is not None else ledger_day(known_at)
    record, tenant_state = await _known(call, tenant, known_at, "known_at")
    history = await call.request.app[STREAM_CACHE].subject(tenant, source, ref)
    state = history.state_at(known_at)
    if state is None:
        raise ApiError(404, "unknown_subject", "the ledger knew nothing about this subject at known_at",
                       field="known_at")
    terms_version = _terms_version_at(record, known_at)
    if state.erased is not None:
        body = erased_matrix_json(state, on, terms_version=terms_version, tenant_position=tenant_state.last_position)
    else:
        body = matrix_json(state, evaluate_subject(state, tenant_state.terms, on), terms_version=terms_version,
                           tenant_position=tenant_state.last_position)
    return web.Response(body=body, content_type="application/json")


async def _states_as_known(call: Call, tenant: str, subjects: list[CheckSubject],
                           known_at: dt.datetime) -> dict[tuple[str, str], SubjectState]:
    """Each known subject's state as the ledger knew it at ``known_at`` (from its events,
    read through the audit service's stream cache, a few streams at a time)."""
    cache = call.request.app[STREAM_CACHE]
    gate = asyncio.Semaphore(16)
    found: dict[tuple[str, str], SubjectState] = {}

    async def one(s: CheckSubject) -> None:
        async with gate:
            try:
                history = await cache.subject(tenant, s.source, s.customer_ref)
            except AuditError:
                return  # the ledger holds nothing about it: unknown_subject
        state = history.state_at(known_at)
        if state is not None:
            found[(s.source, s.customer_ref)] = state

    await asyncio.gather(*(one(s) for s in {(s.source, s.customer_ref): s for s in subjects}.values()))
    return found


@routes.post("/v1/tenants/{tenant}/eligibility:check",
             summary="Bulk check for a campaign: category, channel, send date, up to 10,000 subjects",
             roles=READERS, body=CampaignCheck, responses={200: CampaignCheckResult},
             query=(MIN_POSITION_QUERY,),
             max_body=4 * 1024 * 1024)  # 10,000 refs of up to 64 characters do not fit in 1 MiB
async def campaign_check(call: Call) -> web.Response:
    """Every answer's ``cell`` has the matrix's cell shape (``eligible``, ``basis``,
    ``reason``, ``until``, ``evidence``, ``requires_disclosure``). With ``known_at`` the
    answers are what the ledger knew then (events recorded up to it, the term matrix in
    force then): what a campaign sent that day could rely on."""
    tenant = call.param("tenant")
    body: CampaignCheck = call.body
    send_date = date_in_range(body.send_date, "$.send_date")
    if body.known_at is not None:
        return await _campaign_check_as_known(call, tenant, body, send_date)
    min_position = await _min_position(call, tenant)
    terms = await _tenant_terms(call, tenant)
    subjects = body.subjects
    by_source: dict[str, list[str]] = {}
    for s in subjects:
        by_source.setdefault(s.source, []).append(s.customer_ref)
    found = await _subject_states(call, tenant, by_source)
    if min_position is not None:
        tenant_id = tenant_stream(tenant)
        streams = [tenant_id, *{subject_stream(tenant, s.source, s.customer_ref) for s in subjects}]
        needed = await call.request.app[STORE].stream_versions_at(tenant, streams, min_position)
        wait = _Wait(call, min_position)
        while True:
            have = {subject_stream(tenant, k[0], k[1]): (v[1], v[2]) for k, v in found.items()}
            have[tenant_id] = (terms.version, terms.last_position)
            reached = _reached(needed, have, min_position)
            if reached == min_position:
                break
            await wait.next_round(reached)
            terms = await _tenant_terms(call, tenant)
            found = await _subject_states(call, tenant, by_source)
    matrix = terms.state.terms
    category, channel = body.category, body.channel
    links = _links(call) if channel == "email" else None
    disclosure = disclosure_of(terms.state)
    results: list[SubjectCheck] = []
    eligible = unknown = 0
    tenant_position = newest = terms.last_position
    with _no_cyclic_gc():
        for s in subjects:
            stored = found.get((s.source, s.customer_ref))
            if stored is None:
                unknown += 1
                results.append(SubjectCheck(source=s.source, customer_ref=s.customer_ref, known=False,
                                            eligible=False, reason="unknown_subject"))
                continue
            d = evaluate(decode_state(stored[0]), matrix, category, channel, send_date)
            eligible += d.eligible
            position = max(stored[2], tenant_position)
            newest = max(newest, position)
            results.append(_answer(
                s, d, position, disclosure=disclosure,
                unsubscribe=links.cell(tenant, s.source, s.customer_ref, category)
                if links is not None and d.eligible else None))
    return json_response(CampaignCheckResult(category=category, channel=channel, send_date=send_date,
                                             rules_version=RULES_VERSION, checked=len(subjects), eligible=eligible,
                                             unknown=unknown, results=results, position=newest))


async def _subject_states(call: Call, tenant: str,
                          by_source: dict[str, list[str]]) -> dict[tuple[str, str], tuple[bytes, int, int]]:
    """(source, ref) -> (state, version, last_position) of the subjects the model holds."""
    pool = call.request.app[POOL]
    found: dict[tuple[str, str], tuple[bytes, int, int]] = {}
    # One query per data source (usually one): an index scan with ANY. The refs go as one
    # newline-joined text split by PostgreSQL (a customer ref has no newline: CustomerRef's
    # pattern): asyncpg checks each element of a list parameter in Python, which cost about
    # a tenth of a 10,000-subject check.
    for source, refs in by_source.items():
        for r in await pool.fetch("SELECT customer_ref, state, version, last_position FROM projector.subjects"
                                  " WHERE tenant_id = $1 AND source = $2"
                                  " AND customer_ref = ANY(string_to_array($3, E'\\n'))",
                                  tenant, source, "\n".join(refs)):
            found[(source, r[0])] = (r[1], r[2], r[3])
    return found


def _answer(s: CheckSubject, d: Decision, position: int, *, unsubscribe: Unsubscribe | None = None,
            disclosure: Disclosure | None = None) -> SubjectCheck:
    evidence = list(d.evidence)
    return SubjectCheck(
        source=s.source, customer_ref=s.customer_ref, known=True, eligible=d.eligible, basis=d.basis,
        reason=d.reason, until=d.until, requires_disclosure=d.requires_disclosure, evidence=evidence,
        law=d.law, requires_postfilter_check=d.requires_postfilter_check,
        requires_objection_offer=d.requires_objection_offer, cell=as_cell(d), position=position,
        unsubscribe=unsubscribe if d.eligible else None, disclosure=disclosure if d.requires_disclosure else None,
    )


async def _campaign_check_as_known(call: Call, tenant: str, body: CampaignCheck, send_date: dt.date) -> web.Response:
    known_at = body.known_at
    assert known_at is not None
    if known_at.tzinfo is None:
        raise ApiError(422, "validation_error", "known_at needs a UTC offset (e.g. 'Z' or '+01:00')",
                       field="$.known_at")
    if known_at > dt.datetime.now(dt.timezone.utc):
        raise ApiError(422, "known_at_in_future", "known_at is in the future: the ledger cannot know it yet",
                       field="$.known_at")
    _, tenant_state = await _known(call, tenant, known_at, "$.known_at")
    states = await _states_as_known(call, tenant, body.subjects, known_at)
    results: list[SubjectCheck] = []
    eligible = unknown = 0
    for s in body.subjects:
        state = states.get((s.source, s.customer_ref))
        if state is None:
            unknown += 1
            results.append(SubjectCheck(source=s.source, customer_ref=s.customer_ref, known=False,
                                        eligible=False, reason="unknown_subject"))
            continue
        d = evaluate(state, tenant_state.terms, body.category, body.channel, send_date)
        eligible += d.eligible
        results.append(_answer(s, d, max(state.last_position, tenant_state.last_position)))
    return json_response(CampaignCheckResult(category=body.category, channel=body.channel, send_date=send_date,
                                             rules_version=RULES_VERSION, checked=len(body.subjects), eligible=eligible,
                                             unknown=unknown, results=results, known_at=known_at))


@routes.get("/v1/tenants/{tenant}/terms/warnings",
            summary="Compliance warnings on the tenant's current opt-in term matrix (they never change it), "
                    "with the legal rules in force on the day and those that start later",
            roles=("admin", "staff", "auditor"), responses={200: TermWarnings},
            query=(("on", "string", False, "YYYY-MM-DD: the day of the law; default today (Dutch calendar day)"),))
async def term_warnings(call: Call) -> web.Response:
    """Compliance notes on the dealer's current term matrix (e.g. terms longer than a code
    of conduct allows). They never change the matrix or any answer."""
    tenant = call.param("tenant")
    on_param = call.request.query.get("on")
    on = query_date(on_param, "on") if on_param is not None else SystemClock().today()
    version, state = await call.ledger.require_tenant(tenant, fresh=True)
    return json_response(TermWarnings(tenant_id=tenant, tenant_version=version,
                                      warnings=compliance_warnings(state.terms, on), on=on,
                                      rules_version=RULES_VERSION, law_in_force=rules_in_force(on),
                                      law_upcoming=rules_starting_after(on)))

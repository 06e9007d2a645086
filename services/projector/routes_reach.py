"""HTTP for the dealer's reach dashboard and lapse list (served by the ledger API).

Figures come from :mod:`services.projector.reach`: the projector's read model evaluated
with the eligibility rule, cached per process and refreshed when the read model moves.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from schemas.vocabulary import CATEGORIES, CHANNELS
from schemas.dealer import LapseList, ReachReport, ReachSource
from services.ledger.api.context import POOL, Call
from services.ledger.api.jsonapi import ApiError, ApiRoutes, json_response
from services.projector.clock import SystemClock
from services.projector.reach import HORIZONS, MAX_LAPSE_DAYS, ReachCache, ReachCounts, TenantNotProjected
from services.projector.routes import query_date

routes = ApiRoutes(tag="reach")
READERS: Final = ("admin", "staff", "auditor")
REACH_CACHE = web.AppKey("reach_cache", ReachCache)


async def reach_context(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx`` of the API app (after the database context)."""
    app[REACH_CACHE] = ReachCache(app[POOL])
    yield


def report_of(counts: ReachCounts) -> ReachReport:
    """The API's (and the dashboard's) shape of the counts: category -> channel -> per date."""
    def cells(pick: object) -> dict[str, dict[str, list[int]]]:
        return {c: {h: [pick(j, f"{c}:{h}") for j in range(len(HORIZONS))] for h in CHANNELS}  # type: ignore[operator]
                for c in CATEGORIES}

    sources = [ReachSource(source=s, subjects=counts.subjects.get(s, 0),
                           cells=cells(lambda j, k, s=s: counts.counts[s][j][k])) for s in counts.counts]
    return ReachReport(tenant_id=counts.tenant_id, on=counts.on, dates=list(counts.dates),
                       terms_version=counts.terms_version, subjects=sum(counts.subjects.values()),
                       total=cells(counts.total), sources=sources)


async def _on(call: Call) -> dt.date:
    raw = call.request.query.get("on")
    return query_date(raw, "on") if raw is not None else SystemClock().today()


async def _not_projected(call: Call, tenant: str) -> ApiError:
    if await call.ledger.tenant(tenant) is None:
        return ApiError(404, "unknown_tenant", f"tenant {tenant!r} does not exist", field="tenant")
    return ApiError(503, "not_projected_yet", "the eligibility projector has not seen this tenant yet; retry shortly",
                    headers={"Retry-After": "1"})


@routes.get("/v1/tenants/{tenant}/reach",
            summary="Reach: eligible subjects per category x channel today, in 30 and in 90 days, per data source",
            roles=READERS, responses={200: ReachReport},
            query=(("on", "string", False, "YYYY-MM-DD; the first date (default today, Dutch calendar day)"),))
async def reach(call: Call) -> web.Response:
    """How many subjects may get a message per category x channel today, in 30 and in 90
    days, per data source and in total: the projector's stored subject states evaluated with
    the eligibility rule (the same call as the bulk check), so a count equals what the
    bulk check answers for those subjects. 503 ``not_projected_yet`` until the projector
    has seen the tenant."""
    tenant = call.param("tenant")
    on = await _on(call)
    try:
        counts = await call.request.app[REACH_CACHE].counts(tenant, on)
    except TenantNotProjected:
        raise await _not_projected(call, tenant) from None
    return json_response(report_of(counts))


def parse_days(raw: str | None, field: str = "days") -> int:
    if raw is None:
        return 90
    if not raw.isascii() or not raw.isdigit() or len(raw) > 6:
        raise ApiError(422, "validation_error", "days is a whole number of days", field=field)
    days = int(raw)
    if not 1 <= days <= MAX_LAPSE_DAYS:
        raise ApiError(422, "validation_error", f"days must be between 1 and {MAX_LAPSE_DAYS}", field=field)
    return days


def parse_choice(raw: str | None, allowed: tuple[str, ...], field: str) -> str | None:
    if raw is None or raw == "":
        return None
    if raw not in allowed:
        raise ApiError(422, "validation_error", f"{field} must be one of {', '.join(allowed)}", field=field)
    return raw


@routes.get("/v1/tenants/{tenant}/reach/lapses",
            summary="Lapse list: who is eligible today and loses it within N days, per category x channel",
            roles=READERS, responses={200: LapseList},
            query=(("days", "integer", False, f"1..{MAX_LAPSE_DAYS}, default 90"),
                   ("category", "string", False, "only this category"),
                   ("channel", "string", False, "only this channel"),
                   ("on", "string", False, "YYYY-MM-DD; default today")))
async def lapses(call: Call) -> web.Response:
    """Who may get a message in a cell today and no longer within ``days`` days (a term
    ends, a dated legal rule starts), per cell with the day it lapses, the basis it loses
    and the ``requires_*`` flags of today's decision: the list for a re-permission
    campaign. Without contact data; the AVG Beheer page downloads it with contact data
    (admins, recorded)."""
    tenant = call.param("tenant")
    q = call.request.query
    days = parse_days(q.get("days"))
    category = parse_choice(q.get("category"), CATEGORIES, "category")
    channel = parse_choice(q.get("channel"), CHANNELS, "channel")
    on = await _on(call)
    try:
        found = await call.request.app[REACH_CACHE].lapses(tenant, on, days, category=category, channel=channel)
    except TenantNotProjected:
        raise await _not_projected(call, tenant) from None
    entries = found  # the cache answers in the API's own type
    return json_response(LapseList(tenant_id=tenant, on=on, until=on + dt.timedelta(days=days), days=days,
                                   count=len(entries), lapses=entries))

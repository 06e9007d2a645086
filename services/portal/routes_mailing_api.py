"""``POST /v1/tenants/{tenant}/mailings:export``: the mailing export for a mailing house's
machine (API key of role ``marketing``), recorded like the portal's download."""

from __future__ import annotations

from aiohttp import web

from schemas.dealer import MailingExport
from schemas.events import DataExported
from services.ledger.api.context import Call
from services.ledger.api.jsonapi import ApiError, ApiRoutes
from services.ledger.api.routes_search import DIRECTORY
from services.ledger.store import StreamWrite
from services.portal.changelog import exports_stream
from services.portal.mailing import mailing_list
from services.projector.reach import TenantNotProjected
from services.projector.routes import ANSWER_LINKS, date_in_range
from services.projector.routes_reach import REACH_CACHE

routes = ApiRoutes(tag="reach")


@routes.post("/v1/tenants/{tenant}/mailings:export",
             summary="Mailing export: the subjects eligible for a campaign with the contact fields its channel needs"
                     " and the requires_* flags, as CSV; recorded (who, what, when) in the tenant's change log",
             roles=("marketing",), body=MailingExport, responses={200: None})
async def export_mailing(call: Call) -> web.Response:
    """The mailing list of a campaign (category, channel, send date): every subject the
    bulk check finds eligible on the send date, with the contact fields the channel needs
    (a subject without them is left out and counted in X-Missing-Contact) and every
    ``requires_*`` flag of its decision. The export is recorded (DataExported on
    exports/{tenant}: who, what, when, how many rows; never the data) before the file is
    sent, and shown in the change log."""
    tenant = call.param("tenant")
    body: MailingExport = call.body
    send_date = date_in_range(body.send_date, "$.send_date")
    _, state = await call.ledger.require_tenant(tenant)
    if body.source is not None and body.source not in state.data_sources:
        raise ApiError(422, "unknown_source", f"data source {body.source!r} does not exist", field="$.source")
    try:
        found = await mailing_list(call.request.app[REACH_CACHE], call.request.app[DIRECTORY],
                                   call.request.app[ANSWER_LINKS], tenant, body.category, body.channel, send_date,
                                   source=body.source)
    except TenantNotProjected:
        raise ApiError(503, "not_projected_yet", "the eligibility projector has not seen this tenant yet; retry"
                       " shortly", headers={"Retry-After": "1"}) from None
    text = found.csv()
    await call.ledger.append_many(call.ctx(), tenant, [StreamWrite(exports_stream(tenant), [DataExported(
        export="mailing_list", rows=len(found.rows), category=body.category, channel=body.channel,
        send_date=send_date, source=body.source)])])
    return web.Response(text=text, content_type="text/csv", charset="utf-8", headers={
        "X-Eligible": str(found.eligible), "X-Missing-Contact": str(found.missing_contact),
        "Content-Disposition": f'attachment; filename="mailing-{tenant}-{send_date.isoformat()}.csv"'})

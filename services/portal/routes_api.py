"""Portal links through the JSON API (``/v1``): issue, rotate, revoke and look up a
subject's personal portal link, for machines (a mailing system putting each customer's
own link in an e-mail) and for admin tools. The staff pages do the same through
services/portal/routes_staff.py; both use :class:`services.portal.links.LinkStore`.

The raw link is in the answer to the issuing request only; the ledger stores hashes.
"""

from __future__ import annotations

from aiohttp import web

from schemas import api as s
from schemas.vocabulary import subject_stream
from services.ledger.api.app import POOL, SETTINGS, Call
from services.ledger.api.jsonapi import ApiError, ApiRoutes, json_response
from services.portal.links import LinkInfo, LinkStore, PortalLinkExists, portal_url

routes = ApiRoutes(tag="portal links")
LINK = "/v1/tenants/{tenant}/subjects/{source}/{ref}/portal-link"


async def _existing_subject(call: Call) -> tuple[str, str, str]:
    """The subject, if the ledger knows it and it was not erased (404 / 410 otherwise)."""
    tenant, source, ref = call.param("tenant"), call.param("source"), call.param("ref")
    await call.ledger.require_source(tenant, source)
    stream = subject_stream(tenant, source, ref)
    version, erased = (await call.ledger.subject_heads([stream])).get(stream, (0, False))
    if erased:
        raise ApiError(410, "subject_erased", f"{stream} was erased (GDPR art. 17): it gets no portal link",
                       field="ref")
    if version == 0:
        raise ApiError(404, "unknown_subject", f"the ledger holds nothing for {stream}", field="ref")
    return tenant, source, ref


def _info(link: LinkInfo) -> s.PortalLinkInfo:
    return s.PortalLinkInfo(issued_at=link.issued_at, issued_by=link.issued_by, revoked_at=link.revoked_at,
                            revoked_by=link.revoked_by)


@routes.post(LINK, summary="Issue the subject's portal link, or rotate it (the URL is shown once)",
             roles=("admin", "staff", "importer"), body=s.IssuePortalLink, responses={201: s.PortalLinkIssued})
async def issue_portal_link(call: Call) -> web.Response:
    """Issues the subject's personal portal link and shows its URL once (only a hash is
    stored). With `rotate` an existing live link is revoked first; without it, 409
    `portal_link_exists`."""
    assert call.principal is not None
    tenant, source, ref = await _existing_subject(call)
    links = LinkStore(call.request.app[POOL])
    rotate: bool = call.body.rotate
    rotated = rotate and await links.live(tenant, source, ref) is not None
    try:
        token = await links.issue(tenant, source, ref, rotate=rotate, issued_by=call.principal.actor().id)
    except PortalLinkExists as exc:
        raise ApiError(409, "portal_link_exists",
                       f"the subject has a live portal link (issued {exc.issued_at.isoformat()}); its URL cannot be"
                       " shown again: send rotate=true to revoke it and issue a new one", field="rotate") from None
    url = portal_url(call.request.app[SETTINGS].portal_base_url, token)
    return json_response(s.PortalLinkIssued(url=url, rotated=rotated), status=201)


@routes.get(LINK, summary="The subject's live portal link and its history (never a token)",
            roles=("admin", "staff", "auditor"), responses={200: s.PortalLinkStatus})
async def portal_link_status(call: Call) -> web.Response:
    """Whether the subject has a live portal link, when and by whom it was issued, and
    earlier links; never the token."""
    tenant, source, ref = call.param("tenant"), call.param("source"), call.param("ref")
    await call.ledger.require_source(tenant, source)
    links = LinkStore(call.request.app[POOL])
    live = await links.live(tenant, source, ref)
    history = await links.history(tenant, source, ref)
    return json_response(s.PortalLinkStatus(live=_info(live) if live else None, history=[_info(x) for x in history]))


@routes.delete(LINK, summary="Revoke the subject's portal link (it stops working at once)",
               roles=("admin", "staff"), responses={204: None})
async def revoke_portal_link(call: Call) -> web.Response:
    """The link stops working at once. 404 `no_live_link` if there is none."""
    assert call.principal is not None
    tenant, source, ref = call.param("tenant"), call.param("source"), call.param("ref")
    await call.ledger.require_source(tenant, source)
    if not await LinkStore(call.request.app[POOL]).revoke(tenant, source, ref, revoked_by=call.principal.actor().id):
        raise ApiError(404, "no_live_link", "the subject has no live portal link", field="ref")
    return web.Response(status=204)

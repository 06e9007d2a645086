"""Portal links through the JSON API (``/v1``): issue, rotate, revoke and look up a
subject's personal portal link, for machines (a mailing system putting each customer's
own link in an e-mail) and for admin tools. The staff pages do the same through
services/portal/routes_staff.py; both use :class:`services.portal.links.LinkStore`.

The raw link is in the answer to the issuing request only; the ledger stores hashes.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from schemas import api as s
from schemas.vocabulary import subject_stream
from services.ledger.api.context import POOL, SETTINGS, Call
from services.ledger.api.jsonapi import ApiError, ApiRoutes, json_response
from services.ledger.subject_keys import parse_master_key
from services.mail.service import MailService
from services.portal.links import LinkInfo, LinkStore, portal_url

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
    # PortalLinkExists: 409 portal_link_exists (field rotate), answered by the error middleware
    token = await links.issue(tenant, source, ref, rotate=rotate, issued_by=call.principal.actor().id)
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


# -- portal links by e-mail (services/mail/) ---------------------------------------------

MAIL_LINK = "/v1/tenants/{tenant}/subjects/{source}/{ref}/portal-link/email"


def mail_service(call: Call) -> MailService:
    app = call.request.app
    settings = app[SETTINGS]
    return MailService(app[POOL], call.ledger.keys, call.ledger, settings, parse_master_key(settings.master_key or ""))


@routes.post(MAIL_LINK, summary="Mail the subject a new portal link (queued; the old link stops working)",
             roles=("admin", "staff", "importer"), body=s.MailPortalLink, responses={202: s.MailQueued})
async def mail_portal_link(call: Call) -> web.Response:
    """Issues the subject a new portal link (the previous one stops working) and queues a
    mail with it to the e-mail address the dealer holds. The mail is sent off the request
    path with retries; `GET .../mails/{mail_id}` says what became of it."""
    assert call.principal is not None
    tenant, source, ref = await _existing_subject(call)
    mail_id = await mail_service(call).send_portal_link(tenant, source, ref, requested_by=call.principal.actor().id)
    return json_response(s.MailQueued(mail_id=mail_id), status=202)


@routes.post("/v1/tenants/{tenant}/portal-links/email",
             summary="A mailing: mail each subject a new portal link (queued; skipped subjects are named)",
             roles=("admin", "staff", "importer"), body=s.MailPortalLinks, responses={202: s.MailingQueued})
async def mail_portal_links(call: Call) -> web.Response:
    """A mailing of portal links: each subject gets a new link in its own mail (up to
    10,000 per request). Links and mails are written in one transaction; subjects that
    cannot be mailed (unknown, erased, no or an invalid address) are named in `skipped`
    and keep their link."""
    assert call.principal is not None
    tenant = call.param("tenant")
    subjects = [(x.source, x.customer_ref) for x in call.body.subjects]
    if len(set(subjects)) != len(subjects):
        raise ApiError(422, "validation_error", "a subject appears twice", field="$.subjects")
    for source in {x for x, _ in subjects}:
        await call.ledger.require_source(tenant, source)
    queued, skipped = await mail_service(call).send_portal_links(tenant, subjects,
                                                                 requested_by=call.principal.actor().id)
    return json_response(s.MailingQueued(
        queued=len(queued),
        mails=[s.QueuedSubjectMail(source=q.source, customer_ref=q.customer_ref, mail_id=q.mail_id) for q in queued],
        skipped=[s.SkippedSubjectMail(source=x.source, customer_ref=x.customer_ref, error=x.error) for x in skipped],
    ), status=202)


@routes.get("/v1/tenants/{tenant}/mails/{mail_id}", summary="What became of a queued mail",
            roles=("admin", "staff", "auditor", "importer"), responses={200: s.MailStatus})
async def mail_status(call: Call) -> web.Response:
    """The delivery state of one queued mail: `pending` (with the next attempt), `sent`
    (with the SMTP message id), `failed` (the server refused it for good) or `dropped`
    (the subject was erased before it went). No mail content is returned."""
    tenant = call.param("tenant")
    try:
        mail_id = str(uuid.UUID(call.param("mail_id")))
    except ValueError:
        raise ApiError(422, "validation_error", "a mail id is a UUID", field="mail_id") from None
    row = await mail_service(call).outbox.status(mail_id)
    if row is None or row["tenant_id"] != tenant:
        raise ApiError(404, "unknown_mail", "no such mail for this tenant", field="mail_id")
    return json_response(s.MailStatus(
        mail_id=mail_id, kind=row["kind"], status=row["status"], attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"] if row["status"] == "pending" else None, sent_at=row["sent_at"],
        message_id=row["message_id"], last_error=row["last_error"]))

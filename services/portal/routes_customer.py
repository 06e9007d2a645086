"""The customer's privacy portal behind the personal link ``/p/{token}``.

An unknown, malformed or revoked token (and an erased subject) gets the same neutral page
with the same status. Every request under ``/p/`` counts against the client address's rate
limit. A save appends ``PreferencesChanged`` (or an objection) through the Ledger with
actor = subject, method = portal and the policy version the page showed.
"""

from __future__ import annotations

import msgspec
import structlog
from aiohttp import web

from consent.tenant import TenantHistory
from schemas.events import Actor
from schemas.vocabulary import is_slug, subject_stream, tenant_stream
from services.audit.receipts import build_receipt, is_receipt_event
from services.ledger.commands import CommandRejected, Context, needs_double_opt_in
from services.ledger.errors import WrongExpectedVersion
from services.portal.context import (
    CSRF,
    FRESHNESS,
    LEDGER,
    LINK_REQUESTS,
    LINKS,
    MAIL,
    MESSAGES,
    SETTINGS,
    STORE,
    TEMPLATES,
    error_page,
    posted_form,
    posted_from_here,
    rate_limited,
    render,
    url_for,
)
from services.mail.compose import MailRefused, check_address
from services.portal.links import LinkTarget
from services.portal.security import Csrf
from services.portal.view import FormProblem, PortalView, load_view, policy_fragment, preference_changes

log = structlog.get_logger(__name__)

SUBJECT_ACTOR = Actor(kind="subject", id="subject")
_receipt_encoder = msgspec.json.Encoder()


def add_routes(app: web.Application) -> None:
    app.router.add_get("/p/{token}", portal_page)
    app.router.add_post("/p/{token}/preferences", save_preferences)
    app.router.add_post("/p/{token}/objection", record_objection)
    app.router.add_post("/p/{token}/objection/withdraw", withdraw_objection)
    app.router.add_get("/p/{token}/receipt/{event_id}", download_receipt)
    app.router.add_get("/policy/{tenant}/{version}", public_policy)
    app.router.add_get("/link/{tenant}", link_request_page)
    app.router.add_post("/link/{tenant}", link_request)


def link_purpose(target: LinkTarget) -> str:
    return f"link:{target.link_id}"


def neutral(request: web.Request) -> web.Response:
    return error_page(request, 404, "neutral_title", "neutral_body")


async def _open(request: web.Request) -> LinkTarget | web.Response:
    """The link's subject, or the response to send instead (rate limited / neutral)."""
    limited = rate_limited(request)
    if limited is not None:
        return limited
    target = await request.app[LINKS].lookup(request.match_info["token"])
    if target is None:
        return neutral(request)
    structlog.contextvars.bind_contextvars(tenant=target.tenant_id, link_id=target.link_id)
    return target


async def _checked_form(request: web.Request, csrf: Csrf, purpose: str) -> dict[str, str] | web.Response:
    """The posted form if its CSRF token is right and it came from this site."""
    fields = await posted_form(request)
    if not posted_from_here(request) or not csrf.valid(purpose, fields.get(Csrf.FIELD)):
        log.warning("csrf_refused", route=request.match_info.route.resource.canonical
                    if request.match_info.route.resource else None)
        return error_page(request, 403, "forbidden_title", "csrf_body")
    return fields


def _page(request: web.Request, target: LinkTarget, view: PortalView, *, status: int = 200,
          notice: str | None = None, error: str | None = None, saved_event: str | None = None) -> web.Response:
    token = request.match_info["token"]
    base = f"/p/{token}"
    return render(
        request, "portal.html", status=status, view=view, base=base, preview=False, notice=notice, error=error,
        policy_html=policy_fragment(request.app[TEMPLATES], view.policy),
        saved_event=saved_event, csrf_token=request.app[CSRF].token(link_purpose(target)),
        receipt_url=url_for(request, f"{base}/receipt/{saved_event}") if saved_event else None,
    )


async def portal_page(request: web.Request) -> web.StreamResponse:
    limited = rate_limited(request)
    if limited is not None:
        return limited
    # The link and the subject's stream in one round trip: this is the portal's hot path.
    opened = await request.app[LINKS].open(request.match_info["token"])
    if opened is None:
        return neutral(request)
    target, events = opened
    structlog.contextvars.bind_contextvars(tenant=target.tenant_id, link_id=target.link_id)
    t = request[MESSAGES]
    loaded = await load_view(request.app[LEDGER], request.app[FRESHNESS], target.tenant_id, target.source,
                             target.customer_ref, t, events=events)
    if loaded is None or loaded[0].erased:
        return neutral(request)
    view = loaded[0]
    saved = request.query.get("saved")
    notice = None
    if saved is not None:
        notice = t("saved")
        if not any(e.event_id == saved for e in loaded[1]):
            saved, notice = None, None
    elif request.query.get("unchanged") == "1":
        notice = t("nothing_changed")
    return _page(request, target, view, notice=notice, saved_event=saved)


async def _context_and_view(request: web.Request) -> tuple[LinkTarget, PortalView, dict[str, str]] | web.Response:
    target = await _open(request)
    if isinstance(target, web.Response):
        return target
    form = await _checked_form(request, request.app[CSRF], link_purpose(target))
    if isinstance(form, web.Response):
        return form
    loaded = await load_view(request.app[LEDGER], request.app[FRESHNESS], target.tenant_id, target.source,
                             target.customer_ref, request[MESSAGES], fresh=True)
    if loaded is None or loaded[0].erased:
        return neutral(request)
    view = loaded[0]
    if form.get("policy_version") != view.policy_version:
        # The customer must have seen the text their choice refers to.
        return _page(request, target, view, status=409, error=request[MESSAGES]("policy_changed"))
    return target, view, form


def _ctx() -> Context:
    return Context(actor=SUBJECT_ACTOR, method="portal")


def _after_save(request: web.Request, event_id: str | None) -> web.Response:
    token = request.match_info["token"]
    if event_id is None:
        raise web.HTTPSeeOther(url_for(request, f"/p/{token}", unchanged="1"))
    raise web.HTTPSeeOther(url_for(request, f"/p/{token}", saved=event_id))


async def save_preferences(request: web.Request) -> web.StreamResponse:
    found = await _context_and_view(request)
    if isinstance(found, web.Response):
        return found
    target, view, form = found
    try:
        changes = preference_changes(view, form)
    except FormProblem:
        return _page(request, target, view, status=400, error=request[MESSAGES]("invalid_choice"))
    if not changes:
        return _after_save(request, None)
    try:
        result = await request.app[LEDGER].change_preferences(
            _ctx(), target.tenant_id, target.source, target.customer_ref, changes,
            policy_version_shown=view.policy_version, expected=view.subject_version,
        )
    except WrongExpectedVersion:
        return await _conflict(request, target)
    except CommandRejected as exc:
        log.warning("portal_save_rejected", error=exc.error)
        return _page(request, target, view, status=exc.status, error=request[MESSAGES]("not_allowed_now",
                                                                                     message=exc.message))
    log.info("portal_preferences_saved", cells=len(changes))
    if needs_double_opt_in(_ctx(), changes):
        categories = [c.category for c in changes if c.channel == "email" and c.value == "opt_in"]
        await request.app[MAIL].send_opt_in_confirmation(target.tenant_id, target.source, target.customer_ref,
                                                         result.event_ids[0], categories, lang=request[MESSAGES].lang)
    return _after_save(request, result.event_ids[0])


async def _conflict(request: web.Request, target: LinkTarget) -> web.Response:
    loaded = await load_view(request.app[LEDGER], request.app[FRESHNESS], target.tenant_id, target.source,
                             target.customer_ref, request[MESSAGES], fresh=True)
    if loaded is None:
        return neutral(request)
    return _page(request, target, loaded[0], status=409, error=request[MESSAGES]("conflict"))


async def _objection(request: web.Request, withdraw: bool) -> web.StreamResponse:
    found = await _context_and_view(request)
    if isinstance(found, web.Response):
        return found
    target, view, _ = found
    if view.objected != withdraw:  # already in the asked state: nothing to record
        return _after_save(request, None)
    try:
        result = await request.app[LEDGER].record_objection(
            _ctx(), target.tenant_id, target.source, target.customer_ref, withdraw=withdraw,
            policy_version_shown=view.policy_version, expected=view.subject_version,
        )
    except WrongExpectedVersion:
        return await _conflict(request, target)
    log.info("portal_objection_saved", withdraw=withdraw)
    return _after_save(request, result.event_ids[0])


async def record_objection(request: web.Request) -> web.StreamResponse:
    return await _objection(request, withdraw=False)


async def withdraw_objection(request: web.Request) -> web.StreamResponse:
    return await _objection(request, withdraw=True)


async def download_receipt(request: web.Request) -> web.StreamResponse:
    """The consent receipt of one of this subject's changes, built by the audit service's
    :func:`services.audit.receipts.build_receipt` with the dealer as it stood then."""
    target = await _open(request)
    if isinstance(target, web.Response):
        return target
    store = request.app[STORE]
    event_id = request.match_info["event_id"]
    subject_events = await store.read_stream(subject_stream(target.tenant_id, target.source, target.customer_ref))
    recorded = next((e for e in subject_events if e.event_id == event_id), None)
    if recorded is None or not is_receipt_event(recorded):
        return error_page(request, 404, "not_found_title", "not_found_body")
    history = TenantHistory(await store.read_stream(tenant_stream(target.tenant_id)))
    receipt = build_receipt(recorded, history.state_at(recorded.recorded_at),
                            public_base=request.app[SETTINGS].portal_base_url, subject_events=subject_events)
    name = f"bevestiging-{recorded.recorded_at:%Y%m%d-%H%M%S}.json"
    return web.Response(body=_receipt_encoder.encode(receipt), content_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


async def public_policy(request: web.Request) -> web.StreamResponse:
    """One published version of a dealer's privacy policy, public (no link, no login): the
    ``policyUrl`` of every consent receipt (Kantara CR v1.1) points here, so the text a
    customer consented under can be read by anyone holding the receipt. Unknown tenant or
    version: 404. Rate limited like every portal page."""
    limited = rate_limited(request)
    if limited is not None:
        return limited
    tenant_id, version_id = request.match_info["tenant"], request.match_info["version"]
    if not is_slug(tenant_id) or len(version_id) > 64:
        return error_page(request, 404, "not_found_title", "not_found_body")
    events = await request.app[STORE].read_stream(tenant_stream(tenant_id))
    state = TenantHistory(events).state_by_policy_version(version_id) if events else None
    if state is None:
        return error_page(request, 404, "not_found_title", "not_found_body")
    return render(request, "public_policy.html", tenant_name=state.name, version_id=version_id,
                  policy_html=policy_fragment(request.app[TEMPLATES], state.chapters))
# -- "I lost my link" ----------------------------------------------------------------------


def _request_purpose(tenant_id: str) -> str:
    return f"link-request:{tenant_id}"


async def _link_request_tenant(request: web.Request) -> tuple[str, str] | web.Response:
    limited = rate_limited(request)
    if limited is not None:
        return limited
    tenant_id = request.match_info["tenant"]
    tenant = await request.app[FRESHNESS].tenant(request.app[LEDGER], tenant_id) if is_slug(tenant_id) else None
    if tenant is None:
        return neutral(request)
    return tenant_id, tenant.name


def _link_request_form(request: web.Request, tenant_id: str, dealer: str, *, status: int = 200, done: bool = False,
                       error: str | None = None, email: str = "") -> web.Response:
    return render(request, "link_request.html", status=status, dealer=dealer, done=done, error=error, email=email,
                  action=f"/link/{tenant_id}", csrf_token=request.app[CSRF].token(_request_purpose(tenant_id)))


async def link_request_page(request: web.Request) -> web.StreamResponse:
    found = await _link_request_tenant(request)
    if isinstance(found, web.Response):
        return found
    return _link_request_form(request, *found)


async def link_request(request: web.Request) -> web.StreamResponse:
    """Mail a new link to the subjects of this dealer that gave the address. The answer is
    the same whether or not the address is known (nothing to enumerate), and the same when
    the per-address limit holds the mail back; the client address is rate-limited as for
    every /p/ page."""
    found = await _link_request_tenant(request)
    if isinstance(found, web.Response):
        return found
    tenant_id, dealer = found
    form = await _checked_form(request, request.app[CSRF], _request_purpose(tenant_id))
    if isinstance(form, web.Response):
        return form
    address = form.get("email", "").strip()
    try:
        check_address("email", address)
        if len(address) > 254:
            raise MailRefused("email", "too long")
    except MailRefused:
        return _link_request_form(request, tenant_id, dealer, status=422, error=request[MESSAGES]("request_invalid"),
                                  email=address[:254])
    mail = request.app[MAIL]
    if request.app[LINK_REQUESTS].allow(mail.addresses.mac(tenant_id, address).hex()):
        queued = await mail.request_link(tenant_id, address)
        log.info("link_requested", tenant=tenant_id, queued=queued)  # never the address
    else:
        log.warning("link_request_limited", tenant=tenant_id)
    return _link_request_form(request, tenant_id, dealer, done=True)

"""Pages behind the links in mails: one-click unsubscribe (RFC 8058) and the double opt-in
confirmation (services/mail/tokens.py makes the tokens).

* ``GET /u/{tenant}/{token}`` shows what the link unsubscribes from and a button; it changes
  nothing (mail scanners and link previews follow GET links).
* ``POST /u/{tenant}/{token}`` with the body ``List-Unsubscribe=One-Click`` (what mailbox
  providers send, RFC 8058, and what the page's button sends) records the opt-out: a
  ``PreferencesChanged`` opt-out of the cell, or for "all" an ``ObjectionRecorded``, with
  actor subject and method ``one_click``. Posting again changes nothing. No CSRF token and
  no Origin check here: providers post from their own servers, and the unguessable token
  in the URL is the authority (it can only ever reduce mail).
* ``GET /bevestig/{tenant}/{token}`` shows the opt-in to confirm, with the policy summary;
  ``POST`` (CSRF-protected form) records ``OptInConfirmed`` with the policy version shown.

A forged, expired (confirmation), other-tenant or reused token, an erased subject, or an
opt-in that is no longer pending gets the same neutral page as an unknown portal link, and
changes nothing.
"""

from __future__ import annotations

import hashlib
from typing import Final

import structlog
from aiohttp import web

from consent.policy import active_chapters
from consent.subject import fold_subject, pending_opt_ins
from consent.terms import cell_key
from schemas.vocabulary import CATEGORIES, CHANNELS, is_slug, subject_stream
from schemas.events import Actor, PreferenceSetting
from services.ledger.commands import CommandRejected, Context
from services.ledger.errors import WrongExpectedVersion
from services.mail.tokens import ALL, ONE_CLICK_BODY
from services.portal.context import (
    CSRF,
    FRESHNESS,
    LEDGER,
    MAIL,
    MESSAGES,
    error_page,
    posted_form,
    posted_from_here,
    rate_limited,
    render,
)
from services.portal.security import Csrf
from services.portal.view import today

log = structlog.get_logger(__name__)

SUBJECT: Final = Actor(kind="subject", id="subject")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/u/{tenant}/{token}", unsubscribe_page)
    app.router.add_post("/u/{tenant}/{token}", unsubscribe)
    app.router.add_get("/bevestig/{tenant}/{token}", confirm_page)
    app.router.add_post("/bevestig/{tenant}/{token}", confirm)


def neutral(request: web.Request) -> web.Response:
    return error_page(request, 404, "neutral_title", "neutral_body")


async def _subject_state(request: web.Request, tenant_id: str, source: str, ref: str):  # type: ignore[no-untyped-def]
    events = await request.app[LEDGER].store.read_stream(subject_stream(tenant_id, source, ref))
    state = fold_subject(events)
    if state is None or state.erased is not None:
        return None
    return state


def _what(request: web.Request, category: str, channel: str) -> str:
    t = request[MESSAGES]
    if category == ALL:
        return t("unsub_all")
    return t.cell(category, channel)


async def _unsubscribe_target(request: web.Request):  # type: ignore[no-untyped-def]
    tenant_id = request.match_info["tenant"]
    if not is_slug(tenant_id):
        return None
    opened = request.app[MAIL].tokens.open_unsubscribe(tenant_id, request.match_info["token"])
    if opened is None or (opened.category != ALL and (opened.category not in CATEGORIES
                                                      or opened.channel not in CHANNELS)):
        return None
    tenant = await request.app[FRESHNESS].tenant(request.app[LEDGER], tenant_id)
    state = await _subject_state(request, tenant_id, opened.source, opened.customer_ref)
    if tenant is None or state is None:
        return None
    return tenant_id, tenant, opened, state


async def unsubscribe_page(request: web.Request) -> web.StreamResponse:
    limited = rate_limited(request)
    if limited is not None:
        return limited
    found = await _unsubscribe_target(request)
    if found is None:
        return neutral(request)
    _, tenant, opened, _ = found
    return render(request, "unsubscribe.html", dealer=tenant.name, what=_what(request, opened.category, opened.channel),
                  action=request.path, body_name="List-Unsubscribe", body_value="One-Click", done=False)


async def unsubscribe(request: web.Request) -> web.StreamResponse:
    """RFC 8058 one-click: the body must be ``List-Unsubscribe=One-Click``."""
    form = await posted_form(request)
    if form.get("List-Unsubscribe") != "One-Click":
        return error_page(request, 400, "bad_request_title", "unsub_bad_body")
    found = await _unsubscribe_target(request)
    if found is None:
        return neutral(request)
    tenant_id, tenant, opened, state = found
    ledger = request.app[LEDGER]
    ctx = Context(actor=SUBJECT, method="one_click")
    try:
        if opened.category == ALL:
            if not state.objected:
                await ledger.record_objection(ctx, tenant_id, opened.source, opened.customer_ref,
                                              expected=state.version)
        elif state.preference(opened.category, opened.channel) != "opt_out":
            await ledger.change_preferences(
                ctx, tenant_id, opened.source, opened.customer_ref,
                [PreferenceSetting(category=opened.category, channel=opened.channel, value="opt_out")],  # type: ignore[arg-type]
                expected=state.version)
    except WrongExpectedVersion:
        return await unsubscribe(request)  # something was recorded meanwhile: decide again
    except CommandRejected as exc:
        if exc.status == 410:
            return neutral(request)
        raise
    log.info("one_click_unsubscribe", tenant=tenant_id, all=opened.category == ALL)
    return render(request, "unsubscribe.html", dealer=tenant.name, what=_what(request, opened.category, opened.channel),
                  action=request.path, body_name="", body_value="", done=True)


# -- double opt-in -----------------------------------------------------------------------


def _confirm_purpose(token: str) -> str:
    return "confirm:" + hashlib.sha256(token.encode()).hexdigest()


async def _confirm_target(request: web.Request):  # type: ignore[no-untyped-def]
    tenant_id = request.match_info["tenant"]
    if not is_slug(tenant_id):
        return None
    opened = request.app[MAIL].tokens.open_confirm(tenant_id, request.match_info["token"], today())
    if opened is None:
        return None
    tenant = await request.app[FRESHNESS].tenant(request.app[LEDGER], tenant_id, fresh=True)
    state = await _subject_state(request, tenant_id, opened.source, opened.customer_ref)
    if tenant is None or state is None:
        return None
    pending = [key for key, fact in pending_opt_ins(state).items() if fact.event_id == opened.preference_event_id]
    if not pending:
        return None  # confirmed already, replaced by a later choice, or never pending
    return tenant_id, tenant, opened, state, pending


def _confirm_form(request: web.Request, tenant, pending: list[str], *, status: int = 200,  # type: ignore[no-untyped-def]
                  error: str | None = None) -> web.Response:
    t = request[MESSAGES]
    cells = [t.cell(*key.split(":")) for key in pending]
    chapters = [c.title for c in active_chapters(tenant.chapters)]
    return render(request, "confirm.html", status=status, dealer=tenant.name, cells=cells, chapters=chapters,
                  policy_version=tenant.policy_version, action=request.path, error=error, done=False,
                  csrf_token=request.app[CSRF].token(_confirm_purpose(request.match_info["token"])))


async def confirm_page(request: web.Request) -> web.StreamResponse:
    limited = rate_limited(request)
    if limited is not None:
        return limited
    found = await _confirm_target(request)
    if found is None:
        return neutral(request)
    _, tenant, _, _, pending = found
    return _confirm_form(request, tenant, pending)


async def confirm(request: web.Request) -> web.StreamResponse:
    limited = rate_limited(request)
    if limited is not None:
        return limited
    fields = await posted_form(request)
    if not posted_from_here(request) or not request.app[CSRF].valid(_confirm_purpose(request.match_info["token"]),
                                                                    fields.get(Csrf.FIELD)):
        return error_page(request, 403, "forbidden_title", "csrf_body")
    found = await _confirm_target(request)
    if found is None:
        return neutral(request)
    tenant_id, tenant, opened, state, pending = found
    if fields.get("policy_version") != tenant.policy_version:
        return _confirm_form(request, tenant, pending, status=409, error=request[MESSAGES]("policy_changed"))
    try:
        await request.app[LEDGER].confirm_opt_in(
            Context(actor=SUBJECT, method="email"), tenant_id, opened.source, opened.customer_ref,
            opened.preference_event_id, opened.mail_id, policy_version_shown=tenant.policy_version,
            expected=state.version)
    except WrongExpectedVersion:
        return await confirm(request)
    except CommandRejected as exc:
        if exc.status == 410:
            return neutral(request)
        raise
    log.info("opt_in_confirmed", tenant=tenant_id, cells=len(pending))
    t = request[MESSAGES]
    return render(request, "confirm.html", dealer=tenant.name, cells=[t.cell(*k.split(":")) for k in pending],
                  chapters=[], policy_version=tenant.policy_version, action="", error=None, done=True, csrf_token="")


__all__ = ["add_routes", "cell_key"]

"""The dealer's AVG Beheer pages: login, overview, policy chapters, opt-in terms, customer
look-up and user accounts.

Every page is under ``/beheer/{tenant}``; the session's tenant must be that tenant (a user of
dealer A gets 403 on any page of dealer B). Admins change the policy, the terms, the
agreement and module status and manage accounts; staff read those pages and work with
customers (change settings on their behalf with a reason, issue and revoke portal links).
Every change is a Ledger command: the events carry the user (``user:<id>``) as actor.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import structlog
from aiohttp import web

from consent.law import RULES_VERSION, rules_in_force, rules_starting_after
from consent.tenant import TenantState
from consent.terms import ledger_day
from consent.warnings import compliance_warnings
from schemas.events import (
    Actor,
    Chapter,
    DealerContactSet,
    InvoiceCorrected,
    InvoiceRecorded,
    ObjectionRecorded,
    ObjectionWithdrawn,
    PreferencesChanged,
    ProspectRegistered,
    RecordedEvent,
    Sealed,
    TermCell,
)
from schemas.law import LegalRule
from schemas.vocabulary import CATEGORIES, CHANNELS, MAX_TERM_MONTHS, is_customer_ref, is_slug, subject_stream
from services.ledger.commands import CommandRejected, Context
from services.ledger.errors import WrongExpectedVersion
from services.portal.accounts import AccountError, User, new_password
from services.portal.context import (
    ACCOUNTS,
    CSRF,
    LEDGER,
    LINKS,
    MAIL,
    MESSAGES,
    SETTINGS,
    TEMPLATES,
    TRUSTED_PROXIES,
    error_page,
    posted_form,
    posted_from_here,
    rate_limited,
    render,
    url_for,
)
from services.portal.dealer_words import DealerWords  # the search form's and customer page's words (issue 15)
from services.mail.compose import MailRefused, check_address
from services.mail.service import NoAddress
from services.portal.links import portal_url
from services.portal.messages import Messages
from services.portal.security import MAX_BODY_CHARS, Csrf, client_address, sanitise_html
from services.portal.view import PortalView, build_view, policy_fragment, preference_changes

log = structlog.get_logger(__name__)

SESSION_COOKIE: Final = "__Host-portal_session"
PRELOGIN_COOKIE: Final = "__Host-portal_login"
FLASH: Final = frozenset({"saved_staff", "nothing_changed", "link_revoked", "conflict", "link_mailed"})
ON_BEHALF_METHODS: Final = ("phone", "email", "in_person")
MAX_REASON_CHARS: Final = 500  # the form field's maxlength too

StaffHandler = Callable[[web.Request, "Staff", dict[str, str]], Awaitable[web.StreamResponse]]


class Staff(msgspec.Struct, frozen=True):
    """The logged-in user on a page of their own tenant."""

    user: User
    session_digest: bytes
    tenant_version: int
    tenant: TenantState

    @property
    def is_admin(self) -> bool:
        return self.user.role == "admin"

    def ctx(self, method: str = "staff_portal") -> Context:
        return Context(actor=Actor(kind="staff", id=self.user.actor_id), method=method)  # type: ignore[arg-type]


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", home)
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    b = "/beheer/{tenant}"
    r.add_get(b, overview)
    r.add_post(b + "/agreement", set_agreement)
    r.add_post(b + "/module", set_module)
    r.add_post(b + "/contact", set_contact)
    r.add_get(b + "/beleid", policy_list)
    r.add_get(b + "/beleid/kennismaking", disclosure_page)
    r.add_post(b + "/beleid/kennismaking", disclosure_save)
    r.add_get(b + "/beleid/nieuw", chapter_new_page)
    r.add_post(b + "/beleid/nieuw", chapter_create)
    r.add_get(b + "/beleid/{chapter}/bewerken", chapter_edit_page)
    r.add_post(b + "/beleid/{chapter}/bewerken", chapter_save)
    r.add_post(b + "/beleid/{chapter}/move", chapter_move)
    r.add_post(b + "/beleid/{chapter}/delete", chapter_delete)
    r.add_get(b + "/opt-in", terms_page)
    r.add_post(b + "/opt-in", terms_save)
    r.add_get(b + "/klanten", customer_search)
    r.add_get(b + "/klanten/{source}/{ref}", customer_page)
    r.add_get(b + "/klanten/{source}/{ref}/portaal", customer_preview)
    r.add_post(b + "/klanten/{source}/{ref}/voorkeuren", customer_preferences)
    r.add_post(b + "/klanten/{source}/{ref}/bezwaar", customer_objection)
    r.add_post(b + "/klanten/{source}/{ref}/link", customer_link)
    r.add_post(b + "/klanten/{source}/{ref}/link/intrekken", customer_link_revoke)
    r.add_post(b + "/klanten/{source}/{ref}/link/email", customer_link_email)
    r.add_get(b + "/gebruikers", users_page)
    r.add_post(b + "/gebruikers", user_create)
    r.add_post(b + "/gebruikers/{user_id}/reset", user_reset)
    r.add_post(b + "/gebruikers/{user_id}/status", user_status)
    r.add_post(b + "/gebruikers/{user_id}/unlock", user_unlock)


async def home(request: web.Request) -> web.StreamResponse:
    return _redirect(request, "/login")


def _redirect(request: web.Request, path: str, **params: Any) -> web.Response:
    raise web.HTTPSeeOther(url_for(request, path, **params))


def _session_purpose(digest: bytes) -> str:
    return "session:" + digest.hex()


# -- authentication ----------------------------------------------------------------------


def staff_page(*, admin: bool = False) -> Callable[[StaffHandler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """Wrap a handler: a live session of this tenant (else login / 403), the admin role if
    asked, and on POST a valid CSRF token from this site (else 403)."""

    def wrap(fn: StaffHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            tenant_id = request.match_info["tenant"]
            session_id = request.cookies.get(SESSION_COOKIE, "")
            found = await request.app[ACCOUNTS].session_user(session_id) if session_id else None
            if found is None:
                if request.method == "GET":
                    return _redirect(request, "/login")
                return error_page(request, 403, "forbidden_title", "csrf_body")
            user, digest = found
            structlog.contextvars.bind_contextvars(tenant=user.tenant_id, user=user.user_id)
            if not is_slug(tenant_id) or user.tenant_id != tenant_id:
                log.warning("staff_tenant_mismatch", asked=tenant_id if is_slug(tenant_id) else "invalid")
                return error_page(request, 403, "forbidden_title", "forbidden_body")
            if admin and user.role != "admin":
                return error_page(request, 403, "forbidden_title", "admin_only")
            form: dict[str, str] = {}
            if request.method == "POST":
                form = await posted_form(request)
                if not posted_from_here(request) or not request.app[CSRF].valid(_session_purpose(digest),
                                                                           form.get(Csrf.FIELD)):
                    log.warning("csrf_refused")
                    return error_page(request, 403, "forbidden_title", "csrf_body")
            found_tenant = await request.app[LEDGER].tenant(tenant_id, fresh=True)
            if found_tenant is None:
                return error_page(request, 404, "not_found_title", "not_found_body")
            staff = Staff(user, digest, found_tenant[0], found_tenant[1])
            return await fn(request, staff, form)

        handler.__name__ = fn.__name__
        return handler

    return wrap


def staff_render(request: web.Request, staff: Staff, template: str, *, nav: str, status: int = 200,
                 **context: Any) -> web.Response:
    flash = request.query.get("msg")
    context.setdefault("error", None)
    return render(
        request, template, status=status, staff=staff, nav=nav, base=f"/beheer/{staff.tenant.tenant_id}",
        csrf_token=request.app[CSRF].token(_session_purpose(staff.session_digest)),
        flash=request[MESSAGES](flash) if flash in FLASH else None, **context,
    )


def _cookie(response: web.StreamResponse, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, secure=True, httponly=True, samesite="Strict", path="/", max_age=max_age)


async def login_page(request: web.Request, *, status: int = 200, error: str | None = None,
                     values: dict[str, str] | None = None) -> web.Response:
    nonce = request.cookies.get(PRELOGIN_COOKIE, "")
    if not (20 <= len(nonce) <= 64 and nonce.replace("-", "").replace("_", "").isalnum()):
        nonce = secrets.token_urlsafe(24)
    response = render(request, "login.html", status=status, error=error, values=values or {},
                      csrf_token=request.app[CSRF].token("login:" + nonce))
    _cookie(response, PRELOGIN_COOKIE, nonce, 3600)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    t = request[MESSAGES]
    limited = rate_limited(request)
    if limited is not None:
        return limited
    form = await posted_form(request)
    nonce = request.cookies.get(PRELOGIN_COOKIE, "")
    if not nonce or not posted_from_here(request) or not request.app[CSRF].valid("login:" + nonce, form.get(Csrf.FIELD)):
        log.warning("csrf_refused", route="/login")
        return error_page(request, 403, "forbidden_title", "csrf_body")
    tenant_id = form.get("tenant", "").strip().lower()
    email = form.get("email", "").strip()
    values = {"tenant": tenant_id, "email": email}
    if not is_slug(tenant_id) or not email:
        return await login_page(request, status=401, error=t("login_failed"), values=values)
    client = client_address(request, request.app[TRUSTED_PROXIES])
    outcome, user = await request.app[ACCOUNTS].login(tenant_id, email, form.get("password", ""), client=client)
    if outcome == "locked":  # this address must wait; said alike for accounts that exist and those that do not
        log.warning("login_backoff", tenant=tenant_id)
        return await login_page(request, status=429, error=t("login_locked"), values=values)
    if user is None:
        log.warning("login_failed", tenant=tenant_id)
        return await login_page(request, status=401, error=t("login_failed"), values=values)
    session_id = await request.app[ACCOUNTS].start_session(user)
    log.info("login", tenant=tenant_id, user=user.user_id)
    response = web.HTTPSeeOther(url_for(request, f"/beheer/{tenant_id}"))
    _cookie(response, SESSION_COOKIE, session_id, None)
    response.del_cookie(PRELOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    session_id = request.cookies.get(SESSION_COOKIE, "")
    found = await request.app[ACCOUNTS].session_user(session_id) if session_id else None
    if found is not None:
        posted = await posted_form(request)
        if not request.app[CSRF].valid(_session_purpose(found[1]), posted.get(Csrf.FIELD)):
            return error_page(request, 403, "forbidden_title", "csrf_body")
        await request.app[ACCOUNTS].end_session(session_id)
    response = web.HTTPSeeOther(url_for(request, "/login"))
    response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    raise response


# -- AVG Beheer overview -----------------------------------------------------------------


@staff_page()
async def overview(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    return await _overview(request, staff)


async def _overview(request: web.Request, staff: Staff, *, status: int = 200, error: str | None = None,
                    contact_values: dict[str, str] | None = None, contact_errors: dict[str, str] | None = None
                    ) -> web.Response:
    admins = await request.app[ACCOUNTS].admins(staff.tenant.tenant_id)
    return staff_render(request, staff, "overview.html", nav="overview", status=status, admins=admins, error=error,
                        today=dt.date.today().isoformat(), contact_values=contact_values,
                        contact_errors=contact_errors or {})


@staff_page(admin=True)
async def set_agreement(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    t = request[MESSAGES]
    if form.get("signed") not in ("yes", "no"):  # anything else must not be read as "no" and appended
        return await _overview(request, staff, status=422, error=t("invalid_choice"))
    signed = form.get("signed") == "yes"
    signed_on: dt.date | None = None
    if signed:
        try:
            signed_on = dt.date.fromisoformat(form.get("signed_on", ""))
        except ValueError:
            return await _overview(request, staff, status=422, error=t("date_invalid"))
    try:
        await request.app[LEDGER].set_processor_agreement(staff.ctx(), staff.tenant.tenant_id, signed, signed_on)
    except CommandRejected as exc:
        return await _overview(request, staff, status=exc.status, error=t("not_allowed_now", message=exc.message))
    return _redirect(request, f"/beheer/{staff.tenant.tenant_id}", msg="saved_staff")


@staff_page(admin=True)
async def set_module(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    if form.get("active") not in ("yes", "no"):
        return await _overview(request, staff, status=422, error=request[MESSAGES]("invalid_choice"))
    active = form.get("active") == "yes"
    if active != staff.tenant.module_active:
        await request.app[LEDGER].set_module(staff.ctx(), staff.tenant.tenant_id, active)
    return _redirect(request, f"/beheer/{staff.tenant.tenant_id}", msg="saved_staff")


CONTACT_FIELDS: Final = ("street", "postcode", "city", "phone", "email", "website")
_CONTACT_MAX: Final = {"street": 200, "postcode": 20, "city": 100, "phone": 40, "email": 254, "website": 200}


@staff_page(admin=True)
async def set_contact(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    """The dealer's address, phone and e-mail (portal header, e-mail footers). They end up
    in mails, so line breaks and control characters are refused, never cleaned."""
    t = request[MESSAGES]
    values = {f: form.get(f, "").strip() for f in CONTACT_FIELDS}
    errors: dict[str, str] = {}
    for field, value in values.items():
        if not value and field != "website":
            errors[field] = t("field_required")
        elif not value.isprintable() or len(value) > _CONTACT_MAX[field]:
            errors[field] = t("field_invalid")
    if "email" not in errors:
        try:
            check_address("email", values["email"])
        except MailRefused:
            errors["email"] = t("email_invalid")
    if errors:
        return await _overview(request, staff, status=422, contact_values=values, contact_errors=errors)
    event = DealerContactSet(street=values["street"], postcode=values["postcode"], city=values["city"],
                             phone=values["phone"], email=values["email"], website=values["website"] or None)
    current = staff.tenant.contact
    if current is None or msgspec.structs.asdict(current) != {f: getattr(event, f) for f in CONTACT_FIELDS}:
        try:
            await request.app[LEDGER].set_dealer_contact(staff.ctx(), staff.tenant.tenant_id, event)
        except CommandRejected as exc:
            return await _overview(request, staff, status=exc.status, contact_values=values,
                                   contact_errors={(exc.field or "$.street").removeprefix("$."): exc.message})
    return _redirect(request, f"/beheer/{staff.tenant.tenant_id}", msg="saved_staff")


# -- AVG Beleid --------------------------------------------------------------------------


@staff_page()
async def disclosure_page(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    return staff_render(request, staff, "disclosure.html", nav="policy", body=staff.tenant.disclosure, errors={})


@staff_page(admin=True)
async def disclosure_save(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    t = request[MESSAGES]
    body = form.get("body", "").replace("\r\n", "\n").strip()
    if not body:
        return staff_render(request, staff, "disclosure.html", nav="policy", status=422, body=body,
                            errors={"body": t("field_required")})
    if len(body) > MAX_BODY_CHARS:
        return staff_render(request, staff, "disclosure.html", nav="policy", status=422, body=body,
                            errors={"body": t("body_too_long")})
    if body == staff.tenant.disclosure:
        return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/beleid/kennismaking", msg="nothing_changed")
    try:
        await request.app[LEDGER].set_prospect_disclosure(staff.ctx(), staff.tenant.tenant_id, body,
                                                          expected=_version(form))
    except WrongExpectedVersion:
        return staff_render(request, staff, "disclosure.html", nav="policy", status=409, body=body, errors={},
                            error=t("conflict"))
    return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/beleid/kennismaking", msg="saved_staff")


@staff_page()
async def policy_list(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    return staff_render(request, staff, "policy.html", nav="policy", chapters=list(staff.tenant.chapters))


def _chapter(staff: Staff, chapter_id: str) -> Chapter:
    for chapter in staff.tenant.chapters:
        if chapter.chapter_id == chapter_id:
            return chapter
    raise web.HTTPNotFound()


@staff_page(admin=True)
async def chapter_move(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    chapter = _chapter(staff, request.match_info["chapter"])
    direction = form.get("direction")
    if direction not in ("up", "down"):
        raise web.HTTPBadRequest()
    try:
        await request.app[LEDGER].move_chapter(staff.ctx(), staff.tenant.tenant_id, chapter.chapter_id,
                                               direction=direction)
    except CommandRejected as exc:
        if exc.error != "no_change":  # the first chapter moved up: nothing to do
            raise
        return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/beleid", msg="nothing_changed")
    return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/beleid", msg="saved_staff")


@staff_page(admin=True)
async def chapter_delete(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    chapter = _chapter(staff, request.match_info["chapter"])
    await request.app[LEDGER].delete_chapter(staff.ctx(), staff.tenant.tenant_id, chapter.chapter_id)
    return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/beleid", msg="saved_staff")


def _chapter_form(form: dict[str, str], t: Messages) -> tuple[dict[str, Any], dict[str, str]]:
    """(values, errors) of the chapter form; the body is sanitised here, before it is saved."""
    title = " ".join(form.get("title", "").split())
    body = form.get("body", "").replace("\r\n", "\n")
    errors: dict[str, str] = {}
    if not title:
        errors["title"] = t("title_required")
    elif len(title) > 200:
        errors["title"] = t("title_too_long")
    if len(body) > MAX_BODY_CHARS:
        errors["body"] = t("body_too_long")
    values = {"title": title, "body": sanitise_html(body) if not errors.get("body") else body,
              "active": form.get("active") == "on"}
    return values, errors


@staff_page(admin=True)
async def chapter_new_page(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    return staff_render(request, staff, "chapter_edit.html", nav="policy", chapter_id=None,
                        values={"title": "", "body": "", "active": True}, errors={}, error=None)


@staff_page(admin=True)
async def chapter_create(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    values, errors = _chapter_form(form, request[MESSAGES])
    if errors:
        return staff_render(request, staff, "chapter_edit.html", nav="policy", status=422, chapter_id=None,
                            values=values, errors=errors, error=None)
    await request.app[LEDGER].add_chapter(staff.ctx(), staff.tenant.tenant_id, values["title"], values["body"],
                                          values["active"])
    return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/beleid", msg="saved_staff")


@staff_page(admin=True)
async def chapter_edit_page(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    chapter = _chapter(staff, request.match_info["chapter"])
    return staff_render(request, staff, "chapter_edit.html", nav="policy", chapter_id=chapter.chapter_id,
                        values={"title": chapter.title, "body": sanitise_html(chapter.body), "active": chapter.active},
                        errors={}, error=None)


@staff_page(admin=True)
async def chapter_save(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    chapter = _chapter(staff, request.match_info["chapter"])
    values, errors = _chapter_form(form, request[MESSAGES])

    def again(status: int, error: str | None = None) -> web.Response:
        return staff_render(request, staff, "chapter_edit.html", nav="policy", status=status,
                            chapter_id=chapter.chapter_id, values=values, errors=errors, error=error)

    if errors:
        return again(422)
    if (values["title"], values["body"], values["active"]) == (chapter.title, chapter.body, chapter.active):
        return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/beleid", msg="nothing_changed")
    try:
        await request.app[LEDGER].edit_chapter(staff.ctx(), staff.tenant.tenant_id, chapter.chapter_id,
                                               values["title"], values["body"], values["active"],
                                               expected=_version(form))
    except WrongExpectedVersion:
        return again(409, request[MESSAGES]("conflict"))
    return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/beleid", msg="saved_staff")


def _version(form: dict[str, str]) -> int | None:
    try:
        return int(form["version"])
    except (KeyError, ValueError):
        return None


# -- AVG opt-in beleid -------------------------------------------------------------------


def law_day() -> dt.date:
    """The day whose law the AVG opt-in beleid page shows: today (Dutch calendar day)."""
    return ledger_day(dt.datetime.now(dt.timezone.utc))


def _law_rule(rule: LegalRule, t: Messages) -> dict[str, Any]:
    """One rule of the table (consent/law.py) as the page shows it, in the page's language."""
    when = t("law_since", date=t.date(rule.first_send)) if rule.first_send else t("law_long_standing")
    if rule.last_send is not None:
        when += " " + t("law_until", date=t.date(rule.last_send))
    return {
        "id": rule.id, "kind": t("law_kind_" + rule.kind), "statute": rule.kind == "statute",
        "summary": rule.summary_nl if t.lang == "nl" else rule.summary_en,
        "scope": ", ".join(t.channel(h) for h in rule.channels) + " · "
                 + ", ".join(t("audience_" + a) for a in rule.audiences),
        "when": when, "starts": t("law_starts", date=t.date(rule.first_send)), "source": rule.source,
        "unconfirmed": not rule.confirmed,
    }


def _terms_context(staff: Staff, values: dict[str, str], errors: dict[str, str], t: Messages) -> dict[str, Any]:
    on = law_day()
    return {
        "categories": CATEGORIES, "channels": CHANNELS, "values": values, "errors": errors,
        "warnings": [(w.severity, w.message_nl if t.lang == "nl" else w.message_en)
                     for w in compliance_warnings(staff.tenant.terms, on)],
        "law_on": t.date(on), "rules_version": RULES_VERSION,
        "law_in_force": [_law_rule(r, t) for r in rules_in_force(on)],
        "law_upcoming": [_law_rule(r, t) for r in rules_starting_after(on)],
    }


def _term_field(category: str, channel: str) -> str:
    return f"term.{category}.{channel}"


@staff_page()
async def terms_page(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    values = {_term_field(c, h): str(staff.tenant.terms.get(c, h)) for c in CATEGORIES for h in CHANNELS}
    return staff_render(request, staff, "terms.html", nav="terms",
                        **_terms_context(staff, values, {}, request[MESSAGES]))


@staff_page(admin=True)
async def terms_save(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    t = request[MESSAGES]
    values: dict[str, str] = {}
    errors: dict[str, str] = {}
    cells: list[TermCell] = []
    for category in CATEGORIES:
        for channel in CHANNELS:
            name = _term_field(category, channel)
            raw = form.get(name, "").strip()
            values[name] = raw
            if not (raw.isdigit() and 0 <= int(raw) <= MAX_TERM_MONTHS):
                errors[name] = t("months_invalid")
                continue
            months = int(raw)
            if months != staff.tenant.terms.get(category, channel):
                cells.append(TermCell(category=category, channel=channel, months=months))
    if errors:
        return staff_render(request, staff, "terms.html", nav="terms", status=422, error=t("terms_errors"),
                            **_terms_context(staff, values, errors, t))
    if not cells:
        return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/opt-in", msg="nothing_changed")
    try:
        await request.app[LEDGER].edit_terms(staff.ctx(), staff.tenant.tenant_id, cells, expected=_version(form))
    except WrongExpectedVersion:
        return staff_render(request, staff, "terms.html", nav="terms", status=409, error=t("conflict"),
                            **_terms_context(staff, values, {}, t))
    return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/opt-in", msg="saved_staff")


# -- Klant raadplegen ----------------------------------------------------------------------


@staff_page()
async def customer_search(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    source = request.query.get("source", "")
    ref = request.query.get("ref", "").strip()
    error = None
    if source or ref:
        if source in staff.tenant.data_sources and is_customer_ref(ref):
            events = await request.app[LEDGER].store.stream_version(subject_stream(staff.tenant.tenant_id, source, ref))
            if events:
                return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/klanten/{source}/{ref}")
        error = request[MESSAGES]("customer_not_found")

    return staff_render(request, staff, "customers.html", nav="customers", status=404 if error else 200,
                        error=error, source=source or "dealer", ref=ref, d=DealerWords(request[MESSAGES]))


async def _subject(request: web.Request, staff: Staff) -> tuple[str, str, PortalView, list[RecordedEvent]]:
    source, ref = request.match_info["source"], request.match_info["ref"]
    if source not in staff.tenant.data_sources or not is_customer_ref(ref):
        raise web.HTTPNotFound()
    events = await request.app[LEDGER].store.read_stream(subject_stream(staff.tenant.tenant_id, source, ref))
    view = build_view(staff.tenant, events, source, ref, request[MESSAGES])
    if view is None:
        raise web.HTTPNotFound()
    return source, ref, view, events


async def _history(request: web.Request, staff: Staff, events: list[RecordedEvent]) -> list[dict[str, str]]:
    t = request[MESSAGES]
    keys = request.app[LEDGER].keys
    emails = {u.actor_id: u.email for u in await request.app[ACCOUNTS].list_users(staff.tenant.tenant_id)}
    rows = []
    for recorded in reversed(events):
        event = recorded.event
        what = t(f"ev_{recorded.event_type}")
        details: list[str] = []
        who = t(f"who_{recorded.metadata.actor.kind}")
        actor_id = recorded.metadata.actor.id
        if isinstance(event, (InvoiceRecorded, InvoiceCorrected)):
            what = t(f"ev_{recorded.event_type}", invoice_date=t.date(event.invoice_date))
        elif isinstance(event, ProspectRegistered):
            what = t("ev_ProspectRegistered", acquired_on=t.date(event.acquired_on))
        if isinstance(event, PreferencesChanged):
            labels = {"default": t("choice_default"), "opt_in": t("choice_opt_in"), "opt_out": t("choice_opt_out")}
            details = [f"{t.cell(c.category, c.channel)}: {labels[c.value]}" for c in event.changes]
        if isinstance(event, (PreferencesChanged, ObjectionRecorded, ObjectionWithdrawn)) and event.note is not None:
            details.append(t("reason") + ": " + (await _open_note(keys, recorded.stream_id, event.note) or "-"))
        if recorded.metadata.actor.kind == "staff":
            who += " " + emails.get(actor_id, actor_id)
        version = getattr(event, "policy_version", None) or ""
        rows.append({"when": f"{recorded.recorded_at:%Y-%m-%d %H:%M}", "what": what, "details": details, "who": who,
                     "how": t(f"how_{recorded.metadata.method}"), "version": version})
    return rows


async def _open_note(keys: Any, stream_id: str, sealed: Sealed) -> str | None:
    plain = await keys.open(stream_id, sealed)
    if plain is None:
        return None
    note = json.loads(plain).get("note")
    return note if isinstance(note, str) else None


async def _customer(request: web.Request, staff: Staff, *, status: int = 200, error: str | None = None,
                    issued_url: str | None = None, form: dict[str, str] | None = None) -> web.Response:
    source, ref, view, events = await _subject(request, staff)
    links = request.app[LINKS]

    return staff_render(
        request, staff, "customer.html", nav="customers", status=status, view=view, source=source, ref=ref,
        live_link=await links.live(staff.tenant.tenant_id, source, ref), issued_url=issued_url,
        history=await _history(request, staff, events), error=error, form=form or {},
        methods=ON_BEHALF_METHODS, subject_base=f"/beheer/{staff.tenant.tenant_id}/klanten/{source}/{ref}",
        contact=await customer_contact(request, staff, events), d=DealerWords(request[MESSAGES]),
    )


@staff_page()
async def customer_page(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    return await _customer(request, staff)


@staff_page()
async def customer_preview(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    """The portal page as the customer sees it (read-only): staff cannot see the customer's
    link itself, because only its hash is stored."""
    _, _, view, _ = await _subject(request, staff)
    return render(request, "portal.html", view=view, base="", preview=True, notice=None, error=None,
                  saved_event=None, csrf_token="", receipt_url=None,
                  policy_html=policy_fragment(request.app[TEMPLATES], view.policy))


def _on_behalf(form: dict[str, str], t: Messages) -> tuple[str, str] | str:
    """(method, reason) or an error message."""
    reason = " ".join(form.get("reason", "").split())
    method = form.get("method", "")
    if method not in ON_BEHALF_METHODS:
        return t("invalid_choice")
    if not reason:
        return t("reason_required")
    if len(reason) > MAX_REASON_CHARS:
        return t("reason_too_long")
    return method, reason


@staff_page()
async def customer_preferences(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    t = request[MESSAGES]
    source, ref, view, _ = await _subject(request, staff)
    checked = _on_behalf(form, t)
    if isinstance(checked, str):
        return await _customer(request, staff, status=422, error=checked, form=form)
    method, reason = checked
    try:
        changes = preference_changes(view, form)
    except ValueError:
        return await _customer(request, staff, status=400, error=t("invalid_choice"), form=form)
    if not changes:
        return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/klanten/{source}/{ref}", msg="nothing_changed")
    try:
        await request.app[LEDGER].change_preferences(staff.ctx(method), staff.tenant.tenant_id, source, ref, changes,
                                                     note=reason, expected=view.subject_version)
    except WrongExpectedVersion:
        return await _customer(request, staff, status=409, error=t("conflict"))
    return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/klanten/{source}/{ref}", msg="saved_staff")


@staff_page()
async def customer_objection(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    t = request[MESSAGES]
    source, ref, view, _ = await _subject(request, staff)
    checked = _on_behalf(form, t)
    if isinstance(checked, str):
        return await _customer(request, staff, status=422, error=checked, form=form)
    method, reason = checked
    if form.get("withdraw") not in ("0", "1"):
        return await _customer(request, staff, status=422, error=t("invalid_choice"), form=form)
    withdraw = form.get("withdraw") == "1"
    if view.objected == withdraw:
        try:
            await request.app[LEDGER].record_objection(staff.ctx(method), staff.tenant.tenant_id, source, ref,
                                                       withdraw=withdraw, note=reason, expected=view.subject_version)
        except WrongExpectedVersion:
            return await _customer(request, staff, status=409, error=t("conflict"))
    return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/klanten/{source}/{ref}", msg="saved_staff")


@staff_page()
async def customer_link_email(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    """"Stuur link per e-mail": a new link (the old one stops working) in a mail to the
    address the dealer holds, queued for the mail worker."""
    source, ref, _, _ = await _subject(request, staff)
    try:
        await request.app[MAIL].send_portal_link(staff.tenant.tenant_id, source, ref, requested_by=staff.user.actor_id)
    except NoAddress:
        return await _customer(request, staff, status=422, error=request[MESSAGES]("link_no_address"))
    log.info("portal_link_mailed", source=source)
    return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/klanten/{source}/{ref}", msg="link_mailed")


@staff_page()
async def customer_link(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    """Issue a new link (revoking the live one): the URL is shown once, in this response."""
    source, ref, _, _ = await _subject(request, staff)
    token = await request.app[LINKS].issue(staff.tenant.tenant_id, source, ref, rotate=True,
                                           issued_by=staff.user.actor_id)
    log.info("portal_link_issued", source=source)
    return await _customer(request, staff, issued_url=portal_url(request.app[SETTINGS].portal_base_url, token))


@staff_page()
async def customer_link_revoke(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    source, ref, _, _ = await _subject(request, staff)
    await request.app[LINKS].revoke(staff.tenant.tenant_id, source, ref, revoked_by=staff.user.actor_id)
    return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/klanten/{source}/{ref}", msg="link_revoked")


# -- accounts ----------------------------------------------------------------------------


async def _users(request: web.Request, staff: Staff, *, status: int = 200, error: str | None = None,
                 shown_password: tuple[str, str] | None = None, values: dict[str, str] | None = None
                 ) -> web.Response:
    users = await request.app[ACCOUNTS].list_users(staff.tenant.tenant_id)
    now = dt.datetime.now(dt.timezone.utc)
    return staff_render(request, staff, "users.html", nav="users", status=status, users=users, error=error,
                        shown_password=shown_password, values=values or {}, now=now)


@staff_page(admin=True)
async def users_page(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    return await _users(request, staff)


@staff_page(admin=True)
async def user_create(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    t = request[MESSAGES]
    password = new_password()
    try:
        user = await request.app[ACCOUNTS].create(staff.tenant.tenant_id, form.get("email", ""), form.get("role", ""),
                                                  password, created_by=staff.user.actor_id)
    except AccountError as exc:
        return await _users(request, staff, status=422, error=t(exc.message_key),
                            values={"email": form.get("email", ""), "role": form.get("role", "")})
    log.info("user_created", new_user=user.user_id, role=user.role)
    await _account_changed(request, staff, user.user_id, "created", user.role)
    return await _users(request, staff, shown_password=(user.email, password))


async def _target_user(request: web.Request, staff: Staff) -> User:
    user = await request.app[ACCOUNTS].get(staff.tenant.tenant_id, request.match_info["user_id"])
    if user is None:
        raise web.HTTPNotFound()
    return user


@staff_page(admin=True)
async def user_reset(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    user = await _target_user(request, staff)
    password = new_password()
    await request.app[ACCOUNTS].reset_password(staff.tenant.tenant_id, user.user_id, password)
    log.info("user_password_reset", target=user.user_id)
    await _account_changed(request, staff, user.user_id, "password_reset", user.role)
    return await _users(request, staff, shown_password=(user.email, password))


@staff_page(admin=True)
async def user_status(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    user = await _target_user(request, staff)
    if form.get("disabled") not in ("0", "1"):
        return await _users(request, staff, status=422, error=request[MESSAGES]("invalid_choice"))
    try:
        await request.app[ACCOUNTS].set_disabled(staff.tenant.tenant_id, user.user_id, form.get("disabled") == "1")
    except AccountError as exc:
        return await _users(request, staff, status=409, error=request[MESSAGES](exc.message_key))
    log.info("user_status_set", target=user.user_id, disabled=form.get("disabled") == "1")
    await _account_changed(request, staff, user.user_id, "disabled" if form.get("disabled") == "1" else "enabled",
                           user.role)
    return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/gebruikers", msg="saved_staff")


@staff_page(admin=True)
async def user_unlock(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    """Lift the login back-off of this account for every address (a user who mistyped too
    often, or whose address an attacker shares)."""
    user = await _target_user(request, staff)
    cleared = await request.app[ACCOUNTS].unlock(staff.tenant.tenant_id, user.user_id)
    log.info("user_unlocked", target=user.user_id, addresses=cleared)
    await _account_changed(request, staff, user.user_id, "unlocked", user.role)
    return _redirect(request, f"/beheer/{staff.tenant.tenant_id}/gebruikers", msg="saved_staff")


async def _account_changed(request: web.Request, staff: Staff, user_id: str, change: str, role: str) -> None:
    """The account change in the ledger, for the change log (issue 15)."""
    from services.portal.changelog import record_account_change

    await record_account_change(request.app[LEDGER], staff.ctx(), staff.tenant.tenant_id, user_id, change, role)


async def customer_contact(request: web.Request, staff: Staff, events: list[Any]) -> Any:
    """The customer's newest contact data for the customer page, from the subject's own
    events the page has read already (one subject decrypted; no directory needed)."""
    from schemas.api import Contact

    for recorded in reversed(events):
        sealed = getattr(recorded.event, "personal", None)
        if sealed is not None:
            plain = await request.app[LEDGER].keys.open(recorded.stream_id, sealed)
            return msgspec.json.decode(plain, type=Contact) if plain is not None else None
    return None

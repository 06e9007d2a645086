"""The privacy portal and the dealer's AVG Beheer pages: ``create_portal_app(settings)``.

Server-rendered HTML (Jinja2, autoescaped), no JavaScript anywhere. Customers open
``/p/{token}``; staff log in at ``/login`` and work under ``/beheer/{tenant}/...``. Every change
goes through the ledger's :class:`~services.ledger.commands.Ledger` as events; only portal
links, accounts and sessions are rows of the portal's own schema.

Pools, the event store's writer, the CSRF key, the rate limiter and the template environment
live in the app (``cleanup_ctx`` / ``web.AppKey``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import asyncpg
import jinja2
import structlog
from aiohttp import web
from argon2 import PasswordHasher

from consent.text import control_character_problem
from services.ledger.commands import CommandRejected, Ledger
from services.ledger.errors import StoreUnavailable, WrongExpectedVersion
from services.database import create_pool
from services.ledger.migrate import migrate
from services.ledger.store import EventStore
from services.ledger.subject_keys import SubjectKeys, parse_master_key
from services.mail.service import MailService
from services.portal.accounts import Accounts
from services.portal.links import LinkStore
from services.portal.messages import Messages, pick_language
from services.portal.security import (
    Csrf,
    RateLimiter,
    client_address,
    origin_of,
    same_origin,
    security_headers_middleware,
)
from services.portal.view import TenantFreshness, policy_toc, settings_grid, settings_table
from services.serving import BodyTimeout, post_within, set_body_timeout
from services.settings import Settings

log = structlog.get_logger(__name__)

SETTINGS = web.AppKey("portal_settings", Settings)
POOL = web.AppKey("portal_pool", asyncpg.Pool)
STORE = web.AppKey("portal_store", EventStore)
LEDGER = web.AppKey("portal_ledger", Ledger)
LINKS = web.AppKey("portal_links", LinkStore)
ACCOUNTS = web.AppKey("portal_accounts", Accounts)
CSRF = web.AppKey("portal_csrf", Csrf)
LIMITER = web.AppKey("portal_limiter", RateLimiter)
TEMPLATES = web.AppKey("portal_templates", jinja2.Environment)
HASHER = web.AppKey("portal_password_hasher", PasswordHasher)
FRESHNESS = web.AppKey("portal_tenant_freshness", TenantFreshness)
MAIL = web.AppKey("portal_mail", MailService)
LINK_REQUESTS = web.AppKey("portal_link_request_limiter", RateLimiter)

PUBLIC_ORIGIN = web.AppKey("portal_public_origin", str)
TRUSTED_PROXIES = web.AppKey("portal_trusted_proxies", frozenset)

MESSAGES = web.RequestKey("messages", Messages)
LANG_IN_URL = web.RequestKey("lang_in_url", bool)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def template_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("services.portal", "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.globals["settings_table"] = settings_table
    env.globals["settings_grid"] = settings_grid
    env.globals["policy_toc"] = policy_toc
    return env


def posted_from_here(request: web.Request) -> bool:
    """The POST did not come from another site (see :func:`security.same_origin`)."""
    return same_origin(request, request.app[PUBLIC_ORIGIN])


def rate_limited(request: web.Request) -> web.Response | None:
    """The 429 page if this client address is over its rate limit, else None."""
    limiter = request.app[LIMITER]
    if limiter.allow(client_address(request, request.app[TRUSTED_PROXIES])):
        return None
    return error_page(request, 429, "rate_title", "rate_body", {"Retry-After": str(limiter.retry_after())})


def url_for(request: web.Request, path: str, **params: Any) -> str:
    """``path`` with query ``params``, keeping ``lang`` when the visitor chose it in the URL."""
    query = {k: v for k, v in params.items() if v is not None}
    if request.get(LANG_IN_URL):
        query.setdefault("lang", request[MESSAGES].lang)
    return path + ("?" + urlencode(query) if query else "")


def render(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    t = request[MESSAGES]
    html = request.app[TEMPLATES].get_template(template).render(
        t=t, lang=t.lang, url=lambda path, **p: url_for(request, path, **p), request_path=request.path,
        lang_explicit=bool(request.get(LANG_IN_URL)),
        lang_links=_lang_links(request), **context,
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _lang_links(request: web.Request) -> list[tuple[str, str, bool]]:
    """The language switch's links, built from the matched route and its (percent-encoded)
    parameters, never from the raw path: ``GET //evil.example/x`` would otherwise link to
    ``//evil.example/x?lang=en``, another site, from the dealer's privacy domain. Without a
    route (the 404 page) the link is the query alone, which stays on this very page."""
    current = request[MESSAGES].lang
    resource = request.match_info.route.resource
    path = ""
    if resource is not None and not isinstance(resource, web.StaticResource):
        try:
            path = resource.url_for(**request.match_info).raw_path
        except (KeyError, ValueError):
            path = ""
    if not path.startswith("/") or path.startswith(("//", "/\\")):
        path = ""
    out = []
    for code, label in (("nl", "Nederlands"), ("en", "English")):
        query = dict(request.query)
        query["lang"] = code
        out.append((label, path + "?" + urlencode(query), code == current))
    return out


class BadFormText(ValueError):
    """A posted field breaks the text rule (:mod:`consent.text`), or the form is not UTF-8."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field


async def posted_form(request: web.Request) -> dict[str, str]:
    """The posted form's text fields. Every portal POST reads its form here, so the one text
    rule holds for all of them: a control character (a NUL in an e-mail address was a 500
    from PostgreSQL) is a 422 page naming the field, before anything is looked at."""
    try:
        posted = await post_within(request)
    except UnicodeDecodeError:  # aiohttp decodes a urlencoded body strictly
        raise BadFormText("(form)", "not UTF-8") from None
    form = {k: v for k, v in posted.items() if isinstance(v, str)}
    for name, value in form.items():
        problem = control_character_problem(name) or control_character_problem(value)
        if problem is not None:
            raise BadFormText(name if control_character_problem(name) is None else "(form)", problem)
    return form


def error_page(request: web.Request, status: int, title_key: str, body_key: str,
               headers: dict[str, str] | None = None) -> web.Response:
    response = render(request, "message.html", status=status, title=request[MESSAGES](title_key),
                      body=request[MESSAGES](body_key))
    if headers:
        response.headers.update(headers)
    return response


@web.middleware
async def language(request: web.Request, handler: Handler) -> web.StreamResponse:
    lang, explicit = pick_language(request.query.get("lang"), request.headers.get("Accept-Language"))
    request[MESSAGES] = Messages(lang)
    request[LANG_IN_URL] = explicit
    return await handler(request)


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One log line per request, naming the route pattern, never the path (which holds
    the customer's token)."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=uuid.uuid4().hex)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        log.info("http_request", method=request.method, route=route, status=status,
                 ms=round((time.perf_counter() - started) * 1000, 2))


@web.middleware
async def html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            return error_page(request, 404, "not_found_title", "not_found_body")
        if exc.status == 403:
            return error_page(request, 403, "forbidden_title", "forbidden_body")
        if exc.status == 405:
            response = error_page(request, 405, "bad_request_title", "not_found_body")
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        if exc.status == 413:
            return error_page(request, 413, "bad_request_title", "error_body")
        return error_page(request, exc.status, "bad_request_title", "error_body")
    except BodyTimeout:
        log.warning("body_timeout", method=request.method)
        response = error_page(request, 408, "bad_request_title", "error_body")
        response.force_close()
        return response
    except BadFormText as exc:
        log.warning("form_text_refused", field=exc.field)
        return render(request, "message.html", status=422, title=request[MESSAGES]("bad_request_title"),
                      body=request[MESSAGES]("field_text_invalid", field=exc.field))
    except CommandRejected as exc:
        log.warning("command_rejected", error=exc.error)
        response = render(request, "message.html", status=exc.status, title=request[MESSAGES]("bad_request_title"),
                          body=request[MESSAGES]("not_allowed_now", message=exc.message))
        return response
    except WrongExpectedVersion:
        return error_page(request, 409, "bad_request_title", "conflict")
    except StoreUnavailable as exc:
        log.error("store_unavailable", error=str(exc))
        return error_page(request, 503, "error_title", "error_body", {"Retry-After": "5"})
    except Exception:
        log.exception("portal_error")
        return error_page(request, 500, "error_title", "error_body")


def create_portal_app(settings: Settings, *, password_hasher: PasswordHasher | None = None) -> web.Application:
    """The portal as an aiohttp application (run it with ``consent-ledger portal serve``).

    ``password_hasher``: argon2 parameters for accounts (default: argon2-cffi's, RFC 9106);
    tests pass cheaper ones."""
    app = web.Application(
        middlewares=[
            access_log,
            security_headers_middleware(hsts=settings.portal_base_url.startswith("https://")),
            language,
            html_errors,
        ],
        client_max_size=256 * 1024,
    )
    app[SETTINGS] = settings
    set_body_timeout(app, settings)
    app[HASHER] = password_hasher or PasswordHasher()
    app[TEMPLATES] = template_environment()
    app[LIMITER] = RateLimiter(settings.portal_rate_per_minute, settings.portal_rate_burst)
    app[FRESHNESS] = TenantFreshness()
    # "I lost my link": per e-mail address at most one mail a minute, 3 at once, whatever
    # the client address (the page answers the same either way: nothing to enumerate).
    app[LINK_REQUESTS] = RateLimiter(1, 3)
    app[PUBLIC_ORIGIN] = origin_of(settings.portal_base_url)
    app[TRUSTED_PROXIES] = frozenset(p.strip() for p in settings.portal_trusted_proxies.split(",") if p.strip())
    from services.portal import routes_customer, routes_dealer, routes_mail, routes_staff

    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static/", path=str(_static_dir()), name="static", append_version=False)
    routes_customer.add_routes(app)
    routes_staff.add_routes(app)
    routes_mail.add_routes(app)
    routes_dealer.add_routes(app)  # reach, lapse list, search, change log
    app.cleanup_ctx.append(_database)
    return app


def _static_dir() -> Any:
    from importlib import resources

    return resources.files("services.portal") / "static"


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.master_key:
        raise RuntimeError("LEDGER_MASTER_KEY is not set (32 bytes, base64); `consent-ledger keygen` makes one")
    master = parse_master_key(settings.master_key)
    pool = await create_pool(settings.database_url, min_size=2, max_size=settings.pool_size)
    async with pool.acquire() as conn:
        await migrate(conn)
    store = EventStore(pool)
    await store.start()
    app[POOL] = pool
    app[STORE] = store
    app[LEDGER] = Ledger(pool, store, SubjectKeys.from_settings(pool, settings))
    app[LINKS] = LinkStore(pool)
    app[ACCOUNTS] = Accounts(pool, app[HASHER])
    app[CSRF] = Csrf(master)
    app[MAIL] = MailService(pool, app[LEDGER].keys, app[LEDGER], settings, master)
    # The portal process sends the outbox's mails (queued by it, the API or the import) when
    # an SMTP server is configured; several processes share the work (SKIP LOCKED).
    stop = asyncio.Event()
    worker = asyncio.create_task(app[MAIL].run(stop)) if settings.smtp_host else None
    yield
    stop.set()
    if worker is not None:
        await worker
    await store.stop()
    await pool.close()

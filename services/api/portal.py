"""The privacy portal and the dealer's AVG Beheer pages, assembled: ``create_portal_app(settings)``.

Server-rendered HTML (Jinja2, autoescaped), no JavaScript anywhere. Customers open
``/p/{token}``; staff log in at ``/login`` and work under ``/beheer/{tenant}/...``. Every change
goes through the ledger's :class:`~services.ledger.commands.Ledger` as events; only portal
links, accounts and sessions are rows of the portal's own schema.

Part of the composition root (:mod:`services.api`): it adds the portal's route modules and
puts pools, the event store's writer, the CSRF key, the rate limiter and the template
environment in the app (``cleanup_ctx`` / the ``web.AppKey`` keys of
:mod:`services.portal.context`), and turns errors into HTML pages in one place
(:func:`html_errors`). Only entry points import it (the portal's ``serve`` command and
local-stack component, tests).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from argon2 import PasswordHasher

from services.ledger.commands import CommandRejected, Ledger
from services.ledger.errors import StoreUnavailable, WrongExpectedVersion
from services.database import create_pool
from services.ledger.migrate import migrate
from services.ledger.store import EventStore
from services.ledger.subject_keys import SubjectKeys, parse_master_key
from services.mail.service import MailService
from services.portal.accounts import Accounts
from services.portal.context import (
    ACCOUNTS,
    CSRF,
    FRESHNESS,
    HASHER,
    LANG_IN_URL,
    LEDGER,
    LIMITER,
    LINK_REQUESTS,
    LINKS,
    MAIL,
    MESSAGES,
    POOL,
    PUBLIC_ORIGIN,
    SETTINGS,
    STORE,
    TEMPLATES,
    TRUSTED_PROXIES,
    BadFormText,
    Handler,
    error_page,
    render,
    template_environment,
)
from services.portal.links import LinkStore
from services.portal.messages import Messages, pick_language
from services.portal.security import Csrf, RateLimiter, origin_of, security_headers_middleware
from services.portal.view import TenantFreshness
from services.serving import BodyTimeout, set_body_timeout
from services.settings import Settings

log = structlog.get_logger(__name__)


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

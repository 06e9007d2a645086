"""The portal's request context: the app's state (``web.AppKey``), the visitor's language
and the helpers every page handler uses (render a template, an error page, read a posted
form, the rate limit, same-origin POSTs).

The route modules (``routes_customer``, ``routes_staff``, ``routes_mail``, ``routes_dealer``)
import from here. The portal app itself is assembled in :mod:`services.api.portal` (the
composition root), which imports the route modules and fills these keys; this module
imports no route module and nothing from the root, so there is no import circle between
the app and its pages (the ``api-root`` and ``routes-not-app`` contracts in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import asyncpg
import jinja2
from aiohttp import web
from argon2 import PasswordHasher

from consent.text import control_character_problem
from services.errors import LedgerError
from services.ledger.commands import Ledger
from services.ledger.store import EventStore
from services.mail.service import MailService
from services.portal.accounts import Accounts
from services.portal.links import LinkStore
from services.portal.messages import Messages
from services.portal.security import Csrf, RateLimiter, client_address, same_origin
from services.portal.view import TenantFreshness, policy_toc, settings_grid, settings_table
from services.serving import post_within
from services.settings import Settings

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


class BadFormText(LedgerError, ValueError):
    """A posted field breaks the text rule (:mod:`consent.text`), or the form is not UTF-8:
    the 422 page naming the field (the portal's error middleware renders it)."""

    status = 422
    error = "validation_error"

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

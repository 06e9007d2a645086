"""The ledger's HTTP API, assembled: ``create_app(settings)``.

This is the composition root of the JSON API: it lists the route sets of every service
(:func:`default_route_sets`), puts pools, the event store's writer and caches in the app
(``cleanup_ctx``, typed by the ``web.AppKey`` keys of :mod:`services.ledger.api.context`; nothing
is global), checks key, role and tenant before a handler runs (:func:`_guard`) and answers
every error as JSON in one place (:func:`_answer_errors_as_json`). No service imports this
module; route modules import their state from the context module.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from schemas.vocabulary import is_customer_ref, is_slug, subject_stream
from services.errors import LedgerError
from services.ledger.api.context import (
    KEYRING,
    LEDGER,
    METRICS,
    OPENAPI_CACHE,
    POOL,
    RAW_BODY,
    REQUEST_ID,
    ROUTE_SETS,
    SETTINGS,
    STORE,
    Call,
)
from services.ledger.api.jsonapi import MAX_BODY, ApiError, ApiRoutes, Operation, error_body, read_body
from services.ledger.api.routing import add_routes
from services.ledger.api_keys import KeyRing, Principal
from services.ledger.commands import Ledger
from services.ledger.metrics import LedgerMetrics
from services.database import create_pool
from services.ledger.migrate import migrate
from services.ledger.store import EventStore
from services.ledger.subject_keys import SubjectKeys
from services.serving import BODY_TIMEOUT, BodyTimeout, set_body_timeout
from services.settings import Settings

log = structlog.get_logger(__name__)

_PARAM_CHECKS = {
    "tenant": (is_slug, "a tenant id is lower-case letters, digits, _ and - (max 40)"),
    "source": (is_slug, "a data source id is lower-case letters, digits, _ and - (max 40)"),
    "ref": (is_customer_ref, "a customer ref is letters, digits, '.', '_' and '-' (max 64)"),
}


def _param_with_slash(route_sets: Sequence[ApiRoutes], method: str, path: str) -> str | None:
    """For a path that matched no route: the path parameter that would make it match if
    it held a '/' (e.g. a customer ref "12/345"), so the answer can name that field. The
    most specific reading wins: same method first, then the fewest extra segments. Only a
    parameter followed by more of the route counts: "/v1/tenants/a/nothing" is an unknown
    route, not a tenant id "a/nothing"."""
    best: tuple[bool, int, int, str] | None = None
    for rs in route_sets:
        for op in rs.operations:
            parts = re.split(r"\{([a-z_]+)(?::[^}]*)?\}", op.path)
            names = parts[1::2]
            followed = [name for i, name in enumerate(names) if parts[2 * i + 2]]
            for rank, target in enumerate(reversed(followed)):  # a ref or id on the right is the likelier culprit
                pattern = "".join(
                    re.escape(part) if i % 2 == 0 else ("(.+)" if part == target else "[^/]+")
                    for i, part in enumerate(parts)
                )
                m = re.fullmatch(pattern, path)
                if m is not None and "/" in m.group(1):
                    candidate = (op.method != method, m.group(1).count("/"), rank, target)
                    best = candidate if best is None or candidate < best else best
    return best[3] if best is not None else None


def _guard(op: Operation) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        for name, value in request.match_info.items():
            check = _PARAM_CHECKS.get(name)
            if check is not None and not check[0](value):
                raise ApiError(422, "validation_error", check[1], field=name)
        principal: Principal | None = None
        if op.roles != ("public",):
            header = request.headers.get("Authorization", "")
            scheme, _, raw = header.partition(" ")
            if scheme.lower() != "bearer" or not raw:
                raise ApiError(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'",
                               field="Authorization", headers={"WWW-Authenticate": "Bearer"})
            principal = await request.app[KEYRING].authenticate(raw.strip())
            if principal is None:
                raise ApiError(401, "unauthorized", "unknown or revoked API key", field="Authorization",
                               headers={"WWW-Authenticate": "Bearer"})
            if principal.role not in op.roles:
                raise ApiError(403, "forbidden", f"role {principal.role!r} may not do this (allowed: {', '.join(op.roles)})",
                               field="Authorization")
            tenant = request.match_info.get("tenant")
            if tenant is not None and principal.tenant_id != tenant:
                raise ApiError(403, "forbidden", "this key is not valid for that tenant", field="tenant")
            if tenant is not None and "source" in request.match_info and "ref" in request.match_info:
                structlog.contextvars.bind_contextvars(
                    tenant=tenant, key_id=principal.key_id,
                    stream=subject_stream(tenant, request.match_info["source"], request.match_info["ref"]))
            else:
                structlog.contextvars.bind_contextvars(tenant=tenant or principal.tenant_id, key_id=principal.key_id)
        body = None
        if op.body is not None:
            body = await read_body(request, op.body, op.max_body)
            request[RAW_BODY] = await request.read()  # cached by aiohttp: for the idempotency fingerprint
        return await op.handler(Call(request, principal, body, request.app[LEDGER]))

    handler.__name__ = op.handler.__name__
    return handler


@web.middleware
async def request_context(request: web.Request, handler: Any) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id") or os.urandom(16).hex()  # uuid4().hex costs 4x as much
    if len(request_id) > 100 or not request_id.isprintable():
        request_id = os.urandom(16).hex()
    request[REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await _answer_errors_as_json(request, handler)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    finally:
        elapsed = time.perf_counter() - started
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[METRICS].observe_request(request.method, route, status, elapsed)
        log.info("http_request", method=request.method, route=route, status=status, ms=round(elapsed * 1000, 2))


async def _answer_errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    """The one place where errors become JSON answers. Any error of the project's family
    (:class:`services.errors.LedgerError`: a refused request, a stale version, the database
    gone) is answered with its own status, id, field and message; aiohttp's own 4xx (no such
    path, method or a body too large) in the same ``ErrorBody``; anything else is a bug,
    logged with its traceback and answered 500 in JSON."""
    try:
        return await handler(request)
    except BodyTimeout as exc:
        log.warning("body_timeout", method=request.method)
        exc.message = f"the request body did not arrive in time ({request.app[BODY_TIMEOUT]:g} s)"
        response = _as_response(exc)
        response.force_close()  # what is left of the body would be read as the next request
        return response
    except LedgerError as exc:
        if exc.log_event is not None:
            log.error(exc.log_event, error=str(exc))
        elif exc.error == LedgerError.error:  # no answer of its own (e.g. StreamClosed reaching here): a bug
            return _internal_error(request)
        return _as_response(exc)
    except web.HTTPRequestEntityTooLarge:
        return _as_response(ApiError(413, "body_too_large", f"the body may be at most {MAX_BODY} bytes", field="$"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404 and request.match_info.route.resource is None:
            name = _param_with_slash(request.app[ROUTE_SETS], request.method, request.path)
            if name is not None:
                return _as_response(ApiError(422, "validation_error", f"{name} must not contain '/'"
                                             + (f": {_PARAM_CHECKS[name][1]}" if name in _PARAM_CHECKS else ""),
                                             field=name))
        error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        # Every 4xx names what to fix: no route has this path, or not this method.
        where = {404: "path", 405: "method"}.get(exc.status)
        message = {404: f"no operation has the path {request.path[:200]!r} (see /v1/docs)",
                   405: f"{request.method} is not allowed here (allowed: {headers['Allow'] if headers else '-'})"
                   }.get(exc.status, exc.reason)
        return _as_response(ApiError(exc.status, error, message, field=where, headers=headers))
    except Exception:
        return _internal_error(request)


def _internal_error(request: web.Request) -> web.Response:
    """A bug: logged with its traceback, answered in JSON like every other error."""
    log.exception("unhandled_error", method=request.method, path=request.path)
    return _as_response(ApiError(500, "internal_error", "the ledger failed to handle this request; it was logged"))


def _as_response(exc: LedgerError) -> web.Response:
    return web.Response(status=exc.status, body=error_body(exc), content_type="application/json",
                        headers={k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")})


def default_route_sets() -> list[ApiRoutes]:
    """The routes of every service that answers on the API's port, in the document's order."""
    from services.audit import routes as routes_audit
    from services.importer import routes as routes_import
    from services.importer import routes_changes
    from services.ledger.api import routes_ops, routes_search, routes_subjects, routes_tenants
    from services.portal import routes_api as routes_portal_links
    from services.portal import routes_mailing_api
    from services.projector import routes as routes_eligibility
    from services.projector import routes_reach

    return [routes_ops.routes, routes_tenants.routes, routes_subjects.routes, routes_audit.routes,
            routes_import.routes, routes_eligibility.routes, routes_portal_links.routes, routes_reach.routes,
            routes_search.routes, routes_changes.routes, routes_mailing_api.routes]


def create_app(settings: Settings, route_sets: Sequence[ApiRoutes] | None = None) -> web.Application:
    sets = list(route_sets) if route_sets is not None else default_route_sets()
    # aiohttp's own cap is the largest any route accepts; read_body enforces each route's.
    largest = max([MAX_BODY] + [op.max_body for rs in sets for op in rs.operations])
    app = web.Application(middlewares=[request_context], client_max_size=largest)
    app[SETTINGS] = settings
    set_body_timeout(app, settings)
    app[METRICS] = LedgerMetrics()
    app[ROUTE_SETS] = sets
    app[OPENAPI_CACHE] = {}
    # Parameterised routes are looked up by path shape, not one by one (routing.py).
    add_routes(app.router, [(op.method, op.path, _guard(op), op.handler.__name__) for rs in sets for op in rs.operations])
    app.cleanup_ctx.append(_database)
    from services.audit.routes import audit_context  # the audit views' stream cache (needs the store)

    app.cleanup_ctx.append(audit_context)
    from services.projector.routes import eligibility_context  # the eligibility checks' tenant cache

    app.cleanup_ctx.append(eligibility_context)
    from services.projector.routes_reach import reach_context  # the dashboard's evaluated read model

    app.cleanup_ctx.append(reach_context)
    from services.ledger.api.routes_search import directory_context  # contact directory and blind index

    app.cleanup_ctx.append(directory_context)
    if settings.kafka_bootstrap:  # the relay to Kafka runs next to the API (services/ledger/relay.py)
        from services.ledger.relay import relay_context

        app.cleanup_ctx.append(relay_context)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.master_key:
        raise RuntimeError("LEDGER_MASTER_KEY is not set (32 bytes, base64); `consent-ledger keygen` makes one")
    pool = await create_pool(settings.database_url, min_size=2, max_size=settings.pool_size)
    async with pool.acquire() as conn:
        await migrate(conn)
    metrics = app[METRICS]
    store = EventStore(pool, on_commit=metrics.on_commit, on_conflict=metrics.on_conflict)
    await store.start()
    app[POOL] = pool
    app[STORE] = store
    app[KEYRING] = KeyRing(pool)
    app[LEDGER] = Ledger(pool, store, SubjectKeys.from_settings(pool, settings))
    yield
    await store.stop()
    await pool.close()


__all__ = ["create_app", "default_route_sets"]

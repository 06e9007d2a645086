"""The shape-indexed route table (services/ledger/api/routing.py) must resolve every
path exactly as aiohttp's own router would: same route, same 404 and 405 answers."""

from __future__ import annotations

import re

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from services.ledger.api.context import ROUTE_SETS
from services.api.app import create_app
from services.ledger.api.routing import add_routes
from services.settings import Settings

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


async def _ok(request: web.Request) -> web.Response:
    return web.Response()


def _fill(path: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, path)


def _both(routes: list[tuple[str, str, str]]) -> tuple[web.Application, web.Application]:
    """The same routes in aiohttp's router and in ours."""
    plain, ours = web.Application(), web.Application()
    for method, path, name in routes:
        plain.router.add_route(method, path, _ok, name=name)
    add_routes(ours.router, [(m, p, _ok, n) for m, p, n in routes])
    return plain, ours


async def _resolve(app: web.Application, method: str, path: str) -> tuple[str | None, int | None, str | None]:
    info = await app.router.resolve(make_mocked_request(method, path, app=app))
    http_exception = getattr(info, "http_exception", None)
    if http_exception is not None:
        return None, http_exception.status, http_exception.headers.get("Allow")
    return info.route.resource.canonical, None, str(sorted(info.items()))


def _samples(paths: list[str]) -> list[str]:
    out = []
    for path in paths:
        out += [_fill(path, "garage-a"), _fill(path, "x") + "/", _fill(path, "a") + "/extra", _fill(path, "")]
    return out + ["/", "/v1", "/v1/tenants/", "/v1/tenants/garage-a/nothing-here", "/v1/tenants/a/b/c/d/e/f/g"]


async def test_every_declared_route_resolves_as_with_aiohttps_router() -> None:
    app = create_app(Settings(database_url="postgresql://unused", master_key="unused"))
    declared = [(op.method, op.path, op.handler.__name__) for rs in app[ROUTE_SETS] for op in rs.operations]
    plain, ours = _both(declared)
    for path in _samples(sorted({p for _, p, _ in declared})):
        for method in METHODS:
            assert await _resolve(ours, method, path) == await _resolve(plain, method, path), (method, path)


@pytest.mark.parametrize("routes", [
    # The same shape twice: registration order decides, as in aiohttp.
    [("GET", "/t/{a}/x", "first"), ("GET", "/t/{b}/x", "second")],
    # A literal last segment and a parameter there, in both orders.
    [("GET", "/t/{a}/{b}", "param"), ("GET", "/t/{a}/batch", "literal")],
    [("GET", "/t/{a}/batch", "literal"), ("GET", "/t/{a}/{b}", "param")],
    # One path, two methods on two resources: 405 lists both.
    [("PUT", "/t/{a}", "put"), ("DELETE", "/t/{a}", "delete")],
    # A parameter with its own regex may span segments.
    [("GET", "/t/{tail:.*}", "tail"), ("GET", "/t/{a}/x", "x")],
    [("GET", "/t/{a}/x", "x"), ("GET", "/t/{tail:.*}", "tail")],
    # Mixed literal and parameter in one segment.
    [("GET", "/t/{a}/v{n}", "versioned"), ("GET", "/t/{a}/{b}", "any")],
])
async def test_overlapping_routes_resolve_as_with_aiohttps_router(routes: list[tuple[str, str, str]]) -> None:
    plain, ours = _both(routes)
    paths = ["/t/1/x", "/t/1/batch", "/t/1/2", "/t/1", "/t/1/v3", "/t/1/x/y", "/t/", "/t", "/u/1"]
    for path in paths:
        for method in METHODS:
            assert await _resolve(ours, method, path) == await _resolve(plain, method, path), (method, path)


def test_a_duplicate_route_name_is_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        add_routes(web.Application().router, [("GET", "/t/{a}", _ok, "same"), ("POST", "/u/{a}", _ok, "same")])

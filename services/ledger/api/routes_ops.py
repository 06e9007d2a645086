"""Health, readiness, metrics, the OpenAPI document and its human-readable page."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Final

from aiohttp import web

from services.ledger.api.context import POOL, Call, metrics_text, openapi
from services.ledger.api.jsonapi import ApiError, ApiRoutes, json_response

routes = ApiRoutes(tag="operations")


@routes.get("/healthz", summary="The process is alive", roles=("public",))
async def healthz(call: Call) -> web.Response:
    """Answers `{"status": "ok"}` while the process runs (a liveness probe); it asks nothing
    of the database."""
    return json_response({"status": "ok"})


@routes.get("/readyz", summary="The process can reach PostgreSQL", roles=("public",))
async def readyz(call: Call) -> web.Response:
    """`{"status": "ready"}` when a query on PostgreSQL succeeds within 2 s, else 503 with
    the error's type (a readiness probe: send traffic elsewhere meanwhile)."""
    try:
        await call.request.app[POOL].fetchval("SELECT 1", timeout=2)
    except Exception as exc:  # not ready, whatever the reason
        return json_response({"status": "unavailable", "error": type(exc).__name__}, status=503)
    return json_response({"status": "ready"})


@routes.get("/metrics", summary="Prometheus metrics", roles=("public",))
async def metrics(call: Call) -> web.Response:
    """Prometheus text format: request counts and durations per route and status, appends,
    relay lag (docs/deploy.md, monitoring)."""
    body = metrics_text(call.request.app)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


@routes.get("/v1/openapi.json", summary="This API's OpenAPI 3.1 document", roles=("public",))
async def openapi_json(call: Call) -> web.Response:
    """This document: every operation with the roles that may call it, its fields, an
    example and its error ids, generated from the code. Read it as a page at /v1/docs."""
    return json_response(openapi(call.request.app))


# Swagger UI 5 from the swagger-ui-py wheel: the files the page needs, nothing else served.
_ASSETS: Final[dict[str, str]] = {
    "swagger-ui.css": "text/css",
    "index.css": "text/css",
    "swagger-ui-bundle.js": "application/javascript",
    "favicon-32x32.png": "image/png",
}
_INIT_JS: Final = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
};
"""
_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Consent ledger API</title>
<link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png">
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
<link rel="stylesheet" href="docs/assets/index.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script src="docs/assets/init.js"></script>
</body>
</html>
"""
# Everything from this origin; Swagger UI sets inline styles and data: images.
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline';"
                               " script-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


@routes.get("/v1/docs", summary="This API's reference as a page (Swagger UI)", roles=("public",))
async def api_docs_page(call: Call) -> web.Response:
    """The OpenAPI document rendered by Swagger UI, whose files are served by this process
    from the installed swagger-ui-py package: the page loads nothing from elsewhere."""
    return web.Response(text=_PAGE, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS)


@routes.get("/v1/docs/assets/{name}", summary="A file of the reference page (Swagger UI's CSS and JavaScript)",
            roles=("public",))
async def api_docs_asset(call: Call) -> web.Response:
    """Swagger UI's own files (Apache-2.0, from the swagger-ui-py wheel) and the page's
    start-up script; any other name is 404."""
    name = call.param("name")
    headers = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
    if name == "init.js":
        return web.Response(text=_INIT_JS, content_type="application/javascript", headers=headers)
    content_type = _ASSETS.get(name)
    if content_type is None:
        raise ApiError(404, "not_found", f"no such file of the reference page: {name[:60]!r}", field="name")
    return web.Response(body=_asset(name), content_type=content_type, headers=headers)


@functools.lru_cache(maxsize=len(_ASSETS))
def _asset(name: str) -> bytes:
    return (resources.files("swagger_ui") / "static" / name).read_bytes()

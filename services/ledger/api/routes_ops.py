"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from services.ledger.api.app import POOL, Call, metrics_text, openapi
from services.ledger.api.jsonapi import ApiRoutes, json_response

routes = ApiRoutes(tag="operations")


@routes.get("/healthz", summary="The process is alive", roles=("public",))
async def healthz(call: Call) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz", summary="The process can reach PostgreSQL", roles=("public",))
async def readyz(call: Call) -> web.Response:
    try:
        await call.request.app[POOL].fetchval("SELECT 1", timeout=2)
    except Exception as exc:  # not ready, whatever the reason
        return json_response({"status": "unavailable", "error": type(exc).__name__}, status=503)
    return json_response({"status": "ready"})


@routes.get("/metrics", summary="Prometheus metrics", roles=("public",))
async def metrics(call: Call) -> web.Response:
    body = metrics_text(call.request.app)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


@routes.get("/v1/openapi.json", summary="This API's OpenAPI 3.1 document", roles=("public",))
async def openapi_json(call: Call) -> web.Response:
    return json_response(openapi(call.request.app))

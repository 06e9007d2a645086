"""The request context every JSON route module shares: the app's state (``web.AppKey``) and
:class:`Call`, what a handler gets.

This module imports no route module and nothing imports it back from a composition: the
HTTP app itself is assembled in :mod:`services.api.app` (the composition root), which fills
these keys in its ``cleanup_ctx``. Route modules of every service (ledger, audit, importer,
projector, portal API) import their state from here, never from the root, so there is no
import circle between the app and its routes (checked by the ``api-root`` and
``routes-not-app`` contracts in pyproject.toml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from services.ledger.api.jsonapi import ApiError, openapi_document
from services.ledger.api_keys import KeyRing, Principal
from services.ledger.commands import Context, Ledger
from services.ledger.metrics import LedgerMetrics
from services.ledger.store import EventStore, request_fingerprint
from services.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
STORE = web.AppKey("store", EventStore)
LEDGER = web.AppKey("ledger", Ledger)
KEYRING = web.AppKey("keyring", KeyRing)
METRICS = web.AppKey("metrics", LedgerMetrics)
ROUTE_SETS = web.AppKey("route_sets", list)
OPENAPI_CACHE = web.AppKey("openapi_cache", dict)
REQUEST_ID = web.RequestKey("request_id", str)
RAW_BODY = web.RequestKey("raw_body", bytes)


@dataclass
class Call:
    """What a handler gets: the request, who made it, the decoded body, the ledger."""

    request: web.Request
    principal: Principal | None
    body: Any
    ledger: Ledger

    def param(self, name: str) -> str:
        return self.request.match_info[name]

    def ctx(self, method: str | None = None) -> Context:
        assert self.principal is not None
        key = self.request.headers.get("Idempotency-Key")
        if key is not None and not (0 < len(key) <= 200 and key.isprintable()):
            raise ApiError(400, "invalid_header", "Idempotency-Key must be 1-200 printable characters",
                           field="Idempotency-Key")
        body_method = getattr(self.body, "method", None)
        return Context(
            actor=self.principal.actor(),
            method=method or body_method or "api",  # type: ignore[arg-type]
            request_id=self.request.get(REQUEST_ID),
            idempotency_key=key,
            fingerprint=request_fingerprint(self.request.method, self.request.path,
                                            self.request.get(RAW_BODY, b"")) if key else b"",
        )


def openapi(app: web.Application) -> dict[str, Any]:
    """The document, built once per app (reading the handlers' code for their error ids
    takes about a second; the routes never change while the app runs)."""
    cache = app[OPENAPI_CACHE]
    if "doc" not in cache:
        cache["doc"] = openapi_document(app[ROUTE_SETS], title="Consent ledger API", version="1")
    return cache["doc"]


def metrics_text(app: web.Application) -> bytes:
    return app[METRICS].exposition()

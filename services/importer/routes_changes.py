"""``GET /v1/tenants/{tenant}/changes?after=CURSOR``: the write-back to the DMS over HTTP
(services/importer/writeback.py)."""

from __future__ import annotations

from aiohttp import web

from schemas.vocabulary import is_slug
from services.importer.mapping import DEFAULT_MAPPING
from services.importer.routes import import_mapping
from services.importer.writeback import changes_csv
from services.ledger.api.context import POOL, Call
from services.ledger.api.jsonapi import ApiError, ApiRoutes, json_response
from services.ledger.changes import MAX_LIMIT, ChangesPage, changes_since

routes = ApiRoutes(tag="import")


def _int(raw: str | None, field: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise ApiError(422, "validation_error", f"{field} is a whole number", field=field)
    value = int(raw)
    if not low <= value <= high:
        raise ApiError(422, "validation_error", f"{field} must be between {low} and {high}", field=field)
    return value


@routes.get("/v1/tenants/{tenant}/changes",
            summary="Write-back: every preference change, objection and erasure since a cursor (JSON or CSV in"
                    " the import mapping's columns); next_cursor / X-Next-Cursor is the cursor to ask with next",
            roles=("admin", "importer"), responses={200: ChangesPage},
            query=(("after", "integer", False, "the cursor of the previous answer (default 0: from the start)"),
                   ("limit", "integer", False, f"events per answer, 1..{MAX_LIMIT} (default 1000)"),
                   ("source", "string", False, "only this data source (an import file is per source)"),
                   ("format", "string", False, "json (default) or csv"),
                   ("mapping", "string", False, "csv: the named mapping's columns and words (LEDGER_IMPORT_MAPPINGS_DIR)")))
async def changes(call: Call) -> web.Response:
    """The write-back to the DMS: every preference change, objection, objection withdrawal
    and erasure of the tenant after the cursor, in ledger order. The cursor is a position
    in the tenant's log partition (docs/dealer.md); asking again with the same cursor gives
    the same answer, so a nightly job that stores ``next_cursor`` only after it has taken
    the answer in misses nothing. As CSV the columns and words are the import mapping's,
    so importing the file back changes nothing."""
    tenant = call.param("tenant")
    q = call.request.query
    after = _int(q.get("after"), "after", 0, 0, 2**63 - 1)
    limit = _int(q.get("limit"), "limit", 1000, 1, MAX_LIMIT)
    fmt = q.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(422, "validation_error", "format is json or csv", field="format")
    source = q.get("source")
    if source is not None and not is_slug(source):
        raise ApiError(422, "validation_error", "a data source id is lower-case letters, digits, _ and -",
                       field="source")
    mapping = import_mapping(call, q.get("mapping")) if q.get("mapping") else DEFAULT_MAPPING
    state = await call.ledger.require_tenant(tenant)
    if source is not None and source not in state[1].data_sources:
        raise ApiError(422, "unknown_source", f"data source {source!r} does not exist", field="source")
    page = await changes_since(call.request.app[POOL], tenant, after, limit, source=source)  # UnknownCursor: 422
    headers = {"X-Next-Cursor": str(page.next_cursor), "X-Has-More": "true" if page.has_more else "false"}
    if fmt == "csv":
        return web.Response(text=changes_csv(page, mapping), content_type="text/csv", charset="utf-8",
                            headers=headers)
    return json_response(page, headers=headers)

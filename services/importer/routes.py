"""HTTP upload of a DMS file: ``POST /v1/tenants/{tenant}/sources/{source}/imports``.

For a DMS that pushes its daily export instead of a cron job running the CLI. The body IS
the file (``text/csv`` or ``application/x-ndjson``), streamed to a temporary file with a
size cap (``LEDGER_IMPORT_MAX_UPLOAD_MB``) and then imported exactly as the CLI does, in
this process, through the same event store. Query: ``kind`` (default: from the columns),
``mapping`` (a named mapping file on the server, ``LEDGER_IMPORT_MAPPINGS_DIR/<name>.toml``).

Answers: 200 with the summary and the rejected rows (the first 1,000; ``rejected`` counts
them all) when the file was processed, even if rows were rejected (``ok`` false: the
valid rows ARE committed, so a 4xx would mislead); a 4xx JSON error naming the field when
nothing could be imported (wrong content type, empty or undecodable file, missing
column, unknown source or mapping); 409 while another import of the tenant runs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Final

import msgspec
from aiohttp import web

from schemas.api import ErrorBody
from schemas.vocabulary import is_slug
from services.importer.mapping import DEFAULT_MAPPING, KINDS, Mapping, MappingError, load_mapping
from services.importer.pipeline import Importer, Summary
from services.importer.plans import Rejection
from services.ledger.api.context import SETTINGS, Call
from services.ledger.api.jsonapi import ApiError, ApiRoutes, json_response
from services.serving import chunk_within

routes = ApiRoutes(tag="import")

CONTENT_TYPES: Final = {"text/csv": "csv", "application/x-ndjson": "jsonl", "application/jsonl": "jsonl",
                        "application/x-jsonlines": "jsonl"}
MAX_REJECTIONS_SHOWN: Final = 1000
_CHUNK: Final = 1 << 16


class ImportAnswer(msgspec.Struct, kw_only=True):
    """The run's summary plus the rejected rows (line, field, problem)."""

    ok: bool
    summary: Summary
    rejections: list[Rejection]
    rejections_truncated: bool = False


@routes.post("/v1/tenants/{tenant}/sources/{source}/imports",
             summary="Import a DMS file (invoices, prospects or opt-in settings) into the ledger",
             roles=("importer", "admin"), content_type="text/csv, application/x-ndjson",
             responses={200: ImportAnswer, 409: ErrorBody, 413: ErrorBody, 415: ErrorBody},
             query=(("kind", "string", False, "invoices, prospects or preferences (default: from the columns)"),
                    ("mapping", "string", False, "name of a mapping file on the server (LEDGER_IMPORT_MAPPINGS_DIR)")))
async def upload_import(call: Call) -> web.Response:
    """A DMS export file (CSV as Dutch DMS software writes it, or JSON Lines) of invoices,
    prospects or opt-in settings, imported as `consent-ledger import` does: idempotent, in
    atomic batches, every rejected row reported with its line, field and problem
    (docs/import.md)."""
    request = call.request
    tenant, source = call.param("tenant"), call.param("source")
    fmt = CONTENT_TYPES.get(request.content_type)
    if fmt is None:
        raise ApiError(415, "unsupported_media_type",
                       f"send the file as {' or '.join(CONTENT_TYPES)} (the body is the file itself)",
                       field="Content-Type")
    kind = request.query.get("kind")
    if kind is not None and kind not in KINDS:
        raise ApiError(422, "validation_error", f"kind must be one of {', '.join(KINDS)}", field="kind")
    mapping = import_mapping(call, request.query.get("mapping"))
    settings = request.app[SETTINGS]
    limit = settings.import_max_upload_mb * 1024 * 1024
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body_too_large", f"the file may be at most {settings.import_max_upload_mb} MB", field="$")
    fd, name = tempfile.mkstemp(prefix="dms-upload-", suffix=".csv" if fmt == "csv" else ".jsonl")
    try:
        size = 0
        with os.fdopen(fd, "wb") as f:
            while chunk := await chunk_within(request, _CHUNK):  # no pause longer than the body timeout
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "body_too_large", f"the file may be at most {settings.import_max_upload_mb} MB",
                                   field="$")
                f.write(chunk)
        if size == 0:
            raise ApiError(400, "empty_body", "the body is empty: send the file itself", field="$")
        rejections: list[Rejection] = []

        def keep(rejection: Rejection) -> None:
            if len(rejections) < MAX_REJECTIONS_SHOWN:
                rejections.append(rejection)

        assert call.principal is not None
        # ImportRefused (nothing written): its 4xx, answered by the API's error middleware
        summary = await Importer(call.ledger).run_file(
            name, tenant=tenant, source=source, mapping=mapping, actor=call.principal.actor(),
            kind=kind, fmt=fmt, on_reject=keep,  # type: ignore[arg-type]
            display_name=request.headers.get("X-File-Name", "upload")[:200])
    finally:
        Path(name).unlink(missing_ok=True)
    return json_response(ImportAnswer(ok=summary.ok, summary=summary, rejections=rejections,
                                      rejections_truncated=summary.rejected > len(rejections)))


def import_mapping(call: Call, name: str | None) -> Mapping:
    if name is None:
        return DEFAULT_MAPPING
    folder = call.request.app[SETTINGS].import_mappings_dir
    if not is_slug(name):
        raise ApiError(422, "validation_error", "a mapping name is lower-case letters, digits, _ and -",
                       field="mapping")
    if folder is None:
        raise ApiError(422, "unknown_mapping", "this server has no named mappings (LEDGER_IMPORT_MAPPINGS_DIR)",
                       field="mapping")
    path = Path(folder) / f"{name}.toml"
    if not path.is_file():
        raise ApiError(422, "unknown_mapping", f"no mapping named {name!r}", field="mapping")
    try:
        return load_mapping(path)
    except MappingError as exc:  # named by its name: the error's own text holds the server's file path
        raise ApiError(422, "invalid_mapping", f"the mapping {name!r} is not valid: {exc.problem}",
                       field="mapping") from None

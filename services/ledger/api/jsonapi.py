"""A thin typed layer over aiohttp for the JSON API.

Each route is declared once, with its request body type, response types and the roles
allowed; from those declarations come the aiohttp routes, the auth check and the
OpenAPI 3.1 document (``/v1/openapi.json``), so the document cannot drift from the code.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgspec
from aiohttp import web

from consent.vocabulary import CUSTOMER_REF_PATTERN, SLUG_PATTERN
from schemas.api import ErrorBody

T = TypeVar("T")
Handler = Callable[..., Awaitable[web.StreamResponse]]

_encoder: Final = msgspec.json.Encoder()
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}
MAX_BODY: Final = 1024 * 1024


class ApiError(web.HTTPException):
    """An error answered as JSON ``ErrorBody`` with the given status."""

    def __init__(self, status: int, error: str, message: str, *, field: str | None = None,
                 current_version: int | None = None, headers: dict[str, str] | None = None,
                 position: int | None = None) -> None:
        self.status_code = status
        super().__init__(
            text=_encoder.encode(
                ErrorBody(error=error, message=message, field=field, current_version=current_version,
                          position=position)
            ).decode(),
            content_type="application/json",
            headers=headers,
        )
        self.error = error


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json", headers=headers)


_AT_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>[^`]+)`)?$", re.S)


# For these two msgspec names the object, not the field: "... field `x` - at `$.contact`".
_FIELD_OF_OBJECT = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>[^`]+)`$")
_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def validation_error(exc: msgspec.ValidationError | msgspec.DecodeError) -> ApiError:
    """msgspec says e.g. "Expected `int` <= 120, got 130 - at `$.cells[0].months`".
    ``field`` is the JSON path of the offending value: for a missing or unknown field,
    the field itself (``$.contact.nme``) rather than the object holding it."""
    m = _AT_PATH.match(str(exc))
    message = m.group("msg") if m else str(exc)
    path = (m.group("path") if m else None) or "$"
    named = _FIELD_OF_OBJECT.match(message)
    if named is not None:
        name = named.group("name")
        path += f".{name}" if _PLAIN_NAME.match(name) else f"[{msgspec.json.encode(name).decode()}]"
    if isinstance(exc, msgspec.ValidationError):
        return ApiError(422, "validation_error", message, field=path)
    return ApiError(400, "malformed_json", message, field=path)


async def read_body(request: web.Request, body_type: type[T], max_body: int = MAX_BODY) -> T:
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json", field="Content-Type")
    if request.content_length is not None and request.content_length > max_body:
        raise ApiError(413, "body_too_large", f"the body may be at most {max_body} bytes", field="$")
    raw = await request.read()
    if len(raw) > max_body:  # chunked bodies have no Content-Length
        raise ApiError(413, "body_too_large", f"the body may be at most {max_body} bytes", field="$")
    decoder = _decoders.get(body_type)
    if decoder is None:
        decoder = _decoders[body_type] = msgspec.json.Decoder(body_type)
    try:
        return decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise validation_error(exc) from None


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    roles: tuple[str, ...]
    body: type | None
    responses: dict[int, type | None]
    tags: tuple[str, ...]
    query: tuple[tuple[str, str, bool, str], ...]  # (name, type, required, description)
    content_type: str = "application/json"
    max_body: int = MAX_BODY


@dataclass
class ApiRoutes:
    """A module's routes; ``create_app`` adds them to the application."""

    tag: str
    operations: list[Operation] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        roles: Sequence[str],
        body: type | None = None,
        responses: dict[int, type | None] | None = None,
        query: Sequence[tuple[str, str, bool, str]] = (),
        content_type: str = "application/json",
        max_body: int = MAX_BODY,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.operations.append(
                Operation(
                    method=method.upper(), path=path, handler=handler, summary=summary, roles=tuple(roles),
                    body=body, responses=responses or {200: None}, tags=(self.tag,), query=tuple(query),
                    content_type=content_type, max_body=max_body,
                )
            )
            return handler

        return register

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)


_PATH_PARAM = re.compile(r"\{([a-z_]+)(?::[^}]*)?\}")


# What the guard in app.py checks path parameters against, as the document says it.
PATH_PARAMETER_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "tenant": {"type": "string", "pattern": SLUG_PATTERN},
    "source": {"type": "string", "pattern": SLUG_PATTERN},
    "ref": {"type": "string", "pattern": CUSTOMER_REF_PATTERN},
}


def _error_statuses(op: Operation) -> list[tuple[int, str]]:
    """The error answers an operation can give (all as ErrorBody), so clients and
    schemathesis see every status the middleware may produce for it."""
    out = [(400, "Malformed request"), (404, "Not found"), (422, "Invalid field"),
           (503, "The ledger database is unavailable; retry later")]
    if op.roles != ("public",):
        out += [(401, "Missing or invalid API key"), (403, "Wrong role or tenant")]
    if op.method != "GET":
        out += [(409, "Conflict: a stale expected_version, or it exists already"),
                (410, "Gone: the subject was erased")]
    if op.body is not None or op.content_type != "application/json":
        out += [(413, f"Body larger than {op.max_body} bytes"), (415, "Wrong Content-Type")]
    return sorted(out)


def openapi_document(route_sets: Sequence[ApiRoutes], *, title: str, version: str) -> dict[str, Any]:
    """OpenAPI 3.1 from the declared routes and msgspec's JSON Schema of their types."""
    types: set[type] = {ErrorBody}
    for rs in route_sets:
        for op in rs.operations:
            if op.body is not None:
                types.add(op.body)
            types.update(t for t in op.responses.values() if t is not None)
    ordered = sorted(types, key=lambda t: t.__name__)
    schemas, components = msgspec.json.schema_components(ordered, ref_template="#/components/schemas/{name}")
    refs = dict(zip(ordered, schemas))
    paths: dict[str, dict[str, Any]] = {}
    error_ref = refs[ErrorBody]
    for rs in route_sets:
        for op in rs.operations:
            oa_path = _PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", op.path)
            params: list[dict[str, Any]] = [
                {"name": name, "in": "path", "required": True,
                 "schema": PATH_PARAMETER_SCHEMAS.get(name, {"type": "string"})}
                for name in _PATH_PARAM.findall(op.path)
            ]
            params += [
                {"name": n, "in": "query", "required": req, "schema": {"type": t}, "description": d}
                for n, t, req, d in op.query
            ]
            responses: dict[str, Any] = {}
            for status, rtype in op.responses.items():
                if rtype is None:
                    responses[str(status)] = {"description": "OK" if status < 300 else "No content"}
                else:
                    responses[str(status)] = {
                        "description": "OK",
                        "content": {"application/json": {"schema": refs[rtype]}},
                    }
            for status, desc in _error_statuses(op):
                responses.setdefault(
                    str(status), {"description": desc, "content": {"application/json": {"schema": error_ref}}}
                )
            entry: dict[str, Any] = {
                "summary": op.summary,
                "operationId": op.handler.__name__,
                "tags": list(op.tags),
                "parameters": params,
                "responses": responses,
                "x-roles": list(op.roles),
            }
            if op.roles and op.roles != ("public",):
                entry["security"] = [{"apiKey": []}]
            if op.body is not None:
                entry["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": refs[op.body]}},
                }
            elif op.content_type != "application/json":  # a raw upload (e.g. a CSV file), read by the handler
                entry["requestBody"] = {
                    "required": True,
                    "content": {ct.strip(): {"schema": {"type": "string"}} for ct in op.content_type.split(",")},
                }
            paths.setdefault(oa_path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "API key"}},
        },
    }

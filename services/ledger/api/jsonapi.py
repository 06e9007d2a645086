"""A thin typed layer over aiohttp for the JSON API.

Each route is declared once, with its request body type, response types and the roles
allowed; from those declarations come the aiohttp routes, the auth check and the
OpenAPI 3.1 document (``/v1/openapi.json``), so the document cannot drift from the code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgspec
import msgspec.inspect
from aiohttp import web

from consent.text import first_control_character, json_path
from schemas.api import ErrorBody
from schemas.vocabulary import CUSTOMER_REF_PATTERN, SLUG_PATTERN
from services.errors import LedgerError, Refused
from services.ledger.api.openapi_docs import describe, describe_fields, error_responses, example_for
from services.serving import read_body_within

T = TypeVar("T")
Handler = Callable[..., Awaitable[web.StreamResponse]]

_encoder: Final = msgspec.json.Encoder()
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}
MAX_BODY: Final = 1024 * 1024


class ApiError(Refused):
    """A request refused at the HTTP edge (key, headers, path, body) or by a route's own
    check; answered as JSON ``ErrorBody`` by the API's error middleware, like every other
    :class:`~services.errors.LedgerError`."""


def error_body(exc: LedgerError) -> bytes:
    """The JSON ``ErrorBody`` of an error of the project's family."""
    return _encoder.encode(ErrorBody(error=exc.error, message=exc.message, field=exc.field,
                                     current_version=exc.current_version, position=exc.position))


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json", headers=headers)


_AT_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>[^`]+)`)?$", re.S)


# For these two msgspec names the object, not the field: "... field `x` - at `$.contact`".
_FIELD_OF_OBJECT = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>[^`]+)`$")
_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


NOT_A_DATE: Final = "not a calendar date (YYYY-MM-DD)"
NOT_A_DATETIME: Final = "not a date-time (ISO 8601 with an offset, e.g. 2025-03-01T12:00:00+01:00)"
_PATH_STEP = re.compile(r'\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[("[^"]*")\]')
_ENUM = re.compile(r"^Invalid enum value (?P<value>.+)$")


def _types_at(body_type: type, path: str) -> list[Any]:
    """The msgspec type infos a JSON path can lead to in ``body_type`` (several where a
    union branches), for naming what a field allows."""
    current: list[Any] = [msgspec.inspect.type_info(body_type)]
    for step in _PATH_STEP.finditer(path.removeprefix("$")):
        name, index = step.group(1), step.group(2)
        following: list[Any] = []
        stack = list(current)
        while stack:
            t = stack.pop()
            if isinstance(t, msgspec.inspect.Metadata):
                stack.append(t.type)
            elif isinstance(t, msgspec.inspect.UnionType):
                stack.extend(t.types)
            elif isinstance(t, (msgspec.inspect.ListType, msgspec.inspect.SetType, msgspec.inspect.FrozenSetType,
                                msgspec.inspect.VarTupleType)) and index is not None:
                following.append(t.item_type)
            elif isinstance(t, msgspec.inspect.DictType) and name is None and index is None:
                following.append(t.value_type)
            elif isinstance(t, msgspec.inspect.StructType) and name is not None:
                following.extend(f.type for f in t.fields if f.encode_name == name)
        current = following
    return current


def allowed_values(body_type: type, path: str) -> list[str]:
    """The values a Literal (enum) field at ``path`` allows, in declaration-sorted order."""
    values: list[str] = []
    stack = _types_at(body_type, path)
    while stack:
        t = stack.pop()
        if isinstance(t, msgspec.inspect.Metadata):
            stack.append(t.type)
        elif isinstance(t, msgspec.inspect.UnionType):
            stack.extend(t.types)
        elif isinstance(t, msgspec.inspect.LiteralType):
            values.extend(str(v) for v in t.values if str(v) not in values)
    return values


def _plain_words(message: str, body_type: type | None, path: str) -> str:
    """msgspec's message in words a person acts on: a bad date says what a date looks like,
    a wrong enum value lists the values allowed."""
    if message.startswith("Invalid RFC3339 encoded date") and "datetime" not in message \
            or message.startswith("Expected `date`"):
        return NOT_A_DATE
    if message.startswith("Invalid RFC3339 encoded datetime") or message.startswith("Expected `datetime`"):
        return NOT_A_DATETIME
    enum = _ENUM.match(message)
    if enum is not None and body_type is not None:
        allowed = allowed_values(body_type, path)
        if allowed:
            return f"{message}; allowed: {', '.join(allowed)}"
    return message


def validation_error(exc: msgspec.ValidationError | msgspec.DecodeError, body_type: type | None = None) -> ApiError:
    """msgspec says e.g. "Expected `int` <= 120, got 130 - at `$.cells[0].months`".
    ``field`` is the JSON path of the offending value: for a missing or unknown field,
    the field itself (``$.contact.nme``) rather than the object holding it. With the
    body's type, a wrong enum value is answered with the allowed values."""
    m = _AT_PATH.match(str(exc))
    message = m.group("msg") if m else str(exc)
    path = (m.group("path") if m else None) or "$"
    message = _plain_words(message, body_type, path)
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
    raw = await read_body_within(request)  # BodyTimeout: a 408 from the middleware
    if len(raw) > max_body:  # chunked bodies have no Content-Length
        raise ApiError(413, "body_too_large", f"the body may be at most {max_body} bytes", field="$")
    decoder = _decoders.get(body_type)
    if decoder is None:
        decoder = _decoders[body_type] = msgspec.json.Decoder(body_type)
    try:
        value = decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise validation_error(exc, body_type) from None
    except RecursionError:  # msgspec's depth limit: a 1 MiB body can nest far deeper than any type
        raise ApiError(400, "malformed_json", "the JSON is nested too deeply", field="$") from None
    check_json_text(raw)
    return value


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object as its (key, value) pairs in order, duplicates kept."""


class _DuplicateKey(Exception):
    """Internal signalling from the JSON pairs hook; read_body answers the duplicate key
    itself (422 duplicate_key naming its path), so it is not in the error family."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _DuplicateKey
    return d


def _first_duplicate(node: Any, path: str) -> tuple[str, str] | None:
    if isinstance(node, _Pairs):
        seen: set[str] = set()
        for key, item in node:
            if key in seen:
                return json_path(path, key), key
            seen.add(key)
            found = _first_duplicate(item, json_path(path, key))
            if found is not None:
                return found
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found = _first_duplicate(item, json_path(path, i))
            if found is not None:
                return found
    return None


# Where a control character can hide in JSON text: an escape (\u0000, \b, \f) or the raw
# DEL / C1 bytes (the others may not appear raw inside a string). Anything else cannot
# hold one, so the walk over the decoded value is skipped for almost every body.
_MAYBE_CONTROL: Final = re.compile(rb"\\u00[01]|\\u007[fF]|\\u00[89]|\\u[dD][89a-fA-F]|\\[bf]|\x7f|\xc2[\x80-\x9f]")


# One decoder, reused: json.loads with a hook builds a new JSONDecoder per call (6.4 against
# 2.4 µs for an append's body).
_PAIRS: Final = json.JSONDecoder(object_pairs_hook=_unique_pairs)


def check_json_text(raw: bytes) -> None:
    """The rules msgspec does not check on a body it decoded: no key twice in one object
    (msgspec, like most parsers, keeps the last one silently, so a client and the ledger
    could read different values), and no control characters in any string
    (:mod:`consent.text`). Raises a 422 naming the key or field."""
    try:
        _PAIRS.decode(raw.decode())
    except UnicodeDecodeError:  # msgspec skips the values of fields a body type ignores
        raise ApiError(400, "malformed_json", "the body is not valid UTF-8", field="$") from None
    except _DuplicateKey:
        found = _first_duplicate(json.loads(raw, object_pairs_hook=_Pairs), "$")
        assert found is not None
        path, key = found
        raise ApiError(422, "duplicate_key", f"the key {key!r} appears more than once in one object",
                       field=path) from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "the JSON is nested too deeply", field="$") from None
    if _MAYBE_CONTROL.search(raw):
        found_text = first_control_character(msgspec.json.decode(raw))
        if found_text is not None:
            raise ApiError(422, "validation_error", found_text[1], field=found_text[0])


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

API_DESCRIPTION: Final = (
    "The consent ledger of a Dutch car dealer: record invoices, prospects, preferences and objections; ask"
    " whether a campaign may be sent (eligibility); audit any past date; erase a customer. Authenticate with"
    " `Authorization: Bearer <API key>`; each key has one role and one tenant. Every error is JSON"
    " `{error, message, field}`: `error` is a stable id, `field` names the offending field. The rules behind"
    " every answer: docs/rules.md in the repository; a walkthrough: README.md."
)
PATH_PARAMETER_DOCS: Final[dict[str, str]] = {
    "tenant": "the dealer's tenant id",
    "source": "the data source (databron), e.g. dealer",
    "ref": "the dealer's customer ref",
    "key_id": "the API key's id",
    "chapter_id": "the policy chapter's id",
    "receipt_id": "the receipt's id (cr-...)",
    "version": "the policy version id",
}


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
                {"name": name, "in": "path", "required": True, "description": PATH_PARAMETER_DOCS.get(name, name),
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
                        "description": "Created" if status == 201 else "OK",
                        "content": {"application/json": {"schema": refs[rtype], "example": example_for(rtype)}},
                    }
            for status, (desc, ids) in error_responses(op).items():
                if op.responses.get(status, ErrorBody) is not ErrorBody:
                    continue  # an answer of its own type, declared by the route
                responses[str(status)] = {
                    "description": f"{desc}. Error ids: {', '.join(f'`{i}`' for i in ids)}.",
                    "content": {"application/json": {"schema": error_ref, "examples": {
                        i: {"value": {"error": i, "message": "what is wrong, in words",
                                      **({"field": "$.field"} if status in (400, 409, 422) else {})}}
                        for i in ids}}},
                    "x-error-ids": ids,
                }
            entry: dict[str, Any] = {
                "summary": op.summary,
                "description": describe(op),
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
                    "content": {"application/json": {"schema": refs[op.body], "example": example_for(op.body)}},
                }
            elif op.content_type != "application/json":  # a raw upload (e.g. a CSV file), read by the handler
                entry["requestBody"] = {
                    "required": True,
                    "content": {ct.strip(): {"schema": {"type": "string"}} for ct in op.content_type.split(",")},
                }
            paths.setdefault(oa_path, {})[op.method.lower()] = entry
    describe_fields(components)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": API_DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "API key"}},
        },
    }

"""The API documents itself (issue 16, item 1): every operation of the OpenAPI document has
a summary, a description, the roles that may call it in words, an example request and
response, and every error status with its error ids; every field and parameter has a
description; all of it generated from the code. /v1/docs renders it with assets served
from the installed package."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
from aiohttp.test_utils import TestClient

from services.ledger.api.context import Call
from services.api.app import default_route_sets
from services.ledger.api.jsonapi import ApiRoutes, json_response, openapi_document
from services.ledger.api.openapi_docs import ROLE_WORDS
from tests.conftest import Dealer

REPO = Path(__file__).resolve().parents[1]


def document(route_sets: list[ApiRoutes] | None = None) -> dict[str, Any]:
    return openapi_document(route_sets if route_sets is not None else default_route_sets(), title="t", version="1")


def undocumented(doc: dict[str, Any]) -> list[str]:
    """Every gap in the document, as 'where: what is missing'."""
    gaps: list[str] = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            where = f"{method.upper()} {path}"
            if not op.get("summary"):
                gaps.append(f"{where}: no summary")
            description = op.get("description", "")
            text, _, who = description.partition("**Who may call:**")
            if not text.strip():
                gaps.append(f"{where}: no description (the handler's docstring)")
            for role in op["x-roles"]:
                if f"`{role}`: {ROLE_WORDS.get(role, '?')}" not in who:
                    gaps.append(f"{where}: role {role} not described in words")
            for param in op["parameters"]:
                if not param.get("description"):
                    gaps.append(f"{where}: parameter {param['name']} has no description")
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and "example" not in body:
                gaps.append(f"{where}: no example request")
            for status, response in op["responses"].items():
                content = response.get("content", {}).get("application/json")
                if int(status) < 300 and content is not None and "example" not in content:
                    gaps.append(f"{where}: no example response for {status}")
                if int(status) >= 400:
                    ids = response.get("x-error-ids") or []
                    if not ids:
                        gaps.append(f"{where}: status {status} without error ids")
                    if any(f"`{i}`" not in response["description"] for i in ids):
                        gaps.append(f"{where}: status {status} does not name its error ids")
    for name, schema in doc["components"]["schemas"].items():
        for field, prop in schema.get("properties", {}).items():
            if not prop.get("description"):
                gaps.append(f"schema {name}: field {field} has no description")
    return gaps


def test_every_operation_and_field_of_the_api_is_documented() -> None:
    assert undocumented(document()) == []


class _Undocumented(msgspec.Struct, frozen=True):
    zzz_mystery_field: int


def test_the_check_fails_on_an_undocumented_operation_or_field() -> None:
    extra = ApiRoutes(tag="extra")

    @extra.post("/v1/extra", summary="An operation nobody described", roles=("admin",), body=_Undocumented,
                responses={200: _Undocumented})
    async def extra_operation(call: Call) -> Any:
        return json_response({})

    gaps = undocumented(document([*default_route_sets(), extra]))
    assert "POST /v1/extra: no description (the handler's docstring)" in gaps
    assert "schema _Undocumented: field zzz_mystery_field has no description" in gaps


def test_every_example_is_a_valid_value_of_its_type() -> None:
    doc = document()
    checked = 0
    for rs in default_route_sets():
        for op in rs.operations:
            path = re.sub(r"\{([a-z_]+)(?::[^}]*)?\}", r"{\1}", op.path)
            entry = doc["paths"][path][op.method.lower()]
            if op.body is not None:
                example = entry["requestBody"]["content"]["application/json"]["example"]
                msgspec.json.decode(msgspec.json.encode(example), type=op.body)
                checked += 1
            for status, rtype in op.responses.items():
                if rtype is not None and status < 400:
                    example = entry["responses"][str(status)]["content"]["application/json"]["example"]
                    msgspec.json.decode(msgspec.json.encode(example), type=rtype)
                    checked += 1
    assert checked > 40


def test_every_error_id_the_code_raises_is_in_the_document() -> None:
    """An id raised anywhere in the services but found for no operation means the document
    missed where it comes from."""
    raised = set()
    for path in (REPO / "services").rglob("*.py"):
        raised |= set(re.findall(r"(?:ApiError|AuditError|CommandRejected)\(\s*\d{3},\s*\"([a-z_]+)\"",
                                 path.read_text()))
    documented = {i for methods in document()["paths"].values() for op in methods.values()
                  for r in op["responses"].values() for i in r.get("x-error-ids", [])}
    internal = {"internal_error"}  # a bug answered as JSON, never promised
    assert raised - internal - documented == set()


def test_the_preference_operation_explains_itself() -> None:
    op = document()["paths"]["/v1/tenants/{tenant}/subjects/{source}/{ref}/preferences"]["post"]
    assert "given_on" in op["description"] and "opt_in" in op["description"]
    assert "`staff`: dealer staff" in op["description"]
    assert "unknown_policy_version" in op["responses"]["422"]["x-error-ids"]
    assert op["responses"]["410"]["x-error-ids"] == ["subject_erased"]
    schema = document()["components"]["schemas"]["ChangePreferences"]
    assert "earlier" in schema["properties"]["given_on"]["description"]


async def test_the_reference_page_is_served_with_its_assets_from_the_package(api: TestClient) -> None:
    r = await api.get("/v1/docs")
    assert r.status == 200 and r.content_type == "text/html"
    html = await r.text()
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and not [x for x in refs if "//" in x], "nothing from another origin (no CDN)"
    for ref in refs:
        asset = await api.get("/v1/" + ref)
        assert asset.status == 200, ref
        assert len(await asset.read()) > 100
    bundle = await (await api.get("/v1/docs/assets/swagger-ui-bundle.js")).text()
    assert "SwaggerUIBundle" in bundle
    assert "openapi.json" in await (await api.get("/v1/docs/assets/init.js")).text()
    missing = await api.get("/v1/docs/assets/..%2Fcore.py")
    assert missing.status == 404 and (await missing.json())["error"] == "not_found"
    spec = await (await api.get("/v1/openapi.json")).json()
    assert spec["paths"]["/v1/docs"]["get"]["x-roles"] == ["public"]


async def test_the_subject_write_examples_are_accepted(api: TestClient, dealer: Dealer) -> None:
    """Sent as documented (to a real subject), the write examples are accepted."""
    doc = (await (await api.get("/v1/openapi.json")).json())["paths"]
    base = "/v1/tenants/{tenant}/subjects/{source}/{ref}"
    for suffix in ("/invoices", "/preferences", "/objection", "/objection/withdraw", "/marketing-activities"):
        example = doc[base + suffix]["post"]["requestBody"]["content"]["application/json"]["example"]
        r = await api.post(f"/v1/tenants/garage-a/subjects/dealer/K1001{suffix}", json=example,
                           headers=dealer.auth("admin"))
        assert r.status == 201, (suffix, example, await r.text())

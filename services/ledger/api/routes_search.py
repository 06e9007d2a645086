"""Find a customer: by name, e-mail, phone, postcode + house number or licence plate,
through the blind index of :mod:`services.ledger.directory` (only the matches are
decrypted)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Final

import msgspec
from aiohttp import web

from schemas.api import PLATE_PATTERN, Contact
from services.errors import LedgerError
from services.ledger.api.context import LEDGER, POOL, SETTINGS, Call
from services.ledger.api.jsonapi import ApiRoutes, json_response
from services.ledger.directory import Directory
from services.ledger.subject_keys import master_keys

routes = ApiRoutes(tag="subjects")
DIRECTORY = web.AppKey("directory", Directory)
_PLATE: Final = re.compile(PLATE_PATTERN)
_POSTCODE: Final = re.compile(r"^\s*\d{4}\s*[A-Za-z]{2}\s*$")
_HOUSE: Final = re.compile(r"^\s*\d{1,5}\s*-?\s*[A-Za-z]{0,2}\s*$")
_PHONE: Final = re.compile(r"^[0-9+() -]{6,40}$")
SEARCH_FIELDS: Final = ("q", "name", "email", "phone", "postcode", "plate")


class SearchProblem(LedgerError, ValueError):
    """A search field that cannot be searched for: a 422 naming it (the API's error
    middleware answers it; the dealer's search page shows the message)."""

    status = 422
    error = "validation_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def search_text(query: Mapping[str, str]) -> str:
    """The search text from one of ``q`` (anything), ``name``, ``email``, ``phone``,
    ``postcode`` (with ``house_number``) or ``plate``; SearchProblem names a bad one."""
    given = [f for f in SEARCH_FIELDS if query.get(f, "").strip()]
    if len(given) != 1:
        raise SearchProblem("q", "give one of " + ", ".join(SEARCH_FIELDS) + " (postcode with house_number)")
    field = given[0]
    value = query[field].strip()
    if len(value) > 200:
        raise SearchProblem(field, "at most 200 characters")
    if field == "plate" and not _PLATE.match(value):
        raise SearchProblem("plate", "not a licence plate (2-12 letters and digits, single '-' or spaces between)")
    if field == "email" and "@" not in value:
        raise SearchProblem("email", "not an e-mail address")
    if field == "phone" and not _PHONE.match(value):
        raise SearchProblem("phone", "not a phone number (6-40 digits, spaces, +, (, ) and -)")
    if field == "postcode":
        house = query.get("house_number", "").strip()
        if not _POSTCODE.match(value):
            raise SearchProblem("postcode", "a Dutch postcode is 4 digits and 2 letters (1234 AB)")
        if not _HOUSE.match(house):
            raise SearchProblem("house_number", "a house number is digits, maybe with a letter (12, 12a)")
        return f"{value} {house}"
    if len(value) < 2:
        raise SearchProblem(field, "at least 2 characters")
    return value


def make_directory(pool, ledger, settings) -> Directory:  # type: ignore[no-untyped-def]
    return Directory(pool, ledger.keys, master_keys(settings)[0])


async def directory_context(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx`` of the API app (after the database context)."""
    app[DIRECTORY] = make_directory(app[POOL], app[LEDGER], app[SETTINGS])
    yield


class SearchHit(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    customer_ref: str
    contact: Contact | None


class SearchResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    count: int
    subjects: list[SearchHit]


@routes.get("/v1/tenants/{tenant}/subjects:search",
            summary="Find subjects by name, e-mail, phone, postcode + house number or licence plate (blind index)",
            roles=("admin", "staff"), responses={200: SearchResult},
            query=(("q", "string", False, "free text: any of the below"),
                   ("name", "string", False, "a name or words of it"),
                   ("email", "string", False, "an e-mail address"),
                   ("phone", "string", False, "a phone number"),
                   ("postcode", "string", False, "1234 AB, with house_number"),
                   ("house_number", "string", False, "12 or 12a"),
                   ("plate", "string", False, "kenteken, e.g. AB-123-C")))
async def search_subjects(call: Call) -> web.Response:
    """Find a customer by one search field: a blind index of keyed hashes of normalised
    values (no plaintext is stored), so only the matches are decrypted. At most 50
    subjects; an erased subject is never found (its index rows go with its key)."""
    tenant = call.param("tenant")
    text = search_text(call.request.query)
    await call.ledger.require_tenant(tenant)
    found = await call.request.app[DIRECTORY].search(tenant, text)
    hits = [SearchHit(source=f.source, customer_ref=f.customer_ref, contact=f.contact) for f in found]
    return json_response(SearchResult(tenant_id=tenant, count=len(hits), subjects=hits))

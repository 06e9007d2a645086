"""Bad input gets a 4xx with a JSON body that names the field and says what is wrong,
and nothing is written: the ledger head does not move."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from consent.terms import ledger_day
from services.ledger.api.jsonapi import ApiError, check_json_text
from tests.conftest import Dealer

T = "/v1/tenants/garage-a"
SUBJ = T + "/subjects/dealer/C1"
MIB = 1024 * 1024


async def head(db_url: str) -> list[tuple[int, bytes]]:
    """Every log partition's head (position, hash)."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT position, hash FROM ledger.partitions ORDER BY log_partition")
        return [(r["position"], bytes(r["hash"])) for r in rows]
    finally:
        await conn.close()


@pytest.fixture
async def unchanged(db_url: str, dealer: Dealer) -> AsyncIterator[None]:
    """Every test here must leave the ledger exactly as the dealer fixture made it."""
    before = await head(db_url)
    yield
    assert await head(db_url) == before, "a refused request appended events"


async def send(api: TestClient, method: str, path: str, dealer: Dealer, body: Any = None, *, raw: bytes | None = None,
               content_type: str | None = "application/json", role: str = "admin",
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    h = {**dealer.auth(role), **(headers or {})}
    if content_type is not None:
        h["Content-Type"] = content_type
    data: Any = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None and len(data) > 64 * 1024:
        data = io.BytesIO(data)  # aiohttp wants large bodies as a stream
    async with api.request(method, path, data=data, headers=h) as r:
        assert r.content_type == "application/json", f"{method} {path}: {r.status} {await r.text()}"
        return r.status, await r.json()


def assert_names(status: int, body: dict[str, Any], expected_status: int, field: str, *words: str) -> None:
    assert status == expected_status, body
    assert body["field"] == field, body
    assert body["error"] and body["message"], body
    for word in words:
        assert word.lower() in body["message"].lower(), body


INVOICE = {"invoice_id": "F-1", "invoice_date": "2024-01-31"}
PREF = {"category": "newsletter", "channel": "email", "value": "opt_out"}


# -- the body as a whole -------------------------------------------------------------------

MALFORMED = [
    (b'{"invoice_id": "F-1", ', ("truncated",)),
    (b"", ("truncated",)),
    (b'{"invoice_id": F-1}', ("malformed",)),
    (b"\xff\xfe{}", ("malformed",)),
    (b'{"invoice_id": "F-1", "invoice_date": "2024-01-31"} trailing', ("trailing",)),
]


async def test_malformed_json_is_a_400_naming_the_body(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    for raw, words in MALFORMED:
        status, body = await send(api, "POST", SUBJ + "/invoices", dealer, raw=raw)
        assert_names(status, body, 400, "$", *words)
        assert body["error"] == "malformed_json"


async def test_a_json_array_instead_of_an_object_is_refused(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    status, body = await send(api, "POST", SUBJ + "/invoices", dealer, [INVOICE])
    assert_names(status, body, 422, "$", "expected `object`")


async def test_a_body_that_is_not_declared_json_is_a_415(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx", None):
        status, body = await send(api, "POST", SUBJ + "/invoices", dealer, raw=json.dumps(INVOICE).encode(),
                                  content_type=content_type)
        assert_names(status, body, 415, "Content-Type", "application/json")


async def test_json_with_a_charset_parameter_is_accepted(api: TestClient, dealer: Dealer) -> None:
    status, body = await send(api, "POST", SUBJ + "/invoices", dealer, INVOICE,
                              content_type="application/json; charset=utf-8")
    assert status == 201, body


async def test_a_body_over_one_mebibyte_is_a_413(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    big = {**INVOICE, "contact": {"name": "x" * MIB}}
    status, body = await send(api, "POST", SUBJ + "/invoices", dealer, big)
    assert_names(status, body, 413, "$", "at most 1048576 bytes")


async def test_a_streamed_body_over_one_mebibyte_is_a_413_too(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    """Without Content-Length (chunked), the limit is enforced while reading."""
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"invoice_id": "F-1", "invoice_date": "2024-01-31", "contact": {"name": "'
        for _ in range(11):
            yield b"x" * 100_000
        yield b'"}}'

    headers = {**dealer.auth("admin"), "Content-Type": "application/json"}
    async with api.post(SUBJ + "/invoices", data=chunks(), headers=headers) as r:
        assert r.status == 413
        body = await r.json()
    assert body["field"] == "$" and "at most" in body["message"]


async def test_a_body_just_under_the_limit_is_read(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    """The limit is about size, not content: a big body under it gets to validation."""
    raw = json.dumps({**INVOICE, "contact": {"name": "x" * (MIB - 200)}}).encode()
    assert len(raw) < MIB
    status, body = await send(api, "POST", SUBJ + "/invoices", dealer, raw=raw)
    assert_names(status, body, 422, "$.contact.name", "length <= 200")


# -- fields ----------------------------------------------------------------------------------

# -- fields ----------------------------------------------------------------------------------
# Cases are looped inside one test per kind (not parametrized): each test needs a fresh
# database and dealer, and one per case would make this file slow for no extra coverage.

MISSING = [
    (SUBJ + "/invoices", {"invoice_date": "2024-01-31"}, "$.invoice_id", ("missing", "invoice_id")),
    (SUBJ + "/invoices", {"invoice_id": "F-1"}, "$.invoice_date", ("missing", "invoice_date")),
    (SUBJ + "/invoices", {}, "$.invoice_id", ("missing",)),
    (SUBJ + "/prospect", {"acquired_on": "2024-01-31"}, "$.how", ("missing", "how")),
    (SUBJ + "/preferences", {"changes": [{"category": "newsletter", "channel": "email"}]}, "$.changes[0].value",
     ("missing", "value")),
    (T + "/subjects:batch", {"items": [{"kind": "invoice", "source": "dealer", "customer_ref": "C1",
                                        "invoice_id": "F-1"}]}, "$.items[0].invoice_date", ("missing",)),
    (T + "/subjects:batch", {"items": [{"source": "dealer", "customer_ref": "C1"}]}, "$.items[0].kind",
     ("missing", "kind")),
]


async def test_a_missing_field_is_named(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    for path, payload, field, words in MISSING:
        status, body = await send(api, "POST", path, dealer, payload)
        assert_names(status, body, 422, field, *words)


UNKNOWN_FIELDS = [
    (SUBJ + "/invoices", {**INVOICE, "colour": "red"}, "$.colour"),
    (SUBJ + "/invoices", {**INVOICE, "contact": {"nme": "Jan"}}, "$.contact.nme"),
    (SUBJ + "/preferences", {"changes": [{**PREF, "until": "2025-01-01"}]}, "$.changes[0].until"),
    (SUBJ + "/invoices", {**INVOICE, "odd key": 1}, '$["odd key"]'),
    (T + "/subjects:batch", {"items": [{"kind": "invoice", "source": "dealer", "customer_ref": "C1",
                                        **INVOICE, "extra": True}]}, "$.items[0].extra"),
]


async def test_an_unknown_field_is_refused_and_named(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    for path, payload, field in UNKNOWN_FIELDS:
        status, body = await send(api, "POST", path, dealer, payload)
        assert_names(status, body, 422, field, "unknown field")


UNKNOWN_WORDS = [
    ({"changes": [{**PREF, "category": "spam"}]}, "$.changes[0].category"),
    ({"changes": [PREF, {**PREF, "channel": "fax"}]}, "$.changes[1].channel"),
    ({"changes": [{**PREF, "value": "maybe"}]}, "$.changes[0].value"),
    ({"changes": [{**PREF, "category": "Newsletter"}]}, "$.changes[0].category"),
]


async def test_an_unknown_category_channel_or_value_is_named(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    for payload, field in UNKNOWN_WORDS:
        status, body = await send(api, "POST", SUBJ + "/preferences", dealer, payload, role="staff")
        assert_names(status, body, 422, field, "invalid enum value")
    status, body = await send(api, "PATCH", T + "/terms", dealer,
                              {"cells": [{"category": "lease", "channel": "email", "months": 12}]})
    assert_names(status, body, 422, "$.cells[0].category", "invalid enum value")
    status, body = await send(api, "POST", SUBJ + "/marketing-activities", dealer,
                              {"activity_on": "2024-01-31", "category": "newsletter", "channel": "pigeon"})
    assert_names(status, body, 422, "$.channel", "invalid enum value")


async def test_term_months_outside_0_to_120_are_refused(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    for months, words in ((-1, ">= 0"), (121, "<= 120"), (1000, "<= 120"), (1.5, "expected `int`"),
                          ("12", "expected `int`"), (None, "expected `int`")):
        cells = [{"category": "newsletter", "channel": "email", "months": 18},
                 {"category": "newsletter", "channel": "post", "months": months}]
        status, body = await send(api, "PATCH", T + "/terms", dealer, {"cells": cells})
        assert_names(status, body, 422, "$.cells[1].months", words)


async def test_term_months_at_the_bounds_are_accepted(api: TestClient, dealer: Dealer) -> None:
    for months in (0, 120):
        status, body = await send(api, "PATCH", T + "/terms", dealer,
                                  {"cells": [{"category": "newsletter", "channel": "email", "months": months}]})
        assert status == 200, body


NO_SUCH_DATE = [
    ("POST", SUBJ + "/invoices", {**INVOICE, "invoice_date": "2023-02-29"}, "$.invoice_date"),
    ("POST", SUBJ + "/invoices", {**INVOICE, "invoice_date": "2024-13-01"}, "$.invoice_date"),
    ("POST", SUBJ + "/invoices", {**INVOICE, "invoice_date": "2024-04-31"}, "$.invoice_date"),
    ("POST", SUBJ + "/invoices", {**INVOICE, "invoice_date": "31-01-2024"}, "$.invoice_date"),
    ("POST", SUBJ + "/invoices", {**INVOICE, "invoice_date": 20240131}, "$.invoice_date"),
    ("POST", SUBJ + "/prospect", {"acquired_on": "2023-02-29", "how": "beurs"}, "$.acquired_on"),
    ("PUT", T + "/processor-agreement", {"signed": True, "signed_on": "2021-02-29"}, "$.signed_on"),
    ("POST", T + "/subjects:batch", {"items": [{"kind": "invoice", "source": "dealer", "customer_ref": "C1",
                                                "invoice_id": "F-1", "invoice_date": "2023-02-29"}]},
     "$.items[0].invoice_date"),
]


async def test_a_date_that_does_not_exist_is_refused(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    for method, path, payload, field in NO_SUCH_DATE:
        status, body = await send(api, method, path, dealer, payload)
        assert_names(status, body, 422, field)
        assert "date" in body["message"].lower() or "expected `str`" in body["message"].lower(), body


async def test_a_leap_day_that_exists_is_accepted(api: TestClient, dealer: Dealer) -> None:
    status, body = await send(api, "POST", SUBJ + "/invoices", dealer, {**INVOICE, "invoice_date": "2024-02-29"})
    assert status == 201, body


WRONG_SHAPE = [
    ({**INVOICE, "invoice_id": ""}, "$.invoice_id", ("length >= 1",)),
    ({**INVOICE, "invoice_id": "F 1"}, "$.invoice_id", ("matching regex",)),
    ({**INVOICE, "expected_version": -1}, "$.expected_version", (">= 0",)),
    ({**INVOICE, "contact": {"email": "not-an-email"}}, "$.contact.email", ("matching regex",)),
    ({**INVOICE, "contact": "Jan"}, "$.contact", ("expected `object", "got `str`")),
]


async def test_a_wrongly_shaped_value_is_named(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    for payload, field, words in WRONG_SHAPE:
        status, body = await send(api, "POST", SUBJ + "/invoices", dealer, payload)
        assert_names(status, body, 422, field, *words)


# -- things that exist only in the ledger's state ---------------------------------------------

async def test_an_unknown_data_source_is_named(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    status, body = await send(api, "POST", T + "/subjects/occasions/C1/invoices", dealer, INVOICE)
    assert_names(status, body, 422, "source", "occasions", "does not exist")
    items = [{"kind": "invoice", "source": "dealer", "customer_ref": "C1", **INVOICE},
             {"kind": "invoice", "source": "occasions", "customer_ref": "C2", **INVOICE}]
    status, body = await send(api, "POST", T + "/subjects:batch", dealer, {"items": items}, role="importer")
    assert_names(status, body, 422, "$.items[1].source", "occasions")


async def test_an_unknown_chapter_is_named(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    status, body = await send(api, "PUT", T + "/policy/chapters/c99/active", dealer, {"active": False})
    assert_names(status, body, 404, "chapter_id", "c99")


# -- path and query parameters ---------------------------------------------------------------

BAD_PATHS = [
    (T + "/subjects/dealer/12%2F345/invoices", "ref"),  # an encoded '/' in the customer ref
    (T + "/subjects/dealer/12/345/invoices", "ref"),  # a literal '/' splits the path
    (T + "/subjects/dealer/" + "x" * 65 + "/invoices", "ref"),
    (T + "/subjects/dealer/C%201/invoices", "ref"),
    (T + "/subjects/dealer/-C1/invoices", "ref"),
    ("/v1/tenants/Garage-A/subjects/dealer/C1/invoices", "tenant"),
    ("/v1/tenants/garage_a%2Fx/subjects/dealer/C1/invoices", "tenant"),
    (T + "/subjects/Dealer/C1/invoices", "source"),
    (T + "/subjects/dealer/C1%0A/invoices", "ref"),  # Python's "$" would let a final newline through
    (T + "/subjects/dealer%0A/C1/invoices", "source"),
]


async def test_an_invalid_path_parameter_is_named(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    for path, field in BAD_PATHS:
        status, body = await send(api, "POST", path, dealer, INVOICE)
        assert_names(status, body, 422, field)
        assert "'/'" in body["message"] or "letters" in body["message"], body
    status, body = await send(api, "GET", T + "/subjects/dealer/12/345/events", dealer, content_type=None)
    assert_names(status, body, 422, "ref", "'/'")


async def test_a_bad_query_parameter_is_named(api: TestClient, dealer: Dealer) -> None:
    for query, field, words in (
        ("limit=abc", "limit", ("integer",)),
        ("limit=-5", "limit", ("integer",)),
        ("from_version=x", "from_version", ("integer",)),
        ("from_version=0", "from_version", ("between 1 and",)),
        ("from_version=693432618657", "from_version", ("between 1 and 2147483647",)),
        ("limit=0", "limit", ("between 1 and 5000",)),
        ("limit=5001", "limit", ("between 1 and 5000",)),
    ):
        status, body = await send(api, "GET", T + "/events?" + query, dealer, content_type=None, role="auditor")
        assert_names(status, body, 422, field, *words)


async def test_a_bad_idempotency_key_is_named(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    status, body = await send(api, "POST", SUBJ + "/invoices", dealer, INVOICE, headers={"Idempotency-Key": "x" * 201})
    assert_names(status, body, 400, "Idempotency-Key", "1-200")


async def test_an_unknown_route_or_method_is_answered_in_json(api: TestClient, dealer: Dealer,
                                                            unchanged: None) -> None:
    status, body = await send(api, "POST", T + "/nothing-here", dealer, INVOICE)
    assert status == 404 and body["error"] == "not_found"
    status, body = await send(api, "GET", SUBJ + "/invoices", dealer, content_type=None)
    assert status == 405 and body["error"] == "method_not_allowed"


# -- nothing half-written --------------------------------------------------------------------

async def test_a_batch_with_one_bad_item_appends_nothing(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    items = [{"kind": "invoice", "source": "dealer", "customer_ref": f"C{i}", **INVOICE} for i in range(50)]
    items[37]["invoice_date"] = "2023-02-29"
    status, body = await send(api, "POST", T + "/subjects:batch", dealer, {"items": items}, role="importer")
    assert_names(status, body, 422, "$.items[37].invoice_date")


async def test_a_duplicate_cell_in_one_edit_appends_nothing(api: TestClient, dealer: Dealer, unchanged: None) -> None:
    cell = {"category": "newsletter", "channel": "email", "months": 12}
    status, body = await send(api, "PATCH", T + "/terms", dealer, {"cells": [cell, {**cell, "months": 24}]})
    assert_names(status, body, 422, "$.cells[1]", "twice")


NOT_A_FACT_DATE = [
    ("POST", SUBJ + "/invoices", {**INVOICE, "invoice_date": "2999-01-01"}, "$.invoice_date", "in the future"),
    ("POST", SUBJ + "/invoices", {**INVOICE, "invoice_date": "1949-12-31"}, "$.invoice_date", "before 1950-01-01"),
    ("POST", SUBJ + "/prospect", {"acquired_on": "9999-12-31", "how": "proefrit"}, "$.acquired_on", "in the future"),
    ("POST", SUBJ + "/marketing-activities", {"activity_on": "2999-01-01", "category": "newsletter",
                                              "channel": "email"}, "$.activity_on", "in the future"),
    ("POST", T + "/subjects:batch", {"items": [
        {"kind": "invoice", "source": "dealer", "customer_ref": "C1", "invoice_id": "F-1", "invoice_date": "2024-01-31"},
        {"kind": "prospect", "source": "dealer", "customer_ref": "C2", "acquired_on": "2999-01-01", "how": "beurs"},
    ]}, "$.items[1].acquired_on", "in the future"),
]


async def test_an_invoice_acquisition_or_activity_dated_in_the_future_or_before_1950_is_refused(
        api: TestClient, dealer: Dealer, unchanged: None) -> None:
    for method, path, payload, field, problem in NOT_A_FACT_DATE:
        status, body = await send(api, method, path, dealer, payload)
        assert_names(status, body, 422, field, problem)


async def test_an_invoice_dated_today_and_one_dated_1950_01_01_are_accepted(api: TestClient, dealer: Dealer) -> None:
    today = ledger_day(dt.datetime.now(dt.timezone.utc)).isoformat()
    for day in (today, "1950-01-01"):
        status, body = await send(api, "POST", SUBJ + "/invoices", dealer, {**INVOICE, "invoice_date": day})
        assert status == 201, body


TRAILING_NEWLINE = [
    (SUBJ + "/invoices", {**INVOICE, "invoice_id": "F-1\n"}, "$.invoice_id"),
    (SUBJ + "/invoices", {**INVOICE, "contact": {"email": "jan@example.nl\n"}}, "$.contact.email"),
    (SUBJ + "/invoices", {**INVOICE, "contact": {"phone": "0612345678\n"}}, "$.contact.phone"),
    (T + "/subjects:batch", {"items": [{"kind": "invoice", "source": "dealer", "customer_ref": "C1\n",
                                        "invoice_id": "F-1", "invoice_date": "2024-01-31"}]},
     "$.items[0].customer_ref"),
    (T + "/subjects:batch", {"items": [{"kind": "invoice", "source": "dealer\n", "customer_ref": "C1",
                                        "invoice_id": "F-1", "invoice_date": "2024-01-31"}]},
     "$.items[0].source"),
]


async def test_a_reference_or_contact_field_ending_in_a_newline_is_refused(
        api: TestClient, dealer: Dealer, unchanged: None) -> None:
    for path, payload, field in TRAILING_NEWLINE:
        status, body = await send(api, "POST", path, dealer, payload)
        assert_names(status, body, 422, field, "regex")


# -- loose values that used to be accepted or answered 500 ---------------------------------

CONTROL_CHARACTERS = [
    ("POST", T + "/api-keys", {"role": "sender", "label": "mailer\u0000"}, "$.label"),
    ("POST", SUBJ + "/invoices", {**INVOICE, "contact": {"name": "Jan\u0007 Jansen"}}, "$.contact.name"),
    ("POST", SUBJ + "/invoices", {**INVOICE, "contact": {"street": "Dorpsstraat 1\u001b[31m"}}, "$.contact.street"),
    ("POST", T + "/policy/chapters", {"title": "Cookies\u007f", "body": "<p>x</p>"}, "$.title"),
    ("POST", T + "/policy/chapters", {"title": "Cookies", "body": "<p>\u0085x</p>"}, "$.body"),
    ("POST", T + "/data-sources", {"source_id": "regio-west", "label": "West\u0000"}, "$.label"),
    ("POST", SUBJ + "/objection", {"note": "per telefoon\u0000"}, "$.note"),
    ("POST", T + "/subjects:batch", {"items": [
        {"kind": "invoice", "source": "dealer", "customer_ref": "C1", "invoice_id": "F-1", "invoice_date": "2024-01-31",
         "contact": {"city": "Utrecht"}},
        {"kind": "invoice", "source": "dealer", "customer_ref": "C2", "invoice_id": "F-2", "invoice_date": "2024-01-31",
         "contact": {"city": "Ut\u0000recht"}},
    ]}, "$.items[1].contact.city"),
]


async def test_a_control_character_in_any_text_field_is_a_422_naming_the_field(
        api: TestClient, dealer: Dealer, unchanged: None, db_url: str) -> None:
    keys_before = await _api_key_count(db_url)
    for method, path, payload, field in CONTROL_CHARACTERS:
        status, body = await send(api, method, path, dealer, payload)
        assert_names(status, body, 422, field, "control character")
    assert await _api_key_count(db_url) == keys_before


async def _api_key_count(db_url: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM ledger.api_keys")
    finally:
        await conn.close()


async def test_tabs_and_line_breaks_in_text_are_kept(api: TestClient, dealer: Dealer) -> None:
    status, body = await send(api, "POST", T + "/policy/chapters", dealer,
                              {"title": "Cookies", "body": "<p>regel 1\r\n\tregel 2</p>\n"})
    assert status == 201, body


DUPLICATE_KEYS = [
    (SUBJ + "/invoices", b'{"invoice_id": "F-1", "invoice_date": "2024-01-31", "invoice_id": "F-2"}', "$.invoice_id",
     "invoice_id"),
    (SUBJ + "/invoices", b'{"invoice_id": "F-1", "invoice_date": "2024-01-31",'
                         b' "contact": {"email": "a@example.nl", "email": "b@example.nl"}}', "$.contact.email", "email"),
    (SUBJ + "/preferences", b'{"changes": [{"category": "newsletter", "channel": "email", "value": "opt_in",'
                            b' "value": "opt_out"}]}', "$.changes[0].value", "value"),
    (T + "/api-keys", b'{"role": "sender", "role": "admin"}', "$.role", "role"),
]


async def test_a_key_twice_in_one_json_object_is_a_422_naming_the_key(
        api: TestClient, dealer: Dealer, unchanged: None) -> None:
    for path, raw, field, key in DUPLICATE_KEYS:
        status, body = await send(api, "POST", path, dealer, raw=raw)
        assert_names(status, body, 422, field, key, "more than once")
        assert body["error"] == "duplicate_key"


async def test_json_nested_deeper_than_any_body_type_is_refused_not_a_500(
        api: TestClient, dealer: Dealer, unchanged: None) -> None:
    for raw, field in ((b'{"note": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "$.note"),
                       (b"[" * 500_000 + b"]" * 500_000, "$")):
        status, body = await send(api, "POST", SUBJ + "/objection", dealer, raw=raw)
        assert status in (400, 422) and body["field"] == field, body


async def test_a_processor_agreement_signed_before_1950_or_in_the_future_is_refused(
        api: TestClient, dealer: Dealer, unchanged: None) -> None:
    for signed_on, problem in (("0001-01-01", "before 1950"), ("1949-12-31", "before 1950"),
                               ("2999-01-01", "in the future")):
        status, body = await send(api, "PUT", T + "/processor-agreement", dealer,
                                  {"signed": True, "signed_on": signed_on})
        assert_names(status, body, 422, "$.signed_on", problem)


def test_a_body_that_is_not_utf8_is_a_400_naming_the_body_whatever_the_body_type_skipped() -> None:
    # msgspec does not look inside the values of fields a body type ignores; the key and
    # control-character check reads the whole text and must refuse it, not fail.
    with pytest.raises(ApiError) as caught:
        check_json_text(b'{"note": "\xff"}')
    assert (caught.value.status, caught.value.error, caught.value.field) == (400, "malformed_json", "$")


def test_the_same_key_in_two_objects_is_allowed_and_an_escaped_twin_in_one_is_not() -> None:
    check_json_text(b'{"changes": [{"value": "opt_in"}, {"value": "opt_out"}]}')
    with pytest.raises(ApiError) as caught:
        check_json_text(b'{"role": "sender", "\\u0072ole": "admin"}')
    assert (caught.value.error, caught.value.field) == ("duplicate_key", "$.role")

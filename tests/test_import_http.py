"""The HTTP upload of a DMS file: the importer role posts the file itself; bad input is a
4xx JSON error naming the field, and nothing is written."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import asyncpg
from aiohttp.test_utils import TestClient

from tests.conftest import Dealer

URL = "/v1/tenants/garage-a/sources/dealer/imports"
CSV = {"Content-Type": "text/csv"}
FILE = "customer_ref;invoice_id;invoice_date;email\nK1;F1;05-03-2024;k1@example.nl\nK2;F2;31-02-2024;\n"


async def _events(pool_url: str) -> int:
    conn = await asyncpg.connect(pool_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM ledger.events WHERE stream_id LIKE 'subject/%'")
    finally:
        await conn.close()


async def test_the_importer_uploads_a_csv_and_gets_the_summary_with_the_rejected_rows(
    api: TestClient, dealer: Dealer, db_url: str
) -> None:
    r = await api.post(URL, data=FILE.encode("cp1252"), headers={**dealer.auth("importer"), **CSV,
                                                                  "X-File-Name": "facturen.csv"})
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["ok"] is False
    s = body["summary"]
    assert (s["kind"], s["rows"], s["recorded"], s["rejected"], s["file"]) == ("invoices", 2, 1, 1, "facturen.csv")
    assert body["rejections"] == [{"line": 3, "field": "invoice_date",
                                   "problem": "'31-02-2024' is not a date (dd-mm-yyyy)"}]
    assert await _events(db_url) == 1
    again = await (await api.post(URL, data=FILE, headers={**dealer.auth("importer"), **CSV})).json()
    assert (again["summary"]["recorded"], again["summary"]["unchanged"], again["summary"]["events"]) == (0, 1, 0)
    assert await _events(db_url) == 1


async def test_json_lines_are_accepted_with_their_own_content_type(api: TestClient, dealer: Dealer) -> None:
    lines = b'{"customer_ref": "K9", "category": "newsletter", "channel": "email", "value": "opt_in"}\n'
    r = await api.post(URL + "?kind=preferences", data=lines,
                       headers={**dealer.auth("importer"), "Content-Type": "application/x-ndjson"})
    assert r.status == 200, await r.text()
    body = await r.json()
    assert (body["ok"], body["summary"]["kind"], body["summary"]["recorded"]) == (True, "preferences", 1)


async def test_bad_uploads_are_answered_with_4xx_json_naming_the_field_and_write_nothing(
    api: TestClient, dealer: Dealer, db_url: str
) -> None:
    importer = dealer.auth("importer")
    cases = [
        (api.post(URL, data=FILE, headers={**importer, "Content-Type": "application/json"}), 415, "Content-Type"),
        (api.post(URL, data=b"", headers={**importer, **CSV}), 400, "$"),
        (api.post(URL, data=b"Nummer;Datum\n1;2\n", headers={**importer, **CSV}), 422, "kind"),
        (api.post(URL + "?kind=invoices", data=b"Nummer;Datum\n1;2\n", headers={**importer, **CSV}), 422, "header"),
        (api.post(URL + "?kind=bills", data=FILE, headers={**importer, **CSV}), 422, "kind"),
        (api.post(URL + "?mapping=../etc", data=FILE, headers={**importer, **CSV}), 422, "mapping"),
        (api.post(URL + "?mapping=autoline", data=FILE, headers={**importer, **CSV}), 422, "mapping"),
        (api.post("/v1/tenants/garage-a/sources/nope/imports", data=FILE, headers={**importer, **CSV}), 422,
         "source"),
        (api.post(URL, data=b"\x81\x8d\x00\x01", headers={**importer, **CSV}), 422, "file"),
    ]
    for request, status, field in cases:
        r = await request
        assert r.status == status, (field, await r.text())
        assert r.content_type == "application/json"
        body = await r.json()
        assert body["field"] == field and body["message"], body
    assert await _events(db_url) == 0


async def test_deeply_nested_json_lines_are_rejected_rows_or_a_422_never_a_500(
    api: TestClient, dealer: Dealer, db_url: str
) -> None:
    ndjson = {**dealer.auth("importer"), "Content-Type": "application/x-ndjson"}
    good = b'{"customer_ref": "K9", "category": "newsletter", "channel": "email", "value": "opt_in"}\n'
    deep = b'{"customer_ref": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    # On the first line it is what the kind is guessed from: the file as a whole is refused.
    r = await api.post(URL, data=deep + good, headers=ndjson)
    assert r.status == 422, await r.text()
    assert (await r.json())["field"] == "file"
    # Further down it is one rejected row; the good row is recorded.
    r = await api.post(URL + "?kind=preferences", data=good + deep, headers=ndjson)
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["summary"]["recorded"] == 1
    assert body["rejections"] == [{"line": 2, "field": "(line)", "problem": "not valid JSON: nested too deeply"}]


async def test_a_control_character_in_a_csv_or_json_lines_value_rejects_that_row_naming_the_column(
    api: TestClient, dealer: Dealer, db_url: str
) -> None:
    csv_file = "customer_ref;invoice_id;invoice_date;name\nK1;F1;05-03-2024;Jan\x07 Jansen\nK2;F2;05-03-2024;Piet\n"
    r = await api.post(URL, data=csv_file.encode(), headers={**dealer.auth("importer"), **CSV})
    body = await r.json()
    assert r.status == 200 and body["summary"]["recorded"] == 1, body
    assert [(x["line"], x["field"]) for x in body["rejections"]] == [(2, "name")]
    assert "control character" in body["rejections"][0]["problem"]
    lines = (b'{"customer_ref": "K8\\u0000", "category": "newsletter", "channel": "email", "value": "opt_in"}\n'
             b'{"customer_ref": "K9", "category": "newsletter", "channel": "email", "value": "opt_in"}\n')
    r = await api.post(URL + "?kind=preferences", data=lines,
                       headers={**dealer.auth("importer"), "Content-Type": "application/x-ndjson"})
    body = await r.json()
    assert r.status == 200 and body["summary"]["recorded"] == 1, body
    assert [(x["line"], x["field"]) for x in body["rejections"]] == [(1, "customer_ref")]
    assert await _events(db_url) == 2


async def test_only_the_importer_and_admin_of_the_same_tenant_may_upload(
    api: TestClient, dealer: Dealer, other_dealer: Dealer
) -> None:
    r = await api.post(URL, data=FILE, headers={**dealer.auth("staff"), **CSV})
    assert r.status == 403
    r = await api.post(URL, data=FILE, headers={**other_dealer.auth("importer"), **CSV})
    assert r.status == 403 and (await r.json())["field"] == "tenant"
    r = await api.post(URL, data=FILE, headers=CSV)
    assert r.status == 401


async def test_the_openapi_document_declares_the_file_upload(api: TestClient) -> None:
    doc = await (await api.get("/v1/openapi.json")).json()
    op = doc["paths"]["/v1/tenants/{tenant}/sources/{source}/imports"]["post"]
    assert set(op["requestBody"]["content"]) == {"text/csv", "application/x-ndjson"}
    assert op["x-roles"] == ["importer", "admin"]
    assert {"200", "409", "413", "415", "422"} <= set(op["responses"])


async def test_a_file_over_the_upload_limit_is_refused_with_413_and_nothing_is_written(
    aiohttp_client, settings, operator_key: str, db_url: str  # noqa: ANN001
) -> None:
    import msgspec

    from services.api.app import create_app
    from tests.conftest import make_dealer

    small = await aiohttp_client(create_app(msgspec.structs.replace(settings, import_max_upload_mb=1)))
    dealer = await make_dealer(small, operator_key, "garage-a")
    big = ("customer_ref;invoice_id;invoice_date\n" + "K1;F1;05-03-2024\n" * 70_000).encode()
    assert len(big) > 1024 * 1024

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while streaming too
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    for body in (io.BytesIO(big), chunks()):
        r = await small.post(URL, data=body, headers={**dealer.auth("importer"), **CSV})
        assert r.status == 413, await r.text()
        assert (await r.json())["field"] == "$"
    assert await _events(db_url) == 0

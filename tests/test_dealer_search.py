"""Finding a customer through the blind index: by each field, never across tenants,
nothing after erasure, no plaintext in the database; plate and vehicle fields accepted by
the API and the DMS import."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
from aiohttp.test_utils import TestClient

from tests.conftest import Dealer

DAY = (dt.date.today() - dt.timedelta(days=40)).isoformat()
JAN = {"name": "Jan van der Berg", "email": "Jan.Berg@Example.nl", "phone": "+31 6 1234 5678",
       "street": "Hoofdstraat 12a", "postcode": "1234 ab", "city": "Utrecht", "licence_plate": "ab-123-c",
       "vehicle_make": "Volkswagen", "vehicle_model": "Golf"}
PIET = {"name": "Piet Jansen", "email": "piet@example.nl", "phone": "030-1234567", "street": "Kerkweg 3",
        "postcode": "3511AA", "licence_plate": "12-XYZ-3"}


async def _invoice(api: TestClient, dealer: Dealer, ref: str, contact: dict[str, str], invoice: str = "F1") -> None:
    r = await api.post(f"/v1/tenants/{dealer.tenant_id}/subjects/dealer/{ref}/invoices", headers=dealer.auth("importer"),
                       json={"invoice_id": invoice, "invoice_date": DAY, "contact": contact})
    assert r.status == 201, await r.text()


async def _search(api: TestClient, dealer: Dealer, **query: str) -> list[str]:
    r = await api.get(f"/v1/tenants/{dealer.tenant_id}/subjects:search", params=query, headers=dealer.auth("staff"))
    assert r.status == 200, await r.text()
    return [s["customer_ref"] for s in (await r.json())["subjects"]]


async def test_a_customer_is_found_by_each_field_in_the_forms_people_type_them(
    api: TestClient, dealer: Dealer
) -> None:
    await _invoice(api, dealer, "K1", JAN)
    await _invoice(api, dealer, "K2", PIET)
    for query in ({"q": "jan.berg@example.NL"}, {"email": "JAN.BERG@example.nl"}, {"q": "06-12345678"},
                  {"phone": "0031612345678"}, {"q": "1234AB 12a"}, {"postcode": "1234 AB", "house_number": "12"},
                  {"q": "AB123C"}, {"plate": "AB 123 C"}, {"q": "Jan van der Berg"}, {"name": "berg"},
                  {"q": "van der berg"}, {"q": "Jän Berg"}):
        assert await _search(api, dealer, **query) == ["K1"], query
    assert await _search(api, dealer, q="jansen") == ["K2"]
    assert await _search(api, dealer, q="12-xyz-3") == ["K2"]
    assert await _search(api, dealer, q="Jan Jansen") == []  # words of a name must all match one person
    r = await api.get(f"/v1/tenants/{dealer.tenant_id}/subjects:search", params={"plate": "AB-123-C"},
                      headers=dealer.auth("staff"))
    contact = (await r.json())["subjects"][0]["contact"]
    assert contact["vehicle_make"] == "Volkswagen" and contact["vehicle_model"] == "Golf"
    assert contact["name"] == "Jan van der Berg"


async def test_the_newest_contact_data_is_what_is_found(api: TestClient, dealer: Dealer) -> None:
    await _invoice(api, dealer, "K1", JAN)
    assert await _search(api, dealer, plate="AB-123-C") == ["K1"]
    await _invoice(api, dealer, "K1", {**JAN, "licence_plate": "ZZ-99-ZZ"}, invoice="F2")
    assert await _search(api, dealer, plate="ZZ-99-ZZ") == ["K1"]
    assert await _search(api, dealer, plate="AB-123-C") == []


async def test_search_never_crosses_tenants(api: TestClient, dealer: Dealer, other_dealer: Dealer) -> None:
    await _invoice(api, dealer, "K1", JAN)
    await _invoice(api, other_dealer, "B1", JAN)
    assert await _search(api, dealer, q="AB-123-C") == ["K1"]
    assert await _search(api, other_dealer, q="AB-123-C") == ["B1"]
    r = await api.get(f"/v1/tenants/{dealer.tenant_id}/subjects:search", params={"q": "berg"},
                      headers=other_dealer.auth("admin"))
    assert r.status == 403


async def test_after_erasure_the_customer_is_found_by_nothing(
    api: TestClient, dealer: Dealer, pool: asyncpg.Pool
) -> None:
    await _invoice(api, dealer, "K1", JAN)
    await _invoice(api, dealer, "K2", PIET)
    assert await _search(api, dealer, q="berg") == ["K1"]
    r = await api.post(f"/v1/tenants/{dealer.tenant_id}/subjects/dealer/K1/erasure", json={"confirm_ref": "K1"},
                       headers=dealer.auth("admin"))
    assert r.status == 201, await r.text()
    for query in ({"q": "berg"}, {"email": JAN["email"]}, {"plate": "AB-123-C"}, {"q": "0612345678"},
                  {"postcode": "1234AB", "house_number": "12a"}):
        assert await _search(api, dealer, **query) == [], query
    stream = f"subject/{dealer.tenant_id}/dealer/K1"
    assert await pool.fetchval("SELECT count(*) FROM ledger.subject_search WHERE stream_id = $1", stream) == 0
    assert await pool.fetchval("SELECT count(*) FROM ledger.subject_directory WHERE stream_id = $1", stream) == 0
    assert await _search(api, dealer, q="jansen") == ["K2"]


async def test_the_database_holds_none_of_the_searched_values_in_clear(
    api: TestClient, dealer: Dealer, pool: asyncpg.Pool
) -> None:
    await _invoice(api, dealer, "K1", JAN)
    assert await _search(api, dealer, q="AB-123-C") == ["K1"]
    # (long enough that base64 ciphertext cannot hold one by chance)
    needles = {"jan.berg@example.nl", "vanderberg", "1234ab", "ab123c", "ab-123-c", "0612345678", "612345678",
               "volkswagen", "hoofdstraat"}
    tables = await pool.fetch("SELECT table_schema, table_name FROM information_schema.tables"
                              " WHERE table_schema IN ('ledger', 'projector', 'portal', 'importer', 'audit')"
                              " AND table_type = 'BASE TABLE'")
    assert any(t["table_name"] == "subject_search" for t in tables)
    for t in tables:
        for row in await pool.fetch(f'SELECT t::text AS x FROM {t["table_schema"]}."{t["table_name"]}" t'):
            text = row["x"].casefold()
            for needle in needles:
                assert needle not in text.replace(" ", "").replace("\\", ""), (t["table_name"], needle)


async def test_a_malformed_plate_or_search_gets_a_422_naming_the_field(api: TestClient, dealer: Dealer) -> None:
    r = await api.post(f"/v1/tenants/{dealer.tenant_id}/subjects/dealer/K1/invoices", headers=dealer.auth("importer"),
                       json={"invoice_id": "F1", "invoice_date": DAY, "contact": {"licence_plate": "AB--12<script>"}})
    assert r.status == 422 and (await r.json())["field"] == "$.contact.licence_plate"
    for query, field in (({"plate": "??"}, "plate"), ({}, "q"), ({"q": "a", "name": "b"}, "q"),
                         ({"postcode": "12345", "house_number": "1"}, "postcode"),
                         ({"postcode": "1234AB", "house_number": "x"}, "house_number"), ({"q": "x" * 201}, "q"),
                         ({"email": "nope"}, "email"), ({"phone": "12ab"}, "phone")):
        r = await api.get(f"/v1/tenants/{dealer.tenant_id}/subjects:search", params=query, headers=dealer.auth("staff"))
        assert r.status == 422, query
        assert (await r.json())["field"] == field, query


async def test_the_dms_import_takes_kenteken_merk_and_model_and_they_are_searchable(
    api: TestClient, dealer: Dealer
) -> None:
    body = ("customer_ref;invoice_id;invoice_date;name;licence_plate;vehicle_make;vehicle_model\n"
            f"K7;F7;{DAY};Anna de Vries;GH-456-J;Toyota;Yaris\n"
            f"K8;F8;{DAY};Bob Bakker;AB--!;Opel;Corsa\n")
    r = await api.post(f"/v1/tenants/{dealer.tenant_id}/sources/dealer/imports", data=body.encode(),
                       headers={**dealer.auth("importer"), "Content-Type": "text/csv"})
    assert r.status == 200, await r.text()
    answer = await r.json()
    assert [x["field"] for x in answer["rejections"]] == ["licence_plate"]
    r = await api.get(f"/v1/tenants/{dealer.tenant_id}/subjects:search", params={"plate": "gh456j"},
                      headers=dealer.auth("staff"))
    found = (await r.json())["subjects"]
    assert [s["customer_ref"] for s in found] == ["K7"]
    assert found[0]["contact"]["vehicle_make"] == "Toyota" and found[0]["contact"]["vehicle_model"] == "Yaris"


async def test_an_erasure_between_reading_the_key_and_writing_the_index_leaves_nothing_behind(
    api: TestClient, dealer: Dealer, pool: asyncpg.Pool, settings
) -> None:
    """The key is shredded after the sync read it and before it writes: the write fails on
    the foreign key, the batch is read again, and the erased subject is not indexed."""
    from services.ledger.directory import Directory
    from services.ledger.subject_keys import SubjectKeys, master_keys

    await _invoice(api, dealer, "K1", JAN)
    await _invoice(api, dealer, "K2", PIET)
    keys = SubjectKeys.from_settings(pool, settings)
    directory = Directory(pool, keys, master_keys(settings)[0])
    shredded: list[str] = []
    k1 = f"subject/{dealer.tenant_id}/dealer/K1"

    class ShredBeforeInsert:
        """The sync's connection; K1's key is deleted (another connection, committed) just
        before the sync's first insert into the directory."""

        def __init__(self, conn) -> None:  # type: ignore[no-untyped-def]
            self._conn = conn

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(self._conn, name)

        async def execute(self, sql: str, *args):  # type: ignore[no-untyped-def]
            if sql.startswith("INSERT INTO ledger.subject_directory") and not shredded:
                shredded.append(k1)
                await pool.execute("DELETE FROM ledger.subject_keys WHERE stream_id = $1", k1)
            return await self._conn.execute(sql, *args)

    original_write = directory._write
    attempts: list[int] = []

    async def write(conn, tenant_id, latest):  # type: ignore[no-untyped-def]
        attempts.append(len(latest))
        return await original_write(ShredBeforeInsert(conn), tenant_id, latest)

    directory._write = write  # type: ignore[method-assign]
    assert await directory.sync(dealer.tenant_id) == 2
    assert shredded and attempts == [2, 2]  # the first write failed on the foreign key, the batch ran again
    rows = await pool.fetch("SELECT stream_id FROM ledger.subject_directory ORDER BY 1")
    assert [r[0] for r in rows] == [f"subject/{dealer.tenant_id}/dealer/K2"]
    assert await pool.fetchval("SELECT count(*) FROM ledger.subject_search WHERE stream_id LIKE '%/K1'") == 0


async def test_the_directory_command_reindexes_a_tenant_and_refuses_a_bad_id(
    api: TestClient, dealer: Dealer, pool: asyncpg.Pool, db_url: str, tmp_path, settings
) -> None:
    import os
    import sys
    from pathlib import Path

    async def cli(db_url: str, *args: str, cwd: Path) -> tuple[int, str, str]:
        env = {**os.environ, "LEDGER_DATABASE_URL": db_url, "LEDGER_MASTER_KEY": settings.master_key,
               "LEDGER_LOG_LEVEL": "warning", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli", *args, cwd=cwd, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()

    await _invoice(api, dealer, "K1", JAN)
    code, out, err = await cli(db_url, "directory", "sync", cwd=tmp_path)
    assert code == 0 and "garage-a: 1 contact events indexed" in out, err
    await pool.execute("DELETE FROM ledger.subject_search")  # e.g. digests of the previous master key
    assert await _search(api, dealer, plate="AB-123-C") == []
    code, out, err = await cli(db_url, "directory", "reindex", "--tenant", "garage-a", cwd=tmp_path)
    assert code == 0 and "garage-a: 1 contact events indexed" in out, err
    assert await _search(api, dealer, plate="AB-123-C") == ["K1"]
    code, _, err = await cli(db_url, "directory", "reindex", "--tenant", "Bad/", cwd=tmp_path)
    assert code == 2 and "not a tenant id" in err


async def test_a_common_surname_gives_the_first_fifty_and_more_words_narrow_it_to_the_person(
    api: TestClient, dealer: Dealer
) -> None:
    for i in range(55):
        await _invoice(api, dealer, f"J{i:02d}", {"name": f"{'Piet' if i == 42 else 'Klaas'} Jansen"}, invoice=f"F{i}")
    found = await _search(api, dealer, q="Jansen")
    assert len(found) == 50 and found == sorted(found)
    assert await _search(api, dealer, q="jansen piet") == ["J42"]
    assert await _search(api, dealer, name="Piet Jansen") == ["J42"]
    assert await _search(api, dealer, q="Piet Klaas Jansen") == []

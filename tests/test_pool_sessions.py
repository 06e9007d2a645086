"""The API's and the portal's pools hand connections back without asyncpg's reset query
(services/database.py): nothing a request does may leave session state behind on a pooled
connection. The one session advisory lock they take, the import's lock per tenant, is
released after the import, and no transaction is left open."""

from __future__ import annotations

import asyncpg
from aiohttp.test_utils import TestClient

from tests.conftest import Dealer

URL = "/v1/tenants/garage-a/sources/dealer/imports"
FILE = "customer_ref;invoice_id;invoice_date;email\nK1;F1;05-03-2024;k1@example.nl\n"


async def _advisory_locks(db_url: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND a.datname = current_database()"))
    finally:
        await conn.close()


async def test_an_import_leaves_no_advisory_lock_on_the_pooled_connection(
    api: TestClient, dealer: Dealer, db_url: str
) -> None:
    headers = {**dealer.auth("importer"), "Content-Type": "text/csv"}
    for _ in range(3):  # the second and third find the tenant's import lock free
        r = await api.post(URL, data=FILE.encode(), headers=headers)
        assert r.status == 200, await r.text()
    assert await _advisory_locks(db_url) == 0


async def test_pooled_connections_carry_no_session_setting_or_open_transaction_after_requests(
    api: TestClient, dealer: Dealer, db_url: str
) -> None:
    r = await api.post("/v1/tenants/garage-a/subjects/dealer/K1/preferences", headers=dealer.auth("staff"),
                       json={"changes": [{"category": "newsletter", "channel": "email", "value": "opt_out"}]})
    assert r.status == 201, await r.text()
    r = await api.post(URL, data=FILE.encode(), headers={**dealer.auth("importer"), "Content-Type": "text/csv"})
    assert r.status == 200
    conn = await asyncpg.connect(db_url)
    try:
        idle = await conn.fetch(
            "SELECT state FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'")
    finally:
        await conn.close()
    assert idle and all(row["state"] == "idle" for row in idle), idle  # none "idle in transaction"

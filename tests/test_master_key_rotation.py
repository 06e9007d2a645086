"""Rotating the master key (docs/deploy.md): the services run with the new key and the
previous one, `consent-ledger rotate-master-key` moves every subject key and the
suppression list to the new key, after which the previous key is no longer needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
from aiohttp.test_utils import TestClient

from services.api.app import create_app
from services.ledger.subject_keys import new_master_key
from services.settings import Settings
from tests.conftest import Dealer

REPO = Path(__file__).resolve().parent.parent
SUBJECT = "/v1/tenants/garage-a/subjects/dealer"
CONTACT = {"name": "Jan Jansen", "email": "jan.jansen@example.nl"}


def rotate(db_url: str, current: str, previous: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEDGER_DATABASE_URL": db_url, "LEDGER_MASTER_KEY": current}
    env.pop("LEDGER_MASTER_KEY_PREVIOUS", None)
    if previous is not None:
        env["LEDGER_MASTER_KEY_PREVIOUS"] = previous
    return subprocess.run([sys.executable, "-m", "services.cli", "rotate-master-key"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=REPO)


async def contact_of(api: TestClient, dealer: Dealer, ref: str) -> object:
    r = await api.get(f"{SUBJECT}/{ref}/export", headers=dealer.auth("auditor"))
    assert r.status == 200, await r.text()
    return (await r.json())["events"][0]["data"]["personal"]


async def test_a_rotation_keeps_every_personal_value_and_objection_readable(
        api: TestClient, dealer: Dealer, aiohttp_client, db_url: str, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    old = settings.master_key  # what `api` runs with
    assert old is not None
    # Under the old key: a customer with contact data, and one who objected and was erased.
    for ref in ("C1", "C2"):
        r = await api.post(f"{SUBJECT}/{ref}/invoices", json={"invoice_id": f"F-{ref}", "invoice_date": "2025-02-01",
                                                               "contact": CONTACT}, headers=dealer.auth("importer"))
        assert r.status == 201, await r.text()
    assert (await api.post(f"{SUBJECT}/C2/objection", json={}, headers=dealer.auth("staff"))).status == 201
    assert (await api.post(f"{SUBJECT}/C2/erasure", json={"confirm_ref": "C2"}, headers=dealer.auth())).status == 201

    # Step 1: the services run with the new key, the old one as previous.
    new = new_master_key()
    during = await aiohttp_client(create_app(Settings(database_url=db_url, master_key=new,
                                                      master_key_previous=old, pool_size=3)))
    assert await contact_of(during, dealer, "C1") == CONTACT
    r = await during.post(f"{SUBJECT}/C3/invoices", json={"invoice_id": "F-C3", "invoice_date": "2025-03-01",
                                                          "contact": CONTACT}, headers=dealer.auth("importer"))
    assert r.status == 201  # a new subject's key is wrapped with the new master key
    r = await during.get("/v1/tenants/garage-a/suppressions/dealer/C2", headers=dealer.auth("sender"))
    assert (await r.json())["suppressed"] is True

    # Step 2: everything moves to the new key; a second run finds nothing left to do.
    done = rotate(db_url, new, old)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["keys"], report["rewrapped"], report["unopenable"], report["suppressions_rehashed"]) == (2, 1, [], 1)
    again = json.loads(rotate(db_url, new, old).stdout)
    assert (again["rewrapped"], again["suppressions_rehashed"]) == (0, 0)

    # Step 3: the previous key is gone from the settings, and nothing needed it.
    after = await aiohttp_client(create_app(Settings(database_url=db_url, master_key=new, pool_size=3)))
    assert await contact_of(after, dealer, "C1") == CONTACT
    assert await contact_of(after, dealer, "C3") == CONTACT
    r = await after.get("/v1/tenants/garage-a/suppressions/dealer/C2", headers=dealer.auth("sender"))
    assert (await r.json())["suppressed"] is True


async def test_a_wrong_previous_key_changes_nothing_and_says_so(api: TestClient, dealer: Dealer, db_url: str,
                                                               settings: Settings) -> None:
    r = await api.post(f"{SUBJECT}/C1/invoices", json={"invoice_id": "F-1", "invoice_date": "2025-02-01",
                                                       "contact": CONTACT}, headers=dealer.auth("importer"))
    assert r.status == 201
    conn = await asyncpg.connect(db_url)
    try:
        before = await conn.fetchval("SELECT wrapped_key FROM ledger.subject_keys")
        done = rotate(db_url, new_master_key(), new_master_key())
        assert done.returncode == 1 and "open with neither master key" in done.stderr
        assert json.loads(done.stdout)["unopenable"] == ["subject/garage-a/dealer/C1"]
        assert await conn.fetchval("SELECT wrapped_key FROM ledger.subject_keys") == before
    finally:
        await conn.close()
    done = rotate(db_url, settings.master_key or "", None)
    assert done.returncode == 2 and "LEDGER_MASTER_KEY_PREVIOUS" in done.stderr

"""`consent-ledger serve --workers 2`: two API processes on one port, each with its own
group-commit writer, appending to one ledger. The head lock orders them: positions stay
unique and gap-free and the hash chain stays whole, whichever process wrote what."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import aiohttp
import asyncpg

from services.devservers import free_port
from services.ledger.api_keys import issue_key
from tests import processes
from tests.conftest import MASTER_KEY

REPO = Path(__file__).resolve().parent.parent


async def test_two_api_workers_share_the_port_and_append_to_one_unbroken_chain(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LEDGER_DATABASE_URL": db_url, "LEDGER_MASTER_KEY": MASTER_KEY}
    env.pop("LEDGER_KAFKA_BOOTSTRAP", None)
    conn = await asyncpg.connect(db_url)
    try:
        operator = (await issue_key(conn, None, "operator", "workers test")).key
    finally:
        await conn.close()
    log_path = tmp_path / "serve.log"
    proc = processes.start(["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"], env, log_path)
    try:
        await processes.wait_http_ok(f"{base}/readyz", proc, log_path)
        for _ in range(100):
            if processes.listeners(port) == 2:
                break
            await asyncio.sleep(0.1)
        assert processes.listeners(port) == 2, log_path.read_text()
        # A new connection per request, so the kernel spreads them over both processes.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            r = await http.post(f"{base}/v1/tenants", json={"tenant_id": "garage-w", "name": "Autobedrijf W"},
                                headers={"Authorization": f"Bearer {operator}"})
            assert r.status == 201, await r.text()
            auth = {"Authorization": f"Bearer {(await r.json())['admin_key']['key']}"}

            async def invoice(n: int) -> int:
                async with http.post(f"{base}/v1/tenants/garage-w/subjects/dealer/c{n % 5}/invoices",
                                     json={"invoice_id": f"F-{n}", "invoice_date": "2025-05-01"}, headers=auth) as r:
                    assert r.status == 201, await r.text()
                    return int((await r.json())["last_position"])

            positions = await asyncio.gather(*(invoice(n) for n in range(60)))
    finally:
        assert processes.stop(proc) == 0
    first = min(positions)
    assert sorted(positions) == list(range(first, first + 60))  # unique, no gaps
    verify = subprocess.run([*processes.consent_ledger(), "verify"], env=env, capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert verify.returncode == 0 and verify.stdout.startswith("ok: "), verify.stdout + verify.stderr

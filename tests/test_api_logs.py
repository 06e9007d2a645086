"""The API's logs, as a real `consent-ledger serve` writes them: one JSON object per line,
with request id, tenant and stream bound, and never the secret part of an API key."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import aiohttp
import asyncpg

from services.devservers import free_port
from services.ledger.api_keys import issue_key, split_key
from tests import processes
from tests.conftest import MASTER_KEY


async def test_the_api_logs_json_with_bound_context_and_never_a_key_secret(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LEDGER_DATABASE_URL": db_url, "LEDGER_MASTER_KEY": MASTER_KEY,
           "LEDGER_HTTP_PORT": str(port), "LEDGER_LOG_LEVEL": "debug"}
    env.pop("LEDGER_KAFKA_BOOTSTRAP", None)
    conn = await asyncpg.connect(db_url)
    try:
        operator = (await issue_key(conn, None, "operator", "logs test")).key
    finally:
        await conn.close()
    unknown = f"clk_0123456789ab_{secrets.token_urlsafe(32)}"
    malformed = f"not-a-key-{secrets.token_urlsafe(16)}"
    log_path = tmp_path / "serve.log"
    proc = processes.start(["serve"], env, log_path)
    try:
        await processes.wait_http_ok(f"{base}/readyz", proc, log_path)
        async with aiohttp.ClientSession() as http:
            r = await http.post(f"{base}/v1/tenants", json={"tenant_id": "garage-l", "name": "Autobedrijf L"},
                                headers={"Authorization": f"Bearer {operator}"})
            assert r.status == 201
            admin = (await r.json())["admin_key"]["key"]
            auth = {"Authorization": f"Bearer {admin}"}
            r = await http.post(f"{base}/v1/tenants/garage-l/subjects/dealer/c1/invoices",
                                json={"invoice_id": "F-1", "invoice_date": "2025-05-01"},
                                headers={**auth, "X-Request-Id": "req-logs-1"})
            assert r.status == 201
            # Keys where they do not belong: each must still stay out of the log.
            for headers in ({"Authorization": f"Bearer {unknown}"}, {"Authorization": f"Bearer {malformed}"},
                            {**auth, "X-Request-Id": admin}):
                r = await http.get(f"{base}/v1/tenants/garage-l", headers=headers)
                assert r.status in (200, 401)
            r = await http.get(f"{base}/v1/tenants/garage-l?key={admin}", headers=auth)
            assert r.status == 200
            r = await http.get(f"{base}/v1/tenants/{admin}", headers=auth)
            assert r.status in (403, 422)
            r = await http.post(f"{base}/v1/tenants/garage-l/api-keys", json={"role": admin}, headers=auth)
            assert r.status == 422
            r = await http.post(f"{base}/v1/tenants/garage-l/api-keys", json={"role": "sender"}, headers=auth)
            assert r.status == 201
            issued = (await r.json())["key"]
    finally:
        assert processes.stop(proc) == 0

    output = log_path.read_text()
    for key in (operator, admin, issued, unknown, malformed):
        parts = split_key(key)  # the secret itself may contain "_"
        secret = parts[1] if parts else key
        assert secret not in output, f"a key secret leaked into the log:\n{output}"
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # every line is JSON
    invoice = [x for x in lines if x.get("event") == "http_request" and x.get("request_id") == "req-logs-1"]
    assert len(invoice) == 1, output
    assert invoice[0]["tenant"] == "garage-l"
    assert invoice[0]["stream"] == "subject/garage-l/dealer/c1"
    assert invoice[0]["status"] == 201
    appended = [x for x in lines if x.get("event") == "appended" and x.get("request_id") == "req-logs-1"]
    assert appended and appended[0]["stream"] == "subject/garage-l/dealer/c1"

"""`consent-ledger serve --workers 2`: two API processes on one port, each with its own
group-commit writer, appending to one ledger. The head lock orders them: positions stay
unique and gap-free and the hash chain stays whole, whichever process wrote what.
`/metrics` answers for both processes, whichever one the scrape reaches, and the two
live and die together."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
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
    scratch = tmp_path / "tmp"  # where the supervisor keeps the workers' metric files
    scratch.mkdir()
    env = {**os.environ, "LEDGER_DATABASE_URL": db_url, "LEDGER_MASTER_KEY": MASTER_KEY, "TMPDIR": str(scratch)}
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

            # Each scrape on a new connection, so the kernel picks either process.
            scrapes = []
            for _ in range(8):
                async with http.get(f"{base}/metrics") as r:
                    assert r.status == 200
                    scrapes.append(invoices_answered(await r.text()))
        [metrics_dir] = scratch.iterdir()
        assert len(list(metrics_dir.glob("*.db"))) >= 2  # the workers' samples
    finally:
        assert processes.stop(proc) == 0
    assert scrapes == [60] * 8  # not one process's share
    assert list(scratch.iterdir()) == []  # the supervisor removed the metric files
    first = min(positions)
    assert sorted(positions) == list(range(first, first + 60))  # unique, no gaps
    verify = subprocess.run([*processes.consent_ledger(), "verify"], env=env, capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert verify.returncode == 0 and verify.stdout.startswith("ok: "), verify.stdout + verify.stderr


def invoices_answered(exposition: str) -> int:
    """``ledger_http_request_seconds_count`` of the invoice route's 201 answers."""
    return sum(int(float(line.rpartition(" ")[2])) for line in exposition.splitlines()
               if line.startswith("ledger_http_request_seconds_count{") and "invoices" in line
               and 'status="201"' in line)


async def test_when_one_worker_dies_the_others_stop_and_serve_exits_non_zero(db_url: str, tmp_path: Path) -> None:
    """A port that goes on with fewer workers hides the failure; stopping the whole service
    lets whatever runs it (systemd, Compose, Kubernetes) restart all of it."""
    port = free_port()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "LEDGER_DATABASE_URL": db_url, "LEDGER_MASTER_KEY": MASTER_KEY, "TMPDIR": str(scratch)}
    env.pop("LEDGER_KAFKA_BOOTSTRAP", None)
    log_path = tmp_path / "serve.log"
    proc = processes.start(["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"], env, log_path)
    try:
        await processes.wait_http_ok(f"http://127.0.0.1:{port}/readyz", proc, log_path)
        # Not multiprocessing's resource tracker, the supervisor's other child.
        workers = [pid for pid in processes.children(proc.pid)
                   if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert proc.returncode == 1, log_path.read_text()
    finally:
        processes.stop(proc)
    assert processes.listeners(port) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert "worker_exited" in log_path.read_text()
    assert list(scratch.iterdir()) == []  # no metric files left behind

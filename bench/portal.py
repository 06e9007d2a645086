"""Privacy portal page latency: ``GET /p/{token}`` with 50 concurrent users.

Set-up: a durable PostgreSQL 18, one dealer with the seed policy and terms, N customers
(each with an invoice, a third with a preference change, some with an objection) and a
portal link each. The portal runs in its own process (``consent-ledger portal serve``, as
in production, uvloop) with the per-address rate limit left ON but set far above what the
load generator (one address) sends, so its cost is measured and nothing is refused.

Each request does what a customer's visit does: look the token up (selector digest, constant-
time verifier check), read the tenant's newer events and the subject's stream, fold them with
the pure rules, compute the 25-cell eligibility matrix, render the page.

Two phases: (1) closed loop: 50 users request random links back to back, no pause: the
headline figures (``requests_per_s``, ``p50_ms``, ``p99_ms``) are the server at saturation;
(2) ``paced``: the same 50 users each read a page for ~0.5 s before the next request
(~100 requests/s offered): the latency a visitor sees when the server is not saturated.
Target: p99 < 100 ms.

``--workers N``: N portal processes sharing the port (SO_REUSEPORT), default 1.

``--quick`` (< 60 s): 300 customers, 3 s warm-up, 12 s closed loop, 10 s paced. Full: 5,000
customers, 60 s each.
The last stdout line is one JSON object with ``requests_per_s``, ``p50_ms``, ``p99_ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    REPO,
    CpuMeter,
    closed_loop,
    create_database,
    latency_summary,
    local_postgres,
    machine,
    postmaster_pid,
    process_cpu_seconds,
    run_loop,
    server_settings,
    write_result,
)
from schemas.events import Actor, PreferenceSetting  # noqa: E402
from services.devservers import free_port, remove_tree  # noqa: E402
from services.ledger.commands import Context, Ledger  # noqa: E402
from services.ledger.migrate import migrate  # noqa: E402
from services.ledger.store import EventStore  # noqa: E402
from services.ledger.subject_keys import SubjectKeys, new_master_key, parse_master_key  # noqa: E402
from services.portal.links import LinkStore  # noqa: E402

TENANT = "bench-garage"
USERS = 50
THINK_SECONDS = 0.5  # the paced phase: each user reads a page for about half a second
SYSTEM = Context(actor=Actor(kind="system", id="bench"), method="system")
CUSTOMER = Context(actor=Actor(kind="subject", id="subject"), method="portal")


async def seed(url: str, master_key: str, customers: int) -> list[str]:
    """The dealer, its customers and one portal link each; returns the tokens."""
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(url, min_size=2, max_size=8)
    assert pool is not None
    store = EventStore(pool)
    await store.start()
    try:
        ledger = Ledger(pool, store, SubjectKeys(pool, parse_master_key(master_key)))
        await ledger.create_tenant(SYSTEM, TENANT, "Autobedrijf Bench")
        version = await ledger.current_policy_version(TENANT)
        today = dt.date.today()
        rng = random.Random(7)
        links = LinkStore(pool)
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> str:
            ref = f"K{i:06d}"
            async with sem:
                await ledger.record_invoice(SYSTEM, TENANT, "dealer", ref, f"F{i}",
                                            today - dt.timedelta(days=rng.randrange(1, 1500)))
                if i % 3 == 0:
                    await ledger.change_preferences(CUSTOMER, TENANT, "dealer", ref,
                                                    [PreferenceSetting("newsletter", "email", "opt_out"),
                                                     PreferenceSetting("sales_campaign", "sms", "opt_in")],
                                                    policy_version_shown=version)
                if i % 17 == 0:
                    await ledger.record_objection(CUSTOMER, TENANT, "dealer", ref, policy_version_shown=version)
                return await links.issue(TENANT, "dealer", ref, rotate=False, issued_by="bench")

        return list(await asyncio.gather(*(one(i) for i in range(customers))))
    finally:
        await store.stop()
        await pool.close()


class PortalProcess:
    """``consent-ledger portal serve`` in a child process, log to a file."""

    def __init__(self, database_url: str, master_key: str, log_path: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.env = dict(os.environ, LEDGER_DATABASE_URL=database_url, LEDGER_MASTER_KEY=master_key,
                        LEDGER_HTTP_HOST="127.0.0.1", LEDGER_PORTAL_PORT=str(self.port),
                        LEDGER_PORTAL_RATE_PER_MINUTE="100000000", LEDGER_PORTAL_RATE_BURST="1000000",
                        LEDGER_DB_POOL_SIZE="10", LEDGER_PORTAL_WORKERS=str(workers))
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", "portal", "serve"], cwd=REPO,
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the portal exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"the portal did not start in {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


async def load(base: str, tokens: list[str], *, seconds: float, warmup: float) -> Any:
    rng = random.Random(11)
    connector = aiohttp.TCPConnector(limit=USERS)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def op(w: int, i: int) -> int:
            async with http.get(f"{base}/p/{rng.choice(tokens)}") as r:
                body = await r.read()
                if r.status != 200 or b"Privacy Portaal" not in body:
                    raise RuntimeError(f"HTTP {r.status}")
            return 1

        return await closed_loop(op, workers=USERS, seconds=seconds, warmup=warmup)


async def paced(base: str, tokens: list[str], *, seconds: float, think: float) -> tuple[int, int, list[float]]:
    """50 users who each read a page for ``think`` seconds (+-50 %) before the next one:
    (requests, errors, latencies) of the requests started within ``seconds``."""
    rng = random.Random(13)
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=USERS)
    async with aiohttp.ClientSession(connector=connector) as http:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds

        async def user() -> None:
            nonlocal errors
            await asyncio.sleep(rng.uniform(0, think))
            while loop.time() < end:
                began = time.perf_counter()
                async with http.get(f"{base}/p/{rng.choice(tokens)}") as r:
                    await r.read()
                    ok = r.status == 200
                latencies.append(time.perf_counter() - began)
                errors += not ok
                await asyncio.sleep(think * rng.uniform(0.5, 1.5))

        await asyncio.gather(*(user() for _ in range(USERS)))
    return len(latencies), errors, latencies


def log(message: str) -> None:
    print(f"[portal bench] {message}", file=sys.stderr, flush=True)


class PortalCpuMeter(CpuMeter):
    """:class:`CpuMeter` with the portal's worker processes (children of the served pid) counted
    as the server too."""

    def _sample(self) -> tuple[float, ...]:
        sample = list(super()._sample())
        if self.server_pid:
            sample[2] += sum(process_cpu_seconds(c) for c in _children(self.server_pid))
        return tuple(sample)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


async def run(quick: bool, workers: int) -> dict[str, Any]:
    customers = 300 if quick else 5000
    seconds, warmup = (12.0, 3.0) if quick else (60.0, 10.0)
    paced_seconds = 10.0 if quick else 60.0
    root = Path(tempfile.mkdtemp(prefix="portal-bench-"))
    try:
        with local_postgres(durable=True) as pg:
            url = await create_database(pg, "portal_bench")
            master_key = new_master_key()
            t0 = time.perf_counter()
            tokens = await seed(url, master_key, customers)
            log(f"seeded {customers} customers with links in {time.perf_counter() - t0:.1f}s")
            portal = PortalProcess(url, master_key, root / "portal.log", workers)
            portal.start()
            try:
                assert portal.proc is not None
                with PortalCpuMeter(server_pid=portal.proc.pid, postgres_pid=postmaster_pid(pg)) as cpu:
                    result = await load(portal.base_url, tokens, seconds=seconds, warmup=warmup)
                paced_requests, paced_errors, paced_latencies = await paced(
                    portal.base_url, tokens, seconds=paced_seconds, think=THINK_SECONDS)
            finally:
                portal.stop()
            pg_settings = await server_settings(url)
    finally:
        remove_tree(root)
    summary = result.summary()
    if result.errors:
        log(f"{result.errors} errors, first: {result.first_error}")
    return {
        "benchmark": "portal",
        "quick": quick,
        "requests_per_s": round(result.operations / result.seconds, 1),
        "p50_ms": summary["p50_ms"],
        "p90_ms": summary["p90_ms"],
        "p99_ms": summary["p99_ms"],
        "max_ms": summary["max_ms"],
        "target_p99_ms": 100,
        "p99_within_target": bool(summary["p99_ms"] < 100),
        "requests": result.operations,
        "errors": result.errors + paced_errors,
        "paced": {"think_s": THINK_SECONDS, "requests_per_s": round(paced_requests / paced_seconds, 1),
                  **{k: v for k, v in latency_summary(paced_latencies).items()}},
        "concurrent_users": USERS,
        "portal_workers": workers,
        "rate_limit": "on, per client address, set far above the load (one load generator = one address)",
        "customers": customers,
        "seconds": seconds,
        "cpu_cores": {("portal_server" if k == "ledger_server" else k): v for k, v in cpu.cores.items()},
        "postgres": pg_settings,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small and short (< 60 s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="portal server processes sharing the port (SO_REUSEPORT); default 1")
    args = parser.parse_args(argv)
    figures = run_loop(run(args.quick, args.workers))
    write_result("portal", figures)
    return 0 if figures["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Bulk portal-link mailing: 10,000 customers (``--quick``: 1,000) to a local SMTP server.

A durable PostgreSQL 18, a dealer whose customers each have an e-mail address (sealed in
their invoice), and a real SMTP server (aiosmtpd, services/mail/localsmtp.py) in its own
process that writes every mail to a file. Two phases, as production runs them:

1. **queue**: ``MailService.send_portal_links`` for all customers at once (what the bulk API
   does): a new portal link per customer, the mail rendered, sealed with the customer's key
   and COPYed into ``mail.outbox``;
2. **send**: the outbox worker's ``send_due`` until nothing is pending: claim a batch, open
   the sealed mails, send them over one SMTP connection, mark them sent, append the
   ``MailSent`` events.

The result counts the files the SMTP server wrote (every mail must arrive). The last line
of output is the JSON result: ``mails_per_s`` (end to end), ``queue_mails_per_s``,
``send_mails_per_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import create_database, local_postgres, machine, run_loop, server_settings, write_result  # noqa: E402
from schemas.api import Contact  # noqa: E402
from schemas.events import Actor  # noqa: E402
from services.devservers import free_port, remove_tree  # noqa: E402
from services.ledger.commands import Context, Ledger  # noqa: E402
from services.ledger.migrate import migrate  # noqa: E402
from services.ledger.store import EventStore  # noqa: E402
from services.ledger.subject_keys import SubjectKeys, new_master_key, parse_master_key  # noqa: E402
from services.mail.service import MailService  # noqa: E402
from services.mail.smtp import SmtpSender  # noqa: E402
from services.settings import Settings  # noqa: E402

TENANT = "bench-garage"
SYSTEM = Context(actor=Actor(kind="system", id="bench"), method="system")


def log(message: str) -> None:
    print(f"[mail-bench] {message}", file=sys.stderr, flush=True)


def start_smtp(folder: Path, port: int) -> subprocess.Popen[bytes]:
    code = ("import sys, time; from services.mail.localsmtp import LocalSmtp;"
            f" LocalSmtp({str(folder)!r}, port={port}).start(); print('ready', flush=True); time.sleep(1e9)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            cwd=str(Path(__file__).resolve().parent.parent))
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError("the SMTP server did not start")
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    return proc


async def seed(ledger: Ledger, customers: int) -> list[tuple[str, str]]:
    await ledger.create_tenant(SYSTEM, TENANT, "Autobedrijf Bench")
    today = dt.date.today()
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> tuple[str, str]:
        ref = f"K{i:06d}"
        async with sem:
            await ledger.record_invoice(SYSTEM, TENANT, "dealer", ref, f"F{i}", today - dt.timedelta(days=1 + i % 900),
                                        Contact(name=f"Klant {i}", email=f"klant{i}@example.nl"))
        return "dealer", ref

    return list(await asyncio.gather(*(one(i) for i in range(customers))))


async def run(quick: bool, connections: int = 4) -> dict[str, Any]:
    customers = 1_000 if quick else 10_000
    root = Path(tempfile.mkdtemp(prefix="mail-bench-"))
    smtp_port = free_port()
    try:
        with local_postgres(durable=True) as pg:
            url = await create_database(pg, "mail_bench")
            conn = await asyncpg.connect(url)
            try:
                await migrate(conn)
            finally:
                await conn.close()
            master_key = new_master_key()
            settings = Settings(database_url=url, master_key=master_key, smtp_host="127.0.0.1", smtp_port=smtp_port,
                                smtp_from="privacy@bench-garage.example")
            smtp = start_smtp(root / "mail", smtp_port)
            pool = await asyncpg.create_pool(url, min_size=2, max_size=8)
            assert pool is not None
            store = EventStore(pool)
            await store.start()
            try:
                keys = SubjectKeys(pool, parse_master_key(master_key))
                ledger = Ledger(pool, store, keys)
                t0 = time.perf_counter()
                subjects = await seed(ledger, customers)
                log(f"seeded {customers} customers in {time.perf_counter() - t0:.1f}s")
                service = MailService(pool, keys, ledger, settings, parse_master_key(master_key))
                t0 = time.perf_counter()
                queued, skipped = await service.send_portal_links(TENANT, subjects, requested_by="bench")
                queue_s = time.perf_counter() - t0
                log(f"queued {len(queued)} mails in {queue_s:.1f}s ({len(skipped)} skipped)")
                sender = SmtpSender(settings)
                t0 = time.perf_counter()
                batches = 0
                while await service.outbox.pending(TENANT):
                    report = await service.outbox.send_due(sender, limit=500, connections=connections)
                    batches += 1
                    if report.retried or report.failed:
                        raise RuntimeError(f"send problems: {msgspec.structs.asdict(report)}")
                send_s = time.perf_counter() - t0
                log(f"sent in {send_s:.1f}s ({batches} batches)")
                mail_sent_events = await pool.fetchval(
                    "SELECT count(*) FROM ledger.events WHERE event_type = 'MailSent'")
            finally:
                await store.stop()
                await pool.close()
                smtp.terminate()
                smtp.wait(10)
            received = len(list((root / "mail").glob("*.eml")))
            pg_settings = await server_settings(url)
    finally:
        remove_tree(root)
    return {
        "benchmark": "mail",
        "quick": quick,
        "customers": customers,
        "mails_per_s": round(customers / (queue_s + send_s), 1),
        "queue_mails_per_s": round(len(queued) / queue_s, 1),
        "send_mails_per_s": round(len(queued) / send_s, 1),
        "queue_s": round(queue_s, 2),
        "send_s": round(send_s, 2),
        "queued": len(queued),
        "received_by_smtp_server": received,
        "mail_sent_events": mail_sent_events,
        "errors": (customers - received) + len(skipped),
        "smtp_connections": connections,
        "smtp": "aiosmtpd in its own process on loopback, one file per mail",
        "postgres": pg_settings,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 customers instead of 10,000")
    parser.add_argument("--connections", type=int, default=4, help="SMTP connections per batch (default 4)")
    args = parser.parse_args(argv)
    # Logs (warnings and up) to stderr: stdout ends with the one JSON line.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(30))
    figures = run_loop(run(args.quick, args.connections))
    write_result("mail", figures)
    return 0 if figures["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""The partitioned store without HTTP: 1, 2 and 4 writer processes appending for 64 tenants.

Each process has its own asyncpg pool and ``EventStore`` (its own group-commit writer), as
``serve --workers N`` has, and 16 concurrent clients appending one invoice at a time, each
to a tenant of 64 in turn. One durable PostgreSQL (fsync on), a fresh database per process
count. Reported per count: events/s, events per batch, and partitions per batch planned
again because another process appended to them between the batch's read and its write
(``on_conflict``, the ``ledger_append_partition_conflicts_total`` metric): what the
optimistic batches cost when processes write the same partitions (docs/performance.md).

``--quick`` (3 s per count) to see it works; the last stdout line is the JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import create_database, local_postgres, machine, run_loop, write_result  # noqa: E402
from schemas.events import Actor, InvoiceRecorded, Metadata  # noqa: E402
from services.ledger.migrate import migrate  # noqa: E402
from services.ledger.store import AppendRequest, EventStore, StreamWrite  # noqa: E402

META = Metadata(actor=Actor(kind="api", id="bench"), method="api")
TENANTS = tuple(f"bench-garage-{i:02d}" for i in range(64))
CLIENTS = 16
PROCESSES = (1, 2, 4)


def writer_process(url: str, index: int, seconds: float, out: Any) -> None:
    """One process: its own pool, store and CLIENTS concurrent appenders."""

    async def main() -> dict[str, float]:
        pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
        stats = {"batches": 0.0, "events": 0.0, "conflicts": 0.0}

        def on_commit(events: int, _: float) -> None:
            stats["batches"] += 1
            stats["events"] += events

        def on_conflict(partitions: int) -> None:
            stats["conflicts"] += partitions

        store = EventStore(pool, on_commit=on_commit, on_conflict=on_conflict)
        await store.start()
        stop = time.monotonic() + seconds

        async def client(c: int) -> None:
            i = 0
            while time.monotonic() < stop:
                tenant = TENANTS[(c * 7 + i + index * 13) % len(TENANTS)]
                event = InvoiceRecorded(invoice_id=f"F{i}", invoice_date=dt.date(2024, 1, 1))
                await store.append(AppendRequest(tenant_id=tenant, metadata=META, writes=[
                    StreamWrite(f"subject/{tenant}/dealer/p{index}-{c}-{i % 50}", [event])]))
                i += 1

        try:
            await asyncio.gather(*(client(c) for c in range(CLIENTS)))
        finally:
            await store.stop()
            await pool.close()
        return stats

    out.put(asyncio.run(main()))


async def run(seconds: float) -> dict[str, Any]:
    figures: dict[str, Any] = {"benchmark": "partitions", "seconds_per_count": seconds, "clients_per_process": CLIENTS,
                               "tenants": len(TENANTS)}
    context = multiprocessing.get_context("spawn")
    with local_postgres(durable=True) as pg:
        for n in PROCESSES:
            url = await create_database(pg, f"partitions{n}")
            conn = await asyncpg.connect(url)
            try:
                await migrate(conn)
            finally:
                await conn.close()
            queue = context.Queue()
            procs = [context.Process(target=writer_process, args=(url, i, seconds, queue)) for i in range(n)]
            for p in procs:
                p.start()
            results = [queue.get(timeout=seconds + 120) for _ in procs]
            for p in procs:
                p.join()
            batches = sum(r["batches"] for r in results)
            events = sum(r["events"] for r in results)
            conflicts = sum(r["conflicts"] for r in results)
            figures[f"events_per_s_w{n}"] = round(events / seconds, 1)
            figures[f"events_per_batch_w{n}"] = round(events / batches, 1) if batches else None
            figures[f"conflicts_per_batch_w{n}"] = round(conflicts / batches, 2) if batches else None
            print(f"{n} processes: {figures[f'events_per_s_w{n}']} events/s", file=sys.stderr, flush=True)
    figures["machine"] = machine()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s per process count")
    args = parser.parse_args(argv)
    figures = run_loop(run(3.0 if args.quick else 15.0))
    write_result("partitions", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
